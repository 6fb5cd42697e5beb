"""The failed-authentication limit: 20 per minute per client address."""

from __future__ import annotations

from proctor.http.auth import FailureLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class TestFailureLimiter:
    def test_an_unknown_address_may_try(self):
        """No failures, no limit."""
        assert FailureLimiter(20).retry_after("1.2.3.4") is None

    def test_the_limit_th_failure_blocks(self):
        """19 failures still allow; the 20th blocks for the rest of the minute."""
        clock = Clock()
        limiter = FailureLimiter(20, monotonic=clock)

        for _ in range(19):
            limiter.failed("a")
        allowed = limiter.retry_after("a")
        limiter.failed("a")
        clock.t += 15
        blocked = limiter.retry_after("a")

        assert allowed is None
        assert blocked == 45

    def test_the_window_slides(self):
        """Failures older than the window are forgotten."""
        clock = Clock()
        limiter = FailureLimiter(3, monotonic=clock)
        for _ in range(3):
            limiter.failed("a")
            clock.t += 10

        clock.t += 31  # the first failure is now 61 s old
        assert limiter.retry_after("a") is None

    def test_addresses_are_independent(self):
        """One address's failures do not limit another."""
        limiter = FailureLimiter(1, monotonic=Clock())
        limiter.failed("a")

        assert limiter.retry_after("a") is not None
        assert limiter.retry_after("b") is None

    def test_memory_is_bounded(self):
        """A spray of addresses does not grow the table without bound."""
        limiter = FailureLimiter(5, monotonic=Clock())
        for i in range(10_050):
            limiter.failed(f"10.{i}")

        assert len(limiter._failures) <= 10_000
