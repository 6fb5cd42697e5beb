"""Step-up for high-value approvals: time-based one-time passwords (RFC 6238, pyotp).

An approver enrols once (``proctor totp enrol``) and gets a secret for an authenticator app.
An approval that the policy marks ``step_up`` then needs a current code. A code is accepted
once: its time counter is remembered, so a code seen over someone's shoulder cannot be
replayed within its 30-second life. The counter is read and written in one transaction
under the store's row lock, so two workers or replicas verifying the same code at the same
moment cannot both accept it.

``check_step_up`` is the gateway's step-up check on ``approve``. Wrong codes are counted per
approver in the store (``StepUpLimiter``), so the count holds across workers and replicas:
after 5 within 15 minutes the approver's step-up is refused (``RateLimitedError``), even
with the right code, until the oldest of them is 15 minutes old. Each wrong code appends a
``stepup.failed`` audit event (the code itself is never recorded). A right code presented
again is refused as used, neither counted nor audited (see ``check_step_up``). An enrolment, which
gives someone the power to pass step-up, is audited too (``stepup.enrolled``, never the
secret), in the transaction that stores the secret.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pyotp

from proctor.core.events import EventType as E
from proctor.core.ports import Clock, StepUp, StepUpCheck, Store, Transaction
from proctor.errors import InvalidRequestError, PermissionDeniedError, RateLimitedError

if TYPE_CHECKING:
    from proctor.app.journal import Journal
    from proctor.core.lifecycle import PlanRecord

__all__ = ["StepUpLimiter", "TotpStepUp", "check_step_up"]

_INTERVAL = 30
_USED = "totp_used"  # guard state kind: the principal's last accepted time counter
_FAILED = "stepup_failed"  # guard state kind: the principal's recent wrong codes


class TotpStepUp:
    """The ``StepUp`` port over TOTP secrets kept in the store's metadata."""

    def __init__(self, store: Store, clock: Clock, *, issuer: str = "Proctor") -> None:
        self._store = store
        self._clock = clock
        self._issuer = issuer

    def enrol(
        self,
        principal: str,
        *,
        journal: Callable[[Transaction], Journal] | None = None,
        by: str | None = None,
    ) -> tuple[str, str]:
        """Create (or replace) the principal's secret; return it and its otpauth:// URI.

        With the gateway's ``journal``, the enrolment is audited (``stepup.enrolled``:
        the principal, whether a secret was replaced, ``by``; never the secret).
        """
        if not principal or len(principal) > 128:
            raise InvalidRequestError("principal must be 1-128 characters", field="principal")
        secret = pyotp.random_base32()
        key = f"totp:{principal}"
        replaced = journal is not None and self._store.get_meta(key) is not None
        with self._store.transaction() as tx:
            tx.put_meta(key, secret)
            if journal is not None:
                j = journal(tx)
                j.emit(
                    E.STEPUP_ENROLLED,
                    user_id=by,
                    actor={"type": "human", "name": by or "unknown"},
                    data={"principal": principal, "replaced": replaced, "by": by},
                )
                j.flush()
        uri = pyotp.TOTP(secret).provisioning_uri(name=principal, issuer_name=self._issuer)
        return secret, uri

    def now_code(self, principal: str) -> str | None:
        """Return the current code (for tests and the demo, which plays the approver)."""
        secret = self._store.get_meta(f"totp:{principal}")
        if secret is None:
            return None
        return str(pyotp.TOTP(secret).at(self._clock.now()))

    def verify(self, principal: str, code: str | None) -> bool:
        """Return whether ``code`` is valid now and was not used before (and use it up)."""
        return self.check(principal, code) is StepUpCheck.ACCEPTED

    def check(self, principal: str, code: str | None) -> StepUpCheck:
        """Check ``code``: accepted (and now used up), wrong, or reused.

        ``REUSED`` means the code is one of this principal's two valid codes (this window's
        or the previous one's) and its window, or a later one, was accepted already.
        """
        secret = self._store.get_meta(f"totp:{principal}")
        # ASCII only: str.isdigit() also holds for other scripts' digits, which never match
        # and which hmac.compare_digest refuses (TypeError) in a str.
        if secret is None or not code or not (code.isascii() and code.isdigit()):
            return StepUpCheck.WRONG
        totp = pyotp.TOTP(secret)
        now = self._clock.now()
        counter = int(now.timestamp()) // _INTERVAL
        # Accept the previous window too: clocks drift and people type slowly.
        for c in (counter, counter - 1):
            if hmac.compare_digest(totp.generate_otp(c), code):
                return self._consume(principal, c, now)
        return StepUpCheck.WRONG

    def _consume(self, principal: str, counter: int, now: datetime) -> StepUpCheck:
        """Remember ``counter`` as used; ``REUSED`` if it (or a later one) already was."""
        with self._store.transaction() as tx:
            # Read under the row lock (SELECT ... FOR UPDATE on PostgreSQL, the write lock on
            # SQLite): a read outside the transaction let two replicas both see the old
            # counter and both accept the same code.
            last = tx.get_state(_USED, principal)
            if isinstance(last, int) and last >= counter:
                return StepUpCheck.REUSED
            tx.put_state(_USED, principal, counter, at=now)
        return StepUpCheck.ACCEPTED


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


