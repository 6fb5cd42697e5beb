"""Latency of one default-bundle policy decision (regopy), for a 1-step and a 3-step plan.

Each sample is one ``RegoPolicyEngine.evaluate`` call: converting the input, evaluating
``data.proctor.decision`` and reading the result. Run with::

    PYTHONPATH=src python bench/policy.py [--iterations 5000] [--against HEAD]
        [--shape gateway|minimal|both]

``--shape`` picks the input: ``gateway`` is what the gateway passes today (contract, plan,
steps with action and idempotent, baseline, context with sandbox and both thresholds);
``minimal`` is the smaller input docs/policy.md recommends (steps first, no plan members,
baseline_total). ``--against REV`` also loads the engine and the default bundle of a git
revision (read with ``git show``, nothing is changed) and alternates old and new in rounds
of 200 calls, so both see the same machine load. Prints a table, then one JSON line (the
last line) for machines.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.abc
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import regopy

BASELINE = {"risk": 2, "auditability": 3, "ux": 4, "recovery": 2, "cost": 1}
ROUND = 200  # calls per engine and plan before switching to the next one


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
    """Return the policy input the gateway builds today for the travel scenario."""
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
        "context": {"sandbox": False, "thresholds": {"agentic_max": 10, "hybrid_max": 15}},
    }


def minimal_input(value: dict[str, Any]) -> dict[str, Any]:
    """Return the smaller input docs/policy.md recommends for the same plan."""
    keep = ("id", "category", "amount", "reversible", "params")
    return {
        "steps": [{k: s[k] for k in keep} for s in value["steps"]],
        "baseline": value["baseline"],
        "baseline_total": sum(value["baseline"].values()),
        "context": {"thresholds": {"hybrid_max": value["context"]["thresholds"]["hybrid_max"]}},
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
SHAPES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "gateway": lambda value: value,
    "minimal": minimal_input,
}


def _proctor_policy() -> Any:
    """Import proctor.policy with this script's directory off the path.

    bench/http.py would shadow the standard library's ``http`` (imported by httpx, which
    proctor imports) when this file runs as a script.
    """
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import proctor.policy

    return proctor.policy


class _RevisionModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serve modules from a revision's sources (engine.py imports its sibling modules)."""

    def __init__(self, sources: dict[str, bytes], revision: str) -> None:
        self.sources = sources
        self.revision = revision

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.sources:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        origin = f"{self.revision}:{module.__name__}"
        exec(compile(self.sources[module.__name__], origin, "exec"), module.__dict__)


@contextlib.contextmanager
def _revision_modules(sources: dict[str, bytes], revision: str) -> Iterator[None]:
    """Import ``sources`` (proctor.policy.<name>) from the revision, then restore the current."""
    import proctor.policy as package

    missing = object()
    saved = {name: sys.modules.pop(name, None) for name in sources}
    attrs = {name: getattr(package, name.rpartition(".")[2], missing) for name in sources}
    finder = _RevisionModules(sources, revision)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name, current in saved.items():
            if current is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = current
        for name, attr in attrs.items():
            short = name.rpartition(".")[2]
            if attr is missing:
                if hasattr(package, short):
                    delattr(package, short)
            else:
                setattr(package, short, attr)


def engine_at(revision: str) -> Any:
    """Return an engine built from ``revision``'s policy modules and default bundle (git show).

    The revision's engine.py is loaded with the sibling modules of that revision
    (``proctor.policy.native`` and the others), not with the current ones.
    """
    root = Path(__file__).resolve().parent.parent
    prefix = "src/proctor/policy/"

    def show(path: str) -> bytes:
        return subprocess.run(
            ["git", "-C", str(root), "show", f"{revision}:{path}"],
            capture_output=True,
            check=True,
        ).stdout

    def ls(path: str) -> list[str]:
        return subprocess.run(
            ["git", "-C", str(root), "ls-tree", "--name-only", revision, path],
            capture_output=True,
            check=True,
            text=True,
        ).stdout.split()

    siblings = {
        f"proctor.policy.{Path(name).stem}": show(name)
        for name in ls(prefix)
        if name.endswith(".py") and Path(name).name not in ("__init__.py", "engine.py")
    }
    module = types.ModuleType(f"_bench_policy_engine_{abs(hash(revision))}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    with _revision_modules(siblings, revision):
        exec(compile(show(prefix + "engine.py"), f"{revision}:engine.py", "exec"), module.__dict__)
    names = ls(prefix + "bundle/")
    bundle = Path(tempfile.mkdtemp(prefix="proctor-bench-bundle-"))
    for name in names:
        (bundle / Path(name).name).write_bytes(show(name))
    return module.RegoPolicyEngine.from_directory(bundle)


def measure(runs: dict[str, Callable[[], Any]], iterations: int) -> dict[str, list[float]]:
    """Return ``iterations`` latencies in microseconds per run, alternating in rounds."""
    for run in runs.values():  # warm-up
        for _ in range(max(200, iterations // 10)):
            run()
    gc.collect()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    clock = time.perf_counter_ns
    done = 0
    while done < iterations:
        n = min(ROUND, iterations - done)
        for name, run in runs.items():
            out = samples[name]
            for _ in range(n):
                start = clock()
                run()
                out.append((clock() - start) / 1000)
        done += n
    return samples


def percentile(sorted_samples: list[float], q: float) -> float:
    """Return the nearest-rank percentile ``q`` (0-100) of sorted samples."""
    index = max(0, min(len(sorted_samples) - 1, round(q / 100 * len(sorted_samples)) - 1))
    return sorted_samples[index]


def main() -> None:
    """Run the benchmark and print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--against", metavar="REV", help="also run a git revision's engine")
    parser.add_argument("--shape", choices=[*SHAPES, "both"], default="both")
    args = parser.parse_args()

    policy = _proctor_policy()
    engines: dict[str, Any] = {
        "new": policy.RegoPolicyEngine.from_directory(policy.default_bundle_path())
    }
    if args.against:
        engines = {args.against: engine_at(args.against), **engines}
    shapes = list(SHAPES) if args.shape == "both" else [args.shape]
    runs: dict[str, Callable[[], Any]] = {}
    for plan, value in PLANS.items():
        for shape in shapes:
            shaped = SHAPES[shape](value)
            for label, engine in engines.items():
                runs[f"{label} {shape} {plan}"] = lambda e=engine, v=shaped: e.evaluate(v)
    results: dict[str, dict[str, float]] = {}
    for name, samples in measure(runs, args.iterations).items():
        samples.sort()
        results[name] = {
            "p50_us": round(percentile(samples, 50), 1),
            "p99_us": round(percentile(samples, 99), 1),
            "mean_us": round(statistics.fmean(samples), 1),
            "min_us": round(samples[0], 1),
        }

    print(f"policy decision, default bundle, {args.iterations} iterations each")
    print(f"{'engine shape plan':<28} {'p50 µs':>9} {'p99 µs':>9} {'mean µs':>9} {'min µs':>9}")
    for name, r in results.items():
        print(
            f"{name:<28} {r['p50_us']:>9.1f} {r['p99_us']:>9.1f} "
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
                "against": args.against,
                "version": engines["new"].version,
                "results": results,
            },
            sort_keys=True,
        )
    )


if __name__ == "__main__":
    main()
