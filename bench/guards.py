"""What the guards cost a plan: ``policy_input`` (outside any transaction) and ``admit``.

``Guards.policy_input`` runs for every plan before the policy query. With no guard row and
nothing configured it must stay around one cached read (target ≲ 30 µs); it reads kill
switches, breakers, autonomy and whitelists from a per-process snapshot refreshed every
``SNAPSHOT_TTL`` seconds, and budgets (when configured) fresh from the store. ``admit`` runs
inside the decide transaction; here each call is its own SQLite transaction (WAL,
synchronous=NORMAL), so the figure includes that transaction's commit: compare it with a
transaction that writes one counter (in the gateway, admit shares the decide transaction,
which writes anyway).

Cases: ``empty`` (nothing configured, no rows), ``rows`` (a kill switch for another agent, an
open breaker and an autonomy setting that apply, a whitelist), ``budgets`` (two budgets, a
plan with an amount: two store reads per plan).

Usage: python bench/guards.py [--calls 3000] [--rounds 5]
Prints a table (medians of per-round means), then one JSON object as the last line.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's http package for scripts run from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import statistics
import tempfile
import time
from typing import Any

from proctor import Proctor
from proctor.core.catalog import Catalog
from proctor.core.decisions import Decision, Outcome, StepDecision
from proctor.core.guards import BreakerState, Budget, GuardSettings
from proctor.core.lifecycle import PlanRecord, PlanStatus, StepRecord
from proctor.core.plans import Plan
from proctor.testing import FrozenClock, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}
AMOUNT = {
    "type": "object",
    "properties": {"amount": {"type": "integer", "minimum": 0}},
    "additionalProperties": False,
}


def world(directory: Path, case: str) -> tuple[Proctor, Any, Any, PlanRecord, Decision]:
    budgets = ()
    if case == "budgets":
        budgets = (
            Budget(scope="agent", key="*", limit=10**15),
            Budget(scope="global", key="*", limit=10**15, period="month"),
        )
    clock = FrozenClock()
    p = Proctor.in_memory(
        catalog=Catalog(),
        policy=None,
        clock=clock,
        database_url=f"sqlite:///{directory / f'{case}.db'}",
        guards=GuardSettings(budgets=budgets),
    )
    p.action("shop.buy", category="general", baselines=LOW, params=AMOUNT, amount_param="amount")(
        lambda **kw: {"ok": True}
    )
    if case == "rows":
        now = clock.now()
        with p.gateway.store.transaction() as tx:
            tx.put_state("kill", "agent:other", {"reason": "bench"}, at=now)
            tx.put_state("whitelist", "bot", {"actions": ["shop.buy"]}, at=now)
            tx.put_state(
                "breaker",
                "action:shop.buy",
                BreakerState(state="open", opened_at=now.isoformat()).value(),
                at=now,
            )
            tx.put_state("autonomy", "alice|shop.buy", {"level": "auto", "below": 10**9}, at=now)
    manifest = make_plan([("shop.buy", {"amount": 100})], agent_id="bot", on_behalf_of="alice")
    plan = Plan.from_dict(manifest)
    spec = p.gateway.catalog.get("shop.buy")
    now = clock.now()
    record = PlanRecord(
        plan_id="bench",
        digest="sha256:" + "0" * 64,
        status=PlanStatus.RUNNING,
        agent_id="bot",
        on_behalf_of="alice",
        manifest={},
        created_at=now,
        updated_at=now,
        assessment={},
        decision={},
        policy_version="bench",
        outcome="execute",
        steps=(StepRecord(step_id="s1", index=0, action="shop.buy", params={"amount": 100}),),
    )
    decision = Decision.combine(
        [StepDecision(step_id="s1", outcome=Outcome.EXECUTE, reasons=("bench",))],
        policy_version="bench",
    )
    return p, plan, spec, record, decision


def per_call_us(fn: Any, calls: int, rounds: int) -> float:
    means = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        means.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(means)


def measure(
    guards: Any,
    store: Any,
    plan: Plan,
    spec: Any,
    record: PlanRecord,
    decision: Decision,
    args: Any,
) -> dict[str, float]:
    """Time policy_input, admit in a transaction, and a transaction writing one counter."""
    guards.policy_input(plan, [spec])  # warm the snapshot

    def policy_input() -> None:
        guards.policy_input(plan, [spec])

    def admit() -> None:
        with store.transaction(durable=False) as tx:
            guards.admit(tx, lambda *a, **k: None, record, [spec], decision)

    def write_tx() -> None:
        with store.transaction(durable=False) as tx:
            tx.bump("bench", "b")

    return {
        "policy_input_us": round(per_call_us(policy_input, args.calls, args.rounds), 2),
        "admit_us": round(per_call_us(admit, args.calls // 3, args.rounds), 1),
        "write_transaction_us": round(per_call_us(write_tx, args.calls // 3, args.rounds), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in ("empty", "rows", "budgets"):
            p, plan, spec, record, decision = world(Path(tmp), case)
            guards = p.guards
            store = p.gateway.store
            results[case] = measure(guards, store, plan, spec, record, decision, args)
            store.close()
    print(f"guards: {args.calls} calls x {args.rounds} rounds, SQLite (medians of round means)")
    print(f"{'case':<10}{'policy_input µs':>18}{'admit µs':>12}{'1-write tx µs':>15}")
    for case, r in results.items():
        print(
            f"{case:<10}{r['policy_input_us']:>18}{r['admit_us']:>12}{r['write_transaction_us']:>15}"
        )
    print(json.dumps({"bench": "guards", "calls": args.calls, "rounds": args.rounds, **results}))


if __name__ == "__main__":
    main()
