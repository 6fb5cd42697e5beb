"""Hot reload of the policy bundle in a running process, audited, and the contract probes.

The contract probes say what a bundle must satisfy before it replaces the one in force.
A background thread fingerprints the bundle directory every few seconds. When it changes,
the new bundle is compiled and asked the contract probes (``contract_violations``) first, in
a child process (``validate_bundle``: a bundle that crashes the native engine must not take
the server down);
only a bundle that compiles *and* answers the contract replaces the one in force
(``policy.loaded``, with the new and previous versions, in the audit log). One that does not
is refused (``policy.rejected``, with the reason) and the previous policy stays: a typo in a
deploy (a syntax error, a misspelt package that leaves the entrypoint undefined, an unknown
outcome) must not turn enforcement off, nor turn the service into deny-everything. Plans
waiting for a human under the old version expire when approved (the gateway re-checks the
version before running).

``proctor policy check`` runs the same probes, so what the check accepts is what a running
server loads.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import pickle
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proctor.core.catalog import CATEGORIES
from proctor.core.decisions import Decision
from proctor.core.ports import PolicyEngine
from proctor.errors import InvalidPolicyError, ProctorError

if TYPE_CHECKING:
    from proctor.app.gateway import Gateway

__all__ = [
    "CONTRACT_VERSION",
    "PolicyReloader",
    "contract_violations",
    "fingerprint",
    "validate_bundle",
]

log = logging.getLogger("proctor.policy")

CONTRACT_VERSION = 1
"""The policy input/output contract this Proctor speaks (docs/policy.md, "Contract versions").

