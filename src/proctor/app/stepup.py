"""Step-up for high-value approvals: time-based one-time passwords (RFC 6238, pyotp).

An approver enrols once (``proctor totp enrol``) and gets a secret for an authenticator app.
An approval that the policy marks ``step_up`` then needs a current code. A code is accepted
once: its time counter is remembered, so a code seen over someone's shoulder cannot be
replayed within its 30-second life. The counter is read and written in one transaction
under the store's row lock, so two workers or replicas verifying the same code at the same
moment cannot both accept it.
"""

from __future__ import annotations

from datetime import datetime

import pyotp

from proctor.core.ports import Clock, Store
from proctor.errors import InvalidRequestError

__all__ = ["TotpStepUp"]

_INTERVAL = 30
_USED = "totp_used"  # guard state kind: the principal's last accepted time counter


class TotpStepUp:
    """The ``StepUp`` port over TOTP secrets kept in the store's metadata."""

    def __init__(self, store: Store, clock: Clock, *, issuer: str = "Proctor") -> None:
        self._store = store
        self._clock = clock
        self._issuer = issuer

    def enrol(self, principal: str) -> tuple[str, str]:
        """Create (or replace) the principal's secret; return it and its otpauth:// URI."""
        if not principal or len(principal) > 128:
            raise InvalidRequestError("principal must be 1-128 characters", field="principal")
        secret = pyotp.random_base32()
        with self._store.transaction() as tx:
            tx.put_meta(f"totp:{principal}", secret)
        uri = pyotp.TOTP(secret).provisioning_uri(name=principal, issuer_name=self._issuer)
        return secret, uri

    def now_code(self, principal: str) -> str | None:
        """Return the current code (for tests and the demo, which plays the approver)."""
        secret = self._store.get_meta(f"totp:{principal}")
        if secret is None:
            return None
        return str(pyotp.TOTP(secret).at(self._clock.now()))

    def verify(self, principal: str, code: str | None) -> bool:
        """Return whether ``code`` is valid now and was not used before."""
        secret = self._store.get_meta(f"totp:{principal}")
        if secret is None or not code or not code.isdigit():
            return False
        totp = pyotp.TOTP(secret)
        now = self._clock.now()
        counter = int(now.timestamp()) // _INTERVAL
        # Accept the previous window too: clocks drift and people type slowly.
        for c in (counter, counter - 1):
            if totp.generate_otp(c) == code:
                return self._consume(principal, c, now)
        return False

    def _consume(self, principal: str, counter: int, now: datetime) -> bool:
        """Remember ``counter`` as used; False if it (or a later one) already was."""
        with self._store.transaction() as tx:
            # Read under the row lock (SELECT ... FOR UPDATE on PostgreSQL, the write lock on
            # SQLite): a read outside the transaction let two replicas both see the old
            # counter and both accept the same code.
            last = tx.get_state(_USED, principal)
            if isinstance(last, int) and last >= counter:
                return False
            tx.put_state(_USED, principal, counter, at=now)
        return True
