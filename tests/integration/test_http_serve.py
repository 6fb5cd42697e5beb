"""A real ``proctor serve`` subprocess on 127.0.0.1, and the ``proctor tokens`` commands."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from proctor.client import ApiError, ProctorClient
from proctor.testing import free_port, stop_process, wait_until_serving


def clean_env() -> dict[str, str]:
    """The environment without PROCTOR_* variables (as the CLI tests run the script)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
    return env | {"NO_COLOR": "1", "TERM": "dumb", "PYTHONUTF8": "1"}


pytestmark = [pytest.mark.server, pytest.mark.cli, pytest.mark.slow]

SEARCH = ("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})
BIG_PO = (
    "procurement.create_po",
    {"supplier": "acme", "item": "servers", "quantity": 10, "amount": 250_000},
)


def _manifest(*steps: tuple[str, dict[str, Any]], agent: str = "bot") -> dict[str, Any]:
    return {
        "actor": {"type": "agent", "name": agent, "model_version": "m-1", "agent_id": agent},
        "on_behalf_of": "alice",
        "intent": "a test plan",
        "steps": [{"id": f"s{i + 1}", "action": a, "params": p} for i, (a, p) in enumerate(steps)],
    }


class Served:
    """A running ``proctor serve`` and its output files."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, out: Path, err: Path) -> None:
        self.proc = proc
        self.url = url
        self.out = out
        self.err = err

    def stderr(self) -> str:
        return self.err.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(20)


@contextmanager
def serve(exe: str, home: Path, tmp: Path, *extra: str) -> Iterator[Served]:
    """Start ``proctor serve`` on a free port and wait until /healthz answers."""
    port = free_port()
    out, err = tmp / f"serve-{port}.out", tmp / f"serve-{port}.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [exe, "serve", "--home", str(home), "--port", str(port), *extra],
            stdout=o,
            stderr=e,
            env=clean_env(),
        )
    served = Served(proc, f"http://127.0.0.1:{port}", out, err)
    try:
        wait_until_serving(served.url, proc=proc, timeout=30, output=served.stderr)
        yield served
    finally:
        stop_process(proc)


def _token(cli, home: Path, name: str, *roles: str, groups: str = "") -> dict[str, Any]:
    args = ["tokens", "create", "--name", name, "--json"]
    for role in roles:
        args += ["--role", role]
    if groups:
        args += ["--groups", groups]
    result = cli(*args, home=home)
    assert result.code == 0, str(result)
    return result.json()


class TestServe:
    def test_health_and_a_plan_with_a_cli_token(self, cli, proctor_exe, fresh_home, tmp_path):
        """healthz/readyz answer; a token from `tokens create --json` submits a plan."""
        bot = _token(cli, fresh_home, "bot", "agent")

        with serve(proctor_exe, fresh_home, tmp_path) as s:
            health = httpx.get(f"{s.url}/healthz")
            ready = httpx.get(f"{s.url}/readyz")
            auth = {"Authorization": f"Bearer {bot['token']}"}
            submitted = httpx.post(f"{s.url}/v1/plans", json=_manifest(SEARCH), headers=auth)
            read = httpx.get(f"{s.url}/v1/plans/{submitted.json()['plan_id']}", headers=auth)
            anonymous = httpx.get(f"{s.url}/v1/plans")
            code = s.stop()

        assert set(bot) == {"token", "id", "name", "roles", "groups"}
        assert (bot["name"], bot["roles"], bot["groups"]) == ("bot", ["agent"], [])
        assert health.json() == {"status": "ok"}
        assert ready.status_code == 200
        assert submitted.status_code == 201, submitted.text
        assert submitted.json()["status"] == "succeeded"
        assert read.json()["plan_id"] == submitted.json()["plan_id"]
        assert anonymous.status_code == 401
        assert code == 0

    def test_sigterm_is_graceful(self, cli, proctor_exe, fresh_home, tmp_path):
        """SIGTERM and SIGINT stop the server with exit 0, after a clean shutdown."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            with serve(proctor_exe, fresh_home, tmp_path) as s:
                code = s.stop(sig)
                err = s.stderr()

            assert code == 0, err
            assert "Shutting down" in err
            assert "Traceback" not in err

    def test_sigterm_answers_long_polls_and_ends_streams_at_once(
        self, cli, proctor_exe, fresh_home, tmp_path
    ):
        """SIGTERM with a long-poll, a client long-poll and an SSE stream open on a waiting
        plan: the polls get 200 and the plan, the stream ends, the server exits 0 at once.

        Regression: uvicorn waited timeout_graceful_shutdown (10 s) for them, then cancelled
        them: a plain-text 500 for the polls (ApiError in the client) and a broken stream.
        """
        bot = _token(cli, fresh_home, "bot", "agent")
        auth = {"Authorization": f"Bearer {bot['token']}"}
        results: dict[str, Any] = {}
        streaming = threading.Event()

        with serve(proctor_exe, fresh_home, tmp_path) as s:
            plan = httpx.post(f"{s.url}/v1/plans", json=_manifest(BIG_PO), headers=auth).json()
            path = f"{s.url}/v1/plans/{plan['plan_id']}"

            def poll() -> None:
                reply = httpx.get(f"{path}?wait=60", headers=auth, timeout=90)
                results["poll"] = (reply.status_code, reply.headers["content-type"], reply.text)
                results["poll_at"] = time.monotonic()

            def client_poll() -> None:
                with ProctorClient(s.url, bot["token"], timeout=90) as client:
                    try:
                        results["client"] = client.get(plan["plan_id"], wait=30)["status"]
                    except ApiError as exc:
                        results["client"] = exc

            def stream() -> None:
                lines = []
                with httpx.stream("GET", f"{path}/events", headers=auth, timeout=90) as reply:
                    for line in reply.iter_lines():
                        lines.append(line)
                        streaming.set()
                results["stream"] = lines
                results["stream_at"] = time.monotonic()

            threads = [threading.Thread(target=f) for f in (poll, client_poll, stream)]
            for t in threads:
                t.start()
            assert streaming.wait(20)
            time.sleep(1)  # the long-polls are waiting
            stopped_at = time.monotonic()
            code = s.stop()
            exited_at = time.monotonic()
            for t in threads:
                t.join(30)
            err = s.stderr()

        status, content_type, body = results["poll"]
        assert (status, content_type) == (200, "application/json"), body
        doc = json.loads(body)
        assert (doc["plan_id"], doc["status"]) == (plan["plan_id"], "awaiting_approval")
        assert results["poll_at"] - stopped_at < 3
        assert results["client"] == "awaiting_approval"
        assert "event: plan.routed" in results["stream"]
        assert results["stream_at"] - stopped_at < 3
        assert code == 0, err
        assert exited_at - stopped_at < 5, err
        assert "timeout graceful shutdown exceeded" not in err
        assert "Traceback" not in err

    def test_the_timers_run_in_the_background(self, cli, proctor_exe, fresh_home, tmp_path):
        """With a one-second approval window, a waiting plan expires without any request."""
        config = fresh_home / "config.toml"
        config.write_text(
            re.sub(r"approval_ttl_seconds = \d+", "approval_ttl_seconds = 1", config.read_text())
        )
        bot = _token(cli, fresh_home, "bot", "agent")
        auth = {"Authorization": f"Bearer {bot['token']}"}

        with serve(proctor_exe, fresh_home, tmp_path) as s:
            plan = httpx.post(f"{s.url}/v1/plans", json=_manifest(BIG_PO), headers=auth).json()
            status = plan["status"]
            deadline = time.monotonic() + 10
            while status == "awaiting_approval" and time.monotonic() < deadline:
                time.sleep(0.2)
                # A plain read (no wait): the gateway only expires plans on an action or a tick.
                status = httpx.get(f"{s.url}/v1/plans/{plan['plan_id']}", headers=auth).json()[
                    "status"
                ]

        assert plan["status"] == "awaiting_approval"
        assert status == "expired"

    def test_unsafe_no_auth_warns_loudly(self, cli, proctor_exe, fresh_home, tmp_path):
        """--unsafe-no-auth prints a banner, serves without a token, and warns per request."""
        with serve(proctor_exe, fresh_home, tmp_path, "--unsafe-no-auth") as s:
            keys = httpx.get(f"{s.url}/v1/audit/keys")
            plans = httpx.get(f"{s.url}/v1/plans")
            s.stop()
            err = s.stderr()

        assert keys.status_code == 200
        assert plans.status_code == 200
        assert "WARNING: --unsafe-no-auth: AUTHENTICATION IS OFF" in err
        assert err.count("UNSAFE --unsafe-no-auth") >= 3  # healthz, keys, plans

    def test_a_revoked_token_is_refused_soon(self, cli, proctor_exe, fresh_home, tmp_path):
        """`tokens revoke` from another process takes effect within the two-second cache."""
        aud = _token(cli, fresh_home, "aud", "auditor")
        auth = {"Authorization": f"Bearer {aud['token']}"}

        with serve(proctor_exe, fresh_home, tmp_path) as s:
            before = httpx.get(f"{s.url}/v1/audit/keys", headers=auth).status_code
            assert cli("tokens", "revoke", aud["id"], home=fresh_home).code == 0
            time.sleep(2.2)
            after = httpx.get(f"{s.url}/v1/audit/keys", headers=auth).status_code

        assert (before, after) == (200, 401)

    def test_a_busy_port_fails_cleanly(self, cli, proctor_exe, fresh_home, tmp_path):
        """A port already in use (one worker, as with several): exit 1 with a hint."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = cli("serve", "--port", str(port), home=fresh_home)

        assert result.code == 1, str(result)
        assert "Traceback" not in result.err
        assert f"error[invalid_request]: cannot listen on 127.0.0.1:{port}" in result.err
        assert "field: port" in result.err
        assert "hint: Choose a free port with --port." in result.err

    def test_a_host_that_does_not_resolve_fails_cleanly(self, cli, fresh_home):
        """--host naming no machine: exit 1 naming the host, no traceback."""
        result = cli("serve", "--host", "no-such-host.invalid", "--port", "0", home=fresh_home)

        assert result.code == 1, str(result)
        assert "Traceback" not in result.err
        assert "error[invalid_request]: cannot listen on no-such-host.invalid:0" in result.err
        assert "field: host" in result.err

    def test_an_unknown_log_level_is_a_usage_error(self, cli, fresh_home):
        """--log-level takes only uvicorn's levels: anything else exits 2, no traceback."""
        result = cli("serve", "--log-level", "bogus", "--port", "0", home=fresh_home)

        assert result.code == 2, str(result)
        assert "Traceback" not in result.err
        assert "--log-level" in result.err and "bogus" in result.err

    def test_the_log_level_ignores_case(self, proctor_exe, fresh_home, tmp_path):
        """--log-level WARNING is accepted: the server starts and drops uvicorn's info lines."""
        with serve(proctor_exe, fresh_home, tmp_path, "--log-level", "WARNING") as s:
            assert httpx.get(f"{s.url}/healthz").status_code == 200
            assert s.stop() == 0
        assert "Uvicorn running" not in s.stderr()

    def test_a_bad_config_stops_it_at_start(self, proctor_exe, fresh_home):
        """An infinite TTL in config.toml: serve exits 1 naming the field, no traceback."""
        config = fresh_home / "config.toml"
        config.write_text(
            config.read_text().replace("confirm_ttl_seconds = 3600", "confirm_ttl_seconds = inf")
        )

        proc = subprocess.run(
            [proctor_exe, "serve", "--home", str(fresh_home), "--port", str(free_port())],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
            check=False,
        )

        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "error[config_error]" in proc.stderr
        assert "field: execution.confirm_ttl_seconds" in proc.stderr


class TestTokensCli:
    def test_create_list_revoke(self, cli, fresh_home):
        """Tokens are listed without their secret; revoking marks them revoked."""
        made = _token(cli, fresh_home, "ann", "approver", "user", groups="finance, hr")

        listed = cli("tokens", "list", "--json", home=fresh_home).json()["tokens"]
        revoked = cli("tokens", "revoke", made["id"], "--json", home=fresh_home)
        after = cli("tokens", "list", "--json", home=fresh_home).json()["tokens"]
        stored = json.dumps(listed)

        assert made["token"].startswith("prt_")
        assert made["groups"] == ["finance", "hr"]
        assert [t["id"] for t in listed] == [made["id"]]
        assert listed[0]["roles"] == ["approver", "user"]
        assert made["token"] not in stored
        assert revoked.code == 0 and revoked.json()["revoked_at"]
        assert after[0]["revoked_at"] is not None

    def test_bad_input_exits_1_with_the_field(self, cli, fresh_home):
        """An unknown role or a bad name is an error naming the field; revoking nothing too."""
        role = cli("tokens", "create", "--name", "x", "--role", "god", "--json", home=fresh_home)
        name = cli(
            "tokens", "create", "--name", "a b", "--role", "agent", "--json", home=fresh_home
        )
        missing = cli("tokens", "revoke", "tok_none", "--json", home=fresh_home)

        assert (role.code, role.error()["field"]) == (1, "role")
        assert (name.code, name.error()["field"]) == (1, "name")
        assert (missing.code, missing.error()["code"]) == (1, "not_found")

    def test_enrol_totp(self, cli, fresh_home):
        """enrol-totp prints the secret and an otpauth:// URI once."""
        result = cli("tokens", "enrol-totp", "--name", "ann", "--json", home=fresh_home)

        assert result.code == 0, str(result)
        doc = result.json()
        assert doc["name"] == "ann"
        assert doc["uri"].startswith("otpauth://totp/")
        assert len(doc["secret"]) >= 16


class TestServeWebhooks:
    def test_serve_delivers_signed_webhooks(
        self, cli, proctor_exe, fresh_home, tmp_path, monkeypatch
    ):
        """`proctor serve` sends the outbox: a real receiver gets a signed plan.executed."""
        import hashlib
        import hmac
        import threading
        from http.server import BaseHTTPRequestHandler, HTTPServer

        received: list[tuple[dict[str, str], bytes]] = []

        class Receiver(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        httpd = HTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        cfg = fresh_home / "config.toml"
        cfg.write_text(
            cfg.read_text()
            + (
                "\n[[webhooks]]\n"
                f'url = "http://127.0.0.1:{httpd.server_port}/hook"\n'
                'events = ["plan.executed"]\n'
                'secret_env = "TEST_HOOK_SECRET"\n'
            )
        )
        monkeypatch.setenv("TEST_HOOK_SECRET", "s3cret")
        bot = _token(cli, fresh_home, "bot", "agent")
        try:
            with serve(proctor_exe, fresh_home, tmp_path) as s:
                auth = {"Authorization": f"Bearer {bot['token']}"}
                r = httpx.post(f"{s.url}/v1/plans", json=_manifest(SEARCH), headers=auth)
                deadline = time.monotonic() + 15
                while not received and time.monotonic() < deadline:
                    time.sleep(0.05)
        finally:
            httpd.shutdown()
            httpd.server_close()

        assert r.status_code == 201, r.text
        assert received, "no webhook arrived"
        headers, body = received[0]
        assert headers["Proctor-Event"] == "plan.executed"
        ts = headers["Proctor-Timestamp"]
        expected = hmac.new(b"s3cret", f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
        assert headers["Proctor-Signature"] == f"v1={expected}"
        assert json.loads(body)["plan_id"] == r.json()["plan_id"]
