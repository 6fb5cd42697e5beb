"""``/metrics`` of ``proctor serve --workers 2``: the workers' counters added up, per serve."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import proctor
from proctor.testing import free_port, stop_process, wait_until_serving

from .test_http_serve import SEARCH, Served, _manifest, _token, clean_env
from .test_http_workers import _children

pytestmark = [
    pytest.mark.server,
    pytest.mark.cli,
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)"),
]

# The code under test: the package this test imported, whichever checkout that is (the
# console script alone would import the installed one).
SRC = str(Path(proctor.__file__).resolve().parents[1])

SUBMITTED = ("proctor_audit_events_total", (("type", "plan.submitted"),))
VALIDATED = ("proctor_stage_seconds_count", (("stage", "validate"),))


@contextmanager
def serve_workers(exe: str, home: Path, tmp: Path, env: dict[str, str]) -> Iterator[Served]:
    """``proctor serve --workers 2`` on a free port of 127.0.0.1, running this checkout."""
    port = free_port()
    out, err = tmp / f"serve-{port}.out", tmp / f"serve-{port}.err"
    path = os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [exe, "serve", "--home", str(home), "--port", str(port), "--workers", "2"],
            stdout=o,
            stderr=e,
            env=clean_env() | {"PYTHONPATH": path} | env,
        )
    served = Served(proc, f"http://127.0.0.1:{port}", out, err)
    try:
        wait_until_serving(served.url, proc=proc, timeout=30, output=served.stderr)
        yield served
    finally:
        stop_process(proc)


def _submit(url: str, token: str) -> None:
    # A new connection each time: the parent hands each to the next worker.
    with httpx.Client() as c:
        r = c.post(
            f"{url}/v1/plans", json=_manifest(SEARCH), headers={"Authorization": f"Bearer {token}"}
        )
    assert r.status_code == 201, r.text


def _scrape(url: str, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with httpx.Client() as c:
        r = c.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def _stale_counter(path: Path) -> None:
    """Leave in ``path`` what a crashed serve would: 1,000 plans submitted."""
    code = (
        "from prometheus_client import Counter;"
        "Counter('proctor_audit_events', 'x', ['type']).labels('plan.submitted').inc(1000)"
    )
    env = os.environ | {"PROMETHEUS_MULTIPROC_DIR": str(path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert list(path.glob("counter_*.db"))


def _shared_dirs(pid: int) -> set[str]:
    """The directories of the counter files ``pid`` has mapped (Linux /proc)."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    files = [Path(line.split(maxsplit=5)[-1]) for line in maps if line.endswith(".db")]
    return {str(f.parent) for f in files if f.name.startswith("counter_")}


class TestWorkerMetrics:
    def test_counters_are_the_total_of_both_workers_and_never_go_down(
        self, cli, proctor_exe, fresh_home, tmp_path
    ):
        """Every scrape, whichever worker answers it, counts every plan submitted so far;
        the directory is the serve's own (not a stale inherited one) and goes at exit
        (review t6 a: each worker answered with its own counts, so they went down)."""
        bot = _token(cli, fresh_home, "bot", "agent")["token"]
        aud = _token(cli, fresh_home, "aud", "auditor")["token"]
        stale = tmp_path / "stale"
        stale.mkdir()
        _stale_counter(stale)
        seen = []
        with serve_workers(
            proctor_exe, fresh_home, tmp_path, {"PROMETHEUS_MULTIPROC_DIR": str(stale)}
        ) as s:
            workers = _children(s.proc.pid)[:2]
            # Three connections a round (one submission, two scrapes), two workers: the
            # submissions alternate between the workers, and so do the scrapes.
            for _ in range(6):
                _submit(s.url, bot)
                for _ in range(2):
                    m = _scrape(s.url, aud)
                    seen.append((m.get(SUBMITTED), m.get(VALIDATED)))
            shared = set().union(*(_shared_dirs(pid) for pid in workers))
            assert s.stop() == 0

        assert seen == [(n, n) for n in (1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6)]
        assert len(shared) == 1
        (path,) = shared
        assert path != str(stale)
        assert not Path(path).exists()  # removed when the serve ended
        assert len(list(stale.glob("*.db"))) == 1  # an inherited directory is left alone

    def test_an_exited_workers_counts_stay(self, cli, proctor_exe, fresh_home, tmp_path):
        """A worker killed and replaced takes nothing away: its plans are still counted."""
        bot = _token(cli, fresh_home, "bot", "agent")["token"]
        aud = _token(cli, fresh_home, "aud", "auditor")["token"]
        with serve_workers(proctor_exe, fresh_home, tmp_path, {}) as s:
            first = _children(s.proc.pid)
            for _ in range(4):
                _submit(s.url, bot)
            before = [_scrape(s.url, aud)[SUBMITTED] for _ in range(2)]
            time.sleep(5.5)  # past the crash window: the parent replaces the worker
            os.kill(first[0], signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                now = _children(s.proc.pid)
                if len(now) == 3 and first[0] not in now:
                    break
                time.sleep(0.1)
            after = [_scrape(s.url, aud)[SUBMITTED] for _ in range(2)]
            _submit(s.url, bot)
            last = [_scrape(s.url, aud)[SUBMITTED] for _ in range(2)]
            assert s.stop() == 0

        assert first[0] not in now and len(now) == 3
        assert before == after == [4, 4]
        assert last == [5, 5]
