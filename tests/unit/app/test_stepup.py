"""Step-up codes (TOTP): each accepted once, also by two replicas at the same moment; wrong
codes counted per approver in the store, audited, and refused after 5 in 15 minutes."""

from __future__ import annotations

import threading
from datetime import timedelta

import pyotp
import pytest

from proctor import Proctor
from proctor.app.stepup import StepUpLimiter, TotpStepUp
from proctor.core.ports import StepUpCheck
from proctor.errors import (
    ConflictError,
    InvalidRequestError,
    PermissionDeniedError,
    ProctorError,
    RateLimitedError,
)
from proctor.storage import open_store
from proctor.testing import FrozenClock, make_plan

BIG_PAYMENT = ("travel.pay", {"amount": 640_000, "currency": "EUR", "traveller": "alice"})


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

    def test_a_used_code_is_told_apart_from_a_wrong_one(self):
        """A right code seen again is REUSED (also the previous window's, once a later one was
        used); a code that was never valid is WRONG."""
        clock = FrozenClock()
        step_up = TotpStepUp(open_store("memory://"), clock)
        secret, _ = step_up.enrol("fiona")
        totp = pyotp.TOTP(secret)
        code = totp.at(clock.now())
        previous = totp.at(clock.now(), counter_offset=-1)
        wrong = next(c for c in ("000000", "111111", "222222") if c not in {code, previous})

        first = step_up.check("fiona", code)
        again = step_up.check("fiona", code)
        superseded = step_up.check("fiona", previous)
        guessed = step_up.check("fiona", wrong)
        clock.advance(30)
        fresh = step_up.check("fiona", totp.at(clock.now()))

        assert (first, again, superseded, guessed, fresh) == (
            StepUpCheck.ACCEPTED,
            StepUpCheck.REUSED,
            StepUpCheck.REUSED,
            StepUpCheck.WRONG,
            StepUpCheck.ACCEPTED,
        )
        assert step_up.check("gus", code) is StepUpCheck.WRONG  # not enrolled

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

    @pytest.mark.parametrize(
        "code",
        ["", "12345a", " 123456", "\u0661\u0662\u0663\u0664\u0665\u0666", "\uff11" * 6],
    )
    def test_codes_that_are_not_ascii_digits_are_refused(self, code):
        """Only ASCII digits can match: other digits (Arabic-Indic, fullwidth) are refused,
        not a TypeError from hmac.compare_digest."""
        step_up = TotpStepUp(open_store("memory://"), FrozenClock())
        step_up.enrol("fiona")

        assert step_up.verify("fiona", code) is False

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


class TestStepUpLimiter:
    def test_nothing_counted_nothing_refused(self):
        """A principal without failures may try; releasing nothing leaves no state."""
        store, clock = open_store("memory://"), FrozenClock()
        limiter = StepUpLimiter(limit=2, window=timedelta(minutes=15))

        with store.transaction() as tx:
            wait = limiter.reserve(tx, "fiona", clock.now())
            limiter.release(tx, "fiona", clock.now())

        assert wait is None
        assert store.list_state("stepup_failed") == {}

    def test_refused_after_the_limit_until_the_oldest_failure_is_a_window_old(self):
        """Two failures with a limit of 2: refused, with the seconds until the first expires."""
        store, clock = open_store("memory://"), FrozenClock()
        limiter = StepUpLimiter(limit=2, window=timedelta(minutes=15))
        waits = []
        for step in (0, 60, 0, 839, 1):  # seconds to advance before each attempt
            clock.advance(step)
            with store.transaction() as tx:
                waits.append(limiter.reserve(tx, "fiona", clock.now()))

        assert waits == [None, None, 840, 1, None]

    def test_a_released_attempt_does_not_count(self):
        """An attempt whose code was right is taken back; other principals are apart."""
        store, clock = open_store("memory://"), FrozenClock()
        limiter = StepUpLimiter(limit=2)
        for _ in range(5):
            with store.transaction() as tx:
                assert limiter.reserve(tx, "fiona", clock.now()) is None
                limiter.release(tx, "fiona", clock.now())
        with store.transaction() as tx:
            limiter.reserve(tx, "gus", clock.now())
            limiter.reserve(tx, "gus", clock.now())

            assert limiter.failures(tx, "fiona", clock.now()) == 0
            assert limiter.reserve(tx, "gus", clock.now()) == 900


