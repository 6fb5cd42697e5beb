"""The guard commands: ``kill``, ``unkill``, ``breaker``, ``guards``, ``whitelist``, and more.

The others are ``autonomy``, ``review`` and ``complain``.

They act on the instance of ``--home``, or with ``--server`` (``PROCTOR_SERVER``) on a running
``proctor serve`` through the same routes as any HTTP client: ``/v1/guards``,
``/v1/autonomy``, ``/v1/reviews`` and the plan's ``review`` and ``complaints`` (docs/guards.md).
Remotely the token's principal acts, so ``--as`` is ignored there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from proctor.cli.commands import (
    As,
    AsLocal,
    Home,
    Json,
    Server,
    Token,
    Verbose,
    _open,
    _remote,
    _required_locally,
    app,
)
from proctor.cli.render import console, err_console, esc, print_json
from proctor.core.canonical import MAX_SAFE_INT

if TYPE_CHECKING:
    from proctor.cli.remote import Remote

__all__ = [
    "autonomy_app",
    "breaker_app",
    "complain",
    "guards",
    "kill",
    "review_app",
    "unkill",
    "whitelist",
]

autonomy_app: typer.Typer = typer.Typer(
    help="Progressive autonomy: per user and action, propose → confirm → auto.",
    no_args_is_help=True,
)
review_app: typer.Typer = typer.Typer(
    help="Post-hoc review of sampled auto-executed plans.", no_args_is_help=True
)
breaker_app: typer.Typer = typer.Typer(
    help="Circuit breakers: force one open, or reset (close) it. Admins; audited.",
    no_args_is_help=True,
)

Agent = Annotated[str | None, typer.Option("--agent", help="An agent's kill switch.")]
Action = Annotated[str | None, typer.Option("--action", help="An action's kill switch.")]
Global = Annotated[bool, typer.Option("--global", help="The global kill switch.")]


def _send(remote: Remote, method: str, path: str, body: Any = None) -> Any:
    """One request to the server, its errors reported as the other remote commands do."""
    # NOTE(cli): ProctorClient has no guard methods yet; its private request path keeps the
    # auth header, timeouts and error mapping identical to the plan commands.
    from proctor.client import _Call

    with remote._errors():
        return remote._client._send(_Call(method, path, body=body))


@contextmanager
def _target(
    ctx: typer.Context, server: str | None, token: str | None, *, ignored: tuple[str, ...] = ()
) -> Iterator[Remote | None]:
    remote = _remote(ctx, server, token, ignored=ignored)
    if remote is None:
        yield None
        return
    with remote:
        yield remote


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
    ctx: typer.Context,
    principal: AsLocal = None,
    agent: Agent = None,
    action: Action = None,
    everything: Global = False,
    reason: Annotated[str, typer.Option("--reason", "-m", help="Why (recorded).")] = "",
    allow_unknown: Annotated[
        bool,
        typer.Option(
            "--allow-unknown",
            help="Engage a switch on an --action the catalog does not know (one only another "
            "process declares) or an --agent no plan, token or guard has named yet. Without "
            "it an unknown name is refused.",
        ),
    ] = False,
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Stop agentic work at once: globally, for an agent, or for an action.

    Plans it covers are denied at submission, and approved or confirmed plans do not start,
    until `proctor unkill` releases it. The switch and its release are audited. An action
    must be in the catalog or an MCP tool's `mcp.<server>.<tool>`, and an agent known here:
    a plan, an API token or a guard named it (else exit 1, with close matches), unless
    --allow-unknown. Agent names are compared ignoring case. A switch already engaged is
    left as it is, with who engaged it and why (exit 0, and it says so).
    """
    scope, key = _switch(agent, action, everything)
    with _target(ctx, server, token, ignored=("principal",)) as remote:
        if remote is not None:
            body = _kill_body(scope, key, reason) | {"allow_unknown": allow_unknown}
            doc: dict[str, Any] = _send(remote, "POST", "/v1/guards/kill", body)
        else:
            name = _required_locally(principal, "--as")
            with _open(home) as p:
                doc = p.guards.engage(
                    scope, key, by=name, reason=reason, allow_unknown=allow_unknown
                )
    switch, already = str(doc["switch"]), doc.get("already")
    if as_json:
        print_json({"switch": switch, "engaged": True, "already": already})
    elif already:
        console.print(
            f"Kill switch [bold]{esc(switch)}[/] was already engaged"
            + esc(_first(already, "switch", switch))
            + "; left as it is."
        )
    else:
        console.print(f"Kill switch [bold]{esc(switch)}[/] engaged.")
    return 0


