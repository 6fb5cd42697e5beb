"""A world for the guard tests: an embedded Proctor on a memory, SQLite or PostgreSQL store.

Also the CLI's fixtures: ``run`` (``proctor`` in process) and ``served`` (an instance behind a
real uvicorn on 127.0.0.1, with one API token per principal).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import uvicorn

from proctor import Proctor
from proctor.app.gateway import GatewayOptions
from proctor.app.tokens import TokenService
from proctor.cli import main
from proctor.core.catalog import Catalog
from proctor.core.decisions import Decision, Outcome, StepDecision
from proctor.core.guards import GuardSettings
from proctor.core.lifecycle import PlanRecord, PlanStatus, StepRecord
from proctor.http import HttpSettings, create_app
from proctor.testing import FrozenClock, RecordingTool, free_port, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}
AMOUNT = {
    "type": "object",
    "properties": {"amount": {"type": "integer", "minimum": 0}},
    "additionalProperties": False,
}


class Scripted:
    """A policy that executes every step unless told otherwise (a fake engine, not a mock)."""

    version = "sha256:scripted-guards"

    def __init__(self, outcomes: dict[str, str] | None = None) -> None:
        self.outcomes = outcomes or {}
        self.inputs: list[dict[str, Any]] = []

    def evaluate(self, input: dict[str, Any]) -> dict[str, Any]:
        self.inputs.append(input)
        steps = {}
        for s in input["steps"]:
            o = self.outcomes.get(s["action"], "execute")
            d: dict[str, Any] = {"outcome": o, "reasons": [f"{s['action']}: {o}"]}
            if o == "approve":
                d |= {"approvals": 1, "approver_roles": ["finance"]}
            steps[s["id"]] = d
        return {"steps": steps, "plan": {}}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Each store backend: memory, a real temp-file SQLite database, a PostgreSQL schema."""
    if request.param == "postgres":
        pg: str = request.getfixturevalue("pg_url")
        return pg
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'g.db'}"


class World:
    """An instance with three tools, and builders for plan records and decisions."""

    def __init__(self, url: str, *, policy: Any = "scripted", **guards: Any) -> None:
        self.clock = FrozenClock()
        self.policy = Scripted() if policy == "scripted" else policy
        catalog = None if policy == "default" else Catalog()
        self.p = Proctor.in_memory(
            catalog=catalog,
            starter_catalog=False,
            policy="default" if policy == "default" else self.policy,
            clock=self.clock,
            options=GatewayOptions(),
            database_url=url,
            guards=GuardSettings(**guards),
        )
        self.tools: dict[str, RecordingTool] = {}
        for name, category in (
            ("shop.buy", "general"),
            ("shop.read", "read"),
            ("shop.flaky", "general"),
            ("shop.mail", "communication"),
        ):
            self.tools[name] = RecordingTool(
                fail_with=RuntimeError("down") if name == "shop.flaky" else None
            )
            params = AMOUNT
            if name == "shop.mail":
                params = {
                    "type": "object",
                    "properties": {"amount": {"type": "integer"}, "external": {"type": "boolean"}},
                    "additionalProperties": False,
                }
            self.p.action(
                name, category=category, baselines=LOW, params=params, amount_param="amount"
            )(self.tools[name])
        self.guards = self.p.guards
        self.store = self.p.gateway.store
        self._n = 0

    def plan(
        self,
        action: str = "shop.buy",
        amount: int = 0,
        *,
        agent: str = "bot",
        user: str = "alice",
        n: int = 1,
        **params: Any,
    ) -> Any:
        return make_plan(
            [(action, {"amount": amount, **params})] * n, agent_id=agent, on_behalf_of=user
        )

    def record(
        self,
        action: str = "shop.buy",
        amount: int = 0,
        *,
        agent: str = "bot",
        user: str = "alice",
        n: int = 1,
        outcome: str = "execute",
        status: PlanStatus = PlanStatus.RUNNING,
    ) -> PlanRecord:
        """A plan record as the gateway would hand it to the hooks (not stored)."""
        self._n += 1
        now = self.clock.now()
        steps = tuple(
            StepRecord(step_id=f"s{i + 1}", index=i, action=action, params={"amount": amount})
            for i in range(n)
        )
        return PlanRecord(
            plan_id=f"direct-{self._n}",
            digest="sha256:" + f"{self._n:064x}",
            status=status,
            agent_id=agent,
            on_behalf_of=user,
            manifest={},
            created_at=now,
            updated_at=now,
            assessment={},
            decision={},
            policy_version=self.policy_version,
            outcome=outcome,
            steps=steps,
        )

    policy_version = "sha256:scripted-guards"

    def decision(self, record: PlanRecord, outcome: Outcome = Outcome.EXECUTE) -> Decision:
        extra: dict[str, Any] = {}
        if outcome is Outcome.APPROVE:
            extra = {"approvals": 1, "approver_roles": ("finance",)}
        return Decision.combine(
            [
                StepDecision(step_id=s.step_id, outcome=outcome, reasons=("policy",), **extra)
                for s in record.steps
            ],
            policy_version=self.policy_version,
            plan_deny=outcome is Outcome.DENY,
        )

    def run(self, hook: str, *args: Any, **kw: Any) -> Any:
        """Call one hook in its own transaction with a Journal, as the gateway does."""
        with self.store.transaction() as tx:
            j = self.p.gateway._journal(tx)
            out = getattr(self.guards, hook)(tx, j.emit, *args, **kw)
            j.flush()
        return out

    def types(self, plan_id: str | None = None) -> list[str]:
        return [e.type for e in self.store.read_events(plan_id=plan_id, limit=100_000)]

    def events(self, type_: str) -> list[dict[str, Any]]:
        """The bodies of the audit events of one type, in log order."""
        return [
            json.loads(e.body) for e in self.store.read_events(limit=100_000) if e.type == type_
        ]


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        return json.loads(self.out)

    def __str__(self) -> str:
        return f"exit {self.code}\n{self.out}\n{self.err}"


@pytest.fixture
def run(capsys):
    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        else:  # pragma: no cover - main always exits
            code = 0
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.fixture
def served(tmp_path):
    """An instance served by uvicorn in a thread, with one token per principal."""
    w = World(f"sqlite:///{tmp_path / 'served.db'}", policy="default")
    tokens = TokenService(w.store, w.clock)
    secrets = {
        name: tokens.create(name=name, roles=roles).token
        for name, roles in (
            ("bot", ("agent",)),
            ("alice", ("user",)),
            ("aud", ("auditor",)),
            ("root", ("admin",)),
        )
    }
    port = free_port()
    app = create_app(w.p, settings=HttpSettings(auth_failures_per_minute=1000))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield w, f"http://127.0.0.1:{port}", secrets
    finally:
        server.should_exit = True
        thread.join(timeout=30)