@pytest.fixture
def world():
    """An instance with the default policy (travel.pay over 50,000: finance, step-up)."""
    clock = FrozenClock()
    p = Proctor.in_memory(clock=clock)
    secret, _ = p.enrol_totp("fiona")
    yield p, clock, pyotp.TOTP(secret)
    p.close()


def _wrong(totp, clock):
    right = {totp.at(clock.now()), totp.at(clock.now(), counter_offset=-1)}
    return next(c for c in ("000000", "111111", "222222") if c not in right)


def _approve(p, plan_id, code):
    return p.approve(plan_id, "fiona", roles=["finance"], otp=code)


class TestCheckStepUp:
    def test_a_wrong_code_is_audited_without_the_code(self, world):
        """Each wrong code appends stepup.failed naming the approver and the plan, not the code."""
        p, clock, totp = world
        plan = p.submit(make_plan([BIG_PAYMENT], agent_id="travel-bot"))
        wrong = _wrong(totp, clock)

        with pytest.raises(PermissionDeniedError) as ei:
            _approve(p, plan.plan_id, wrong)

        assert ei.value.field == "otp"
        assert "4 more wrong codes" in ei.value.hint
        failed = [e for e in p.events() if e.type == "stepup.failed"]
        assert len(failed) == 1
        assert failed[0].plan_id == plan.plan_id
        assert b'"principal":"fiona"' in failed[0].body
        assert b'"failures":1' in failed[0].body
        assert wrong.encode() not in failed[0].body
        assert p.verify().ok

    def test_after_five_wrong_codes_the_right_code_is_refused_until_the_window_passes(self, world):
        """Five wrong codes in 15 minutes lock step-up (the right code too, unconsumed)."""
        p, clock, totp = world
        plan = p.submit(make_plan([BIG_PAYMENT], agent_id="travel-bot"))
        for _ in range(5):
            with pytest.raises(PermissionDeniedError):
                _approve(p, plan.plan_id, _wrong(totp, clock))
            clock.advance(60)

        with pytest.raises(RateLimitedError) as locked:
            _approve(p, plan.plan_id, totp.at(clock.now()))
        clock.advance(locked.value.details["retry_after"])
        done = _approve(p, plan.plan_id, totp.at(clock.now()))

        assert locked.value.code == "rate_limited"
        assert locked.value.field == "otp"
        assert locked.value.details["retry_after"] == 15 * 60 - 5 * 60
        assert done.status.value == "succeeded"
        types = [e.type for e in p.events()]
        assert types.count("stepup.failed") == 5  # the refusals while locked append nothing
        assert b'"locked":true' in [e for e in p.events() if e.type == "stepup.failed"][-1].body

    def test_a_right_code_does_not_count_and_no_code_is_no_guess(self, world):
        """Missing codes are refused without counting; a right code takes its count back."""
        p, clock, totp = world
        plans = [p.submit(make_plan([BIG_PAYMENT], agent_id="travel-bot")) for _ in range(2)]
        for _ in range(10):
            with pytest.raises(PermissionDeniedError):
                _approve(p, plans[0].plan_id, None)
        for _ in range(4):
            with pytest.raises(PermissionDeniedError):
                _approve(p, plans[0].plan_id, _wrong(totp, clock))

        done = _approve(p, plans[0].plan_id, totp.at(clock.now()))
        with pytest.raises(PermissionDeniedError) as fifth:
            _approve(p, plans[1].plan_id, _wrong(totp, clock))
        with pytest.raises(RateLimitedError):
            _approve(p, plans[1].plan_id, _wrong(totp, clock))

        assert done.status.value == "succeeded"
        assert "now locked" in fifth.value.hint
        assert [e.type for e in p.events()].count("stepup.failed") == 5

    def test_one_code_for_seven_approvals_is_refused_as_used_without_locking(self, world):
        """Clearing 7 step-up approvals with one window's code: the first runs, the other six
        are refused as used (not counted, not audited), and the next code approves.

        Regression: a used code counted as a wrong one, so the 6th reuse got 429 and the
        approver was locked out for 15 minutes, the next window's code too.
        """
        p, clock, totp = world
        plans = [p.submit(make_plan([BIG_PAYMENT], agent_id="travel-bot")) for _ in range(8)]
        code = totp.at(clock.now())
        done = _approve(p, plans[0].plan_id, code)
        reused = []
        for plan in plans[1:7]:
            with pytest.raises(PermissionDeniedError) as ei:
                _approve(p, plan.plan_id, code)
            reused.append(ei.value)
        clock.advance(30)
        fresh = _approve(p, plans[7].plan_id, totp.at(clock.now()))

        assert done.status.value == "succeeded"
        assert {(e.field, e.message) for e in reused} == {
            ("otp", "this step-up code (TOTP) was used already; each code approves once")
        }
        assert "next code (at most 30 s)" in reused[0].hint
        assert fresh.status.value == "succeeded"
        assert [e.type for e in p.events()].count("stepup.failed") == 0
        assert [p.get(plan.plan_id).status.value for plan in plans[1:7]] == [
            "awaiting_approval"
        ] * 6

    def test_wrong_codes_still_lock_between_reused_ones(self, world):
        """Reuses do not count, wrong codes do: 5 wrong ones lock step-up, reuses or not."""
        p, clock, totp = world
        plans = [p.submit(make_plan([BIG_PAYMENT], agent_id="travel-bot")) for _ in range(2)]
        code = totp.at(clock.now())
        _approve(p, plans[0].plan_id, code)
        hints = []
        for _ in range(5):
            with pytest.raises(PermissionDeniedError, match="used already"):
                _approve(p, plans[1].plan_id, code)
            with pytest.raises(PermissionDeniedError) as wrong:
                _approve(p, plans[1].plan_id, _wrong(totp, clock))
            hints.append(wrong.value.hint)

        with pytest.raises(RateLimitedError):
            _approve(p, plans[1].plan_id, code)  # locked: not even told it is used

        assert "4 more wrong codes" in hints[0]
        assert "now locked" in hints[-1]
        assert [e.type for e in p.events()].count("stepup.failed") == 5

    def test_a_refused_comment_does_not_use_the_code_up(self, world):
        """An approval refused for its comment leaves the code valid for the retry."""
        p, clock, totp = world
        plan = p.submit(make_plan([BIG_PAYMENT], agent_id="travel-bot"))
        code = totp.at(clock.now())

        with pytest.raises(InvalidRequestError, match="comment"):
            p.approve(plan.plan_id, "fiona", roles=["finance"], otp=code, comment="x" * 2001)
        done = _approve(p, plan.plan_id, code)

        assert done.status.value == "succeeded"
        assert [e.type for e in p.events()].count("stepup.failed") == 0

    def test_a_kill_switch_refusal_does_not_use_the_code_up(self, world):
        """Killed: the approval is refused before the code is checked; released: it runs."""
        p, clock, totp = world
        plan = p.submit(make_plan([BIG_PAYMENT], agent_id="travel-bot"))
        code = totp.at(clock.now())
        p.kill("agent", "travel-bot", by="ops", reason="runaway")

        with pytest.raises(ConflictError, match="kill switch agent:travel-bot"):
            _approve(p, plan.plan_id, code)
        p.unkill("agent", "travel-bot", by="ops")
        done = _approve(p, plan.plan_id, code)

        assert done.status.value == "succeeded"
        assert [e.type for e in p.events()].count("stepup.failed") == 0

    def test_parallel_guesses_on_two_replicas_get_five_tries_in_all(self, shared_url):
        """Guesses racing on two replicas: 5 are checked, every other one is refused (429).

        Each attempt is counted (under the row lock) before its code is checked, so parallel
        guesses cannot all pass a check made before any of them was counted.
        """
        clock = FrozenClock()
        replicas = [Proctor.in_memory(clock=clock, database_url=shared_url) for _ in range(2)]
        try:
            secret, _ = replicas[0].enrol_totp("fiona")
            wrong = _wrong(pyotp.TOTP(secret), clock)
            plans = [
                replicas[0].submit(make_plan([BIG_PAYMENT], agent_id="travel-bot")).plan_id
                for _ in range(8)
            ]
            gate = threading.Barrier(len(plans), timeout=30)
            outcomes: list[str] = []

            def guess(i):
                gate.wait()
                try:
                    _approve(replicas[i % 2], plans[i], wrong)
                except ProctorError as exc:
                    outcomes.append(exc.code)

            threads = [threading.Thread(target=guess, args=(i,)) for i in range(len(plans))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            failed = [e for e in replicas[0].events() if e.type == "stepup.failed"]
        finally:
            for r in replicas:
                r.close()

        assert sorted(outcomes) == ["permission_denied"] * 5 + ["rate_limited"] * 3
        assert len(failed) == 5
