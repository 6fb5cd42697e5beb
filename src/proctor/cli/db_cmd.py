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
    """Show the database's schema version against this Proctor's. Exit 1 if it is behind."""
    from proctor.bootstrap import database_status

    now, _ = database_status(home_from(home))
    doc = {
        "url": now.url,
        "version": now.version,
        "expected": now.expected,
        # SQLite files other local users can read (the store also logs a warning on stderr)
        "exposed": list(now.exposed),
    }
    if as_json:
        print_json(doc)
    else:
        state = "up to date" if now.version == now.expected else "needs `proctor db upgrade`"
        console.print(esc(f"{now.url}: schema {now.version} of {now.expected} ({state})"))
    return 0 if now.version == now.expected else 1


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
