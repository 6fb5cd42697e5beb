"""``proctor serve`` and ``proctor tokens``: the HTTP service and its API tokens."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.table import Table

from proctor._library import Proctor
from proctor.app.tokens import TokenService
from proctor.cli.render import console, esc, print_json, when, whole_column
from proctor.config import home_from
from proctor.errors import InvalidRequestError

__all__ = ["serve", "tokens_app"]

tokens_app = typer.Typer(
    help="API tokens for the HTTP service: create, list, revoke; TOTP enrolment.",
    no_args_is_help=True,
)

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


class LogLevel(StrEnum):
    """``proctor serve --log-level``: uvicorn's levels (its ``trace`` is not offered)."""

    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    DEBUG = "debug"


_UNSAFE_BANNER = """\
*****************************************************************************
  WARNING: --unsafe-no-auth: AUTHENTICATION IS OFF.
  Every request is served as 'local' (admin, approver, user). Anyone who can
  reach {url} can approve, reject and undo any plan and read
  the whole audit log. Use this on a laptop for a demo, never anywhere else.
*****************************************************************************"""


def serve(
    home: Home = None,
    host: Annotated[
        str, typer.Option("--host", envvar="PROCTOR_HOST", help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option("--port", envvar="PROCTOR_PORT", min=0, max=65535, help="Port."),
    ] = 8700,
    unsafe_no_auth: Annotated[
        bool,
        typer.Option(
            "--unsafe-no-auth",
            help="Serve every request as 'local' (admin, approver, user) WITHOUT "
            "authentication. A local demo only.",
        ),
    ] = False,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="Log every request.")
    ] = True,
    log_format: Annotated[
        bool,
        typer.Option(
            "--json-logs",
            help="Log JSON lines (every audit event too, masked); also "
            '[observability] log_format = "json".',
        ),
    ] = False,
    log_level: Annotated[
        LogLevel, typer.Option("--log-level", case_sensitive=False, help="How much to log.")
    ] = LogLevel.INFO,
    submit_threads: Annotated[
        int,
        typer.Option(
            "--submit-threads",
            envvar="PROCTOR_SUBMIT_THREADS",
            min=1,
            max=64,
            help="Most plan submissions running at once: one, plus one per submission"
            " stuck in a slow tool (docs/http.md, Performance).",
        ),
    ] = 16,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            envvar="PROCTOR_WORKERS",
            min=1,
            max=64,
            help="Server processes sharing the port and the instance; one uses one core"
            " (docs/http.md, Workers).",
        ),
    ] = 1,
    verbose: Verbose = False,
) -> int:
    """Run the HTTP API (docs/http.md) and the worker (timers, recovery of interrupted plans).

    Listens on 127.0.0.1:8700 by default. Requests need `Authorization: Bearer TOKEN`
    (create one with `proctor tokens create`) or a JWT when `[auth.jwt]` is configured.
    SIGTERM or Ctrl-C stops it gracefully: requests in flight finish first.
    """
    import dataclasses

    from proctor.bootstrap import precheck_policy
    from proctor.http import load_http_settings  # needs the `server` extra

    path = home_from(home)
    settings = dataclasses.replace(load_http_settings(path), submit_threads=submit_threads)
    # A custom bundle is compiled in a child first: one that crashes the engine is reported
    # (InvalidPolicyError, exit 1) instead of killing this process.
    for problem in precheck_policy(path):
        print(f"warning: the policy breaks the decision contract: {problem}", file=sys.stderr)
    options = _ServeOptions(
        path=path,
        settings=settings,
        host=host,
        port=port,
        unsafe_no_auth=unsafe_no_auth,
        access_log=access_log,
        json_logs=log_format,
        log_level=log_level.value,
    )
    if unsafe_no_auth:
        print(_UNSAFE_BANNER.format(url=f"http://{host}:{port}"), file=sys.stderr)
    from proctor.cli.prefork import run_workers

    # Bound here, before the instance opens, for one worker as for several: a port in use
    # or a host that does not resolve is the same usage-level error either way.
    sock = _listen(host, port)
    if workers == 1:
        try:
            return _serve_one(options, listener=sock)
        finally:
            sock.close()
    print(
        f"proctor serve: {workers} worker processes on http://{host}:{sock.getsockname()[1]}",
        file=sys.stderr,
    )
    metrics_dir = _metrics_dir()
    try:
        return run_workers(
            workers,
            sock,
            lambda index, channel: _serve_worker(options, channel, metrics_dir),
            sidecar=_wal_checkpointer(path),
            reaped=lambda pid: _worker_exited(pid, metrics_dir),
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket, or raise ``InvalidRequestError`` naming host and port."""
    from proctor.cli.prefork import bind

    try:
        return bind(host, port)
    except socket.gaierror as exc:  # a host name that does not resolve
        raise InvalidRequestError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            field="host",
            hint="Give --host an address of this machine, or a name that resolves to one.",
        ) from exc
    except OSError as exc:  # the port is in use, or the address is not this machine's
        raise InvalidRequestError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            field="port",
            hint="Choose a free port with --port.",
        ) from exc


def _metrics_dir() -> str:
    """A new, empty directory for the workers' shared counters (docs/observability.md).

    One per serve, made before the workers fork and removed when the serve ends: files left
    by another serve, or by one that crashed, would be added into this one's counters. A
    ``PROMETHEUS_MULTIPROC_DIR`` inherited from the environment is replaced for that reason;
    ``TMPDIR`` chooses where the directory goes.
    """
    path = tempfile.mkdtemp(prefix="proctor-metrics-")
    # The workers (and prometheus-client in them) find it here; set before they fork.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def _serve_worker(o: _ServeOptions, channel: socket.socket, metrics_dir: str) -> int:
    """One worker of ``--workers N``: its counters go to the serve's shared directory."""
    from proctor.app.metrics import share_between_workers

    share_between_workers(metrics_dir)  # before anything is counted
    return _serve_one(o, channel=channel)


def _worker_exited(pid: int, metrics_dir: str) -> None:
    """Drop what an exited worker's live gauges held; its counters stay in the sums."""
    from prometheus_client.multiprocess import mark_process_dead

    # NOTE(metrics): every gauge is read from the store by the worker that answers a scrape,
    # so no live gauge file exists today; this keeps a future one from outliving its worker.
    mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]  # untyped upstream