def _first(already: dict[str, Any], name: str, key: str) -> str:
    """Who engaged a switch (or forced a breaker) first, when and why, for a message.

    ``(as agent:OPS-BOT)`` when the stored row has another spelling than ``key``.
    """
    stored = already.get(name)
    spelt = f" (as {stored})" if stored and stored != key else ""
    why = already.get("reason") or "no reason given"
    return f"{spelt} by {already.get('by')} at {already.get('at')}: {why}"


def _kill_body(scope: str, key: str | None, reason: str = "") -> dict[str, Any]:
    return {"scope": scope, "key": key, "reason": reason}


def unkill(
    ctx: typer.Context,
    principal: AsLocal = None,
    agent: Agent = None,
    action: Action = None,
    everything: Global = False,
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Release a kill switch. Exit 1 if it was not engaged."""
    scope, key = _switch(agent, action, everything)
    with _target(ctx, server, token, ignored=("principal",)) as remote:
        if remote is not None:
            doc = _send(remote, "POST", "/v1/guards/unkill", _kill_body(scope, key))
            released = bool(doc["released"])
        else:
            name = _required_locally(principal, "--as")
            with _open(home) as p:
                released = p.unkill(scope, key, by=name)
    if as_json:
        print_json({"released": released})
    else:
        console.print("Released." if released else "That kill switch was not engaged.")
    return 0 if released else 1


def _breaker(agent: str | None, action: str | None) -> tuple[str, str]:
    if bool(agent) == bool(action):
        raise typer.BadParameter(
            "say exactly one of --agent NAME or --action NAME", param_hint="'--agent'"
        )
    return ("agent", agent) if agent else ("action", str(action))


BreakerAgent = Annotated[str | None, typer.Option("--agent", help="An agent's breaker.")]
BreakerAction = Annotated[str | None, typer.Option("--action", help="An action's breaker.")]
Reason = Annotated[str, typer.Option("--reason", "-m", help="Why (recorded).")]


@breaker_app.command("open")
def breaker_open(
    ctx: typer.Context,
    principal: AsLocal = None,
    agent: BreakerAgent = None,
    action: BreakerAction = None,
    reason: Reason = "",
    allow_unknown: Annotated[
        bool,
        typer.Option(
            "--allow-unknown",
            help="Force open the breaker of an --action the catalog does not know or an "
            "--agent no plan, token or guard has named yet. Without it an unknown name is "
            "refused.",
        ),
    ] = False,
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Force an agent's or an action's circuit breaker open until `proctor breaker reset`.

    Meanwhile agentic execution it covers needs an approver, and plans their user only
    confirmed wait. Audited (breaker.opened). The action or agent must be known here, as
    for `proctor kill` (else exit 1, with close matches), unless --allow-unknown. A breaker
    already held open is left as it is, with who forced it (exit 0, and it says so).
    """
    scope, key = _breaker(agent, action)
    body = {"scope": scope, "key": key, "reason": reason, "allow_unknown": allow_unknown}
    with _target(ctx, server, token, ignored=("principal",)) as remote:
        if remote is not None:
            doc: dict[str, Any] = _send(remote, "POST", "/v1/guards/breakers/open", body)
        else:
            name = _required_locally(principal, "--as")
            with _open(home) as p:
                doc = p.guards.force_open(
                    scope, key, by=name, reason=reason, allow_unknown=allow_unknown
                )
    breaker, already = str(doc["breaker"]), doc.get("already")
    if as_json:
        print_json({"breaker": breaker, "state": "open", "already": already})
    elif already:
        console.print(
            f"Circuit breaker [bold]{esc(breaker)}[/] was already held open"
            + esc(_first(already, "breaker", breaker))
            + "; left as it is."
        )
    else:
        console.print(f"Circuit breaker [bold]{esc(breaker)}[/] forced open.")
    return 0


@breaker_app.command("reset")
def breaker_reset(
    ctx: typer.Context,
    principal: AsLocal = None,
    agent: BreakerAgent = None,
    action: BreakerAction = None,
    reason: Reason = "",
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Reset (close) an open or half-open circuit breaker. Exit 1 if it was not open."""
    scope, key = _breaker(agent, action)
    body = {"scope": scope, "key": key, "reason": reason}
    with _target(ctx, server, token, ignored=("principal",)) as remote:
        if remote is not None:
            done = bool(_send(remote, "POST", "/v1/guards/breakers/reset", body)["reset"])
        else:
            name = _required_locally(principal, "--as")
            with _open(home) as p:
                done = p.reset_breaker(scope, key, by=name, reason=reason)
    if as_json:
        print_json({"breaker": f"{scope}:{key}", "reset": done})
    else:
        console.print("Closed." if done else "That breaker was not open.")
    return 0 if done else 1


# NOTE(cli): registered here rather than beside the other guard commands at the end of
# commands.py, which this change does not own; moving this line there changes nothing.
app.add_typer(breaker_app, name="breaker")


def guards(
    ctx: typer.Context,
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Show kill switches, circuit breakers, whitelists, budgets, rate limits and autonomy."""
    with _target(ctx, server, token) as remote:
        if remote is not None:
            st: dict[str, Any] = _send(remote, "GET", "/v1/guards")
        else:
            with _open(home) as p:
                st = p.guards.status()
    if as_json:
        print_json(st)
        return 0
    t = Table(title="Guards", show_lines=False)
    for col in ("kind", "key", "state"):
        t.add_column(col)
    # Names, reasons and states come from people, agents and the server: each cell is
    # escaped (esc), never read as Rich markup.
    for key, v in st["kill"].items():
        t.add_row(
            "kill switch", esc(key), esc(f"engaged by {v.get('by')}: {v.get('reason') or '-'}")
        )
    for key, v in st["breakers"].items():
        state = v.get("view", v["state"])
        trials = f" ({v['trials']} trial(s) out)" if state == "half_open" else ""
        held = " (held until reset)" if v.get("forced") else ""
        t.add_row(
            "breaker", esc(key), esc(f"{state}{trials}{held} {v.get('reason') or ''}".strip())
        )
    for key, v in st["whitelists"].items():
        t.add_row("whitelist", esc(key), esc(", ".join(v.get("actions", ()))))
    for b in st["budgets"]:
        used = "per " + b["scope"] if b["used"] is None else f"{b['used']} of {b['limit']}"
        t.add_row("budget", esc(f"{b['scope']}:{b['key']} ({b['period']})"), esc(used))
    for r in st["rate_limits"]:
        used = "" if r.get("used") is None else f"{r['used']} used, "
        t.add_row(
            "rate limit",
            esc(f"{r['scope']}:{r['key']}"),
            esc(f"{used}{r['limit']} / {r['per_seconds']} s"),
        )
    for key, v in st["autonomy"].items():
        below = f" below {v['below']}" if v.get("below") is not None else ""
        t.add_row("autonomy", esc(key), esc(f"{v['level']}{below}"))
    for key, v in st["promotions"].items():
        t.add_row("promotion", esc(key), esc(f"{v['from']} → {v['to']} ({v['status']})"))
    console.print(t if t.row_count else "No guard is engaged and none is configured.")
    if remote is None and (st["budgets"] or st["rate_limits"]):
        # Read from config.toml just now; a server reads it once, when it starts.
        err_console.print(
            "Budgets and rate limits as config.toml says now; a `proctor serve` started"
            " before its last edit still applies the earlier ones until restarted (see"
            " them with `proctor guards --server URL`)."
        )
    return 0


def whitelist(
    ctx: typer.Context,
    agent: Annotated[str, typer.Argument(help="The agent.")],
    actions: Annotated[
        list[str] | None, typer.Argument(help="The actions it may use (all others: denied).")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the agent's whitelist.")] = False,
    principal: As = "admin",
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Limit an agent to a list of actions (or --clear the limit)."""
    if not clear and not actions:
        raise typer.BadParameter("name the actions, or pass --clear", param_hint="'ACTIONS'")
    wanted = None if clear else list(actions or ())
    with _target(ctx, server, token, ignored=("principal",)) as remote:
        if remote is not None:
            path = "/v1/guards/whitelists/" + quote(agent, safe="")
            _send(remote, "PUT", path, {"actions": wanted})
        else:
            with _open(home) as p:
                p.guards.set_whitelist(agent, wanted, by=principal)
    if as_json:
        print_json({"agent": agent, "actions": wanted})
    else:
        console.print(esc(f"{agent}: " + ("no whitelist" if wanted is None else ", ".join(wanted))))
    return 0


@autonomy_app.command("set")
def autonomy_set(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="The user.")],
    action: Annotated[str, typer.Argument(help="The action.")],
    level: Annotated[str, typer.Argument(help="propose, confirm or auto.")],
    below: Annotated[
        int | None,
        typer.Option(
            "--below",
            min=0,
            max=MAX_SAFE_INT,
            help="auto only below this amount (minor units).",
        ),
    ] = None,
    principal: As = "admin",
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Set a user's autonomy level for an action (remotely: yours, or anyone's as an admin)."""
    with _target(ctx, server, token, ignored=("principal",)) as remote:
        if remote is not None:
            body = {"user": user, "action": action, "level": level, "below": below}
            _send(remote, "PUT", "/v1/autonomy", body)
        else:
            with _open(home) as p:
                p.guards.set_autonomy(user, action, level, below=below, by=principal)
    doc = {"user": user, "action": action, "level": level, "below": below}
    print_json(doc) if as_json else console.print(esc(f"{user} / {action}: {level}"))
    return 0


@autonomy_app.command("show")
def autonomy_show(
    ctx: typer.Context,
    user: Annotated[
        str | None, typer.Argument(help="Only this user's (locally; remotely: the token's).")
    ] = None,
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Show autonomy levels and the promotions Proctor suggests."""
    with _target(ctx, server, token) as remote:
        if remote is not None:
            doc: dict[str, Any] = _send(remote, "GET", "/v1/autonomy")
        else:
            with _open(home) as p:
                st = p.guards.status()
                doc = {"autonomy": st["autonomy"], "promotions": st["promotions"]}
                if user is not None:
                    doc = {
                        kind: {k: v for k, v in d.items() if k.partition("|")[0] == user}
                        for kind, d in doc.items()
                    }
                    doc["suggestions"] = p.guards.suggestions(user)
    if as_json:
        print_json(doc)
        return 0
    t = Table(title="Autonomy")
    for col in ("user", "action", "level", "suggestion"):
        t.add_column(col)
    for key in sorted({*doc["autonomy"], *doc["promotions"]}):
        who, _, action = key.partition("|")
        a: dict[str, Any] = doc["autonomy"].get(key, {})
        pr: dict[str, Any] = doc["promotions"].get(key, {})
        level = a.get("level", "-") + (f" below {a['below']}" if a.get("below") is not None else "")
        sug = f"{pr['from']} → {pr['to']} ({pr['status']})" if pr else ""
        t.add_row(esc(who), esc(action), esc(level), esc(sug))
    console.print(t)
    return 0


def _answer(
    ctx: typer.Context,
    user: str,
    action: str,
    accept: bool,
    home: Any,
    as_json: bool,
    server: str | None,
    token: str | None,
) -> int:
    with _target(ctx, server, token) as remote:
        if remote is not None:
            body = {"action": action, "accept": accept}
            level = str(_send(remote, "POST", "/v1/autonomy/promotions", body)["level"])
        else:
            with _open(home) as p:
                level = p.guards.answer_promotion(user, action, accept=accept)
    doc = {"user": user, "action": action, "level": level}
    print_json(doc) if as_json else console.print(esc(f"{user} / {action}: {level}"))
    return 0


User = Annotated[str, typer.Argument(help="The user (remotely, the token's user answers).")]
ActionArg = Annotated[str, typer.Argument(help="The action.")]


@autonomy_app.command("accept")
@autonomy_app.command("accept-promotion")
def autonomy_accept(
    ctx: typer.Context,
    user: User,
    action: ActionArg,
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Opt in to the promotion Proctor suggested (the level goes up one)."""
    return _answer(ctx, user, action, True, home, as_json, server, token)


@autonomy_app.command("decline")
@autonomy_app.command("decline-promotion")
def autonomy_decline(
    ctx: typer.Context,
    user: User,
    action: ActionArg,
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Opt out of the promotion Proctor suggested (the level stays; it is not asked again)."""
    return _answer(ctx, user, action, False, home, as_json, server, token)


@review_app.command("list")
def review_list(
    ctx: typer.Context,
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Sampled auto-executed plans waiting for a reviewer, newest first."""
    from proctor.cli.render import plan_json

    with _target(ctx, server, token) as remote:
        if remote is not None:
            plans: list[dict[str, Any]] = _send(remote, "GET", "/v1/reviews")["plans"]
        else:
            with _open(home) as p:
                plans = [plan_json(r) for r in p.guards.review_queue()]
    if as_json:
        print_json({"plans": plans})
        return 0
    t = Table(title=f"{len(plans)} plan(s) to review")
    for col in ("plan", "created", "agent", "for", "steps"):
        t.add_column(col)
    for doc in plans:
        t.add_row(
            esc(doc["plan_id"]),
            esc(doc["created_at"][:19]),
            esc(doc["agent_id"]),
            esc(doc["on_behalf_of"]),
            esc(", ".join(s["action"] for s in doc["steps"])),
        )
    console.print(t)
    return 0


def _plan_path(plan_id: str, tail: str) -> str:
    return "/v1/plans/" + quote(plan_id, safe="") + tail


@review_app.command("mark")
def review_mark(
    ctx: typer.Context,
    plan_id: Annotated[str, typer.Argument(help="The sampled plan.")],
    verdict: Annotated[str, typer.Argument(help="fine or wrong.")],
    principal: AsLocal = None,
    note: Annotated[str, typer.Option("--note", "-m", help="What you found.")] = "",
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Mark a sampled plan fine or wrong (wrong counts as a false action in the KPIs)."""
    with _target(ctx, server, token, ignored=("principal",)) as remote:
        if remote is not None:
            body = {"verdict": verdict, "note": note}
            _send(remote, "POST", _plan_path(plan_id, "/review"), body)
        else:
            name = _required_locally(principal, "--as")
            with _open(home) as p:
                p.guards.mark_review(plan_id, verdict, reviewer=name, note=note)
    doc = {"plan_id": plan_id, "verdict": verdict}
    print_json(doc) if as_json else console.print(esc(f"{plan_id}: {verdict}"))
    return 0


def complain(
    ctx: typer.Context,
    plan_id: Annotated[str, typer.Argument(help="The plan that did something wrong.")],
    reason: Annotated[str, typer.Option("--reason", "-m", help="What was wrong.")],
    principal: AsLocal = None,
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """File a complaint about an action (a false action in the KPIs)."""
    with _target(ctx, server, token, ignored=("principal",)) as remote:
        if remote is not None:
            _send(remote, "POST", _plan_path(plan_id, "/complaints"), {"reason": reason})
        else:
            name = _required_locally(principal, "--as")
            with _open(home) as p:
                p.guards.complain(plan_id, by=name, reason=reason)
    print_json({"plan_id": plan_id, "filed": True}) if as_json else console.print("Filed.")
    return 0
