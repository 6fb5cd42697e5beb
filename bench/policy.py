"""Latency of one default-bundle policy decision (regopy), for a 1-step and a 3-step plan.

Each sample is one ``RegoPolicyEngine.evaluate`` call: converting the input, evaluating
``data.proctor.decision`` and reading the result. Run with::

    PYTHONPATH=src python bench/policy.py [--iterations 5000]

Prints a small table, then one JSON line (the last line) for machines.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from typing import Any

import regopy

from proctor.policy import RegoPolicyEngine, default_bundle_path

BASELINE = {"risk": 2, "auditability": 3, "ux": 4, "recovery": 2, "cost": 1}


def _step(step_id: str, action: str, category: str, params: dict[str, Any]) -> dict[str, Any]:
    amount = params.get("amount", 0)
    return {
        "id": step_id,
        "action": action,
        "category": category,
        "params": params,
        "amount": amount,
        "reversible": True,
        "idempotent": True,
    }


def plan_input(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Return a contract-1 policy input for the travel scenario."""
    return {
        "contract": 1,
        "plan": {
            "plan_id": "p-123",
            "digest": "sha256:" + "ab" * 32,
            "actor": {
                "type": "agent",
                "name": "travel-bot",
                "model_version": "gpt-x-2026-01",
                "agent_id": "travel-bot",
            },
            "on_behalf_of": "alice",
            "intent": "Book a trip to Lisbon",
        },
        "steps": steps,
        "baseline": BASELINE,
        "context": {"sandbox": False},
    }


PAY = _step("s3", "travel.pay", "payment", {"amount": 180000, "currency": "EUR"})
PLANS = {
    "1-step": plan_input([PAY]),
    "3-step": plan_input(
        [
            _step("s1", "travel.search_flights", "read", {"from": "BER", "to": "LIS"}),
            _step("s2", "travel.book_flight", "booking", {"flight": "TP 537"}),
            PAY,
        ]
    ),
}


def measure(engine: RegoPolicyEngine, value: dict[str, Any], iterations: int) -> list[float]:
    """Return ``iterations`` latencies of ``engine.evaluate(value)`` in microseconds."""
    for _ in range(max(200, iterations // 10)):  # warm-up
        engine.evaluate(value)
    gc.collect()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(iterations):
        start = clock()
        engine.evaluate(value)
        samples.append((clock() - start) / 1000)
    return samples


def percentile(sorted_samples: list[float], q: float) -> float:
    """Return the nearest-rank percentile ``q`` (0-100) of sorted samples."""
    index = max(0, min(len(sorted_samples) - 1, round(q / 100 * len(sorted_samples)) - 1))
    return sorted_samples[index]


def main() -> None:
    """Run the benchmark and print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=5000)
    args = parser.parse_args()

    engine = RegoPolicyEngine.from_directory(default_bundle_path())
    results: dict[str, dict[str, float]] = {}
    for name, value in PLANS.items():
        samples = sorted(measure(engine, value, args.iterations))
        results[name] = {
            "p50_us": round(percentile(samples, 50), 1),
            "p99_us": round(percentile(samples, 99), 1),
            "mean_us": round(statistics.fmean(samples), 1),
            "min_us": round(samples[0], 1),
        }

    print(f"policy decision, default bundle, {args.iterations} iterations each")
    print(f"{'plan':<8} {'p50 µs':>9} {'p99 µs':>9} {'mean µs':>9} {'min µs':>9}")
    for name, r in results.items():
        print(
            f"{name:<8} {r['p50_us']:>9.1f} {r['p99_us']:>9.1f} "
            f"{r['mean_us']:>9.1f} {r['min_us']:>9.1f}"
        )
    print(
        json.dumps(
            {
                "bench": "policy",
                "engine": "regopy",
                "regopy": getattr(regopy, "__version__", "?"),
                "python": platform.python_version(),
                "iterations": args.iterations,
                "version": engine.version,
                "results": results,
            },
            sort_keys=True,
        )
    )


if __name__ == "__main__":
    main()