def _wal_checkpointer(home: Path) -> Callable[[socket.socket], int] | None:
    """The sidecar that keeps an SQLite WAL short for the workers (docs/http.md, Workers)."""
    from proctor.bootstrap import wal_checkpointer

    run = wal_checkpointer(home)
    if run is None:
        return None  # PostgreSQL checkpoints by itself

    def sidecar(channel: socket.socket) -> int:
        import select
        import threading

        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
        # Until SIGTERM from the parent, or the parent is gone (end of file on the channel).
        run(lambda: stopped.is_set() or bool(select.select([channel], [], [], 0)[0]))
        return 0

    return sidecar


@dataclass(frozen=True, slots=True)
class _ServeOptions:
    path: Path
    settings: Any
    host: str
    port: int
    unsafe_no_auth: bool
    access_log: bool
    json_logs: bool
    log_level: str


def _serve_one(
    o: _ServeOptions,
    *,
    channel: socket.socket | None = None,
    listener: socket.socket | None = None,
) -> int:
    """Serve until SIGINT or SIGTERM.

    On ``listener`` (bound to ``--host``/``--port``), or, as one worker of ``--workers N``,
    the connections the parent passes over ``channel``.
    """
    caught: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        # Before uvicorn runs (the instance is opening) a signal is noted and stops the
        # server as soon as it starts. uvicorn handles SIGINT/SIGTERM while it runs, then
        # re-raises the signal once it has shut down; this handler receives that too, so
        # the cleanup below still runs.
        caught.append(signum)

    previous: dict[int, Any] = {
        sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        proctor = Proctor.open(o.path)
        try:
            _run_server(o, proctor, channel, listener, stop_requested=lambda: bool(caught))
        finally:
            proctor.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _run_server(
    o: _ServeOptions,
    proctor: Proctor,
    channel: socket.socket | None,
    listener: socket.socket | None,
    *,
    stop_requested: Callable[[], bool],
) -> None:
    """Build the app on ``proctor`` and serve it with its background threads."""
    import uvicorn

    from proctor.app.worker import Worker
    from proctor.bootstrap import start_dispatcher, start_policy_reloader
    from proctor.cli.prefork import Server
    from proctor.config import load as load_settings
    from proctor.http import create_app

    if o.json_logs or load_settings(o.path).log_format == "json":
        from proctor.app.logs import EventLogListener, configure_json_logging

        configure_json_logging()
        proctor.gateway.listeners.append(EventLogListener())
    app = create_app(proctor, settings=o.settings, unsafe_no_auth=o.unsafe_no_auth)
    config = uvicorn.Config(
        app,
        host=o.host,
        port=o.port,
        # Client addresses key the failed-authentication limit: a forwarded header
        # from any local process must not be able to choose its own address.
        proxy_headers=False,
        server_header=False,
        access_log=o.access_log,
        log_level=o.log_level,
        timeout_graceful_shutdown=10,
        lifespan="off",
    )
    server = Server(
        config,
        channel=channel,
        stop_requested=stop_requested,
        on_shutdown=app.state.context.begin_shutdown,  # long-polls answer, streams end
    )
    worker = Worker(proctor.gateway)
    worker.start()
    # The webhook outbox is sent from a background thread; without webhooks it idles.
    dispatcher = start_dispatcher(proctor.gateway)
    reloader = start_policy_reloader(proctor.gateway, o.path)
    try:
        server.run(sockets=None if listener is None else [listener])
    finally:
        app.state.context.close()  # submissions still running finish before the store closes
        dispatcher.stop()
        reloader.stop()
        worker.stop()


def _open(home: Path | None) -> Proctor:
    return Proctor.open(home_from(home))


def _tokens(p: Proctor) -> TokenService:
    return p.tokens


def _operator() -> str:
    """Who runs a local admin command, as its audit event records it: ``local:<login>``."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "local:unknown"


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option("--name", help="The principal's name.")],
    role: Annotated[
        list[str],
        typer.Option("--role", help="agent, user, approver, auditor or admin (repeat)."),
    ],
    groups: Annotated[
        str, typer.Option("--groups", help="Approver groups, comma-separated (finance,hr).")
    ] = "",
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Create an API token; it is printed once and only its SHA-256 is stored.

    Audited as `token.created` (id, name, roles, groups, and `local:<your login>` as who
    created it; never the token).
    """
    group_list = [g.strip() for g in groups.split(",") if g.strip()]
    with _open(home) as p:
        new = _tokens(p).create(name=name, roles=role, groups=group_list, by=_operator())
    if as_json:
        print_json(new.as_dict())
        return 0
    roles = ", ".join(new.record.roles)
    console.print(
        f"token for [bold]{esc(name)}[/bold] ({esc(roles)}), id {esc(new.record.token_id)}:"
    )
    print(new.token)
    console.print("[yellow]It is shown only now: store it safely.[/yellow]")
    return 0


@tokens_app.command("list")
def tokens_list(home: Home = None, as_json: Json = False, verbose: Verbose = False) -> int:
    """List API tokens (never the tokens themselves)."""
    with _open(home) as p:
        records = _tokens(p).list()
    rows = [
        {
            "id": t.token_id,
            "name": t.name,
            "roles": list(t.roles),
            "groups": list(t.groups),
            "created_at": t.created_at.isoformat(),
            "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
        }
        for t in records
    ]
    if as_json:
        print_json({"tokens": rows})
        return 0
    table = Table(title=f"{len(rows)} token(s)", title_justify="left")
    whole_column(table, "id", [t.token_id for t in records])  # `tokens revoke ID` needs it
    for col in ("name", "roles", "groups", "created", "revoked"):
        table.add_column(col, overflow="fold")
    for t in records:
        table.add_row(
            esc(t.token_id),
            esc(t.name),
            esc(", ".join(t.roles)),
            esc(", ".join(t.groups)),
            when(t.created_at.isoformat()),
            when(t.revoked_at.isoformat()) if t.revoked_at else "",
        )
    console.print(table)
    return 0


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token id (tok_...).")],
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Revoke an API token (a running server stops accepting it within 2 seconds).

    Audited as `token.revoked`, with `local:<your login>` as who revoked it.
    """
    with _open(home) as p:
        record = _tokens(p).revoke(token_id, by=_operator())
    revoked_at = record.revoked_at.isoformat() if record.revoked_at else None
    if as_json:
        print_json({"id": record.token_id, "name": record.name, "revoked_at": revoked_at})
    else:
        console.print(esc(f"revoked {record.token_id} ({record.name})"))
    return 0


@tokens_app.command("enrol-totp")
def tokens_enrol_totp(
    name: Annotated[str, typer.Option("--name", help="The approver's principal name.")],
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Enrol an approver for step-up (TOTP) approvals; prints the secret once.

    Audited as `stepup.enrolled` (the approver, whether an earlier secret was replaced, and
    `local:<your login>`; never the secret).
    """
    with _open(home) as p:
        secret, uri = p.enrol_totp(name, by=_operator())
    if as_json:
        print_json({"name": name, "principal": name, "secret": secret, "uri": uri})
    else:
        console.print(f"secret for {esc(name)}: [bold]{esc(secret)}[/bold]")
        console.print(f"add to an authenticator app: {esc(uri)}")
    return 0
