"""The ``proctor audit`` and ``proctor keys`` commands: the signed audit log and its keys.

``audit`` verifies the log (or an export bundle), exports it, archives it to S3 with Object
Lock, and prints its events, its latest checkpoint and Merkle proofs; ``keys`` lists the
signing keys (or their verifier keys) and rotates them. ``audit events``, ``audit
checkpoint``, ``audit prove`` and ``keys list`` also work against ``proctor serve`` with
``--server``.

They live apart from ``commands.py``, which holds the root app, the shared options and the
plan lifecycle commands: this is the audit-log side of the CLI, with its own imports (the
verifiers, progress bars, tables). ``audit_app`` and ``keys_app`` stay defined (and added to
the root app) in ``commands.py``, which imports this module last so that these commands join
them; ``proctor --help`` lists the groups in the same order as before.
"""

from __future__ import annotations

import base64
import json
import math
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from proctor._library import Proctor
from proctor.audit.export import verify_export
from proctor.audit.verify import MAX_CLOCK_SKEW, verify_log
from proctor.bootstrap import open_log_view
from proctor.cli.commands import (
    Home,
    Json,
    Server,
    Token,
    Verbose,
    _local_only,
    _open,
    _remote,
    audit_app,
    keys_app,
)
from proctor.cli.render import clean, console, err_console, esc, print_json, whole_column
from proctor.cli.service import _operator
from proctor.config import home_from
from proctor.errors import InvalidRequestError

if TYPE_CHECKING:
    from proctor.cli.remote import Remote

__all__ = [
    "audit_archive",
    "audit_checkpoint",
    "audit_events",
    "audit_export",
    "audit_prove",
    "audit_verify",
    "keys_list",
    "keys_rotate",
]


# --------------------------------------------------------------------------- audit


@audit_app.command("verify")
def audit_verify(
    home: Home = None,
    export: Annotated[
        Path | None,
        typer.Option("--export", help="Verify an export bundle instead (no database needed)."),
    ] = None,
    fast: Annotated[
        bool,
        typer.Option(
            "--fast", help="Fast mode: chain, Merkle tree and checkpoints, not every signature."
        ),
    ] = False,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoint",
            metavar="<path>",
            help="A checkpoint note kept from earlier (`audit checkpoint --out FILE`, GET"
            " /v1/audit/checkpoint, or `audit checkpoint --json`): the log must still hold"
            " it. Repeatable.",
        ),
    ] = None,
    max_clock_skew: Annotated[
        float,
        typer.Option(
            "--max-clock-skew",
            metavar="SECONDS",
            min=0,
            help="How many seconds an event's timestamp may lie before the latest one logged"
            " before it (replicas' clocks differ a little); further back is"
            " timestamp_regression. Full mode only.",
        ),
    ] = MAX_CLOCK_SKEW.total_seconds(),
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Verify the audit log: canonical form, chain, signatures, Merkle tree, checkpoints.

    Exits 1 with the first bad seq and the kind of problem: modified, deleted, inserted,
    reordered, timestamp_regression, unrecorded_rotation (a change of signing key no
    keys.rotated event records), truncated, bad_signature, unknown_key, bad_checkpoint
    or inconsistent_checkpoints. Events after the last checkpoint you kept (--checkpoint) can
    be cut without a trace by whoever controls the store: keep one regularly.
    """
    if not math.isfinite(max_clock_skew):  # FloatRange lets nan and inf through
        raise typer.BadParameter("must be a number of seconds", param_hint="--max-clock-skew")
    pinned = [_read_note(path) for path in checkpoint or ()]
    skew = timedelta(seconds=max_clock_skew)
    with Progress(console=err_console, transient=True, disable=as_json) as bar:
        task = bar.add_task("verifying", total=None)

        def progress(n: int) -> None:
            bar.update(task, completed=n)

        if export is not None:
            if not (export / "manifest.json").is_file():
                raise InvalidRequestError(
                    f"{export} is not an export (no manifest.json)", field="export"
                )
            report = verify_export(
                export, full=not fast, progress=progress, pinned=pinned, max_clock_skew=skew
            )
        else:
            # Opened without the start-up checks of the Merkle tree, which refuse a tampered
            # log: the verifier must open it to say where and how it was tampered with.
            view = open_log_view(home_from(home))
            try:
                rows = list(view.store.iter_events())
                bar.update(task, total=len(rows) or 1)
                report = verify_log(
                    rows,
                    [c.note for c in view.store.checkpoints()],
                    view.keys,
                    origin=view.origin,
                    full=not fast,
                    progress=progress,
                    pinned=pinned,
                    max_clock_skew=skew,
                )
            finally:
                view.store.close()
    if as_json:
        print_json(report.as_dict())
    elif report.ok:
        mode = "fast" if fast else "full"
        console.print(f"[green]ok[/green]: {report.events} events verified ({mode}), intact")
    else:
        console.print(
            f"[red]FAILED[/red] at seq {esc(report.first_bad_seq)}: "
            + esc(f"{report.problem} ({report.detail})")
        )
    return 0 if report.ok else 1


def _read_note(path: Path) -> str:
    """Return the signed note in ``path``: the note itself, or JSON with a ``note`` member."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"cannot read {path}: {exc}", field="checkpoint") from exc
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(
                f"{path} is not valid JSON: {exc}", field="checkpoint"
            ) from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("note"), str):
            raise InvalidRequestError(
                f'{path} has no "note" string (as `audit checkpoint --json` prints)',
                field="checkpoint",
            )
        return str(doc["note"])
    return text


