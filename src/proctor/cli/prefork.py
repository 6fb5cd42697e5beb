"""Worker processes for ``proctor serve --workers N`` (docs/http.md, "Workers").

A plan's submission holds the GIL for nearly all of its CPU time, so one server process
uses one core. N worker processes use N. The parent binds the port, forks the workers before
anything else runs (no store, no thread, no event loop exists yet), then accepts the
connections and hands each to the next worker in turn over a Unix socket pair
(``SCM_RIGHTS``). Each worker opens the instance itself: its own store connection, policy
engine, signer and background threads, as a single-process server does. They share what is
stored (plans, approvals, tokens, guard state, the audit log), whose writers take turns
(``SqliteStore``'s ``flock``; PostgreSQL's own locks).

Why the parent accepts: workers sharing one listening socket take connections in whatever
order the kernel wakes them, and with keep-alive clients the split stays as it fell: 16
connections landed 11 to 5, and the busier worker's clients waited twice as long (p99 68 ms
against ~45 ms for an even split). Handing them out in turn keeps the split even.

Why not uvicorn's ``--workers``: it imports the application by name in every worker, so the
instance would have to be rebuilt from environment variables, and the timers, the webhook
dispatcher and the policy reloader would move into ASGI lifespan hooks. Forking keeps one
code path for one worker and for N.

The parent forwards SIGINT and SIGTERM to the workers and waits for them to finish their
requests. A worker that dies on its own is restarted, unless it died within
``crash_window`` seconds of its start: then the start is broken (the store, the policy) and
every worker is stopped, exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import uvicorn

__all__ = ["Server", "bind", "run_workers"]


_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def bind(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """Bind the listening socket (as uvicorn binds its own)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(backlog)
    return sock


@dataclass(slots=True)
class _Worker:
    index: int
    pid: int
    channel: socket.socket  # the parent's end of the pair
    started: float = field(default_factory=time.monotonic)


def run_workers(
    count: int,
    listener: socket.socket,
    target: Callable[[int, socket.socket], int],
    *,
    sidecar: Callable[[socket.socket], int] | None = None,
    crash_window: float = 5.0,
    reaped: Callable[[int], None] | None = None,
) -> int:
    """Fork ``count`` workers running ``target(index, channel)``; supervise them.

    The connections ``listener`` accepts go to the workers in turn. ``sidecar(channel)``,
    if given, runs in one more process that gets no connections (the channel only tells it,
    by an end of file, that the parent is gone) and is supervised like the workers; it
    should return 0 on SIGTERM. ``reaped(pid)``, if given, is called in this process for
    each worker or sidecar that has exited, before any replacement starts. Returns the exit
    code once every process has stopped.

    Raises:
        RuntimeError: if this process already runs other threads (a fork copies their locks
            in whatever state they are in).
    """
    if threading.active_count() != 1:
        raise RuntimeError("workers must be forked before any thread starts")
    workers: dict[int, _Worker] = {}  # by pid
    stopping: list[int] = []
    failed = False

    def name(index: int) -> str:
        return "sidecar" if index < 0 else f"worker {index}"

    def spawn(index: int) -> None:
        # SEQPACKET: one message per connection, and an end of file when the parent dies.
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # SIGINT and SIGTERM are blocked across the fork. In the worker, until it has put the
        # default handlers back: the parent's handler (``stop``), inherited, would swallow the
        # SIGTERM meant to stop it, and it would go on to serve while the parent waits for it
        # for ever. In the parent, until the worker is in ``workers``: ``stop`` would miss it.
        # A signal that arrives meanwhile stays pending and is delivered on unblocking.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        if pid == 0:  # the worker
            code = 1
            try:
                for sig in _STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending stop ends it here
                parent_end.close()
                listener.close()
                for w in workers.values():
                    w.channel.close()
                # Its own process group: Ctrl-C reaches the parent only, which sends each
                # worker one SIGTERM (uvicorn takes a second signal as "exit now").
                os.setpgid(0, 0)
                if index < 0 and sidecar is not None:
                    code = sidecar(child_end)
                else:
                    code = target(index, child_end)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - reported, and the worker exits 1
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        workers[pid] = _Worker(index, pid, parent_end)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child_end.close()
        # Never block the accept loop on one worker: a full channel (a stuck worker) makes
        # ``_hand_over`` pass the connection to the next.
        parent_end.setblocking(False)

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        for pid in list(workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def reap() -> None:
        nonlocal failed
        while workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                workers.clear()
                return
            if pid == 0:
                return
            w = workers.pop(pid, None)
            if w is None:
                continue
            w.channel.close()
            if reaped is not None:
                reaped(pid)
            code = os.waitstatus_to_exitcode(status)
            if stopping:
                # SIGTERM before the worker set its handlers (still forking) is a clean stop.
                failed = failed or code not in (0, -signal.SIGTERM)
            elif time.monotonic() - w.started < crash_window:
                _say(f"{name(w.index)} (pid {pid}) exited with {code} right after starting")
                failed = True
                stop(signal.SIGTERM, None)
            else:
                _say(f"{name(w.index)} (pid {pid}) exited with {code}; starting another")
                spawn(w.index)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    listener.setblocking(False)
    turn = 0
    try:
        for index in range(count):
            spawn(index)
        if sidecar is not None:
            spawn(-1)
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            while workers:
                reap()
                if stopping:
                    if sel.get_map():
                        sel.unregister(listener)
                        listener.close()  # new connections are refused from now on
                    time.sleep(0.05)
                    continue
                if not sel.select(timeout=0.2):
                    continue
                while not stopping:
                    try:
                        conn, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:  # EMFILE and the like: wait a moment, go on
                        _say(f"accept failed: {exc}")
                        time.sleep(0.1)  # the socket stays readable: do not spin
                        break
                    takers = [w for w in workers.values() if w.index >= 0]
                    turn = _hand_over(conn, takers, turn)
    finally:
        listener.close()
        for w in workers.values():
            w.channel.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0


def _say(message: str) -> None:
    print(f"proctor serve: {message}", file=sys.stderr, flush=True)


def _hand_over(conn: socket.socket, workers: list[_Worker], turn: int) -> int:
    """Send ``conn`` to the next worker that takes it; return the next turn."""
    with conn:
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(workers)):
            w = workers[(turn + i) % len(workers)]
            try:
                socket.send_fds(w.channel, [b"c"], [conn.fileno()])
            except OSError:
                continue  # that worker is gone or stuck: the next one
            return turn + i + 1
    return turn  # no worker took it: the client sees the connection close


