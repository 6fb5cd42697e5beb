"""The ``proctor`` commands (Typer): the root app, its shared options and the plan commands.

This module holds the root ``app`` with its sub-apps ``audit``, ``totp`` and ``keys``, the
options and helpers the other command modules share (``--home``, ``--json``, ``--server``
and remote mode), and the commands ``init``, ``demo``, the plan lifecycle (``submit``,
``plans``, ``show``, ``confirm``, ``approve``, ``reject``, ``undo``), ``assess`` and
``totp enrol``. The other commands live in sibling modules imported (registered) at the
end: ``audit_cmd`` (``audit`` and ``keys``), ``service``, ``worker_cmd``, ``guards_cmd``,
``db_cmd``, ``observe_cmd``, ``policy_cmd`` and ``mcp_cmd``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from proctor._library import Proctor
from proctor.bootstrap import init_home
from proctor.cli.render import (
    console,
    esc,
    plan_json,
    print_json,
    render_plan,
    render_plan_json,
    render_plans,
    render_plans_json,
    render_scores,
)
from proctor.config import home_from
from proctor.config import load as load_settings
from proctor.core.assessment import CONTROLS, Scores, Thresholds, scores_from_checklist
from proctor.core.lifecycle import PlanRecord, PlanStatus
from proctor.errors import InvalidRequestError

if TYPE_CHECKING:
    from proctor.cli.remote import Remote

app = typer.Typer(
    name="proctor",
    help=(
        "Proctor supervises AI-agent actions: it validates an agent's plan, scores it on five "
        "axes, asks a Rego policy, routes it (execute, confirm, approve, deny), runs it with "
        "undo, and records every step in a signed, verifiable audit log.\n\n"
        "Start with `proctor init`, then `proctor demo` or `proctor submit PLAN.json`.\n\n"
        "Every command takes `--home DIR` (or `PROCTOR_HOME`; default `./.proctor`) and "
        "`--json` for machine output. The plan, audit-reading and `keys list` commands also "
        "work against a running `proctor serve`: `--server URL --token TOKEN` (or "
        "`PROCTOR_SERVER`, `PROCTOR_TOKEN`). Exit codes: 0 success; 1 an error, a failed "
        "check, or a plan that did not do what was asked (denied, rejected, expired, failed, "
        "compensated or needing attention); 2 a usage error."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
audit_app = typer.Typer(help="Verify and read the signed audit log.", no_args_is_help=True)
totp_app = typer.Typer(help="Step-up codes (TOTP) for approvers.", no_args_is_help=True)
keys_app = typer.Typer(help="Signing keys: list, verifier keys, rotate.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(totp_app, name="totp")
app.add_typer(keys_app, name="keys")

Home = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="PROCTOR_HOME",
        help="Instance directory (default ./.proctor).",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
Verbose = Annotated[bool, typer.Option("--verbose", help="Show tracebacks on errors.")]
As = Annotated[str, typer.Option("--as", help="Who you are (principal name).")]
AsLocal = Annotated[
    str | None,
    typer.Option(
        "--as",
        help="Who you are (principal name). Required without --server; with --server the "
        "token's principal acts.",
        show_default=False,
    ),
]
Server = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="PROCTOR_SERVER",
        help="Talk to `proctor serve` at this URL (http://HOST:PORT) instead of opening "
        "--home. --home on the command line beats PROCTOR_SERVER.",
        show_default=False,
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="PROCTOR_TOKEN",
        help="API token for --server (`proctor tokens create`). Prefer PROCTOR_TOKEN: a "
        "command line is visible to other local users.",
        show_default=False,
    ),
]
Comment = Annotated[str, typer.Option("--comment", "-m", help="A comment for the record.")]

_T = TypeVar("_T")

# The statuses in which a plan did not do what was asked, or is not known to have done it:
# `submit`, `confirm`, `approve` and `undo` exit 1 when they leave a plan in one. A
# compensated plan failed (its completed steps were undone); a plan that needs attention
# has a step whose effect is unknown until a human resolves it.
_NOT_DONE = frozenset(
    {
        PlanStatus.DENIED,
        PlanStatus.REJECTED,
        PlanStatus.FAILED,
        PlanStatus.COMPENSATED,
        PlanStatus.NEEDS_ATTENTION,
        PlanStatus.EXPIRED,
    }
)


def _open(home: Path | None) -> Proctor:
    return Proctor.open(home_from(home))


def _read_json_or_toml(path: Path, what: str) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise InvalidRequestError(f"{what} file {path} does not exist", field=str(path)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"cannot read {path}: {exc}", field=str(path)) from exc
    try:
        if path.suffix == ".toml":
            try:
                return tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise InvalidRequestError(
                    f"{path} is not valid TOML: {exc}", field=str(path)
                ) from exc
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(
                f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                field=str(path),
            ) from exc
    except ValueError as exc:
        # Python refuses to convert integers longer than this many digits (a CPU-exhaustion
        # guard, CVE-2020-10735); no amount is that long.
        raise InvalidRequestError(
            f"{path} has an integer longer than {sys.get_int_max_str_digits()} digits",
            field=str(path),
            hint="Amounts are integers in minor units, at most 9007199254740991.",
        ) from exc


def _status_exit(rec: PlanRecord) -> int:
    return 1 if rec.status in _NOT_DONE else 0


def _emit(rec: PlanRecord, as_json: bool, p: Proctor | None = None, *, events: bool = False) -> int:
    evs = p.events(plan_id=rec.plan_id) if (p is not None and events) else None
    if as_json:
        print_json(plan_json(rec, events=evs))
    else:
        render_plan(rec, events=evs)
    return _status_exit(rec)


# --------------------------------------------------------------------------- remote mode


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the option ``name`` was given on the command line (not by env or default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _remote(
    ctx: typer.Context, server: str | None, token: str | None, *, ignored: tuple[str, ...] = ()
) -> Remote | None:
    """Return the server to talk to, or None to open the local instance.

    ``--server`` (or ``PROCTOR_SERVER``) selects remote mode, except that ``--home`` on the
    command line beats ``PROCTOR_SERVER``; ``--home`` and ``--server`` together are a usage
    error. ``ignored`` names the parameters with no remote meaning (``--as``, ``--role``: the
    token says who acts): given on the command line, each draws a warning.
    """
    if not server:
        if token and _given(ctx, "token"):
            raise typer.BadParameter("needs --server (or PROCTOR_SERVER)", param_hint="'--token'")
        return None
    if _given(ctx, "home"):
        if _given(ctx, "server"):
            raise typer.BadParameter(
                "give --home (a local instance) or --server (a remote one), not both",
                param_hint="'--server'",
            )
        return None
    if not server.startswith(("http://", "https://")):
        raise typer.BadParameter(
            f"{server!r} is not an http:// or https:// URL", param_hint="'--server'"
        )
    for name in ignored:
        if _given(ctx, name):
            flag = {"principal": "--as"}.get(name, f"--{name}")
            print(
                f"warning: {flag} is ignored with --server: the server takes the principal "
                "and its approver groups from the token",
                file=sys.stderr,
            )
    import httpx

    from proctor.cli.remote import Remote

    try:
        return Remote(server, token)
    except httpx.InvalidURL as exc:  # http://[::1 and the like
        raise typer.BadParameter(
            f"{server!r} is not a valid URL: {exc}", param_hint="'--server'"
        ) from None


def _local_only(remote: Remote | None, flag: str, why: str) -> None:
    """Refuse a local-only option in remote mode (a usage error)."""
    if remote is not None:
        remote.close()
        raise typer.BadParameter(f"not available with --server: {why}", param_hint=f"'{flag}'")


def _required_locally(value: _T | None, flag: str) -> _T:
    """Return a value that only remote mode can do without (a usage error when missing)."""
    if value is None or value == []:
        raise typer.BadParameter("required without --server", param_hint=f"'{flag}'")
    return value


def _emit_doc(
    doc: dict[str, Any], as_json: bool, remote: Remote, *, intent: str | None = None
) -> int:
    """Print a plan JSON from the server as a local record is printed; exit as ``_emit``.

    The plan JSON has no intent: ``submit`` passes the manifest's.
    """
    if as_json:
        print_json(doc)
    else:
        render_plan_json(doc, intent=intent, server=remote.url)
    return 1 if doc["status"] in {s.value for s in _NOT_DONE} else 0


# --------------------------------------------------------------------------- init / demo


@app.command()
def init(home: Home = None, as_json: Json = False, verbose: Verbose = False) -> int:
    """Create an instance: config, signing key, database, starter catalog and policy.

    Creates config.toml, the signing key (mode 0600), the SQLite database, a starter catalog
    and the default Rego policy. Running it again changes nothing and says so.
    """
    path = home_from(home)
    report = init_home(path)
    if as_json:
        print_json({"home": str(path), "created": report.created, "existing": report.existing})
        return 0
    if report.created:
        console.print(f"[green]Created[/green] {esc(', '.join(report.created))} in {esc(path)}")
    if report.existing and not report.created:
        console.print(f"Nothing to do: the instance at {esc(path)} already exists (unchanged).")
    elif report.existing:
        console.print(f"Kept existing: {esc(', '.join(report.existing))}")
    console.print("Next: proctor demo, or proctor submit PLAN.json")
    return 0


@app.command()
def demo(
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help="Keep the demo instance in this new directory (default: a temporary one).",
        ),
    ] = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Run the six scenarios of the decision framework against a throwaway instance.

    The scenarios are travel, subscription, restaurant, devops, procurement and hr. For each
    it prints the scores, the decision and its reasons, plays the human side (confirm,
    approve, undo), then verifies the audit log.
    """
    from proctor.demo.scenarios import run_all

    with tempfile.TemporaryDirectory(prefix="proctor-demo-") as tmp:
        target = home if home is not None else Path(tmp) / "instance"
        if home is not None and home.exists() and not home.is_dir():
            raise InvalidRequestError(
                f"{home} is not a directory; the demo needs a new directory",
                field="home",
                hint="Give --home a path that does not exist yet, or an empty directory.",
            )
        if home is not None and home.exists() and any(home.iterdir()):
            raise InvalidRequestError(
                f"{home} is not empty; the demo needs a new directory", field="home"
            )
        init_home(target, instance_id="proctor-demo")
        with Proctor.open(target) as p:
            results = run_all(p)
            report = p.verify()
    if as_json:
        print_json(
            {
                "scenarios": [r.as_dict() for r in results],
                "audit": {"ok": report.ok, "events": report.events},
            }
        )
        return 0 if report.ok else 1
    for r in results:
        console.rule(f"[bold]{r.title}[/bold] ({r.name})")
        console.print(f"expected: {r.expected}")
        console.print(render_scores(r.scores, r.total, r.pattern))
        console.print(f"decision: [bold]{r.outcome}[/bold] → {r.decided_status}")
        for reason in r.reasons:
            console.print(f"  • {reason}")
        if r.waits_for:
            console.print(f"waits for: {r.waits_for}")
        for h in r.human:
            console.print(f"[cyan]human[/cyan]: {h}")
        for ran in r.ran:
            console.print(f"  ran {ran}")
        for note in r.notes:
            console.print(f"  {note}", highlight=False)
        console.print(f"final status: [bold]{r.status}[/bold]")
    console.rule("audit log")
    if report.ok:
        console.print(f"[green]audit log verified[/green]: {report.events} signed events, intact")
    else:
        console.print(f"[red]audit log broken at {report.first_bad_seq}: {report.problem}[/red]")
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- plans


