"""Step-up codes (TOTP): each accepted once, also by two replicas at the same moment."""

from __future__ import annotations

import threading

import pyotp
import pytest

from proctor.app.stepup import TotpStepUp
from proctor.storage import open_store
from proctor.testing import FrozenClock


@pytest.fixture(params=["sqlite", "postgres"])
def shared_url(request, tmp_path):
    """A database two store instances (two replicas) open at once."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'shared.db'}"


class TestTotpStepUp:
    def test_no_enrolment_no_code(self):
        """Without an enrolment nothing is accepted, not even an empty code."""
        step_up = TotpStepUp(open_store("memory://"), FrozenClock())

        assert step_up.verify("fiona", "123456") is False
        assert step_up.verify("fiona", None) is False
        assert step_up.now_code("fiona") is None

    def test_a_code_is_accepted_once(self):
        """The current code passes once; its replay is refused."""
        step_up = TotpStepUp(open_store("memory://"), FrozenClock())
        step_up.enrol("fiona")
        code = step_up.now_code("fiona")

        assert step_up.verify("fiona", code) is True
        assert step_up.verify("fiona", code) is False

    def test_the_previous_window_is_accepted_and_no_older_one(self):
        """A code of the previous 30 s passes (clock drift); one from two windows ago does not."""
        clock = FrozenClock()
        step_up = TotpStepUp(open_store("memory://"), clock)
        secret, _ = step_up.enrol("fiona")
        totp = pyotp.TOTP(secret)
        previous = totp.at(clock.now(), counter_offset=-1)
        older = totp.at(clock.now(), counter_offset=-2)

        assert step_up.verify("fiona", older) is False
        assert step_up.verify("fiona", previous) is True

    def test_two_replicas_never_both_accept_one_code(self, shared_url):
        """Two replicas verifying the same code at the same moment: at most one accepts.

        The last used time counter was read outside the write transaction without a lock,
        so both replicas read the old value and both accepted (39 of 40 trials on
        PostgreSQL in the security review).
        """
        clock = FrozenClock()
        replicas = [TotpStepUp(open_store(shared_url), clock) for _ in range(2)]
        accepted: list[int] = []
        try:
            for trial in range(40):
                name = f"fiona-{trial}"
                replicas[0].enrol(name)
                code = replicas[0].now_code(name)
                gate = threading.Barrier(2, timeout=30)
                results: list[bool] = []

                def verify(step_up, name=name, code=code, gate=gate, results=results):
                    gate.wait()
                    results.append(step_up.verify(name, code))

                threads = [threading.Thread(target=verify, args=(r,)) for r in replicas]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                accepted.append(results.count(True))
        finally:
            for r in replicas:
                r._store.close()

        assert accepted == [1] * 40
