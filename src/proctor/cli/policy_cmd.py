"""``proctor policy test|check|eval|explain``: authoring and debugging Rego policies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from proctor.app.policy_reload import CONTRACT_VERSION
from proctor.cli.commands import Home, Json, Verbose, _open
from proctor.cli.render import console, esc, print_json, render_scores
from proctor.config import home_from
from proctor.errors import InvalidPolicyError, InvalidRequestError

__all__ = ["policy_app"]

policy_app: typer.Typer = typer.Typer(
    help="Rego policies: unit tests, validation, one evaluation, why a plan got its decision.",
    no_args_is_help=True,
)

Bundle = Annotated[
    Path | None,
    typer.Argument(help="The bundle directory (*.rego, data.json); default the home's policy/."),
]


def _bundle(directory: Path | None, home: Path | None) -> Path:
    if directory is not None:
        return directory
    from proctor.config import load

    settings = load(home_from(home))
    return settings.policy_bundle or settings.home / "policy"


@policy_app.command("test")
def run_tests(
    directory: Bundle = None,
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Run the bundle's Rego unit tests (rules named test_*). Exit 1 if any fails."""
    from proctor.bootstrap import policy_tools

    results = policy_tools().run_policy_tests(_bundle(directory, home))
    failed = [r for r in results if not r.passed]
    if as_json:
        print_json(
            {
                "passed": len(results) - len(failed),
                "failed": len(failed),
                "tests": [
                    {"package": r.package, "name": r.name, "passed": r.passed, "error": r.error}
                    for r in results
                ],
            }
        )
    else:
        t = Table(title=f"{len(results)} policy test(s), {len(failed)} failed")
        for col in ("package", "test", "result"):
            t.add_column(col)
        for r in results:
            t.add_row(
                esc(r.package),
                esc(r.name),
                "[green]pass[/]" if r.passed else f"[red]FAIL[/] {esc(r.error)}",
            )
        console.print(t if results else "No test_* rules found.")
    return 1 if failed else 0