@app.command()
def submit(
    ctx: typer.Context,
    plan_file: Annotated[Path, typer.Argument(help="The plan manifest (JSON).")],
    home: Home = None,
    sandbox: Annotated[
        bool, typer.Option("--sandbox", help="Run no handler: only simulate and record.")
    ] = False,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Submit a plan and print the decision.

    Exit 0 if it ran or waits for a human; exit 1 if it was denied or rejected, or ran and
    failed: failed, compensated (a step failed and the steps before it were undone) or
    needs_attention (a step's effect is unknown: `proctor resolve`).

    With --server the token's principal submits: an agent whose name is the manifest's
    `actor.agent_id`.
    """
    remote = _remote(ctx, server, token)
    if sandbox:
        _local_only(remote, "--sandbox", "the server's configuration decides")
    raw = _read_json_or_toml(plan_file, "plan")
    if remote is not None:
        with remote:
            intent = raw.get("intent") if isinstance(raw, dict) else None
            doc = remote.submit(raw)
            return _emit_doc(doc, as_json, remote, intent=str(intent or ""))
    with _open(home) as p:
        rec = p.submit(raw, sandbox=True if sandbox else None)
        return _emit(rec, as_json)


@app.command("plans")
def list_plans(
    ctx: typer.Context,
    home: Home = None,
    status: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """List plans, newest first (with --server: those the token may read)."""
    if status is not None and status not in {s.value for s in PlanStatus}:
        raise InvalidRequestError(
            f"unknown status {status!r}; one of {', '.join(s.value for s in PlanStatus)}",
            field="status",
        )
    remote = _remote(ctx, server, token)
    if remote is not None:
        with remote:
            docs = remote.plans(status=status, agent=agent, limit=limit)
        if as_json:
            print_json({"plans": docs})
        else:
            render_plans_json(docs)
        return 0
    with _open(home) as p:
        p.tick()
        plans = p.plans(status=status, agent_id=agent, limit=limit)
        if as_json:
            print_json({"plans": [plan_json(r) for r in plans]})
        else:
            render_plans(plans)
    return 0


@app.command()
def show(
    ctx: typer.Context,
    plan_id: Annotated[str, typer.Argument(help="The plan id.")],
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Show one plan with steps, scores, reasons, approvals and its audit events."""
    remote = _remote(ctx, server, token)
    if remote is not None:
        with remote:
            _emit_doc(remote.plan(plan_id, events=True), as_json, remote)
        return 0
    with _open(home) as p:
        p.tick()
        rec = p.get(plan_id)
        _emit(rec, as_json, p, events=True)
        return 0


@app.command()
def confirm(
    ctx: typer.Context,
    plan_id: str,
    principal: AsLocal = None,
    home: Home = None,
    comment: Comment = "",
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Confirm a plan as the user it acts for; it runs at once.

    Exit 1 if it then failed, was compensated or needs attention (as `submit`).
    """
    remote = _remote(ctx, server, token, ignored=("principal",))
    if remote is not None:
        with remote:
            return _emit_doc(remote.confirm(plan_id, comment=comment), as_json, remote)
    name = _required_locally(principal, "--as")
    with _open(home) as p:
        return _emit(p.confirm(plan_id, name, comment=comment), as_json)


@app.command()
def approve(
    ctx: typer.Context,
    plan_id: str,
    principal: AsLocal = None,
    role: Annotated[
        list[str] | None,
        typer.Option(
            "--role",
            help="A role or approver group you hold (repeat). Required without --server; "
            "with --server the token's approver groups count.",
            show_default=False,
        ),
    ] = None,
    home: Home = None,
    comment: Comment = "",
    otp: Annotated[str | None, typer.Option("--otp", help="Step-up code (TOTP).")] = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Approve a plan. It runs when enough distinct approvers with the right roles agree.

    Exit 1 if it then failed, was compensated or needs attention (as `submit`).
    """
    remote = _remote(ctx, server, token, ignored=("principal", "role"))
    if remote is not None:
        with remote:
            doc = remote.approve(plan_id, comment=comment, otp=otp)
            return _emit_doc(doc, as_json, remote)
    name = _required_locally(principal, "--as")
    roles = _required_locally(role, "--role")
    with _open(home) as p:
        return _emit(p.approve(plan_id, name, roles=roles, comment=comment, otp=otp), as_json)


@app.command()
def reject(
    ctx: typer.Context,
    plan_id: str,
    principal: AsLocal = None,
    home: Home = None,
    role: Annotated[
        list[str] | None,
        typer.Option("--role", help="Your roles (repeat). With --server the token's groups count."),
    ] = None,
    comment: Comment = "",
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Reject a plan that waits for you (its user, or an approver)."""
    remote = _remote(ctx, server, token, ignored=("principal", "role"))
    if remote is not None:
        with remote:
            _emit_doc(remote.reject(plan_id, comment=comment), as_json, remote)
        return 0
    name = _required_locally(principal, "--as")
    with _open(home) as p:
        rec = p.reject(plan_id, name, roles=role or [], comment=comment)
        _emit(rec, as_json)
        return 0


@app.command()
def undo(
    ctx: typer.Context,
    plan_id: str,
    principal: AsLocal = None,
    comment: Comment = "",
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Undo a succeeded plan within its undo window (compensates its steps in reverse).

    `--comment` says why; the audit log records it with the undo.
    """
    remote = _remote(ctx, server, token, ignored=("principal",))
    if remote is not None:
        with remote:
            return _emit_doc(remote.undo(plan_id, comment=comment), as_json, remote)
    name = _required_locally(principal, "--as")
    with _open(home) as p:
        return _emit(p.undo(plan_id, name, comment=comment), as_json)


# --------------------------------------------------------------------------- assess


@app.command()
def assess(
    scenario_file: Annotated[
        Path,
        typer.Argument(help="TOML or JSON: a scores table with the five axes, or a checklist."),
    ],
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Score a product scenario on the five axes and recommend a pattern with its controls.

    The pattern is agentic, hybrid or orchestrator-first.

    Give either a scores table (risk, auditability, ux, recovery, cost: each 1-5) or a
    checklist table with answers for harm_if_wrong, regulation, speed_need, recovery and
    cost_per_action (see docs/concepts.md). An optional thresholds table (agentic_max,
    hybrid_max) overrides the instance's.
    """
    doc = _read_json_or_toml(scenario_file, "scenario")
    if not isinstance(doc, dict):
        raise InvalidRequestError("the scenario must be an object", field="scenario")
    th = doc.get("thresholds")
    if th is None:
        thresholds = _instance_thresholds(home)
    elif isinstance(th, dict):
        try:
            thresholds = Thresholds(**th)
        except TypeError as exc:
            raise InvalidRequestError(f"bad thresholds: {exc}", field="thresholds") from exc
    else:
        raise InvalidRequestError("thresholds must be a table", field="thresholds")
    if "scores" in doc:
        if not isinstance(doc["scores"], dict):
            raise InvalidRequestError("scores must be a table of the five axes", field="scores")
        scores = Scores.from_mapping(doc["scores"], field_prefix="scores.")
        reasons: tuple[str, ...] = tuple(f"{k} {v}: given" for k, v in scores.as_dict().items())
    elif "checklist" in doc:
        if not isinstance(doc["checklist"], dict):
            raise InvalidRequestError("checklist must be a table of answers", field="checklist")
        scores, reasons = scores_from_checklist(doc["checklist"])
    else:
        raise InvalidRequestError(
            "the scenario needs a `scores` or a `checklist` table", field="scores"
        )
    pattern = thresholds.pattern(scores.total)
    controls = list(CONTROLS[pattern])
    out = {
        "name": doc.get("name"),
        "scores": scores.as_dict(),
        "total": scores.total,
        "pattern": pattern.value,
        "reasons": [*reasons, f"total {scores.total} -> {pattern.value}"],
        "controls": controls,
    }
    if as_json:
        print_json(out)
        return 0
    console.print(render_scores(scores.as_dict(), scores.total, pattern.value))
    console.print(f"recommended: [bold]{pattern.value}[/bold]")
    for c in controls:
        console.print(f"  • {c}")
    return 0


def _instance_thresholds(home: Path | None) -> Thresholds:
    """Thresholds of the instance at ``home`` if there is one, else the defaults."""
    path = home_from(home)
    if not (path / "config.toml").is_file():
        return Thresholds()
    settings = load_settings(path)
    return Thresholds(agentic_max=settings.agentic_max, hybrid_max=settings.hybrid_max)


# --------------------------------------------------------------------------- totp


@totp_app.command("enrol")
def totp_enrol(
    principal: As,
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Enrol an approver for step-up approvals; prints the secret once.

    The same as `proctor tokens enrol-totp --name NAME`.
    """
    from proctor.cli.service import tokens_enrol_totp

    return tokens_enrol_totp(name=principal, home=home, as_json=as_json, verbose=verbose)


# --------------------------------------------------------------------------- service

from proctor.cli import service  # noqa: E402 - registered last: service.py stands alone

app.command("serve")(service.serve)
app.add_typer(service.tokens_app, name="tokens")

from proctor.cli import worker_cmd  # noqa: E402 - registered last: it uses this module's options

app.command("worker")(worker_cmd.worker)
app.command("resolve")(worker_cmd.resolve)

from proctor.cli import guards_cmd  # noqa: E402 - registered last: it uses this module's options

app.command("kill")(guards_cmd.kill)
app.command("unkill")(guards_cmd.unkill)
app.command("guards")(guards_cmd.guards)
app.command("whitelist")(guards_cmd.whitelist)
app.command("complain")(guards_cmd.complain)
app.add_typer(guards_cmd.autonomy_app, name="autonomy")
app.add_typer(guards_cmd.review_app, name="review")

from proctor.cli import db_cmd  # noqa: E402 - registered last: it uses this module's options

app.add_typer(db_cmd.db_app, name="db")

from proctor.cli import observe_cmd  # noqa: E402 - registered last: it uses this module's options

app.command("kpi")(observe_cmd.kpi)
app.command("report")(observe_cmd.report)

from proctor.cli import policy_cmd  # noqa: E402 - registered last: it uses this module's options

app.add_typer(policy_cmd.policy_app, name="policy")

from proctor.cli import mcp_cmd  # noqa: E402 - registered last: it uses this module's options

app.command("mcp")(mcp_cmd.mcp)

# --------------------------------------------------------------------------- audit / keys

# Registered last: audit_cmd uses this module's options; importing it adds its commands to
# audit_app and keys_app (defined and added above, so `proctor --help` keeps their place).
from proctor.cli import audit_cmd  # noqa: E402, F401
