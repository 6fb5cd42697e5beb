"""``proctor serve --workers N``: worker processes behind one port, one instance, one log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from proctor.testing import free_port, stop_process

from .test_http_serve import SEARCH, _manifest, _token, clean_env, serve

pytestmark = [pytest.mark.server, pytest.mark.cli, pytest.mark.slow]


def _children(pid: int) -> list[int]:
    """The child processes of ``pid``, oldest first (Linux /proc): with an SQLite store,
    the workers, then the WAL checkpointer."""
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []  # the parent has exited
    started = {}
    for child in map(int, listed):
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        started[child] = int(stat.rsplit(")", 1)[1].split()[19])
    return sorted(started, key=started.__getitem__)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _submit_from(url: str, token: str, clients: int, per_client: int) -> list[tuple[int, str]]:
    """``clients`` threads, each on its own keep-alive connection; (status, plan status)."""
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def run() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
            for _ in range(per_client):
                r = c.post("/v1/plans", json=_manifest(SEARCH), timeout=30)
                with lock:
                    results.append((r.status_code, r.json().get("status", r.text)))

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
class TestWorkers:
    def test_two_workers_share_the_load_and_keep_one_verifiable_log(
        self, cli, proctor_exe, fresh_home, tmp_path
    ):
        """Connections go to both workers in turn; every plan lands in one valid log."""
        bot = _token(cli, fresh_home, "bot", "agent")
        with serve(proctor_exe, fresh_home, tmp_path, "--workers", "2") as s:
            children = _children(s.proc.pid)
            workers = children[:2]
            before = {pid: _cpu_ticks(pid) for pid in workers}
            results = _submit_from(s.url, bot["token"], clients=8, per_client=25)
            used = {pid: _cpu_ticks(pid) - before[pid] for pid in workers}
            listed = httpx.get(
                f"{s.url}/v1/plans?limit=200",
                headers={"Authorization": f"Bearer {bot['token']}"},
            ).json()
            code = s.stop()
        verify = cli("audit", "verify", "--json", home=fresh_home)

        assert len(children) == 3  # two workers and the WAL checkpointer
        assert results == [(201, "succeeded")] * 200
        assert len(listed["plans"]) == 200
        # Each worker served its half of the connections: neither did a small share.
        total = sum(used.values())
        assert total > 0
        assert all(u >= total * 0.25 for u in used.values()), used
        assert code == 0
        assert not any(_alive(pid) for pid in children)
        assert verify.code == 0, str(verify)
        assert verify.json()["ok"] is True
        assert verify.json()["events"] >= 200 * 6

    def test_a_worker_that_dies_is_replaced(self, cli, proctor_exe, fresh_home, tmp_path):
        """A worker killed after its start is replaced; the service keeps answering."""
        bot = _token(cli, fresh_home, "bot", "agent")
        with serve(proctor_exe, fresh_home, tmp_path, "--workers", "2") as s:
            first = _children(s.proc.pid)
            time.sleep(5.5)  # past the crash window: this is not a broken start
            os.kill(first[0], signal.SIGKILL)  # worker 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                now = _children(s.proc.pid)
                if len(now) == 3 and first[0] not in now:
                    break
                time.sleep(0.1)
            results = _submit_from(s.url, bot["token"], clients=4, per_client=5)
            code = s.stop()
            err = s.stderr()

        assert len(first) == 3
        assert first[0] not in now and set(first[1:]) <= set(now) and len(now) == 3
        assert "worker 0" in err and "starting another" in err
        assert results == [(201, "succeeded")] * 20
        assert code == 0

    def test_sigint_stops_every_worker_gracefully(self, cli, proctor_exe, fresh_home, tmp_path):
        """Ctrl-C (SIGINT to the parent): each worker gets one SIGTERM and exits 0."""
        with serve(proctor_exe, fresh_home, tmp_path, "--workers", "3") as s:
            children = _children(s.proc.pid)
            code = s.stop(signal.SIGINT)

        assert len(children) == 4  # and the WAL checkpointer, which exits 0 too
        assert code == 0
        assert not any(_alive(pid) for pid in children)

    @pytest.mark.parametrize("delay", [0.0, 0.3])
    def test_sigterm_while_the_workers_start_stops_them(
        self, proctor_exe, fresh_home, tmp_path, delay
    ):
        """A SIGTERM that arrives once the workers are forked but still opening the instance
        (before uvicorn handles signals) is not lost: every process stops, exit 0."""
        port = str(free_port())
        with (tmp_path / "serve.err").open("wb") as err:
            proc = subprocess.Popen(
                [proctor_exe, "serve", "--home", str(fresh_home), "--port", port, "--workers", "2"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=clean_env(),
            )
        try:
            deadline = time.monotonic() + 30
            children: list[int] = []
            while len(children) < 3 and time.monotonic() < deadline and proc.poll() is None:
                children = _children(proc.pid)
                time.sleep(0.01)
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        finally:
            stop_process(proc)

        assert len(children) == 3
        assert code == 0, (tmp_path / "serve.err").read_text()
        assert not any(_alive(pid) for pid in children)

    def test_a_taken_port_is_a_clear_error(self, cli, proctor_exe, fresh_home, tmp_path):
        """The parent binds the port: a taken one fails before any worker starts."""
        with serve(proctor_exe, fresh_home, tmp_path) as s:
            port = s.url.rsplit(":", 1)[1]
            taken = cli("serve", "--workers", "2", "--port", port, home=fresh_home)

        assert taken.code != 0
        assert f"cannot listen on 127.0.0.1:{port}" in taken.out + taken.err


def test_a_worker_that_fails_at_start_stops_the_server(tmp_path):
    """Workers dying right after their start mean a broken start: all stop, exit 1."""
    script = textwrap.dedent(
        """
        import sys
        from proctor.cli.prefork import bind, run_workers

        def target(index, channel):
            if index == 0:
                raise RuntimeError("cannot open the store")
            channel.recv(1)  # serves until the parent is gone
            return 0

        sys.exit(run_workers(2, bind("127.0.0.1", 0), target))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 1
    assert "RuntimeError: cannot open the store" in done.stderr
    assert "worker 0" in done.stderr and "right after starting" in done.stderr