class StepUpLimiter:
    """Wrong step-up codes per principal, counted in the store's guard state.

    Six-digit codes with two valid at a time: 5 guesses per 15 minutes (480 a day) give a
    guesser a 0.1% chance a day; without a limit, one client guessing 170 codes a second
    expects a hit in about 50 minutes. The state is read under the row lock, so the count
    is exact across workers and replicas.

    Args:
        limit: Wrong codes within ``window`` after which step-up is refused (default 5).
        window: How long a wrong code counts (default 15 minutes).
    """

    def __init__(self, *, limit: int = 5, window: timedelta = timedelta(minutes=15)) -> None:
        self.limit = limit
        self.window = window

    def _recent(self, tx: Transaction, principal: str, now: datetime) -> list[str]:
        value = tx.get_state(_FAILED, principal)  # locked until the transaction ends
        stamps = value.get("failed", []) if isinstance(value, dict) else []
        since = now - self.window
        return sorted((t for t in stamps if _at(t) > since), key=_at)

    def _save(self, tx: Transaction, principal: str, stamps: list[str], now: datetime) -> None:
        value = {"failed": stamps[-self.limit :]} if stamps else None  # None deletes the row
        tx.put_state(_FAILED, principal, value, at=now)

    def reserve(self, tx: Transaction, principal: str, now: datetime) -> int | None:
        """Count an attempt as wrong before its code is checked; or refuse it.

        Counting first, under the lock, is what keeps the limit exact: parallel guesses
        (one per worker or replica) cannot all pass a check made before any was counted.
        ``release`` takes the count back when the code was right.

        Returns:
            None when the attempt may go on; else the seconds until it may (at least 1).
        """
        stamps = self._recent(tx, principal, now)
        if len(stamps) >= self.limit:
            oldest = _at(stamps[-self.limit])
            return max(1, math.ceil((oldest + self.window - now).total_seconds()))
        self._save(tx, principal, [*stamps, now.isoformat()], now)
        return None

    def release(self, tx: Transaction, principal: str, now: datetime) -> None:
        """Take back the count ``reserve`` made at ``now``: the code was right."""
        stamps = self._recent(tx, principal, now)
        if now.isoformat() in stamps:
            stamps.remove(now.isoformat())
        self._save(tx, principal, stamps, now)

    def failures(self, tx: Transaction, principal: str, now: datetime) -> int:
        """Return the wrong codes of ``principal`` within the window, as of ``now``."""
        return len(self._recent(tx, principal, now))


LIMITER = StepUpLimiter()
"""The limits ``approve`` applies: 5 wrong codes per approver within 15 minutes."""


def _needs_code(hint: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        "this approval needs a valid step-up code (TOTP)", field="otp", hint=hint
    )


def check_step_up(
    store: Store,
    step_up: StepUp | None,
    journal: Callable[[Transaction], Journal],
    record: PlanRecord,
    principal: str,
    code: str | None,
    *,
    now: datetime,
    limiter: StepUpLimiter = LIMITER,
) -> None:
    """Check ``principal``'s step-up ``code`` for approving ``record``; raise if it fails.

    No code at all is refused without counting (nothing was guessed), and so is a right code
    that was used already (a double-click, or one code for several approvals in its 30 s):
    its own message asks for the next code. A wrong code is counted and audited
    (``stepup.failed``, in its own transaction: the refusal that follows rolls nothing back).

    Raises:
        PermissionDeniedError: no step-up is configured, no code, or a wrong or used code.
        RateLimitedError: too many wrong codes of ``principal`` lately (the right one too).
    """
    enrol = "Enrol with `proctor totp enrol --as NAME` and pass --otp CODE."
    if step_up is None or not code:
        raise _needs_code(enrol)
    with store.transaction() as tx:
        wait = limiter.reserve(tx, principal, now)
    if wait is not None:
        raise RateLimitedError(
            f"too many wrong step-up codes for {principal!r}: step-up is refused for {wait} s",
            field="otp",
            hint=f"Try again with a fresh code in {wait} s. Each wrong code is in the audit "
            "log (stepup.failed).",
            retry_after=wait,
        )
    result = step_up.check(principal, code)
    if result is not StepUpCheck.WRONG:
        with store.transaction() as tx:
            limiter.release(tx, principal, now)
    if result is StepUpCheck.ACCEPTED:
        return
    if result is StepUpCheck.REUSED:
        # NOTE(security): saying "used already" tells the caller that the code was one of the
        # approver's two valid codes. That helps no guesser: the code can never be accepted
        # again (counters only go forward), and TOTP codes of other windows are independent
        # of it (HMAC). Guessing stays as hard as before: a code that was never valid is
        # still WRONG and counted, and while locked nothing is checked at all (above). Not
        # audited either: the code's one use is audited already (approval.granted,
        # step_up: true), and an uncounted event per request would let a double-clicking
        # or looping client grow the signed log without bound.
        raise PermissionDeniedError(
            "this step-up code (TOTP) was used already; each code approves once",
            field="otp",
            hint="Wait for your authenticator's next code (at most 30 s) and approve with it. "
            "A used code does not count as a wrong code.",
        )
    with store.transaction() as tx:
        failures = limiter.failures(tx, principal, now)
        j = journal(tx)
        j.emit(
            E.STEPUP_FAILED,
            plan=record,
            user_id=principal,
            data={
                "principal": principal,
                "failures": failures,
                "limit": limiter.limit,
                "window_seconds": int(limiter.window.total_seconds()),
                "locked": failures >= limiter.limit,
            },
        )
        j.flush()
    minutes = int(limiter.window.total_seconds()) // 60
    left = limiter.limit - failures
    raise _needs_code(
        f"The code is wrong; {left} more wrong codes within {minutes} "
        "minutes lock step-up for a while."
        if left > 0
        else f"The code is wrong; step-up is now locked for up to {minutes} minutes."
    )
