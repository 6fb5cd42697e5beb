"""Sending the webhook outbox: claim due deliveries, POST them signed, retry, dead-letter.

A delivery is a POST of the stored body with four headers::

    Proctor-Event: plan.decided
    Proctor-Delivery: <delivery id>          (receivers deduplicate on it)
    Proctor-Timestamp: <unix seconds>
    Proctor-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}." + body)>

Signing the timestamp with the body lets a receiver reject replays: a captured request is
useless once its timestamp is older than the receiver's tolerance (``verify_signature``).

Delivery is *at least once*. A 2xx marks the delivery delivered; anything else (a status,
a timeout, a refused connection) schedules a retry with exponential backoff and jitter, and
the last allowed failure marks it ``dead`` (the dead-letter list admins can read).

Several dispatchers may serve one store (two ``proctor serve`` processes, or a restart that
overlaps the old one). Each claims a delivery by compare-and-set before sending: inside a
write transaction it re-reads the delivery and claims it only if nobody attempted it since it
was listed; the claim counts the attempt and leases the delivery for longer than a POST can
take, so no other dispatcher sends it meanwhile.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from proctor.app.notify import Notifier
from proctor.config import WebhookSettings
from proctor.core.notifications import Delivery, DeliveryStatus
from proctor.core.ports import Clock, Store

if TYPE_CHECKING:
    import httpx

    from proctor.app.gateway import Gateway

__all__ = ["Dispatcher", "RetryPolicy", "sign", "verify_signature"]

log = logging.getLogger("proctor.webhooks")

SIGNATURE_VERSION = "v1"
_MAX_ERROR = 300


def sign(secret: bytes | str, timestamp: int | str, body: bytes) -> str:
    """Return the ``Proctor-Signature`` header value for a body sent at ``timestamp``.

    Args:
        secret: The webhook's shared secret.
        timestamp: Unix seconds, as sent in ``Proctor-Timestamp``.
        body: The exact request body.

    Returns:
        ``v1=<hex HMAC-SHA256(secret, f"{timestamp}." + body)>``.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def verify_signature(
    secret: bytes | str,
    timestamp: int | str,
    body: bytes,
    header: str,
    *,
    now: datetime | float,
    tolerance: float | timedelta = 300,
) -> bool:
    """Check a delivery the way a receiver should: signature first, then freshness.

    Use the raw request body (before any JSON parsing) and the header values as received.

    Args:
        secret: The webhook's shared secret.
        timestamp: The ``Proctor-Timestamp`` header (unix seconds).
        body: The raw request body.
        header: The ``Proctor-Signature`` header; several comma-separated ``v1=`` values
            are accepted (a sender rotating its secret may send two).
        now: The receiver's current time (an aware ``datetime`` or unix seconds).
        tolerance: How far the timestamp may be from ``now``, in seconds or as a
            ``timedelta``; default 300 (5 minutes). Older requests are replays.

    Returns:
        True only if some signature matches (compared in constant time) and the timestamp
        is within ``tolerance`` of ``now``.
    """
    try:
        sent = int(str(timestamp).strip())
    except ValueError:
        return False
    now_s = now.timestamp() if isinstance(now, datetime) else float(now)
    limit = tolerance.total_seconds() if isinstance(tolerance, timedelta) else float(tolerance)
    if abs(now_s - sent) > limit:
        return False
    expected = sign(secret, str(timestamp).strip(), body)
    # Compare every candidate, not stopping at the first match: timing reveals nothing then.
    results = [hmac.compare_digest(expected, c.strip()) for c in header.split(",")]
    return any(results)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """When to try a failed delivery again.

    Attributes:
        base: Delay after the first failure. Default 1 second.
        factor: Growth per further failure. Default 2.
        cap: Longest delay. Default 10 minutes.
        max_attempts: Attempts before the delivery is dead-lettered. Default 8.
    """

    base: timedelta = timedelta(seconds=1)
    factor: float = 2.0
    cap: timedelta = timedelta(minutes=10)
    max_attempts: int = 8

    def delay(self, attempts: int, rng: random.Random) -> timedelta:
        """Return the wait after the ``attempts``-th failure: exponential, with jitter.

        The jitter draws from the upper half of the exponential step, so a failing receiver
        that recovers is not hit by every queued delivery in the same second, and the wait
        never exceeds ``cap``.
        """
        step = min(
            self.cap.total_seconds(), self.base.total_seconds() * self.factor ** (attempts - 1)
        )
        return timedelta(seconds=rng.uniform(step / 2, step))


