"""Side by side with the peer: Proctor's ``@governed`` against AGT's ``govern()``.

The peer is Microsoft's Agent Governance Toolkit (PyPI ``agent-governance-toolkit-core``,
``agentmesh.governance.govern``). Both wrap the same no-op tool ``refund(amount, customer)``
with the same three rules, each in its own policy language:

    amount < 100 → run it;  amount ≥ 10,000 → deny;  otherwise one approver (finance) decides

Proctor's rules are the Rego bundle in bench/peer_policy/ (with its tests), AGT's are the
YAML in bench/peer_agt.py. Three cases: ``allowed`` (amount 50), ``denied`` (20,000) and
``approval`` (500, answered at once by a non-interactive approver in the same process).

What one call does
------------------
Proctor (``governed(p, action="bench.refund", category="financial", amount_param="amount")``):
the call becomes a one-step plan (random plan id) → manifest validation and the params'
JSON Schema → five-axis assessment → one Rego query → route → (allowed) the handler runs with
an idempotency key → the plan is read back for the outcome. Every transition is an audit event
(allowed: plan.submitted, policy.decided, plan.routed, step.started, step.succeeded,
plan.finished), canonical JSON, SHA-256 hash-chained, a Merkle leaf, signed with Ed25519, and
committed with the plan's rows; a signed checkpoint every 1,000 events. Denied: the call
raises ``ToolDenied`` with the policy's reasons. Approval: the call raises ``ApprovalPending``;
the benchmark calls ``p.approve(plan_id, "fiona", roles=["finance"])`` (a principal who is
neither the agent nor the user, holding the role the policy asked for), which executes the
plan, then calls ``refund(plan_id=...)`` for the result: the timed round trip is all three.

- (a) ``proctor-a``: ``Proctor.open(home)`` of a ``proctor init`` home: SQLite in WAL mode
  with ``synchronous=FULL`` (an acknowledged call survives power loss), Ed25519 on every event.
- (b) ``proctor-b``: the same with ``PROCTOR_SYNCHRONOUS=NORMAL`` (survives a process crash;
  the last commits may be lost on power loss).
- (c) ``proctor-c``: ``Proctor.in_memory(...)`` (in-memory store, kept for the process's
  life), with ``audit_signatures=False`` when that keyword exists (hash chain and Merkle tree
  but no signatures); otherwise signed, and labelled so.

AGT: see bench/peer_agt.py (default in-memory audit; HMAC file sink; HMAC file sink with an
fsync per entry; audit off as a reference row).

Pairs (Proctor / AGT): (a) vs agt-hmac-fsync, (b) vs agt-hmac-file, (c) vs agt-default. They
are the closest durability classes, not equal work: Proctor signs with Ed25519 (AGT: an HMAC,
a shared secret), commits 6 events and the plan's rows per call (AGT: 1 line), and keeps a
queryable plan store; AGT's default keeps every entry in memory for the process's life.

Method: AGT is installed from PyPI into its own venv (default ~/.cache/proctor-bench/agt-venv,
created with ``python3 -m venv`` on first run; matplotlib goes there too, for the plot only).
Each configuration runs in its own long-lived subprocess; the driver interleaves them in
``--rounds`` rounds of chunks (the order rotates each round) so machine noise hits all alike,
and merges the samples per configuration. Each worker warms up (200 allowed, 50 denied,
20 approval calls), preallocates its sample buffers, then reads its RSS; RSS growth is
measured across the allowed calls (all allowed chunks run before the denied and approval
ones). calls/s is calls over the summed wall time of the chunks.

Usage: python bench/peer.py [--calls 20000] [--denied 2000] [--approval 2000] [--rounds 4]
       [--quick] [--no-plot] [--plot-out docs/img/peer-latency.png]
       python bench/peer.py --profile a|c [--profile-calls 3000]   (needs pyinstrument)
Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's http package for scripts run from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import inspect
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from array import array
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
POLICY_DIR = BENCH / "peer_policy"
AGT_REQUIREMENT = "agent-governance-toolkit-core==5.0.0"
PLOT_REQUIREMENT = "matplotlib"
DEFAULT_VENV = Path("~/.cache/proctor-bench/agt-venv").expanduser()

PROCTOR_CONFIGS = ("proctor-a", "proctor-b", "proctor-c")
AGT_CONFIGS = ("agt-default", "agt-hmac-file", "agt-hmac-fsync", "agt-audit-off")
CASES = ("allowed", "denied", "approval")
PAIRS = {
    "a_vs_agt_hmac_fsync": ("proctor-a", "agt-hmac-fsync"),
    "b_vs_agt_hmac_file": ("proctor-b", "agt-hmac-file"),
    "c_vs_agt_default": ("proctor-c", "agt-default"),
}
LABELS = {
    "proctor-a": "(a) Proctor SQLite FULL, Ed25519",
    "proctor-b": "(b) Proctor SQLite NORMAL, Ed25519",
    "proctor-c": "(c) Proctor memory, unsigned",
    "agt-default": "AGT default (in-memory chain)",
    "agt-hmac-file": "AGT HMAC file sink",
    "agt-hmac-fsync": "AGT HMAC file sink + fsync",
    "agt-audit-off": "AGT audit off (reference)",
}
APPROVER, APPROVER_ROLES = "fiona", ["finance"]

# Proctor's guards run with their defaults on every call (counters, windows, breaker and
# anomaly checks). The approval case's refund of 500 among refunds of 50 is no breaker "cost
# spike": an approver saw its amount (docs/guards.md).


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------- Proctor side


def unsigned_supported() -> bool:
    from proctor import Proctor

    return "audit_signatures" in inspect.signature(Proctor.in_memory).parameters


def build_proctor(mode: str, directory: Path) -> dict[str, Any]:
    """Set up one Proctor configuration and return its three call functions."""
    from proctor import Proctor
    from proctor.bootstrap import init_home
    from proctor.core.catalog import Catalog
    from proctor.integrations.decorator import ApprovalPending, ToolDenied, governed
    from proctor.policy import RegoPolicyEngine

    label = LABELS[mode]
    if mode in ("proctor-a", "proctor-b"):
        if mode == "proctor-b":
            os.environ["PROCTOR_SYNCHRONOUS"] = "NORMAL"
        else:
            os.environ.pop("PROCTOR_SYNCHRONOUS", None)
        home = directory / f"{mode}-home"
        init_home(home, instance_id="peer-bench")
        cfg = home / "config.toml"
        text = cfg.read_text()
        text = text.replace('bundle = "policy"', f"bundle = {json.dumps(str(POLICY_DIR))}")
        text = text.replace('files = ["catalog.toml"]', "files = []")  # refund: via governed
        cfg.write_text(text)
        p = Proctor.open(home)
    else:
        extra: dict[str, Any] = {}
        if unsigned_supported():
            extra["audit_signatures"] = False
        else:
            label = "(c) Proctor memory, signed (unsigned mode not available)"
        from proctor.core.guards import GuardSettings

        p = Proctor.in_memory(
            catalog=Catalog(),
            policy=RegoPolicyEngine.from_directory(POLICY_DIR),
            guards=GuardSettings(),  # the defaults, as a proctor init home has them
            **extra,
        )

    counter = {"runs": 0}

    @governed(
        p,
        action="bench.refund",
        agent_id="support-bot",
        on_behalf_of="alice",
        model_version="bench",
        category="financial",
        amount_param="amount",
        idempotent=True,
        params_schema={
            "type": "object",
            "required": ["amount", "customer"],
            "additionalProperties": False,
            "properties": {"amount": {"type": "integer"}, "customer": {"type": "string"}},
        },
    )
    def refund(amount: int, customer: str) -> None:
        """Refund a customer (no-op)."""
        counter["runs"] += 1

    def allowed() -> None:
        refund(amount=50, customer="c-1")

    def denied() -> None:
        try:
            refund(amount=20000, customer="c-1")
        except ToolDenied:
            return
        raise AssertionError("a refund of 20000 was not denied")

    def approval() -> None:
        try:
            refund(amount=500, customer="c-1")
        except ApprovalPending as pending:
            p.approve(pending.plan_id, APPROVER, roles=APPROVER_ROLES)
            refund(plan_id=pending.plan_id)
            return
        raise AssertionError("a refund of 500 did not wait for approval")

    return {
        "proctor": p,
        "label": label,
        "counter": counter,
        "cases": {"allowed": allowed, "denied": denied, "approval": approval},
    }


def proctor_worker(args: argparse.Namespace) -> None:
    """One Proctor configuration as a subprocess (the protocol of bench/peer_agt.py)."""
    sysm = build_proctor(args.worker, args.dir)
    cases, counter, p = sysm["cases"], sysm["counter"], sysm["proctor"]
    for _ in range(200):
        cases["allowed"]()
    for _ in range(50):
        cases["denied"]()
    for _ in range(20):
        cases["approval"]()
    floors = policy_floors(p, cases["allowed"]) if args.worker == "proctor-c" else None
    warm_runs = counter["runs"]
    sizes = {"allowed": args.allowed, "denied": args.denied, "approval": args.approval}
    samples = {k: array("d", bytes(8 * n)) for k, n in sizes.items()}
    filled = dict.fromkeys(sizes, 0)
    perf = time.perf_counter_ns
    print(
        json.dumps({"ready": args.worker, "label": sysm["label"], "rss_kb": rss_kb()}), flush=True
    )
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "finish":
            runs = counter["runs"] - warm_runs
            want = filled["allowed"] + filled["approval"]
            assert runs == want, f"the tool ran {runs} times, expected {want}"
            events = p.gateway.store.event_count()
            p.close()
            Path(arg).write_text(json.dumps({k: list(v[: filled[k]]) for k, v in samples.items()}))
            done = {"done": "finish", "audit_entries": events, "floors": floors}
            print(json.dumps(done), flush=True)
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


FLOOR_CALLS = 3000


def policy_floors(p: Any, allowed: Any) -> dict[str, float]:
    """p50 µs of the Rego work inside one allowed call, measured alone in this process.

    ``decision``: the engine's ``evaluate`` with the very input the gateway passed it in an
    allowed call (the bundle of bench/peer_policy/). ``empty query``: regopy's least
    possible query, a constant rule with an empty input, for what any Rego decision costs
    through rego-cpp before it reads anything.
    """
    from proctor.policy import RegoPolicyEngine

    engine = p.gateway.policy
    seen: list[Any] = []
    real = engine.evaluate

    def spy(inp: Any) -> Any:
        seen.append(inp)
        return real(inp)

    engine.evaluate = spy
    try:
        allowed()
    finally:
        del engine.evaluate  # the class's method again
    constant = RegoPolicyEngine.from_sources(
        {"c.rego": "package proctor\n\nimport rego.v1\n\ndecision := {}\n"}
    )
    out: dict[str, float] = {}
    perf = time.perf_counter_ns
    runs = (("decision", engine.evaluate, seen[0]), ("empty query", constant.evaluate, {}))
    for name, fn, arg in runs:
        for _ in range(200):
            fn(arg)
        t = []
        for _ in range(FLOOR_CALLS):
            t0 = perf()
            fn(arg)
            t.append((perf() - t0) / 1000)
        t.sort()
        out[name] = round(t[len(t) // 2], 1)
    return out


# ---------------------------------------------------------------------------- AGT venv


def ensure_agt_venv(venv: Path) -> Path:
    """Create the peer's venv on first use (PyPI only) and return its interpreter."""
    py = venv / "bin" / "python"
    marker = venv / "proctor-bench-requirements.txt"
    want = f"{AGT_REQUIREMENT}\n{PLOT_REQUIREMENT}\n"
    if py.exists() and marker.exists() and marker.read_text() == want:
        return py
    if not py.exists():
        print(f"creating the AGT venv in {venv} ...", file=sys.stderr, flush=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    print(f"installing {AGT_REQUIREMENT} and {PLOT_REQUIREMENT} ...", file=sys.stderr, flush=True)
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", AGT_REQUIREMENT, PLOT_REQUIREMENT],
        check=True,
    )
    marker.write_text(want)
    return py