Within a version only input members and optional output fields with defaults are added; a
change that could break a policy written for it is a new version."""


def fingerprint(directory: Path) -> str:
    """A digest of the bundle's files (names and contents), cheap enough to poll."""
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.suffix in (".rego", ".json"):
            h.update(str(path.relative_to(directory)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def _probes() -> list[dict[str, Any]]:
    """Contract-version-1 inputs that every bundle must answer (docs/policy.md, "Input").

    One single-step plan per category of the taxonomy (no amount, then a very large one),
    and one plan with a step of every category: a decision keyed by the wrong member, a rule
    that covers only some categories, or an undefined entrypoint shows up here rather than
    as fail-closed denials in production. Deny is a valid answer; silence is not.
    """

    def step(i: int, category: str, amount: int) -> dict[str, Any]:
        return {
            "id": f"s{i}",
            "category": category,
            "amount": amount,
            "reversible": False,
            "params": {},
            "action": f"probe.{category}",
        }

    def plan(steps: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "steps": steps,
            "baseline": {"risk": 3, "auditability": 3, "ux": 3, "recovery": 3, "cost": 3},
            "baseline_total": 15,
            "context": {"thresholds": {"hybrid_max": 15}},
            "plan": {"agent_id": "policy-check", "on_behalf_of": "policy-check"},
        }

    probes = [plan([step(1, c, amount)]) for c in CATEGORIES for amount in (0, 10**9)]
    probes.append(plan([step(i + 1, c, 0) for i, c in enumerate(CATEGORIES)]))
    return probes


def contract_violations(engine: PolicyEngine) -> list[str]:
    """What a compiled bundle answers that breaks the output contract, for the probe inputs.

    One line per distinct problem, with the first input that shows it and how many do; an
    empty list when every answer is a well-formed decision for every step.
    """
    found: dict[str, list[str]] = {}
    for probe in _probes():
        steps = probe["steps"]
        ids = [s["id"] for s in steps]
        if len(steps) == 1:
            where = f"a {steps[0]['category']} step of amount {steps[0]['amount']}"
        else:
            where = f"a plan with {len(steps)} steps, one per category"
        try:
            raw = engine.evaluate(probe)
            # NOTE: the gateway's own reader without its fail-closed wrapper, so the author
            # sees the exact violation instead of plans that are silently denied.
            Decision._parse(raw, ids, engine.version)
        except ProctorError as exc:
            found.setdefault(exc.message, []).append(where)
            continue
        except (KeyError, TypeError, ValueError) as exc:
            found.setdefault(f"malformed decision ({exc!r})", []).append(where)
            continue
        if any(i not in raw["steps"] for i in ids):
            found.setdefault("a step has no decision", []).append(where)
    return [
        f"{problem} (for {wheres[0]}"
        + (f", and {len(wheres) - 1} more probe input(s))" if len(wheres) > 1 else ")")
        for problem, wheres in found.items()
    ]


def _validate_in_child(load: Callable[[Path], PolicyEngine], directory: Path, conn: Any) -> None:
    """The child's half of ``validate_bundle``: compile, probe, send the verdict."""
    try:
        engine = load(directory)
        conn.send(("ok", engine.version, contract_violations(engine)))
    except ProctorError as exc:
        conn.send(("error", exc.message, []))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as the reason
        conn.send(("error", f"{type(exc).__name__}: {exc}", []))
    finally:
        conn.close()


def _died(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def validate_bundle(
    load: Callable[[Path], PolicyEngine], directory: Path, *, timeout: float = 120.0
) -> tuple[str, list[str]]:
    """Compile the bundle and ask it the contract probes, in a child process.

    rego-cpp is native code: some bundles crash it (SIGSEGV) instead of failing to compile,
    for example one function defined with different numbers of arguments in two modules of
    one package (regopy 1.5.2). Compiled in a
    child first, such a bundle is reported and refused; compiled in the serving process, it
    would take the server down with it.

    Args:
        load: Compiles a bundle directory (``RegoPolicyEngine.from_directory``); it must be
            picklable (a module-level function or classmethod). When it is not, the check
            runs in this process.
        directory: The bundle.
        timeout: Seconds the child may take.

    Returns:
        The bundle's version and its contract violations (empty when it answers the
        contract).

    Raises:
        InvalidPolicyError: the bundle does not compile, or the engine crashed or hung on it.
    """
    ctx = multiprocessing.get_context("spawn")  # no fork: the parent may hold threads
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_validate_in_child, args=(load, directory, send), name="proctor-policy-check"
    )
    try:
        child.start()
    except (pickle.PicklingError, AttributeError, TypeError):
        log.warning("policy loader %r cannot run in a child process: checking in process", load)
        receive.close()
        engine = load(directory)
        return engine.version, contract_violations(engine)
    finally:
        send.close()
    verdict = None
    try:
        if receive.poll(timeout):
            verdict = receive.recv()
    except EOFError:
        pass  # the child died before answering
    finally:
        receive.close()
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
    if verdict is None:
        why = (
            f"did not finish within {timeout:g} s"
            if child.exitcode is None or child.exitcode == -signal.SIGKILL
            else f"crashed ({_died(child.exitcode)})"
        )
        raise InvalidPolicyError(
            f"the policy engine {why} while compiling the bundle {directory}",
            field="policy",
            hint="A known trigger: one function defined with different numbers of arguments "
            "(in two modules of one package, for example). Check the files one by one.",
        )
    kind, value, problems = verdict
    if kind == "error":
        raise InvalidPolicyError(value, field="policy")
    return value, problems


class PolicyReloader:
    """Swaps the gateway's policy when its bundle changes (see the module docstring)."""

    def __init__(
        self,
        gateway: Gateway,
        directory: Path,
        load: Callable[[Path], PolicyEngine],
        *,
        interval: float = 2.0,
    ) -> None:
        self.gateway = gateway
        self.directory = directory
        self.load = load
        self.interval = interval
        self._seen = fingerprint(directory)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proctor-policy", daemon=True)

    def check(self) -> str | None:
        """Reload if the bundle changed; return the new version, or None."""
        seen = fingerprint(self.directory)
        if seen == self._seen:
            return None
        self._seen = seen
        previous = self.gateway.policy.version if self.gateway.policy is not None else None
        try:
            # In a child first: a bundle that crashes the engine must not crash the server.
            version, problems = validate_bundle(self.load, self.directory)
            if version == previous:
                return None
            if problems:
                self._refuse(
                    f"the bundle {version} breaks the policy contract "
                    f"(version {CONTRACT_VERSION}): " + "; ".join(problems),
                    previous,
                )
                return None
            engine = self.load(self.directory)
        except ProctorError as exc:
            self._refuse(exc.message, previous)
            return None
        if engine.version != version:
            # The bundle changed again between the check and the load: check it next poll.
            self._seen = ""
            return None
        self.gateway.policy = engine
        self.gateway.record(
            "policy.loaded",
            {"version": engine.version, "previous": previous, "bundle": str(self.directory)},
        )
        log.info("policy %s loaded (was %s)", engine.version, previous)
        return engine.version

    def _refuse(self, reason: str, previous: str | None) -> None:
        log.error("policy bundle refused, the previous one stays: %s", reason)
        self.gateway.record(
            "policy.rejected",
            {"reason": reason[:500], "kept": previous, "bundle": str(self.directory)},
        )

    def start(self) -> None:
        """Poll in a daemon thread."""
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # logged; the next poll tries again
                log.exception("policy reload failed")

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
