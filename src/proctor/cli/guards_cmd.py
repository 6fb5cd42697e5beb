"""``proctor kill``, ``unkill``, ``guards``, ``whitelist``, ``autonomy``, ``review``, ``complain``.

They act on the instance of ``--home``; over HTTP the same operations are under
``/v1/guards``, ``/v1/autonomy`` and ``/v1/reviews`` (docs/guards.md).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from proctor.cli.commands import As, Home, Json, Verbose, _open
from proctor.cli.render import console, print_json

__all__ = ["autonomy_app", "complain", "guards", "kill", "review_app", "unkill", "whitelist"]

autonomy_app: typer.Typer = typer.Typer(
    help="Progressive autonomy: per user and action, propose → confirm → auto.",
    no_args_is_help=True,
)
review_app: typer.Typer = typer.Typer(
    help="Post-hoc review of sampled auto-executed plans.", no_args_is_help=True
)

Agent = Annotated[str | None, typer.Option("--agent", help="An agent's kill switch.")]
Action = Annotated[str | None, typer.Option("--action", help="An action's kill switch.")]
Global = Annotated[bool, typer.Option("--global", help="The global kill switch.")]


def _switch(agent: str | None, action: str | None, everything: bool) -> tuple[str, str | None]:
    given = [x for x in (agent, action) if x] + (["global"] if everything else [])
    if len(given) != 1:
        raise typer.BadParameter(
            "say exactly one of --global, --agent NAME or --action NAME", param_hint="'--global'"
        )
    if everything:
        return "global", None
    return ("agent", agent) if agent else ("action", action)


def kill(
    principal: As,
    agent: Agent = None,
    action: Action = None,
    everything: Global = False,
    reason: Annotated[str, typer.Option("--reason", "-m", help="Why (recorded).")] = "",
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Stop agentic work at once: globally, for an agent, or for an action.

    Plans it covers are denied at submission, and approved or confirmed plans do not start,
    until `proctor unkill` releases it. The switch and its release are audited.
    """
    scope, key = _switch(agent, action, everything)
    with _open(home) as p:
        switch = p.kill(scope, key, by=principal, reason=reason)
    if as_json:
        print_json({"switch": switch, "engaged": True})
    else:
        console.print(f"Kill switch [bold]{switch}[/] engaged.")
    return 0