@policy_app.command("check")
def check(
    directory: Bundle = None,
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Validate a bundle before it is loaded: it compiles, and it answers the contract.

    The bundle is compiled as the server would compile it (tests excluded, in a child
    process), then asked about one plan per risk category (and one with a step of each):
    every answer must define ``data.proctor.decision`` with a well-formed decision for every
    step (docs/policy.md). Exit 1 with the compile error, the engine's crash or the
    violations, else print the bundle's version.
    """
    from proctor.app.policy_reload import validate_bundle
    from proctor.bootstrap import policy_tools

    # In a child process, as the server's reloader does: a bundle that crashes rego-cpp is
    # reported (exit 1) instead of killing this command with a signal.
    version, problems = validate_bundle(
        policy_tools().RegoPolicyEngine.from_directory, _bundle(directory, home)
    )
    if problems:
        raise InvalidPolicyError(
            f"the bundle compiles but breaks the policy contract (version {CONTRACT_VERSION}): "
            + "; ".join(problems),
            field="policy",
            hint="docs/policy.md: data.proctor.decision must give every step an outcome "
            "(execute, confirm, approve or deny) in the documented shape.",
        )
    if as_json:
        print_json({"ok": True, "version": version, "contract": CONTRACT_VERSION})
    else:
        console.print(esc(f"ok: {version} (policy contract version {CONTRACT_VERSION})"))
    return 0


@policy_app.command("eval")
def evaluate(
    input_file: Annotated[Path, typer.Argument(metavar="INPUT.json", help="A policy input.")],
    bundle: Annotated[
        Path | None, typer.Option("--bundle", help="The bundle; default the home's policy/.")
    ] = None,
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Evaluate one policy input (docs/policy.md) and print the decision with its reasons.

    The raw answer is checked the way the gateway checks it: a malformed answer is reported
    (and would deny).
    """
    from proctor.bootstrap import policy_tools
    from proctor.core.decisions import Decision

    try:
        doc = orjson.loads(input_file.read_bytes())
    except FileNotFoundError:
        raise typer.BadParameter(
            f"{input_file} does not exist", param_hint="'INPUT.json'"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"{input_file} is not JSON: {exc}", field="input") from None
    except OSError as exc:  # a directory, no permission, ...
        raise typer.BadParameter(
            f"cannot read {input_file}: {exc.strerror or exc}", param_hint="'INPUT.json'"
        ) from None
    steps = doc.get("steps") if isinstance(doc, dict) else None
    if not isinstance(steps, list) or not all(isinstance(s, dict) and "id" in s for s in steps):
        raise InvalidRequestError("the input needs steps: [{id, ...}]", field="input.steps")
    engine = policy_tools().RegoPolicyEngine.from_directory(_bundle(bundle, home))
    raw = engine.evaluate(doc)
    decision = Decision.from_policy_output(
        raw, [s["id"] for s in steps], policy_version=engine.version
    )
    out: dict[str, Any] = {"decision": decision.as_dict(), "raw": raw}
    if as_json:
        print_json(out)
    else:
        console.print(f"[bold]{decision.outcome.value}[/] (policy {esc(engine.version)})")
        for reason in decision.reasons:
            console.print(f"  - {esc(reason)}")
        t = Table()
        for col in ("step", "outcome", "approvals", "step-up", "reasons"):
            t.add_column(col)
        for step in decision.as_dict()["steps"]:
            roles = f" ({', '.join(step['approver_roles'])})" if step["approver_roles"] else ""
            t.add_row(
                esc(step["step_id"]),
                esc(step["outcome"]),
                esc(f"{step['approvals']}{roles}"),
                "yes" if step["step_up"] else "no",
                "\n".join(esc(r) for r in step["reasons"]),
            )
        console.print(t)
    return 1 if decision.outcome.value == "deny" else 0


@policy_app.command("explain")
def explain(
    plan_id: Annotated[str, typer.Argument(help="The plan.")],
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Why a plan got its decision: scores, the rules' reasons, the policy version."""
    with _open(home) as p:
        rec = p.get(plan_id)
        current = p.gateway.policy.version if p.gateway.policy is not None else None
    doc = {
        "plan_id": rec.plan_id,
        "outcome": rec.outcome,
        "status": rec.status.value,
        "policy_version": rec.policy_version,
        "policy_in_force": current,
        "assessment": rec.assessment,
        "plan_reasons": rec.decision["plan_reasons"],
        "adjustments": rec.decision["adjustments"],
        "steps": [
            {
                "step": s["step_id"],
                "action": rec.steps[i].action,
                "outcome": s["outcome"],
                "reasons": s["reasons"],
                "approvals": s["approvals"],
                "approver_roles": s["approver_roles"],
            }
            for i, s in enumerate(rec.decision["steps"])
        ],
    }
    if as_json:
        print_json(doc)
        return 0
    a = rec.assessment
    console.print(f"[bold]{esc(rec.plan_id)}[/]: {esc(rec.outcome)} ({rec.status.value})")
    console.print(
        esc(
            f"policy {rec.policy_version}"
            + ("" if current == rec.policy_version else f" (in force now: {current})")
        )
    )
    console.print(render_scores(a["scores"], a["total"], a["pattern"]))
    for adj in rec.decision["adjustments"]:
        console.print(esc(f"  adjusted {adj['axis']} {adj['delta']:+d}: {adj['reason']}"))
    for reason in rec.decision["plan_reasons"]:
        console.print(f"  plan rule: {esc(reason)}")
    t = Table(
        title="Steps: outcome and the reasons of the rules that matched", title_justify="left"
    )
    for col in ("step", "action", "outcome", "approvals", "reasons"):
        t.add_column(col)
    for s in doc["steps"]:
        roles = f" ({', '.join(s['approver_roles'])})" if s["approver_roles"] else ""
        t.add_row(
            esc(s["step"]),
            esc(s["action"]),
            esc(s["outcome"]),
            esc(f"{s['approvals']}{roles}"),
            "\n".join(esc(r) for r in s["reasons"]),
        )
    console.print(t)
    return 0
