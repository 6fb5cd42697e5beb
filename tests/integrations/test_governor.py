"""The Governor every in-process integration shares: what a tool's result becomes, and what a
plan's params are once submitted (through ``@governed``, the thinnest adapter)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from proctor.errors import ConfigError
from proctor.integrations import governed
from proctor.integrations._governor import BYTES, UNSERIALISABLE

RAN: list[str] = []


@pytest.fixture(autouse=True)
def _reset():
    RAN.clear()


def gov(proctor, name: str, **spec: Any):
    return governed(proctor, action=name, agent_id="bot", on_behalf_of="alice", **spec)


class TestResults:
    def test_non_string_keys_become_strings_and_the_call_succeeds(self, proctor):
        """The tool ran: its result is recorded (keys as strings), never a failure."""

        @gov(proctor, "by_warehouse")
        def by_warehouse() -> dict[int, int]:
            """Stock per warehouse."""
            RAN.append("by_warehouse")
            return {101: 5, 102: 7}

        assert by_warehouse() == {"101": 5, "102": 7}
        assert RAN == ["by_warehouse"]
        assert [p.status.value for p in proctor.plans()] == ["succeeded"]

    def test_bytes_are_base64_under_a_marker(self, proctor):
        @gov(proctor, "export_csv")
        def export_csv() -> bytes:
            """Export."""
            return b"a,b\n1,2\n\xff"

        result = export_csv()

        assert base64.b64decode(result[BYTES]) == b"a,b\n1,2\n\xff"

    def test_an_unserialisable_result_is_a_success_with_a_marker(self, proctor):
        """A result that cannot be JSON after the tool ran: succeeded, marked, once."""

        @gov(proctor, "make_cycle")
        def make_cycle() -> dict[str, Any]:
            """Returns a cycle."""
            RAN.append("make_cycle")
            loop: dict[str, Any] = {}
            loop["self"] = loop
            return loop

        result = make_cycle()

        assert result[UNSERIALISABLE] == "dict" and result["error"]
        assert RAN == ["make_cycle"]
        (plan,) = proctor.plans()
        assert plan.status.value == "succeeded" and plan.steps[0].result == result

    def test_a_generator_function_is_refused_when_governed(self, proctor):
        with pytest.raises(ConfigError, match="generator"):

            @gov(proctor, "send_batch")
            def send_batch():
                """Send emails one by one."""
                yield from range(3)

        assert "send_batch" not in proctor.gateway.catalog

    def test_a_generator_returned_at_run_time_is_a_failure_nothing_ran(self, proctor):
        """A plain function returning a generator: its body never ran, so the plan is
        failed (not ``succeeded`` with a generator's repr)."""

        def emails():
            RAN.append("email")
            yield 1

        @gov(proctor, "send_later")
        def send_later():
            """Returns a generator."""
            return emails()

        with pytest.raises(Exception, match="generator"):
            send_later()
        assert RAN == []
        assert [p.status.value for p in proctor.plans()] == ["failed"]
