"""``proctor worker`` and ``proctor resolve``: durable execution from the command line."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Annotated

import typer

from proctor.cli.commands import (
    AsLocal,
    Comment,
    Home,
    Json,
    Server,
    Token,
    Verbose,
    _emit,
    _emit_doc,
    _open,
    _remote,
    _required_locally,
)
from proctor.cli.render import console, esc, print_json

__all__ = ["resolve", "worker"]


def worker(
    home: Home = None,
    interval: Annotated[
        float, typer.Option("--interval", min=0.05, help="Seconds between passes.")
    ] = 1.0,
    once: Annotated[
        bool, typer.Option("--once", help="Run one pass, wait for the plans it resumed, exit.")
    ] = False,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Run the worker alone: fire due timers and resume plans whose worker died.

    `proctor serve` runs the same worker; run this one for an instance without the HTTP
    service, or to drain the interrupted plans of a home once (`--once`). It stops on
    SIGTERM or Ctrl-C after the pass in progress; handlers running finish first.
    """
    from proctor.app.worker import Worker

    with _open(home) as p:
        w = Worker(p.gateway, interval=interval)
        if once:
            done = w.run_once()
            p.gateway.executor.close()  # waits for the resumed plans to finish
            if as_json:
                print_json({"timers_fired": done.timers_fired, "plans_resumed": done.plans_resumed})
            else:
                console.print(
                    f"Fired {done.timers_fired} timer(s); resumed {done.plans_resumed} plan(s)."
                )
            return 0
        stop = threading.Event()

        def note(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if not as_json:
                console.print(
                    f"Worker [bold]{esc(p.gateway.executor.owner)}[/] running; Ctrl-C stops it."
                )
            w.start()
            stop.wait()
            w.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0


def resolve(
    ctx: typer.Context,
    plan_id: Annotated[str, typer.Argument(help="The plan that needs attention.")],
    step_id: Annotated[str, typer.Argument(help="Its step whose outcome is unknown.")],
    succeeded: Annotated[
        bool | None,
        typer.Option(
            "--succeeded/--failed",
            help="What you found: the step took effect (the plan runs on) or it did not "
            "(its completed steps are compensated).",
            show_default=False,
        ),
    ] = None,
    principal: AsLocal = None,
    home: Home = None,
    comment: Comment = "",
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Resolve a step whose outcome is unknown (interrupted or timed out).

    Proctor never re-runs such a step blindly (it is not idempotent, or out of attempts): the
    plan waits in `needs_attention` until an operator checks the real system and says whether
    the step took effect. Exit 0 when the plan ends as asked: `--failed` ends it `failed` or
    `compensated` (exit 0, as `reject` does); exit 1 if it ends otherwise not done (a later
    step failed, or an undo failed).
    """
    if succeeded is None:
        raise typer.BadParameter("say --succeeded or --failed", param_hint="'--succeeded'")
    remote = _remote(ctx, server, token, ignored=("principal",))
    if remote is not None:
        with remote:
            doc = remote.resolve(plan_id, step_id, succeeded=succeeded, comment=comment)
            code = _emit_doc(doc, as_json, remote)
            steps = [str(st["status"]) for st in doc["steps"]]
            return 0 if not succeeded and _stopped_as_asked(doc["status"], steps) else code
    name = _required_locally(principal, "--as")
    with _open(home) as p:
        rec = p.resolve(plan_id, step_id, succeeded=succeeded, principal=name, comment=comment)
        code = _emit(rec, as_json)
        steps = [st.status.value for st in rec.steps]
        return 0 if not succeeded and _stopped_as_asked(rec.status.value, steps) else code


def _stopped_as_asked(status: str, steps: list[str]) -> bool:
    """Whether a plan resolved ``--failed`` ended as asked: stopped, its done steps undone.

    ``failed`` (nothing to undo) or ``compensated``; a plan ``failed`` because an undo failed
    (a ``compensation_failed`` step) is not, and still exits 1.
    """
    return status in ("failed", "compensated") and "compensation_failed" not in steps
