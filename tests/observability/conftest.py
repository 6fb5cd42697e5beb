"""Fixtures for the observability tests: hand-built events, a real server, an OTLP sink.

The server helpers mirror tests/integration (a subprocess ``proctor serve`` on a free port of
127.0.0.1); they are repeated here so this directory runs on its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from proctor.core.ports import EventRow
from proctor.testing import free_port, stop_process, wait_until_serving

T0 = datetime(2026, 11, 1, tzinfo=UTC)
LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
PARENT_TRACE, PARENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


# ------------------------------------------------------------------------ hand-built history


class History:
    """Builds audit event bodies the way the journal writes them (the fields KPIs read)."""

    def __init__(self, t0: datetime = T0) -> None:
        self.events: list[dict[str, Any]] = []
        self.t0 = t0
        self.t = t0

    def at(self, minutes: float) -> History:
        """Move the clock to ``t0 + minutes``."""
        self.t = self.t0 + timedelta(minutes=minutes)
        return self

    def ev(
        self,
        type_: str,
        pid: str | None = None,
        *,
        agent: str = "bot",
        user: str = "alice",
        data: Mapping[str, Any] | None = None,
        actions: tuple[str, ...] = (),
        **extra: Any,
    ) -> dict[str, Any]:
        """Append one event body and return it."""
        body = {
            "type": type_,
            "timestamp": self.t.isoformat(),
            "plan_id": pid,
            "actor": {"agent_id": agent, "model_version": "m-1"},
            "user_id": user,
            "actions_attempted": [{"api": a} for a in actions],
            "data": dict(data or {}),
            "policy_version": "sha256:p",
            "signature": "sig",
            "trace_id": "t" * 32,
        }
        body.update(extra)
        self.events.append(body)
        return body

    def plan(
        self,
        pid: str,
        *,
        actions: tuple[str, ...] = ("shop.buy",),
        run: bool = True,
        agent: str = "bot",
        user: str = "alice",
        cost: int = 0,
        sandbox: bool = False,
        **step_extra: Any,
    ) -> None:
        """A plan submitted, decided, routed and (``run``) executed to success."""
        who = {"agent": agent, "user": user}
        self.ev("plan.submitted", pid, actions=actions, **who)
        self.ev("policy.decided", pid, **who)
        status = "running" if run else "awaiting_approval"
        self.ev("plan.routed", pid, data={"sandbox": sandbox, "status": status}, **who)
        if run:
            self.steps(pid, actions=actions, cost=cost, **who, **step_extra)

    def steps(
        self,
        pid: str,
        *,
        actions: tuple[str, ...] = ("shop.buy",),
        cost: int = 0,
        agent: str = "bot",
        user: str = "alice",
        **step_extra: Any,
    ) -> None:
        """Each action's step succeeded, then the plan finished ``succeeded``."""
        who = {"agent": agent, "user": user}
        for a in actions:
            data = {"cost": cost} if cost else {}
            self.ev("step.succeeded", pid, actions=(a,), data=data, **who, **step_extra)
        self.ev("plan.finished", pid, data={"status": "succeeded"}, **who)

    def rows(self) -> list[EventRow]:
        """The history as stored rows (for the listener and ``relevant``)."""
        return [
            EventRow(
                seq=i,
                type=b["type"],
                plan_id=b["plan_id"],
                step_id=None,
                timestamp=b["timestamp"],
                body=orjson.dumps(b),
                hash="sha256:0",
            )
            for i, b in enumerate(self.events)
        ]


# ------------------------------------------------------------------------ a real server


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without PROCTOR_* and with a wide, colourless terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROCTOR_", "OTEL_"))}
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", "PYTHONUTF8": "1"})
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def proctor_exe() -> str:
    """The installed ``proctor`` console script (skip when it is absent)."""
    beside = Path(sys.executable).parent / "proctor"
    exe = str(beside) if beside.is_file() else shutil.which("proctor")
    if exe is None:
        pytest.skip("the `proctor` console script is not on PATH: `pip install -e .` in a venv")
    return exe


def run_cli(exe: str, *args: str | Path, home: Path, timeout: float = 60) -> Any:
    """Run ``proctor ARGS --home HOME`` and return the finished process."""
    return subprocess.run(
        [exe, *map(str, args), "--home", str(home)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def home(proctor_exe: str, tmp_path: Path) -> Path:
    """An initialised instance of this test alone."""
    path = tmp_path / "instance"
    r = run_cli(proctor_exe, "init", home=path)
    assert r.returncode == 0, r.stderr
    return path


def add_config(home: Path, toml: str) -> None:
    """Append ``toml`` to the instance's config.toml."""
    cfg = home / "config.toml"
    cfg.write_text(cfg.read_text() + "\n" + toml + "\n")


def token(exe: str, home: Path, name: str, *roles: str) -> str:
    """Create an API token with ``roles`` and return its secret."""
    args = ["tokens", "create", "--name", name, "--json"]
    for role in roles:
        args += ["--role", role]
    r = run_cli(exe, *args, home=home)
    assert r.returncode == 0, r.stderr
    return str(orjson.loads(r.stdout)["token"])


def manifest(
    *steps: tuple[str, dict[str, Any]], agent: str = "bot", user: str = "alice"
) -> dict[str, Any]:
    """A plan manifest from ``(action, params)`` pairs."""
    return {
        "actor": {"type": "agent", "name": agent, "model_version": "m-1", "agent_id": agent},
        "on_behalf_of": user,
        "intent": "an observability test",
        "reasoning": "because the test says so",
        "steps": [{"id": f"s{i + 1}", "action": a, "params": p} for i, (a, p) in enumerate(steps)],
    }


@dataclass
class Served:
    """A running ``proctor serve`` and its stderr file."""

    proc: subprocess.Popen[bytes]
    url: str
    err: Path

    def stderr(self) -> str:
        """What the server wrote on stderr so far."""
        return self.err.read_text()

    def stop(self) -> int:
        """SIGTERM, then wait for a clean exit."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@contextmanager
def serve(exe: str, home: Path, tmp: Path, *extra: str) -> Iterator[Served]:
    """Start ``proctor serve`` on a free port and wait until /healthz answers."""
    port = free_port()
    err = tmp / f"serve-{port}.err"
    with err.open("wb") as e:
        proc = subprocess.Popen(
            [exe, "serve", "--home", str(home), "--port", str(port), *extra],
            stdout=subprocess.DEVNULL,
            stderr=e,
            env=clean_env(),
        )
    served = Served(proc, f"http://127.0.0.1:{port}", err)
    try:
        wait_until_serving(served.url, proc=proc, output=served.stderr)
        yield served
    finally:
        stop_process(proc, timeout=30)


# ------------------------------------------------------------------------ an OTLP/HTTP sink


@dataclass
class OtlpSink:
    """A minimal OTLP/HTTP trace receiver: decodes each export into its spans."""

    url: str
    spans: list[Any] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


@pytest.fixture
def otlp_sink() -> Iterator[OtlpSink]:
    """An HTTP server on 127.0.0.1 that accepts ``POST /v1/traces`` (protobuf)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    lock = threading.Lock()
    sink: OtlpSink

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            with lock:
                sink.paths.append(self.path)
                for rs in req.resource_spans:
                    attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                    sink.resources.append(attrs)
                    for ss in rs.scope_spans:
                        sink.spans.extend(ss.spans)
            out = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink = OtlpSink(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