# ---------------------------------------------------------------------------- driver


class Worker:
    def __init__(self, name: str, cmd: list[str], directory: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = open(directory / f"{name}.stderr", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            cwd=str(directory),
        )
        self.ready = self._read()
        self.label = self.ready.get("label", LABELS[name])
        self.walls: dict[str, float] = dict.fromkeys(CASES, 0.0)
        self.rss_before = self.ready["rss_kb"]
        self.rss_after_allowed = self.rss_before

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.flush()
            tail = Path(self.log.name).read_text()[-3000:]
            raise RuntimeError(f"worker {self.name} died (exit {self.proc.returncode}):\n{tail}")
        return json.loads(line)

    def send(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def run(self, case: str, n: int) -> None:
        r = self.send(f"{case} {n}")
        self.walls[case] += r["wall_s"]
        if case == "allowed":
            self.rss_after_allowed = r["rss_kb"]

    def finish(self, path: Path) -> dict[str, Any]:
        r = self.send(f"finish {path}")
        self.proc.wait(timeout=120)
        self.log.close()
        return r


def pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def summarise(values: list[float], wall: float) -> dict[str, float]:
    s = sorted(values)
    return {
        "n": len(s),
        "p50_us": round(statistics.median(s), 1),
        "p99_us": round(pct(s, 0.99), 1),
        "max_us": round(s[-1], 1),
        "calls_per_s": round(len(s) / wall, 1) if wall > 0 else 0.0,
    }


def chunks(total: int, rounds: int) -> list[int]:
    base, extra = divmod(total, rounds)
    return [base + (1 if i < extra else 0) for i in range(rounds)]


def machine_info(agt_py: Path) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    disk = "unknown"
    try:
        dev = subprocess.run(
            ["findmnt", "-no", "SOURCE,FSTYPE", "--target", tempfile.gettempdir()],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if dev:
            name = Path(dev[0]).name
            rot = Path(f"/sys/block/{name}/queue/rotational")
            kind = (
                ("rotational" if rot.read_text().strip() == "1" else "non-rotational")
                if rot.exists()
                else "?"
            )
            disk = f"{dev[0]} ({dev[1] if len(dev) > 1 else '?'}, {kind})"
    except (OSError, IndexError):
        pass
    agt_version = subprocess.run(
        [
            str(agt_py),
            "-c",
            "import importlib.metadata as m; print(m.version('agent-governance-toolkit-core'))",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "tmp_disk": disk,
        "agt_version": agt_version,
        "proctor_rev": rev + ("+dirty" if dirty else ""),
    }


def drive(args: argparse.Namespace) -> dict[str, Any]:
    agt_py = ensure_agt_venv(args.venv)
    run_dir = Path(tempfile.mkdtemp(prefix="proctor-peer-"))
    env = dict(os.environ)
    env.pop("PROCTOR_SYNCHRONOUS", None)
    env.pop("PROCTOR_HOME", None)
    sizes = [
        "--allowed",
        str(args.calls),
        "--denied",
        str(args.denied),
        "--approval",
        str(args.approval),
    ]
    workers: dict[str, Worker] = {}
    for name in PROCTOR_CONFIGS + AGT_CONFIGS:
        if name in PROCTOR_CONFIGS:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name]
        else:
            cmd = [str(agt_py), str(BENCH / "peer_agt.py"), name]
        print(f"starting {name} ...", file=sys.stderr, flush=True)
        workers[name] = Worker(name, [*cmd, "--dir", str(run_dir), *sizes], run_dir, env)
    names = list(workers)
    totals = {"allowed": args.calls, "denied": args.denied, "approval": args.approval}
    for case in CASES:
        parts = chunks(totals[case], args.rounds)
        for r, n in enumerate(parts):
            if n == 0:
                continue
            k = r % len(names)
            order = names[k:] + names[:k]
            if r % 2:
                order.reverse()
            for name in order:
                t0 = time.perf_counter()
                workers[name].run(case, n)
                print(
                    f"  {case:<8} round {r + 1}/{len(parts)} {name:<15} {n:>7} calls "
                    f"{time.perf_counter() - t0:6.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    configs: dict[str, Any] = {}
    all_samples: dict[str, Any] = {}
    floors: dict[str, float] | None = None
    for name, w in workers.items():
        out = run_dir / f"{name}.samples.json"
        fin = w.finish(out)
        floors = fin.get("floors") or floors
        samples = json.loads(out.read_text())
        all_samples[name] = {"label": w.label, **samples}
        configs[name] = {
            "label": w.label,
            **{case: summarise(samples[case], w.walls[case]) for case in CASES if samples[case]},
            "rss_growth_mb": round((w.rss_after_allowed - w.rss_before) / 1024, 1),
            "rss_growth_bytes_per_call": round(
                (w.rss_after_allowed - w.rss_before) * 1024 / max(1, args.calls)
            ),
            "audit_entries": fin.get("audit_entries"),
        }
    samples_path = run_dir / "samples.json"
    samples_path.write_text(json.dumps(all_samples))
    ratios: dict[str, Any] = {}
    for pair, (pro, agt) in PAIRS.items():
        a, b = configs[pro], configs[agt]
        entry: dict[str, Any] = {}
        for case in CASES:
            if case not in a or case not in b:
                continue
            for k in ("p50_us", "p99_us", "max_us", "calls_per_s"):
                entry[f"{case}_{k.removesuffix('_us')}"] = (
                    round(a[case][k] / b[case][k], 2) if b[case][k] else None
                )
        entry["rss_growth"] = (
            round(a["rss_growth_mb"] / b["rss_growth_mb"], 2) if b["rss_growth_mb"] > 0 else None
        )
        ratios[pair] = entry
    plot = None
    if not args.no_plot:
        args.plot_out.parent.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(
            [
                str(agt_py),
                str(Path(__file__).resolve()),
                "--plot",
                str(samples_path),
                "--plot-out",
                str(args.plot_out),
                "--plot-title",
                f"{args.calls} allowed calls per configuration",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode == 0:
            plot = str(args.plot_out)
        else:
            print(f"plot failed:\n{res.stderr[-2000:]}", file=sys.stderr)
    return {
        "bench": "peer",
        "calls": args.calls,
        "denied_calls": args.denied,
        "approval_calls": args.approval,
        "rounds": args.rounds,
        "machine": machine_info(agt_py),
        "configs": configs,
        "ratios": ratios,
        "rego_floors_us": floors,
        "plot": plot,
        "samples": str(samples_path),
    }


def print_table(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"peer: Proctor @governed vs AGT govern(), no-op refund(amount, customer); "
        f"{r['calls']} allowed, {r['denied_calls']} denied, {r['approval_calls']} approval calls "
        f"per configuration, {r['rounds']} interleaved rounds"
    )
    print(
        f"machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, disk {m['tmp_disk']}; "
        f"AGT {m['agt_version']}, Proctor {m['proctor_rev']}"
    )
    w = max(len(c["label"]) for c in r["configs"].values()) + 2
    head = f"{'configuration':<{w}}{'case':<10}{'p50 µs':>9}{'p99 µs':>9}"
    head += f"{'max µs':>10}{'calls/s':>9}{'RSS MB':>8}"
    print(head)
    print("-" * len(head))
    for c in r["configs"].values():
        for case in CASES:
            if case not in c:
                continue
            s = c[case]
            rss = f"{c['rss_growth_mb']:>8}" if case == "allowed" else f"{'':>8}"
            print(
                f"{c['label'] if case == 'allowed' else '':<{w}}{case:<10}{s['p50_us']:>9}"
                f"{s['p99_us']:>9}{s['max_us']:>10}{s['calls_per_s']:>9}{rss}"
            )
    print()
    print("ratio Proctor / AGT (latency > 1 or calls/s < 1: Proctor is slower)")
    head = f"{'pair':<24}{'case':<10}{'p50':>7}{'p99':>7}{'max':>7}{'calls/s':>9}{'RSS':>7}"
    print(head)
    print("-" * len(head))
    for pair, e in r["ratios"].items():
        for case in CASES:
            if f"{case}_p50" not in e:
                continue
            rss = f"{e['rss_growth']!s:>7}" if case == "allowed" else f"{'':>7}"
            print(
                f"{pair if case == 'allowed' else '':<24}{case:<10}{e[f'{case}_p50']!s:>7}"
                f"{e[f'{case}_p99']!s:>7}{e[f'{case}_max']!s:>7}{e[f'{case}_calls_per_s']!s:>9}{rss}"
            )
    fl, agt = r.get("rego_floors_us"), r["configs"].get("agt-default", {}).get("allowed")
    if fl and agt:
        print(
            f"\nRego alone, p50 in the (c) process: the refund decision {fl['decision']} µs, "
            f"regopy's empty query {fl['empty query']} µs; AGT default's whole allowed call "
            f"{agt['p50_us']} µs"
        )
    if r.get("plot"):
        print(f"\nplot: {r['plot']}")


# ---------------------------------------------------------------------------- plot


def plot(samples_path: Path, out: Path, title: str) -> None:
    """Latency distributions (empirical CDFs, log scale) per case; run in the AGT venv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(samples_path.read_text())
    colours = {
        "proctor-a": "#1f4e9c",
        "proctor-b": "#3d85c6",
        "proctor-c": "#8fbde8",
        "agt-hmac-fsync": "#b45309",
        "agt-hmac-file": "#e69138",
        "agt-default": "#f6c26b",
        "agt-audit-off": "#999999",
    }
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2), sharey=True)
    for ax, case in zip(axes, CASES, strict=True):
        for name, d in data.items():
            v = sorted(d.get(case) or [])
            if not v:
                continue
            n = len(v)
            step = max(1, n // 4000)
            xs = [*v[::step], v[-1]]
            ys = [i / n for i in range(0, n, step)] + [1.0]
            ax.plot(
                xs,
                ys,
                label=d["label"],
                color=colours.get(name),
                linestyle="-" if name.startswith("proctor") else "--",
                linewidth=1.6,
            )
        ax.set_xscale("log")
        ax.set_title(f"{case} calls")
        ax.set_xlabel("latency per call (µs, log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.axhline(0.5, color="black", linewidth=0.5, alpha=0.4)
        ax.axhline(0.99, color="black", linewidth=0.5, alpha=0.4)
    axes[0].set_ylabel("fraction of calls at or below (CDF)")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Proctor @governed (solid) vs AGT govern() (dashed): {title}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


# ---------------------------------------------------------------------------- profile


def profile(mode: str, calls: int, top: int = 15) -> None:
    """pyinstrument over ``calls`` allowed calls of Proctor mode a or c, in this process."""
    from pyinstrument import Profiler

    name = {"a": "proctor-a", "b": "proctor-b", "c": "proctor-c"}[mode]
    with tempfile.TemporaryDirectory(prefix="proctor-peer-prof-") as tmp:
        sysm = build_proctor(name, Path(tmp))
        allowed = sysm["cases"]["allowed"]
        for _ in range(300):
            allowed()
        prof = Profiler(interval=0.0001)
        t0 = time.perf_counter()
        prof.start()
        for _ in range(calls):
            allowed()
        prof.stop()
        wall = time.perf_counter() - t0
        sysm["proctor"].close()
    root = prof.last_session.root_frame()
    self_t: dict[str, float] = {}
    cum_t: dict[str, float] = {}

    def key(f: Any) -> str:
        return f"{f.function}  {f.file_path_short}:{f.line_no}"

    def walk(f: Any, stack: set[str]) -> None:
        k = key(f)
        children = [c for c in f.children if not c.is_synthetic]
        self_t[k] = self_t.get(k, 0.0) + f.time - sum(c.time for c in children)
        if k not in stack:
            cum_t[k] = cum_t.get(k, 0.0) + f.time
        for c in children:
            walk(c, stack | {k})

    walk(root, set())
    total = root.time
    print(
        f"profile {sysm['label']}: {calls} allowed calls, "
        f"{wall / calls * 1e6:.0f} µs/call (profiled)"
    )
    # The cumulative list leaves out the pass-through chain (bench loop → governed →
    # Governor.call → Proctor.submit → Gateway._submit), which holds ~100 % of the time.
    chain = {k for k, v in cum_t.items() if v >= 0.97 * total}
    cum_t = {k: v for k, v in cum_t.items() if k not in chain}
    for title, table in (("self time", self_t), ("cumulative (below Gateway._submit)", cum_t)):
        print(f"\ntop {top} by {title} (share of {total:.2f} s sampled)")
        for k, v in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {100 * v / total:5.1f}%  {v / calls * 1e6:7.1f} µs/call  {k}")


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000, help="allowed calls per configuration")
    ap.add_argument("--denied", type=int, default=2000, help="denied calls per configuration")
    ap.add_argument(
        "--approval", type=int, default=2000, help="approval round trips per configuration"
    )
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds per case")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 600/100/100 calls, 2 rounds")
    ap.add_argument(
        "--venv", type=Path, default=Path(os.environ.get("PROCTOR_BENCH_AGT_VENV", DEFAULT_VENV))
    )
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--plot-out", type=Path, default=ROOT / "docs" / "img" / "peer-latency.png")
    ap.add_argument("--plot-title", default="")
    ap.add_argument("--profile", choices=["a", "b", "c"], help="pyinstrument a Proctor mode")
    ap.add_argument("--profile-calls", type=int, default=3000)
    # internal: worker and plot modes
    ap.add_argument("--worker", choices=PROCTOR_CONFIGS, help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--allowed", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--plot", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        proctor_worker(args)
        return
    if args.plot:
        plot(args.plot, args.plot_out, args.plot_title)
        return
    if args.profile:
        profile(args.profile, args.profile_calls)
        return
    if args.quick:
        args.calls, args.denied, args.approval, args.rounds = 600, 100, 100, 2
    r = drive(args)
    print_table(r)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
