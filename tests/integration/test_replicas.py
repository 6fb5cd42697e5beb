"""Three ``proctor serve`` replicas on one PostgreSQL, one of them killed mid-run.

Concurrent clients submit, confirm and approve 2,000 plans across all three replicas (any
request to any replica); one replica is killed with SIGKILL after a third of them. Then:
zero duplicate executions of non-idempotent steps (counted outside the database), zero lost
acknowledged states, ``proctor audit verify`` passes, the global budget is never exceeded,
every plan is terminal or correctly waiting, and no plan is left leased by the dead replica.

``PROCTOR_REPLICA_PLANS`` sets the number of plans (default 2,000).
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from proctor import Proctor
from proctor.core.lifecycle import PlanStatus

from .conftest import clean_env
from .test_crash import HERE, NOT_IDEMPOTENT, SETTLED, Server, _token

pytestmark = [pytest.mark.server, pytest.mark.cli, pytest.mark.slow]

PLANS = int(os.environ.get("PROCTOR_REPLICA_PLANS", "2000"))
BUDGET = PLANS * 5  # global, per day, deny on exceed: about a third of what is asked


def _shape(rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    r = rng.random()
    if r < 0.3:
        return [("crash.spend", {"amount": rng.randint(1, 100)})]
    if r < 0.45:
        return [("crash.idem", {})]
    if r < 0.6:
        return [("crash.once", {})]
    if r < 0.7:
        return [("crash.idem", {}), ("crash.fail", {})]
    if r < 0.85:
        return [("crash.confirm", {})]
    return [("crash.approve", {})]


class Fleet:
    """Clients that spread requests over live replicas and retry elsewhere on failure."""

    def __init__(self, servers: list[Server], tokens: dict[str, str]) -> None:
        self.servers = servers
        self.dead: set[int] = set()
        self.tokens = tokens
        self.lock = threading.Lock()
        self.acks: list[tuple[str, str]] = []
        self.submitted = 0

    def post(self, rng: random.Random, who: str, path: str, body: Any, key: str | None = None):
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        if key:
            headers["Idempotency-Key"] = key  # a retry on another replica is the same plan
        for _ in range(20):
            live = [i for i in range(len(self.servers)) if i not in self.dead]
            i = rng.choice(live)
            try:
                r = httpx.post(
                    f"{self.servers[i].url}{path}", json=body, headers=headers, timeout=30
                )
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            if r.status_code >= 500:
                raise AssertionError(f"{path}: HTTP {r.status_code} {r.text}")
            if r.status_code >= 300:
                return None
            doc = r.json()
            with self.lock:
                self.acks.append((doc["plan_id"], doc["status"]))
            return doc
        raise AssertionError(f"{path}: no replica answered")

    def client(self, seed: int, quota: int) -> None:
        rng = random.Random(seed)
        for _ in range(quota):
            steps = _shape(rng)
            manifest = {
                "actor": {"type": "agent", "name": "bot", "model_version": "m", "agent_id": "bot"},
                "on_behalf_of": "carol",
                "intent": "replica test",
                "steps": [
                    {"id": f"s{i + 1}", "action": a, "params": p} for i, (a, p) in enumerate(steps)
                ],
            }
            doc = self.post(rng, "bot", "/v1/plans", manifest, key=uuid.uuid4().hex)
            with self.lock:
                self.submitted += 1
            if doc is None:
                continue
            if doc["status"] == "awaiting_confirmation":
                self.post(rng, "carol", f"/v1/plans/{doc['plan_id']}/confirm", {})
            elif doc["status"] == "awaiting_approval" and rng.random() < 0.8:
                self.post(rng, "fin", f"/v1/plans/{doc['plan_id']}/approve", {})


@pytest.fixture
def replica_home(cli, tmp_path: Path, pg_url: str) -> Path:
    home = tmp_path / "home"
    assert cli("init", home=home).code == 0
    cfg = (home / "config.toml").read_text()
    cfg = cfg.replace('url = "sqlite:///proctor.db"', f'url = "{pg_url}"')
    cfg = cfg.replace("lease_ttl_seconds = 30", "lease_ttl_seconds = 5")
    cfg += (
        "\n[[guards.budgets]]\n"
        f'scope = "global"\nkey = "*"\nlimit = {BUDGET}\nperiod = "day"\non_exceed = "deny"\n'
    )
    (home / "config.toml").write_text(cfg)
    shutil.copy(HERE / "catalog.toml", home / "catalog.toml")
    for rego in (home / "policy").glob("*.rego"):
        rego.unlink()
    (home / "policy" / "data.json").write_text("{}")
    shutil.copy(HERE / "policy.rego", home / "policy" / "crash.rego")
    assert cli("db", "upgrade", home=home).code == 0
    return home


@pytest.mark.timeout(1200)
def test_three_replicas_one_killed(cli, proctor_exe, replica_home: Path, tmp_path: Path) -> None:
    effects = tmp_path / "effects"
    (effects / "effects").mkdir(parents=True)
    env = clean_env({"PYTHONPATH": str(HERE), "CRASH_DIR": str(effects)})
    tokens = {
        "bot": _token(cli, replica_home, "bot", "agent"),
        "carol": _token(cli, replica_home, "carol", "user"),
        "fin": _token(cli, replica_home, "fin", "approver", groups="finance"),
    }
    log = tmp_path / "serve.log"
    servers = [Server(proctor_exe, replica_home, env, log) for _ in range(3)]
    fleet = Fleet(servers, tokens)
    clients = 5
    threads = [
        threading.Thread(target=fleet.client, args=(seed, PLANS // clients))
        for seed in range(clients)
    ]
    for t in threads:
        t.start()
    while fleet.submitted < PLANS // 3 and any(t.is_alive() for t in threads):
        time.sleep(0.05)
    victim = servers[0]
    dead_pid = victim.proc.pid
    victim.kill()
    fleet.dead.add(0)
    for t in threads:
        t.join(900)
    expected = PLANS // clients * clients
    assert fleet.submitted == expected

    with Proctor.open(replica_home) as p:
        store = p.gateway.store
        deadline = time.monotonic() + 120
        while store.list_plans(status="running", limit=1) or store.list_plans(
            status="compensating", limit=1
        ):
            assert time.monotonic() < deadline, "plans never settled"
            time.sleep(0.25)
        plans = store.list_plans(limit=100_000)
        events = collections.defaultdict(list)
        for e in store.iter_events():
            if e.plan_id:
                events[e.plan_id].append(e.type)
    for s in servers[1:]:
        s.stop()

    by_id = {r.plan_id: r for r in plans}
    statuses = collections.Counter(r.status.value for r in plans)
    print(f"plans by status: {dict(statuses)}")
    assert len(plans) == expected  # each acknowledged once, retries included
    # Every plan terminal or correctly waiting; none left with the dead replica.
    assert all(r.status in SETTLED for r in plans), statuses
    assert not [r for r in plans if r.lease_owner and f":{dead_pid}:" in r.lease_owner]
    for r in plans:
        if r.status is PlanStatus.NEEDS_ATTENTION:
            assert all(s.action in NOT_IDEMPOTENT for s in r.steps if s.status.value == "unknown")

    # Zero duplicate executions, counted outside the database.
    calls = collections.Counter()
    for line in (effects / "calls.log").read_text().splitlines():
        kind, key, _pid = line.split()
        calls[(kind, key)] += 1
    twice = {k: n for k, n in calls.items() if k[0] in ("once", "fail") and n > 1}
    assert not twice, twice

    # The global budget is never exceeded.
    spent = sum(
        int(f.name.rpartition("=")[2])
        for f in (effects / "effects").iterdir()
        if f.name.startswith("spend-")
    )
    assert 0 < spent <= BUDGET, spent
    assert statuses["denied"] > 0  # the budget did bind

    # The log verifies; every acknowledged state is backed by its events.
    result = cli("audit", "verify", "--json", home=replica_home, timeout=600)
    assert result.code == 0, str(result)
    for plan_id, status in fleet.acks:
        assert plan_id in by_id
        types = events[plan_id]
        assert "plan.submitted" in types and "plan.routed" in types, (plan_id, types)
        if status in ("succeeded", "failed", "compensated", "undone"):
            assert "plan.finished" in types, (plan_id, status, types)
