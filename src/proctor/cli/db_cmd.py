"""``proctor db upgrade`` and ``proctor db status``: the schema of a home's database."""

from __future__ import annotations

import typer

from proctor.cli.commands import Home, Json, Verbose
from proctor.cli.render import console, esc, print_json
from proctor.config import home_from

__all__ = ["db_app"]

db_app: typer.Typer = typer.Typer(
    help="The database schema: status and migrations (SQLite and PostgreSQL).",
    no_args_is_help=True,
)


@db_app.command("status")
def status(home: Home = None, as_json: Json = False, verbose: Verbose = False) -> int:
    """Show the database's schema version against this Proctor's. Exit 1 unless current.

    ``--json`` has ``state``: ``current``, ``needs_upgrade`` (run ``proctor db upgrade``) or
    ``newer`` (written by a later Proctor: install that one, or restore the backup).
    """
    from proctor.bootstrap import database_status

    now, _ = database_status(home_from(home))
    says = f"{now.url}: schema {now.version} of {now.expected}"
    if now.version == now.expected:
        state, says = "current", f"{says} (up to date)"
    elif now.version < now.expected:
        state, says = "needs_upgrade", f"{says} (needs `proctor db upgrade`)"
    else:  # `db upgrade` refuses it: say what does help (docs/operations.md, Upgrades)
        state = "newer"
        says = (
            f"{now.url}: schema {now.version} is newer than this Proctor ({now.expected}):"
            " install the version that wrote it, or restore the backup taken before the"
            " upgrade; `proctor db upgrade` never downgrades."
        )
    doc = {
        "url": now.url,
        "version": now.version,
        "expected": now.expected,
        "state": state,
        # SQLite files other local users can read (the store also logs a warning on stderr)
        "exposed": list(now.exposed),
    }
    if as_json:
        print_json(doc)
    else:
        console.print(esc(says))
    return 0 if state == "current" else 1


@db_app.command("upgrade")
def upgrade(home: Home = None, as_json: Json = False, verbose: Verbose = False) -> int:
    """Apply the pending migrations (idempotent; replicas starting together take turns).

    Run it once before starting new replicas; each replica also migrates on start-up.
    """
    from proctor.bootstrap import database_status

    before, after = database_status(home_from(home), upgrade=True)
    doc = {"url": after.url, "from": before.version, "to": after.version}
    if as_json:
        print_json(doc)
    elif before.version == after.version:
        console.print(esc(f"{after.url}: already at schema {after.version}."))
    else:
        console.print(esc(f"{after.url}: schema {before.version} → {after.version}."))
    return 0
