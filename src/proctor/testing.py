"""Public test helpers: a frozen clock, a recording tool, plan builders, a served instance.

For Proctor's own tests and for users testing their policies and tools.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from proctor.core.ports import ToolCall
from proctor.storage.memory import MemoryStore

__all__ = [
    "FrozenClock",
    "InMemoryStore",
    "RecordingTool",
    "free_port",
    "live_server",
    "make_plan",
    "stop_process",
    "wait_until_serving",
]

InMemoryStore = MemoryStore


class FrozenClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

    def now(self) -> datetime:
        """Return the frozen time."""
        return self._now

    def advance(self, delta: timedelta | float) -> None:
        """Move time forward by a ``timedelta`` or a number of seconds."""
        self._now += delta if isinstance(delta, timedelta) else timedelta(seconds=delta)


class RecordingTool:
    """A handler that records its calls, and can be told to fail."""

    def __init__(self, result: Any = None, *, fail_with: BaseException | None = None) -> None:
        self.calls: list[tuple[dict[str, Any], ToolCall]] = []
        self.result = result if result is not None else {"ok": True}
        self.fail_with = fail_with
        self._lock = threading.Lock()

    def __call__(self, params: dict[str, Any], call: ToolCall) -> Any:
        """Record the call; raise ``fail_with`` if set, else return ``result``."""
        with self._lock:
            self.calls.append((params, call))
        if self.fail_with is not None:
            raise self.fail_with
        return self.result

    @property
    def keys(self) -> list[str]:
        """The idempotency keys seen, in order."""
        return [c.idempotency_key for _, c in self.calls]


def make_plan(
    steps: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    plan_id: str | None = None,
    agent_id: str = "test-agent",
    on_behalf_of: str = "alice",
    intent: str = "test intent",
    model_version: str = "test-model-1",
) -> dict[str, Any]:
    """Build a manifest dict from ``(action, params)`` pairs."""
    plan: dict[str, Any] = {
        "actor": {
            "type": "agent",
            "name": agent_id,
            "model_version": model_version,
            "agent_id": agent_id,
        },
        "on_behalf_of": on_behalf_of,
        "intent": intent,
        "reasoning": "",
        "steps": [
            {"id": f"s{i + 1}", "action": a, "params": dict(p)} for i, (a, p) in enumerate(steps)
        ],
    }
    if plan_id is not None:
        plan["plan_id"] = plan_id
    return plan


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_serving(
    url: str,
    *,
    proc: subprocess.Popen[Any] | None = None,
    path: str = "/healthz",
    timeout: float = 60.0,
    output: Callable[[], str] = str,
) -> None:
    """Poll ``url + path`` until it answers 200 (a ``proctor serve`` that a test started).

    Raises:
        RuntimeError: ``proc`` exited, or nothing answered within ``timeout`` seconds; the
            message ends with ``output()`` (the server's log, say).
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{output()}")
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the server did not answer {url + path} in {timeout} s:\n{output()}"
            )
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[Any], *, timeout: float = 20.0) -> None:
    """SIGTERM ``proc`` and wait; SIGKILL it if it is still running after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve an ASGI ``app`` (``proctor.http.create_app``) with uvicorn on 127.0.0.1, in a thread.

    Yields its base URL (a free port); the server stops when the block ends. For tests that
    need real HTTP (a remote MCP proxy, long polls) without a subprocess.
    """
    import uvicorn  # the service's own server; imported only by tests that serve

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
