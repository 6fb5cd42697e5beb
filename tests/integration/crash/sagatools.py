"""The instance and actions of ``test_saga_takeover.py``, shared by its child process and itself.

Run as a script (``sagatools.py URL CALLS SIGNAL ACTIONS``), it is the child: it submits the
plan ``p1`` of ``ACTIONS``, and its first compensation call sends itself ``SIGNAL``
(``SIGSTOP``, ``SIGKILL``) right after its side effect. Every real call is appended to
``CALLS`` with one ``os.write`` on an ``O_APPEND`` descriptor, which survives a SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from proctor import Proctor
from proctor.app.gateway import GatewayOptions
from proctor.core.catalog import Catalog
from proctor.core.ports import Clock, ToolCall
from proctor.testing import FrozenClock, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


class Everything:
    """A policy engine that executes every step (a fake, not a mock)."""

    version = "sha256:everything-1"

    def evaluate(self, input: dict[str, Any]) -> dict[str, Any]:
        steps = {s["id"]: {"outcome": "execute"} for s in input["steps"]}
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


def open_instance(url: str, calls: str, signal_name: str, clock: Clock) -> Proctor:
    """An instance on ``url`` with ``t.once``, ``t.idem`` (both undone by one handler), ``t.fail``.

    ``signal_name`` (empty: none) is what the first compensation call of all the processes
    sharing ``calls`` sends its own process (a marker file beside ``calls`` makes it once).
    """

    def log(kind: str, call: ToolCall) -> None:
        fd = os.open(calls, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{kind} {call.idempotency_key} {os.getpid()}\n".encode())
        finally:
            os.close(fd)

    def book(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        log("book", call)
        return {"booked": True}

    def undo(params: dict[str, Any], call: ToolCall) -> None:
        log("undo", call)  # the side effect happened
        if signal_name:
            try:
                fd = os.open(f"{calls}.signalled", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                return
            os.close(fd)
            os.kill(os.getpid(), getattr(signal, signal_name))

    def fail(params: dict[str, Any], call: ToolCall) -> None:
        log("fail", call)
        raise ValueError("this step always fails")

    p = Proctor.in_memory(
        catalog=Catalog(),
        policy=Everything(),
        clock=clock,
        options=GatewayOptions(),
        database_url=url,
        audit_signatures=False,
    )
    kw: dict[str, Any] = {"category": "general", "baselines": LOW, "reversible": True}
    p.action("t.once", compensate=undo, **kw)(book)
    p.action("t.idem", idempotent=True, compensate=undo, **kw)(book)
    p.action("t.fail", category="general", baselines=LOW)(fail)
    return p


def main(url: str, calls: str, signal_name: str, actions: str) -> None:
    """Submit ``p1`` (its status and this process's owner id on stdout)."""
    p = open_instance(url, calls, signal_name, FrozenClock())
    plan = make_plan([(a, {}) for a in actions.split(",")], plan_id="p1")
    status = p.submit(plan).status.value
    sys.stdout.write(f"{status} {p.gateway.executor.owner}\n")
    p.close()


if __name__ == "__main__":
    main(*sys.argv[1:5])