def unkill(
    principal: As,
    agent: Agent = None,
    action: Action = None,
    everything: Global = False,
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Release a kill switch. Exit 1 if it was not engaged."""
    scope, key = _switch(agent, action, everything)
    with _open(home) as p:
        released = p.unkill(scope, key, by=principal)
    if as_json:
        print_json({"released": released})
    else:
        console.print("Released." if released else "That kill switch was not engaged.")
    return 0 if released else 1


def guards(home: Home = None, as_json: Json = False, verbose: Verbose = False) -> int:
    """Show kill switches, circuit breakers, whitelists, budgets and autonomy settings."""
    with _open(home) as p:
        st = p.guards.status()
    if as_json:
        print_json(st)
        return 0
    t = Table(title="Guards", show_lines=False)
    for col in ("kind", "key", "state"):
        t.add_column(col)
    for key, v in st["kill"].items():
        t.add_row("kill switch", key, f"engaged by {v.get('by')}: {v.get('reason') or '-'}")
    for key, v in st["breakers"].items():
        t.add_row("breaker", key, f"{v['state']} {v.get('reason') or ''}".strip())
    for key, v in st["whitelists"].items():
        t.add_row("whitelist", key, ", ".join(v.get("actions", ())))
    for b in st["budgets"]:
        used = "per " + b["scope"] if b["used"] is None else f"{b['used']} of {b['limit']}"
        t.add_row("budget", f"{b['scope']}:{b['key']} ({b['period']})", used)
    for r in st["rate_limits"]:
        t.add_row("rate limit", f"{r['scope']}:{r['key']}", f"{r['limit']} / {r['per_seconds']} s")
    for key, v in st["autonomy"].items():
        below = f" below {v['below']}" if v.get("below") is not None else ""
        t.add_row("autonomy", key, f"{v['level']}{below}")
    for key, v in st["promotions"].items():
        t.add_row("promotion", key, f"{v['from']} → {v['to']} ({v['status']})")
    console.print(t if t.row_count else "No guard is engaged and none is configured.")
    return 0


def whitelist(
    agent: Annotated[str, typer.Argument(help="The agent.")],
    actions: Annotated[
        list[str] | None, typer.Argument(help="The actions it may use (all others: denied).")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the agent's whitelist.")] = False,
    principal: As = "admin",
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Limit an agent to a list of actions (or --clear the limit)."""
    if not clear and not actions:
        raise typer.BadParameter("name the actions, or pass --clear", param_hint="'ACTIONS'")
    with _open(home) as p:
        p.guards.set_whitelist(agent, None if clear else actions, by=principal)
    if as_json:
        print_json({"agent": agent, "actions": None if clear else actions})
    else:
        console.print(f"{agent}: " + ("no whitelist" if clear else ", ".join(actions or ())))
    return 0


@autonomy_app.command("set")
def autonomy_set(
    user: Annotated[str, typer.Argument(help="The user.")],
    action: Annotated[str, typer.Argument(help="The action.")],
    level: Annotated[str, typer.Argument(help="propose, confirm or auto.")],
    below: Annotated[
        int | None, typer.Option("--below", help="auto only below this amount (minor units).")
    ] = None,
    principal: As = "admin",
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Set a user's autonomy level for an action."""
    with _open(home) as p:
        p.guards.set_autonomy(user, action, level, below=below, by=principal)
    doc = {"user": user, "action": action, "level": level, "below": below}
    print_json(doc) if as_json else console.print(f"{user} / {action}: {level}")
    return 0


@autonomy_app.command("show")
def autonomy_show(home: Home = None, as_json: Json = False, verbose: Verbose = False) -> int:
    """Show autonomy levels and promotion suggestions."""
    with _open(home) as p:
        st = p.guards.status()
    doc = {"autonomy": st["autonomy"], "promotions": st["promotions"]}
    if as_json:
        print_json(doc)
        return 0
    t = Table(title="Autonomy")
    for col in ("user", "action", "level", "suggestion"):
        t.add_column(col)
    for key in sorted({*st["autonomy"], *st["promotions"]}):
        user, _, action = key.partition("|")
        a: dict[str, Any] = st["autonomy"].get(key, {})
        pr: dict[str, Any] = st["promotions"].get(key, {})
        level = a.get("level", "-") + (f" below {a['below']}" if a.get("below") is not None else "")
        sug = f"{pr['from']} → {pr['to']} ({pr['status']})" if pr else ""
        t.add_row(user, action, level, sug)
    console.print(t)
    return 0


def _answer(user: str, action: str, accept: bool, home: Any, as_json: bool) -> int:
    with _open(home) as p:
        level = p.guards.answer_promotion(user, action, accept=accept)
    doc = {"user": user, "action": action, "level": level}
    print_json(doc) if as_json else console.print(f"{user} / {action}: {level}")
    return 0


@autonomy_app.command("accept")
def autonomy_accept(
    user: str, action: str, home: Home = None, as_json: Json = False, verbose: Verbose = False
) -> int:
    """Opt in to the promotion Proctor suggested (the level goes up one)."""
    return _answer(user, action, True, home, as_json)


@autonomy_app.command("decline")
def autonomy_decline(
    user: str, action: str, home: Home = None, as_json: Json = False, verbose: Verbose = False
) -> int:
    """Opt out of the promotion Proctor suggested (the level stays)."""
    return _answer(user, action, False, home, as_json)


@review_app.command("list")
def review_list(home: Home = None, as_json: Json = False, verbose: Verbose = False) -> int:
    """Sampled auto-executed plans waiting for a reviewer, newest first."""
    from proctor.cli.render import plan_json

    with _open(home) as p:
        queue = p.guards.review_queue()
    if as_json:
        print_json({"plans": [plan_json(r) for r in queue]})
        return 0
    t = Table(title=f"{len(queue)} plan(s) to review")
    for col in ("plan", "created", "agent", "for", "steps"):
        t.add_column(col)
    for r in queue:
        t.add_row(
            r.plan_id,
            r.created_at.isoformat(timespec="seconds"),
            r.agent_id,
            r.on_behalf_of,
            ", ".join(s.action for s in r.steps),
        )
    console.print(t)
    return 0


@review_app.command("mark")
def review_mark(
    plan_id: Annotated[str, typer.Argument(help="The sampled plan.")],
    verdict: Annotated[str, typer.Argument(help="fine or wrong.")],
    principal: As,
    note: Annotated[str, typer.Option("--note", "-m", help="What you found.")] = "",
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Mark a sampled plan fine or wrong (wrong counts as a false action in the KPIs)."""
    with _open(home) as p:
        p.guards.mark_review(plan_id, verdict, reviewer=principal, note=note)
    doc = {"plan_id": plan_id, "verdict": verdict}
    print_json(doc) if as_json else console.print(f"{plan_id}: {verdict}")
    return 0


def complain(
    plan_id: Annotated[str, typer.Argument(help="The plan that did something wrong.")],
    principal: As,
    reason: Annotated[str, typer.Option("--reason", "-m", help="What was wrong.")],
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """File a complaint about an action (a false action in the KPIs)."""
    with _open(home) as p:
        p.guards.complain(plan_id, by=principal, reason=reason)
    print_json({"plan_id": plan_id, "filed": True}) if as_json else console.print("Filed.")
    return 0