@audit_app.command("export")
def audit_export(
    directory: Annotated[Path, typer.Argument(help="A new or empty directory.")],
    home: Home = None,
    segment_size: Annotated[
        int, typer.Option("--segment-size", min=1, help="Events per JSONL segment.")
    ] = 10_000,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Export the log: JSONL segments (one leaf per line), every checkpoint, verifier keys.

    Verify it anywhere with `proctor audit verify --export DIR`.
    """
    with _open(home) as p:
        total = p.gateway.store.event_count()
        with Progress(console=err_console, transient=True, disable=as_json) as bar:
            task = bar.add_task("exporting", total=total or 1)
            manifest = p.export(
                directory,
                segment_size=segment_size,
                progress=lambda n: bar.update(task, completed=n),
            )
    if as_json:
        print_json(manifest.as_dict())
    else:
        console.print(
            esc(
                f"exported {manifest.events} events in {len(manifest.segments)} segment(s) and "
                f"{len(manifest.checkpoints)} checkpoint(s) to {directory}"
            )
        )
    return 0


@audit_app.command("archive")
def audit_archive(
    to: Annotated[str, typer.Option("--to", help="s3://bucket/prefix (Object Lock enabled).")],
    home: Home = None,
    days: Annotated[
        int, typer.Option("--days", min=1, help="Compliance-mode retention in days.")
    ] = 365,
    export_dir: Annotated[
        Path | None, typer.Option("--export", help="An existing export to archive.")
    ] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option("--endpoint-url", envvar="PROCTOR_S3_ENDPOINT", help="S3-compatible URL."),
    ] = None,
    region: Annotated[str | None, typer.Option("--region", envvar="AWS_REGION")] = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Archive sealed segments and checkpoints to S3 with Object Lock (compliance mode).

    Exports first unless --export names an existing bundle; objects already archived are
    skipped; the archive is recorded in the audit log.
    """
    with _open(home) as p, tempfile.TemporaryDirectory(prefix="proctor-archive-") as tmp:
        bundle = export_dir
        if bundle is None:
            bundle = Path(tmp) / "export"
            p.export(bundle)
        report = p.archive(
            to,
            retention_days=days,
            export_dir=bundle,
            endpoint_url=endpoint_url,
            region_name=region,
        )
    if as_json:
        print_json(report.as_dict())
    else:
        console.print(
            f"archived {len(report.uploaded)} object(s), skipped {len(report.skipped)} already"
            f" archived; retained until {report.retain_until.isoformat()}"
        )
    return 0


@audit_app.command("events")
def audit_events(
    ctx: typer.Context,
    home: Home = None,
    after: Annotated[int, typer.Option("--after", help="Only events after this seq.")] = -1,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 50,
    plan: Annotated[str | None, typer.Option("--plan", help="Only this plan's events.")] = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Print audit events.

    With --server the whole log needs an auditor's token; `--plan ID` needs only read
    access to that plan.
    """
    from proctor.cli.render import event_json

    remote = _remote(ctx, server, token)
    if remote is not None:
        with remote:
            bodies = remote.audit_events(after=after, limit=limit, plan_id=plan)
    else:
        with _open(home) as p:
            bodies = [event_json(e) for e in p.events(after=after, limit=limit, plan_id=plan)]
    if as_json:
        print_json({"events": bodies})
        return 0
    table = Table(title=f"{len(bodies)} event(s)", title_justify="left")
    for col in ("seq", "type", "plan", "step", "time"):
        table.add_column(col)
    for b in bodies:
        table.add_row(
            esc(b["seq"]),
            esc(b["type"]),
            esc(b.get("plan_id") or ""),
            esc(b.get("step_id") or ""),
            esc(b["timestamp"]),
        )
    console.print(table)
    return 0


@audit_app.command("checkpoint")
def audit_checkpoint(
    ctx: typer.Context,
    home: Home = None,
    sign: Annotated[
        bool,
        typer.Option("--sign", help="Sign a new checkpoint of the log as it is now (local only)."),
    ] = False,
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Also write the note to this file, to keep outside the instance and pass"
            " to `audit verify --checkpoint` later.",
        ),
    ] = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Print the latest signed checkpoint (a C2SP signed note) exactly as signed.

    Locally, events not yet covered by a checkpoint are covered by a new one first. Keep the
    note somewhere the operator cannot write (--out FILE): `audit verify --checkpoint FILE`
    then detects a log cut or rewritten below its size.
    """
    remote = _remote(ctx, server, token)
    if sign:
        _local_only(remote, "--sign", "the server signs its own checkpoints")
    if remote is not None:
        with remote:
            out = remote.checkpoint()
    else:
        with _open(home) as p:
            cp = p.checkpoint() if sign else p.audit_log.checkpoint_pending()
            cp = cp or p.latest_checkpoint()
        if cp is None:
            raise InvalidRequestError(
                "the log has no checkpoint yet", field="checkpoint", hint="Submit a plan first."
            )
        out = {"size": cp.size, "root_hash": base64.b64encode(cp.root).decode(), "note": cp.note}
    if out_file is not None:
        try:
            out_file.write_text(out["note"], encoding="utf-8")
        except OSError as exc:
            raise InvalidRequestError(f"cannot write {out_file}: {exc}", field="out") from exc
    if as_json:
        print_json(out)
    else:
        sys.stdout.write(out["note"])
    return 0


@audit_app.command("prove")
def audit_prove(
    ctx: typer.Context,
    home: Home = None,
    index: Annotated[int | None, typer.Option("--index", help="Prove this event.")] = None,
    size: Annotated[int | None, typer.Option("--size", help="Tree size (default: now).")] = None,
    from_: Annotated[int | None, typer.Option("--from", help="Older tree size.")] = None,
    to: Annotated[int | None, typer.Option("--to", help="Newer tree size.")] = None,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """Print an inclusion proof (--index N [--size M]) or a consistency proof (--from A --to B).

    Hashes are standard base64, as in RFC 9162 tooling.
    """
    remote = _remote(ctx, server, token)
    source: Remote | Proctor = remote if remote is not None else _open(home)
    with source:
        if index is not None and from_ is None and to is None:
            out = source.inclusion_proof(index, size)
        elif index is None and size is None and from_ is not None and to is not None:
            out = source.consistency_proof(from_, to)
        else:
            raise InvalidRequestError(
                "give --index N [--size M] for inclusion, or --from A --to B for consistency",
                field="index",
            )
    if as_json:
        print_json(out)
    else:
        for key, value in out.items():
            if isinstance(value, list):
                console.print(f"{esc(key)}:")
                for h in value:
                    console.print(f"  {esc(h)}")
            else:
                console.print(esc(f"{key}: {value}"))
    return 0


# --------------------------------------------------------------------------- keys


@keys_app.command("list")
def keys_list(
    ctx: typer.Context,
    home: Home = None,
    vkey: Annotated[
        bool, typer.Option("--vkey", help="Print signed-note verifier keys, one per line.")
    ] = False,
    as_json: Json = False,
    verbose: Verbose = False,
    server: Server = None,
    token: Token = None,
) -> int:
    """List the signing keys with their validity; --vkey prints verifier keys.

    With --server (an auditor's token) they are the server's, from GET /v1/audit/keys.
    """
    remote = _remote(ctx, server, token)
    if remote is not None:
        with remote:
            rows, vkeys = remote.keys()
    else:
        with _open(home) as p:
            if p.keyring is None:
                raise InvalidRequestError("this instance has no keyring", field="keys")
            entries = p.keyring.entries()
            vkeys = p.vkeys()
        rows = [
            e.as_dict() | {"vkey": v, "current": i == len(entries) - 1}
            for i, (e, v) in enumerate(zip(entries, vkeys, strict=True))
        ]
    if vkey and not as_json:
        for line in vkeys:
            print(clean(line))
        return 0
    if as_json:
        print_json({"keys": rows})
        return 0
    table = Table(title=f"{len(rows)} key(s)", title_justify="left")
    whole_column(table, "key id", [r["key_id"] for r in rows])
    for col in ("created", "valid until", "current"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            esc(r["key_id"]),
            esc(r["created_at"]),
            esc(r["not_after"] or "-"),
            "yes" if r["current"] else "",
        )
    console.print(table)
    return 0


@keys_app.command("rotate")
def keys_rotate(home: Home = None, as_json: Json = False, verbose: Verbose = False) -> int:
    """Make a new current signing key; old public keys stay for verification.

    Audited as `keys.rotated` (the new key, the one it replaced, and `local:<your login>`
    as who rotated).
    """
    with _open(home) as p:
        key_id = p.rotate_key(by=_operator())
    if as_json:
        print_json({"key_id": key_id})
    else:
        console.print(f"new signing key [bold]{esc(key_id)}[/bold]; old keys kept for verification")
    return 0