def _http_client(timeout: float) -> httpx.Client:
    # Imported here: httpx takes ~0.1 s to import, and every CLI command imports this module.
    import httpx

    return httpx.Client(timeout=timeout, follow_redirects=False)


class Dispatcher:
    """Sends due outbox deliveries; ``start()`` runs it in a background thread.

    Args:
        store: The store that holds the outbox.
        targets: The configured webhooks and ticket targets, matched by ``target`` name.
        clock: Where time comes from (due times, timestamps, backoff).
        retry: Backoff and dead-letter policy.
        timeout: Seconds a POST may take. Default 5.
        lease: How long a claimed delivery is hidden from other dispatchers; longer than any
            POST. Default 60 seconds.
        batch: Deliveries listed per round. Default 50.
        interval: Seconds between rounds when idle. Default 1.
        client: An ``httpx.Client`` to send with (the dispatcher closes only its own).
        rng: Source of jitter. Default a fresh ``random.Random``.
    """

    def __init__(
        self,
        store: Store,
        targets: Sequence[WebhookSettings],
        *,
        clock: Clock,
        retry: RetryPolicy | None = None,
        timeout: float = 5.0,
        lease: timedelta = timedelta(seconds=60),
        batch: int = 50,
        interval: float = 1.0,
        client: httpx.Client | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.targets: Mapping[str, WebhookSettings] = {t.target: t for t in targets}
        self.clock = clock
        self.retry = retry or RetryPolicy()
        self.lease = lease
        self.batch = batch
        self.interval = interval
        self._own_client = client is None
        self._client = client or _http_client(timeout)
        self._timeout = timeout
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_gateway(cls, gateway: Gateway, **options: Any) -> Dispatcher:
        """Return a dispatcher (not started) for the targets of the gateway's notifiers.

        The notifiers (``proctor.app.notify.Notifier`` listeners) are told to ``wake`` it
        whenever they queue deliveries, so a new delivery leaves at once rather than at the
        next poll.

        Args:
            gateway: The gateway whose store holds the outbox.
            **options: ``Dispatcher`` keyword arguments (``retry``, ``timeout``, ...).
        """
        notifiers = [x for x in gateway.listeners if isinstance(x, Notifier)]
        targets = [t for n in notifiers for t in n.targets]
        dispatcher = cls(gateway.store, targets, clock=gateway.clock, **options)
        for n in notifiers:
            n.on_enqueue = dispatcher.wake
        return dispatcher

    # ------------------------------------------------------------------ one round

    def run_once(self, now: datetime | None = None) -> int:
        """Attempt every due delivery once.

        Args:
            now: The time of this round (tests step a frozen clock); default the clock's.

        Returns:
            The number of deliveries attempted by this dispatcher (successful or not).

        Raises:
            StorageError: if the store fails.
        """
        at = now if now is not None else self.clock.now()
        attempted = 0
        for listed in self.store.due_deliveries(at, limit=self.batch):
            if self._stop.is_set() and self._thread is not None:
                break  # stopping: the rest stay pending for the next dispatcher
            claimed = self.claim(listed, at)
            if claimed is None:
                continue
            target = self.targets.get(claimed.target)
            if target is None:
                # Removed from this process's configuration, or added to a newer process's
                # during a rolling restart: a failed attempt (not dead at once), so another
                # dispatcher may still send it, and else it ends in the dead letters.
                self._finish(claimed, f"no webhook named {claimed.target!r} is configured", at)
                continue
            error = self._post(claimed, target, at if now is not None else self.clock.now())
            self._finish(claimed, error, at if now is not None else self.clock.now())
            attempted += 1
        return attempted

    def claim(self, listed: Delivery, now: datetime) -> Delivery | None:
        """Take a listed delivery for one attempt, unless another dispatcher already has.

        Compare-and-set: inside a write transaction (which holds the store's write lock) the
        delivery is read again and claimed only if its attempts and due time are still those
        that were listed. The claim counts the attempt and leases the delivery.

        Returns:
            The claimed delivery, or None if it was attempted (or finished) meanwhile.
        """
        with self.store.transaction() as tx:
            # NOTE(webhooks): the store is read inside its own write transaction: both stores
            # serve reads on the connection (or under the lock) that the transaction holds,
            # so the read sees the latest commit and nobody can write until we commit.
            current = next(
                (
                    d
                    for d in self.store.due_deliveries(now, limit=self.batch)
                    if d.delivery_id == listed.delivery_id
                ),
                None,
            )
            if (
                current is None
                or current.status is not DeliveryStatus.PENDING
                or current.attempts != listed.attempts
                or current.next_at != listed.next_at
            ):
                return None
            claimed = replace(current, attempts=current.attempts + 1, next_at=now + self.lease)
            tx.save_delivery(claimed)
        return claimed

    def _post(self, d: Delivery, target: WebhookSettings, now: datetime) -> str | None:
        timestamp = str(int(now.timestamp()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "proctor-webhooks/1",
            "Proctor-Event": d.event,
            "Proctor-Delivery": d.delivery_id,
            "Proctor-Timestamp": timestamp,
            "Proctor-Signature": sign(target.secret, timestamp, d.payload),
        }
        import httpx  # loaded already: the client is an httpx.Client

        try:
            response = self._client.post(
                target.url, content=d.payload, headers=headers, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:_MAX_ERROR]
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}: {response.text[:200]}"[:_MAX_ERROR]

    def _finish(self, d: Delivery, error: str | None, now: datetime) -> None:
        if error is None:
            done = replace(d, status=DeliveryStatus.DELIVERED, last_error=None)
        elif d.attempts >= self.retry.max_attempts:
            done = replace(d, status=DeliveryStatus.DEAD, last_error=error)
            log.warning(
                "webhook delivery %s to %s dead after %d attempt(s): %s",
                d.delivery_id,
                d.target,
                d.attempts,
                error,
            )
        else:
            delay = self.retry.delay(d.attempts, self._rng)
            done = replace(d, next_at=now + delay, last_error=error)
            log.info(
                "webhook delivery %s to %s failed (attempt %d), retry in %.1fs: %s",
                d.delivery_id,
                d.target,
                d.attempts,
                delay.total_seconds(),
                error,
            )
        with self.store.transaction() as tx:
            tx.save_delivery(done)

    # ------------------------------------------------------------------ background thread

    def start(self) -> None:
        """Run rounds in a daemon thread until ``stop()``; idempotent."""
        if self.running:
            return
        if self._own_client and self._client.is_closed:  # started again after stop()
            self._client = _http_client(self._timeout)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="proctor-webhooks", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the background thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Start the next round now instead of after ``interval`` (new deliveries queued)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (finishing the POST in flight) and close the HTTP client."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.close()

    def close(self) -> None:
        """Close the HTTP client if the dispatcher created it."""
        if self._own_client:
            self._client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once() >= self.batch
            except Exception:  # the loop must outlive a failing store (logged)
                log.exception("webhook dispatcher round failed")
                busy = False
            if not busy:
                self._wake.wait(self.interval)
            self._wake.clear()

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
