"""The Governor every in-process integration shares: what a tool's result becomes, and what a
plan's params are once submitted (through ``@governed``, the thinnest adapter)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from proctor.errors import ConfigError
from proctor.integrations import ApprovalPending, governed
from proctor.integrations._governor import BYTES, LOW, UNSERIALISABLE

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


class TestParamsAreFrozenAtSubmission:
    def test_a_list_changed_after_the_decision_does_not_change_what_runs(self, proctor):
        """Submitted for approval with one line; the caller then appends to its list: the
        approved call runs with what was decided, and the plan shows that."""
        ran: list[list[str]] = []

        @gov(proctor, "refund", category="financial")
        def refund(amount: int, customer: str, lines: list[str]) -> dict[str, Any]:
            """Refund."""
            ran.append(list(lines))
            return {"refunded": amount}

        lines = ["sku-1"]
        with pytest.raises(ApprovalPending) as pending:
            refund(amount=500, customer="c2", lines=lines)
        lines.append("sku-EVERYTHING")
        proctor.approve(pending.value.plan_id, "fiona", roles=["finance"])

        assert ran == [["sku-1"]]
        assert proctor.get(pending.value.plan_id).steps[0].params["lines"] == ["sku-1"]

    @pytest.mark.parametrize("amount", [5, 500])  # executed at once; approved later
    def test_the_memory_store_keeps_no_reference_to_a_submitted_manifest(self, proctor, amount):
        """Straight through ``Proctor.submit``: the stored plan does not share the caller's
        lists, whether it ran at once or waits for approval."""
        ran: list[Any] = []

        @proctor.action("refund", category="financial", baselines=LOW)
        def refund(params, call):
            ran.append(list(params["lines"]))
            return {"ok": True}

        lines = ["sku-1"]
        proctor.submit(
            {
                "plan_id": "p1",
                "actor": {"type": "agent", "name": "bot", "agent_id": "bot", "model_version": "m"},
                "on_behalf_of": "alice",
                "intent": "refund",
                "steps": [
                    {"id": "s1", "action": "refund", "params": {"amount": amount, "lines": lines}}
                ],
            }
        )
        lines.append("sku-EVERYTHING")
        if amount == 500:
            proctor.approve("p1", "fiona", roles=["finance"])

        assert ran == [["sku-1"]]
        record = proctor.get("p1")
        assert record.status.value == "succeeded"
        assert record.steps[0].params["lines"] == ["sku-1"]
        assert record.manifest["steps"][0]["params"]["lines"] == ["sku-1"]
