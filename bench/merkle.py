"""Benchmark the audit Merkle tree: build 1,000,000 leaves, then time proofs and verification.

Run: ``PYTHONPATH=src python bench/merkle.py [--leaves N] [--samples N]``. Prints a table,
then one JSON object as the last line.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's http package for scripts run from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import platform
import random
import statistics
import time

from proctor.audit.merkle import (
    MerkleTree,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000

    return {"p50_us": at(0.50), "p99_us": at(0.99), "mean_us": statistics.fmean(ordered) / 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2_000)
    args = parser.parse_args()
    n, rng = args.leaves, random.Random(6962)

    leaves = [leaf_hash(i.to_bytes(8, "big")) for i in range(n)]
    tree = MerkleTree()
    start = time.perf_counter()
    for h in leaves:
        tree.append(h)
    build_s = time.perf_counter() - start

    start = time.perf_counter_ns()
    root = tree.root()
    root_us = (time.perf_counter_ns() - start) / 1000

    # Inclusion: random tree size, random index below it.
    incl_cases = []
    for _ in range(args.samples):
        size = rng.randint(1, n)
        incl_cases.append((rng.randrange(size), size))
    incl_proofs: list[list[bytes]] = []
    gen_incl: list[int] = []
    for i, size in incl_cases:
        t0 = time.perf_counter_ns()
        incl_proofs.append(tree.inclusion_proof(i, size))
        gen_incl.append(time.perf_counter_ns() - t0)
    ver_incl: list[int] = []
    for (i, size), proof in zip(incl_cases, incl_proofs, strict=True):
        r = tree.root(size)
        t0 = time.perf_counter_ns()
        verify_inclusion(leaves[i], i, size, proof, r)
        ver_incl.append(time.perf_counter_ns() - t0)

    # Consistency: random 1 <= old <= new <= n.
    cons_cases = []
    for _ in range(args.samples):
        a, b = rng.randint(1, n), rng.randint(1, n)
        cons_cases.append((min(a, b), max(a, b)))
    cons_proofs: list[list[bytes]] = []
    gen_cons: list[int] = []
    for m, size in cons_cases:
        t0 = time.perf_counter_ns()
        cons_proofs.append(tree.consistency_proof(m, size))
        gen_cons.append(time.perf_counter_ns() - t0)
    ver_cons: list[int] = []
    for (m, size), proof in zip(cons_cases, cons_proofs, strict=True):
        old, new = tree.root(m), tree.root(size)
        t0 = time.perf_counter_ns()
        verify_consistency(m, size, old, new, proof)
        ver_cons.append(time.perf_counter_ns() - t0)

    results = {
        "inclusion_proof": _percentiles(gen_incl),
        "inclusion_verify": _percentiles(ver_incl),
        "consistency_proof": _percentiles(gen_cons),
        "consistency_verify": _percentiles(ver_cons),
    }
    print(f"Merkle tree, {n:,} leaves, Python {platform.python_version()}")
    print(f"build: {build_s:.2f} s ({n / build_s:,.0f} leaves/s); root(): {root_us:.1f} µs")
    print(
        f"{'operation':<20} {'p50 µs':>8} {'p99 µs':>8} {'mean µs':>8}   ({args.samples} samples)"
    )
    for name, pct in results.items():
        print(f"{name:<20} {pct['p50_us']:>8.1f} {pct['p99_us']:>8.1f} {pct['mean_us']:>8.1f}")
    print(
        json.dumps(
            {
                "bench": "merkle",
                "leaves": n,
                "samples": args.samples,
                "build_s": round(build_s, 3),
                "leaves_per_s": round(n / build_s),
                "root_us": round(root_us, 1),
                "max_inclusion_proof_len": max(map(len, incl_proofs)),
                "root_hex": root.hex(),
                **{k: {q: round(v, 2) for q, v in p.items()} for k, p in results.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
