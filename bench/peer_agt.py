"""The peer's side of bench/peer.py: Microsoft's Agent Governance Toolkit in its own venv.

Run by bench/peer.py with the AGT venv's interpreter (never with Proctor's: this file does
not import proctor, and Proctor's venv does not have AGT). One process measures one
configuration; bench/peer.py drives several of them in interleaved chunks over stdin/stdout.

What one call does (agentmesh.governance.govern, agent-governance-toolkit-core 5.0.0):
``GovernedCallable.__call__`` builds a context from the keyword arguments
(``{"amount": {"value": 50}, "customer": {"value": "c-1"}}``), evaluates the YAML rules
below (regular expressions over each rule's condition string, conflict resolution
``deny_overrides``), asks the approval handler when the winning rule says
``require_approval``, appends one ``AuditEntry`` (pydantic model, SHA-256 hash chained) per
decision to the in-memory ``AuditLog`` (a ``MerkleAuditChain``: a list of entries and an
incrementally updated Merkle tree, kept in memory for the process's life; the approval path
appends a second entry, ``approval_decision``), writes the entry to the configured sink if
any, then runs the tool or raises ``GovernanceDenied``.

Configurations:

- ``agt-default``: ``govern(refund, policy=YAML, approval_handler=CallbackApproval(...))``,
  audit on (the default): the in-memory hash chain and Merkle tree only. Nothing durable,
  nothing signed.
- ``agt-hmac-file``: the same, with ``AuditLog(sink=FileAuditSink(path, key))``: every entry
  is also HMAC-SHA256 signed, hash-chained and appended as one JSON line (the sink opens the
  file in append mode for each entry). ``govern()`` takes no sink argument
  (``GovernanceConfig.audit_file`` exists but nothing reads it), so the benchmark replaces
  the callable's ``_audit`` with an ``AuditLog`` that has the sink.
- ``agt-hmac-fsync``: ``agt-hmac-file`` whose sink also flushes and ``os.fsync``s the file
  after each line (AGT has no option for it: a three-line subclass of ``FileAuditSink``).
- ``agt-audit-off``: ``audit=False``: policy evaluation and the tool call only (a reference
  row, not paired with a Proctor mode).

Protocol (one JSON object per line on stdout; commands on stdin): on start, set up and warm
up, then print ``{"ready": ..., "rss_kb": ...}``; ``allowed N`` / ``denied N`` /
``approval N`` run N calls of that case and print ``{"done": ..., "wall_s": ..., "rss_kb":
...}``; ``finish PATH`` writes the per-call latencies (µs) as JSON to PATH and exits.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the standard library's http package (httpx, aiohttp import it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import os
import time
import warnings
from array import array

POLICY_YAML = """\
apiVersion: governance.toolkit/v1
name: refunds
default_action: deny
rules:
  - name: small-refund
    description: refund under 100
    condition: "amount.value < 100"
    action: allow
  - name: huge-refund
    description: refunds of 10000 or more are not allowed
    condition: "amount.value >= 10000"
    action: deny
  - name: medium-refund
    description: refund of 100 to 9999 needs finance
    condition: "amount.value >= 100 and amount.value < 10000"
    action: require_approval
    approvers: [finance]
"""

CONFIGS = ("agt-default", "agt-hmac-file", "agt-hmac-fsync", "agt-audit-off")
AMOUNTS = {"allowed": 50, "denied": 20000, "approval": 500}


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def build(config: str, directory: Path):
    warnings.simplefilter("ignore")  # agentmesh's import-time deprecation notice
    from agentmesh.governance.approval import ApprovalDecision, CallbackApproval
    from agentmesh.governance.audit import AuditLog
    from agentmesh.governance.audit_backends import FileAuditSink
    from agentmesh.governance.govern import GovernanceDenied, govern

    class FsyncFileAuditSink(FileAuditSink):
        """FileAuditSink that makes each appended line durable before returning."""

        def _append_line(self, signed) -> None:
            line = json.dumps(signed.to_dict(), sort_keys=True, default=str)
            with open(self._path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())

    counter = {"runs": 0}

    def refund(amount: int, customer: str) -> None:
        """Refund a customer (no-op)."""
        counter["runs"] += 1

    def approver(request):
        return ApprovalDecision(approved=True, approver="fiona", reason="approved by finance")

    g = govern(
        refund,
        policy=POLICY_YAML,
        agent_id="support-bot",
        audit=config != "agt-audit-off",
        approval_handler=CallbackApproval(approver),
    )
    if config in ("agt-hmac-file", "agt-hmac-fsync"):
        cls = FsyncFileAuditSink if config == "agt-hmac-fsync" else FileAuditSink
        g._audit = AuditLog(sink=cls(directory / f"{config}.jsonl", os.urandom(32)))
    return g, GovernanceDenied, counter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", choices=CONFIGS)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--allowed", type=int, required=True)
    ap.add_argument("--denied", type=int, required=True)
    ap.add_argument("--approval", type=int, required=True)
    args = ap.parse_args()
    g, denied_exc, counter = build(args.config, args.dir)

    def allowed() -> None:
        g(amount=50, customer="c-1")

    def denied() -> None:
        try:
            g(amount=20000, customer="c-1")
        except denied_exc:
            return
        raise AssertionError("a refund of 20000 was not denied")

    def approval() -> None:
        g(amount=500, customer="c-1")  # the callback approves; the tool runs

    cases = {"allowed": allowed, "denied": denied, "approval": approval}
    for _ in range(200):
        allowed()
    for _ in range(50):
        denied()
    for _ in range(20):
        approval()
    warm_runs = counter["runs"]
    sizes = {"allowed": args.allowed, "denied": args.denied, "approval": args.approval}
    samples = {k: array("d", bytes(8 * n)) for k, n in sizes.items()}  # preallocated
    filled = dict.fromkeys(sizes, 0)
    perf = time.perf_counter_ns
    print(json.dumps({"ready": args.config, "rss_kb": rss_kb()}), flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "finish":
            runs = counter["runs"] - warm_runs
            want = filled["allowed"] + filled["approval"]
            assert runs == want, f"the tool ran {runs} times, expected {want}"
            audit = g.audit_log
            entries = len(audit._chain._entries) if audit is not None else 0
            Path(arg).write_text(json.dumps({k: list(v[: filled[k]]) for k, v in samples.items()}))
            print(json.dumps({"done": "finish", "audit_entries": entries}), flush=True)
            return
        fn, buf, n = cases[cmd], samples[cmd], int(arg)
        i = filled[cmd]
        t_start = time.perf_counter()
        for j in range(i, i + n):
            t0 = perf()
            fn()
            buf[j] = (perf() - t0) / 1000
        wall = time.perf_counter() - t_start
        filled[cmd] = i + n
        print(json.dumps({"done": cmd, "n": n, "wall_s": wall, "rss_kb": rss_kb()}), flush=True)


if __name__ == "__main__":
    main()