class Server(uvicorn.Server):
    """``proctor serve``'s ``uvicorn.Server``: on its own socket, or on passed connections.

    With a ``channel`` it listens on no socket: each connection the parent passes is served
    with the protocol uvicorn itself builds for an accepted one, and when the parent is gone
    (end of file on the channel) the server shuts down gracefully.

    ``stop_requested`` is asked once uvicorn handles the signals itself: a SIGTERM that
    arrived while the instance was still opening (before uvicorn's handlers) then stops the
    server at once instead of being lost. ``on_shutdown`` is called when the shutdown begins.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        channel: socket.socket | None = None,
        stop_requested: Callable[[], bool] = lambda: False,
        on_shutdown: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(config)
        self.channel = channel
        self.stop_requested = stop_requested
        self.on_shutdown = on_shutdown
        if channel is not None:
            channel.setblocking(False)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start uvicorn (without a listener when connections come over the channel)."""
        channel = self.channel
        await super().startup(sockets=sockets if channel is None else [])
        if self.stop_requested():
            self.should_exit = True
        if channel is None:
            return
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            # As uvicorn.Server.startup builds it for each accepted connection.
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )
            return protocol

        def receive() -> None:
            while True:
                try:
                    msg, fds, _flags, _addr = socket.recv_fds(channel, 16, 32)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    msg, fds = b"", []
                for fd in fds:
                    sock = socket.socket(fileno=fd)
                    sock.setblocking(False)
                    task = loop.create_task(_serve_conn(loop, create_protocol, sock))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if not msg and not fds:  # the parent is gone: finish and exit
                    loop.remove_reader(channel.fileno())
                    self.should_exit = True
                    return

        loop.add_reader(channel.fileno(), receive)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Tell the app (``on_shutdown``), take no more connections, shut down as uvicorn does.

        The app hears first so that its long-polls and event streams end now: uvicorn waits
        for open requests up to ``timeout_graceful_shutdown`` and then cancels them, which
        sends a plain-text 500.
        """
        self.on_shutdown()
        if self.channel is not None:
            with contextlib.suppress(OSError, ValueError):
                asyncio.get_running_loop().remove_reader(self.channel.fileno())
            self.channel.close()
        await super().shutdown(sockets)


async def _serve_conn(
    loop: asyncio.AbstractEventLoop,
    create_protocol: Callable[[], asyncio.Protocol],
    sock: socket.socket,
) -> None:
    try:
        await loop.connect_accepted_socket(create_protocol, sock)
    except OSError:
        sock.close()  # the client left before the worker took it
