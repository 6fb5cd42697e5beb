"""Fixtures for the framework integrations: a real Proctor with a real Rego policy in process,
and a real ``proctor serve`` subprocess on 127.0.0.1 with the same policy and a ``refund``
action whose handler runs in the server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.client import ProctorClient
from proctor.policy import RegoPolicyEngine
from proctor.testing import free_port, stop_process, wait_until_serving

ASSETS = Path(__file__).parent / "assets"
POLICY = ASSETS / "refunds"

REFUND_SCHEMA = {
    "type": "object",
    "properties": {"amount": {"type": "integer"}, "customer": {"type": "string"}},
    "required": ["amount", "customer"],
    "additionalProperties": False,
}

# The served instance's action: the same name, schema and category as the in-process tools,
# handled by assets/served/refund_tools.py inside the server process.
REFUND_ACTION = """
[actions.refund]
summary = "Refund {amount} to {customer}"
category = "financial"
idempotent = true
handler = "refund_tools:refund"
baselines = { risk = 2, auditability = 2, ux = 3, recovery = 2, cost = 1 }
[actions.refund.params]
type = "object"
required = ["amount", "customer"]
additionalProperties = false
properties.amount = { type = "integer" }
properties.customer = { type = "string" }
"""


@pytest.fixture
def proctor() -> Iterator[Proctor]:
    """An in-memory Proctor deciding with ``assets/refunds/policy.rego``."""
    p = Proctor.in_memory(policy=RegoPolicyEngine.from_directory(POLICY))
    yield p
    p.close()


def event_types(proctor: Proctor, plan_id: str) -> list[str]:
    """The audit event types of one plan, in order."""
    return [e.type for e in proctor.events(plan_id=plan_id)]


def assert_in_order(types: list[str], *expected: str, plan_id: str = "") -> None:
    """``types`` includes ``expected`` in this order (others may interleave)."""
    it = iter(types)
    missing = [t for t in expected if t not in it]
    assert not missing, f"{plan_id}: {missing} not found in order in {types}"


def assert_audited(proctor: Proctor, plan_id: str, *expected: str) -> None:
    """The plan's audit events include ``expected`` in this order (others may interleave)."""
    assert_in_order(event_types(proctor, plan_id), *expected, plan_id=plan_id)


# ------------------------------------------------------------------ a real `proctor serve`


def _exe() -> str:
    beside = Path(sys.executable).parent / "proctor"
    exe = str(beside) if beside.is_file() else shutil.which("proctor")
    if exe is None:
        pytest.skip("the `proctor` console script is not installed: `pip install -e .`")
    return exe


@dataclass
class Served:
    """A running ``proctor serve`` and clients for each of its principals."""

    url: str
    home: Path
    calls_file: Path
    tokens: dict[str, str]
    clients: dict[str, ProctorClient]

    def client(self, name: str) -> ProctorClient:
        """A client holding ``name``'s token (bot: agent; fiona: finance approver; alice:
        the user the agent acts for; audrey: auditor)."""
        if name not in self.clients:
            self.clients[name] = ProctorClient(self.url, self.tokens[name], timeout=30)
        return self.clients[name]

    def calls(self, *customers: str) -> list[tuple[int, str]]:
        """The refunds the server's handler ran for ``customers``, in order (the server is
        shared by a module's tests, which run in random order)."""
        if not self.calls_file.exists():
            return []
        lines = self.calls_file.read_text().splitlines()
        return [
            (d["amount"], d["customer"])
            for d in map(json.loads, lines)
            if d["customer"] in customers
        ]

    def all_events(self) -> list[dict[str, Any]]:
        """The whole signed audit log, read over HTTP by the auditor."""
        out: list[dict[str, Any]] = []
        after = -1
        auditor = self.client("audrey")
        while True:
            page = auditor.audit_events(after=after, limit=500)
            out += page["events"]
            if page.get("next_after") is None:
                return out
            after = page["next_after"]

    def events(self, plan_id: str) -> list[dict[str, Any]]:
        """The plan's signed audit events, read over HTTP by the auditor."""
        return [e for e in self.all_events() if e.get("plan_id") == plan_id]

    def plan_for(self, customer: str) -> str:
        """The id of the (one) plan submitted for a refund to ``customer``, from the log."""
        (plan_id,) = {
            e["plan_id"]
            for e in self.all_events()
            if e["type"] == "plan.submitted"
            and e["data"]["steps"][0]["params"].get("customer") == customer
        }
        return str(plan_id)

    def assert_audited(self, plan_id: str, *expected: str) -> list[str]:
        """The plan's events (over HTTP) include ``expected`` in order; returns the types."""
        types = [e["type"] for e in self.events(plan_id)]
        assert_in_order(types, *expected, plan_id=plan_id)
        return types


def _cli(exe: str, env: dict[str, str], *args: str) -> Any:
    done = subprocess.run(
        [exe, *args, "--json"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``proctor serve`` in a subprocess on 127.0.0.1, deciding with the refunds policy.

    One server per test module: each test uses its own customers and amounts, so the plans
    (whose ids derive from the tool calls) never collide.
    """
    exe = _exe()
    tmp = tmp_path_factory.mktemp("served")
    home = tmp / "home"
    calls_file = tmp / "calls.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
    env |= {
        "PROCTOR_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(ASSETS / "served"), env.get("PYTHONPATH", "")]),
        "REFUND_CALLS": str(calls_file),
        "NO_COLOR": "1",
    }
    _cli(exe, env, "init")
    shutil.copytree(POLICY, home / "refunds")
    config = home / "config.toml"
    config.write_text(config.read_text().replace('bundle = "policy"', 'bundle = "refunds"'))
    with (home / "catalog.toml").open("a") as catalog:
        catalog.write(REFUND_ACTION)
    # The tokens are made before the server starts, through the library (one process
    # instead of four CLI runs): the same TokenService `proctor tokens create` uses.
    with Proctor.open(home) as p:
        service = TokenService(p.gateway.store, p.gateway.clock)
        tokens = {
            name: service.create(name=name, roles=[role], groups=groups).token
            for name, role, groups in (
                ("bot", "agent", ()),
                ("fiona", "approver", ("finance",)),
                ("alice", "user", ()),
                ("audrey", "auditor", ()),
            )
        }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [exe, "serve", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    served = Served(url, home, calls_file, tokens, {})
    try:
        wait_until_serving(url, proc=proc, path="/readyz", timeout=30, output=log.read_text)
        yield served
    finally:
        for c in served.clients.values():
            c.close()
        stop_process(proc)
