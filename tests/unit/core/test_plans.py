"""Plan manifests: structural validation and the digest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from proctor.core.plans import (
    CANARY_SUFFIX,
    Limits,
    Plan,
    check_chosen_plan_id,
    idempotency_key,
    new_plan_id,
)
from proctor.errors import InvalidRequestError
from proctor.testing import make_plan


def _plan(**overrides):
    p = make_plan([("travel.search", {"destination": "Lisbon", "date": "2027-01-01"})])
    p.update(overrides)
    return p


class TestPlanFromDict:
    def test_not_an_object(self):
        """A manifest that is not an object is rejected naming `plan`."""
        with pytest.raises(InvalidRequestError) as ei:
            Plan.from_dict([1, 2])
        assert ei.value.field == "plan"

    def test_valid_plan(self):
        """A valid manifest parses with a digest."""
        plan = Plan.from_dict(_plan())
        assert plan.digest.startswith("sha256:")
        assert plan.steps[0].id == "s1"

    def test_digest_is_stable_and_content_bound(self):
        """The same manifest has the same digest; any param change changes it."""
        a = Plan.from_dict(_plan())
        b = Plan.from_dict(_plan())
        changed = _plan()
        changed["steps"][0]["params"]["destination"] = "Porto"
        assert a.digest == b.digest
        assert Plan.from_dict(changed).digest != a.digest

    def test_signature_not_in_digest(self):
        """The signature member is excluded from the digest."""
        signed = _plan(signature={"key_id": "k", "value": "AAAA"})
        assert Plan.from_dict(signed).digest == Plan.from_dict(_plan()).digest

    @pytest.mark.parametrize(
        ("mutate", "field"),
        [
            (lambda p: p.pop("steps"), "steps"),
            (lambda p: p.update(steps=[]), "steps"),
            (lambda p: p["actor"].pop("agent_id"), "actor.agent_id"),
            (lambda p: p.update(on_behalf_of=""), "on_behalf_of"),
            (lambda p: p.update(surprise=1), "surprise"),
            (lambda p: p["steps"][0].update(params=[1]), "steps[0].params"),
            (lambda p: p["steps"].append(dict(p["steps"][0])), "steps[1].id"),
            (lambda p: p.update(plan_id="bad id with spaces"), "plan_id"),
            # "$" would admit a final newline: a plan id that breaks the Location header
            (lambda p: p.update(plan_id="p-1\n"), "plan_id"),
            (lambda p: p.update(on_behalf_of="alice\n"), "on_behalf_of"),
            (lambda p: p["actor"].update(agent_id="bot\n"), "actor.agent_id"),
            (lambda p: p["steps"][0].update(id="s1\n"), "steps[0].id"),
            (lambda p: p.update(intent="x" * 9000), "intent"),
            # "@" is a person's (on_behalf_of), not an id's
            (lambda p: p.update(plan_id="p@1"), "plan_id"),
            (lambda p: p["actor"].update(agent_id="bot@x"), "actor.agent_id"),
            (lambda p: p["steps"][0].update(id="s@1"), "steps[0].id"),
            (lambda p: p.update(on_behalf_of="@alice"), "on_behalf_of"),
            (lambda p: p.update(on_behalf_of="alice@example.com\n"), "on_behalf_of"),
        ],
    )
    def test_bad_input_names_the_field(self, mutate, field):
        """Each structural error names the field at fault."""
        p = _plan()
        mutate(p)
        with pytest.raises(InvalidRequestError) as ei:
            Plan.from_dict(p)
        assert ei.value.field == field

    @pytest.mark.parametrize("user", ["alice@example.com", "ops.bot@x", "a:b@c-d_e"])
    def test_a_person_named_with_an_at_sign_is_a_valid_on_behalf_of(self, user):
        """Token and JWT names may hold "@" (e-mail, UPN): so may the user a plan acts for.

        Regression: such a user could never be a plan's on_behalf_of, so never confirm or
        undo anything.
        """
        assert Plan.from_dict(_plan(on_behalf_of=user)).on_behalf_of == user

    @pytest.mark.parametrize(
        "user", ["jos\u00e9", "Zo\u00eb", "\u0141ukasz", "\u674e\u96f7", "\u0430lice"]
    )
    def test_a_name_with_letters_outside_ascii_is_refused_saying_so(self, user):
        """Names are ASCII (look-alikes would defeat separation of duties): the refusal says
        "ASCII" and hints at the login or e-mail address, not "letters" as if é were one.
        """
        with pytest.raises(InvalidRequestError) as ei:
            Plan.from_dict(_plan(on_behalf_of=user))

        assert ei.value.field == "on_behalf_of"
        assert "ASCII" in ei.value.message
        assert "e-mail address" in (ei.value.hint or "")

    def test_an_agent_id_outside_ascii_is_refused_saying_so(self):
        """An id's refusal says its letters are ASCII too."""
        p = _plan()
        p["actor"]["agent_id"] = "b\u00f6t"

        with pytest.raises(InvalidRequestError) as ei:
            Plan.from_dict(p)

        assert ei.value.field == "actor.agent_id"
        assert "ASCII" in ei.value.message

    def test_too_many_steps(self):
        """More steps than the limit is rejected."""
        p = make_plan([("a.b", {})] * 5)
        with pytest.raises(InvalidRequestError) as ei:
            Plan.from_dict(p, limits=Limits(max_steps=4))
        assert ei.value.field == "steps"
        assert "at most 4" in ei.value.message

    def test_too_large(self):
        """A manifest over the byte limit is rejected."""
        p = make_plan([("a.b", {"x": "y" * 1500})] * 3)
        with pytest.raises(InvalidRequestError) as ei:
            Plan.from_dict(p, limits=Limits(max_bytes=2000))
        assert ei.value.field == "plan"

    def test_a_param_string_may_be_longer_than_a_name(self):
        """A param string (a file, an e-mail body) may pass 2,000 characters; a name may not.

        Regression: every params string over 2,000 characters was refused, whatever the
        action's schema allowed (an e-mail body declared ``maxLength = 20000``).
        """
        body = "x" * 50_000
        plan = Plan.from_dict(make_plan([("a.b", {"content": body, "nested": [{"s": body}]})]))

        assert plan.steps[0].params["content"] == body
        with pytest.raises(InvalidRequestError) as ei:
            Plan.from_dict(_plan(actor={**_plan()["actor"], "name": "n" * 2001}))
        assert ei.value.field == "actor.name"

    def test_a_param_string_over_the_cap_names_the_field_and_the_setting(self):
        """Over ``max_param_string`` the error names the field and the setting that raises it."""
        p = make_plan([("a.b", {"doc": {"lines": ["ok", "y" * 65_537]}})])

        with pytest.raises(InvalidRequestError) as ei:
            Plan.from_dict(p)

        assert ei.value.field == "steps[0].params.doc.lines[1]"
        assert "65537 characters" in ei.value.message
        assert "65536" in ei.value.message
        assert "[limits] max_param_string" in (ei.value.hint or "")
        with pytest.raises(InvalidRequestError) as ei:
            Plan.from_dict(
                make_plan([("a.b", {"s": "z" * 11})]), limits=Limits(max_param_string=10)
            )
        assert ei.value.field == "steps[0].params.s"

    def test_a_manifest_over_the_byte_limit_says_to_split_it(self):
        """Strings under their own cap still add up to at most ``max_bytes``."""
        p = make_plan([("a.b", {"x": "y" * 60_000})] * 5)

        with pytest.raises(InvalidRequestError) as ei:
            Plan.from_dict(p)

        assert ei.value.field == "plan"
        assert "the limit is 262144" in ei.value.message
        assert ei.value.hint

    def test_deep_nesting(self):
        """Params nested deeper than the limit are rejected."""
        deep: dict = {}
        node = deep
        for _ in range(12):
            node["x"] = {}
            node = node["x"]
        with pytest.raises(InvalidRequestError):
            Plan.from_dict(make_plan([("a.b", deep)]))


def test_new_plan_ids_sort_by_time_and_are_valid_plan_ids():
    """The time comes first (indexes keyed by plan id grow at their right edge); the random
    tail keeps ids made in the same second apart; every id is one a manifest may carry."""
    t0 = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    ids = [new_plan_id("p", t0 + timedelta(seconds=s)) for s in (0, 1, 1, 61, 3600 * 24)]

    distinct_seconds = [ids[0], ids[1], ids[3], ids[4]]
    assert distinct_seconds == sorted(distinct_seconds)
    assert ids[0].startswith("p-20261231235959-") and ids[-1].startswith("p-20270101235959-")
    assert ids[1] != ids[2]
    for i in ids:
        assert Plan.from_dict(make_plan([("a.b", {})], plan_id=i)).plan_id == i


class TestIdempotencyKeys:
    """Every (plan, step) of a valid plan has a key of its own (``idempotency_key``)."""

    def _steps(self, plan_id: str, *step_ids: str) -> dict:
        p = _plan(plan_id=plan_id)
        p["steps"] = [{"id": s, "action": "a.b", "params": {}} for s in step_ids]
        return p

    @pytest.mark.parametrize("step_id", ["42:s1", "s1:", "a:b:c"])
    def test_a_step_id_with_a_colon_is_refused(self, step_id):
        """``ord`` + ``42:s1`` and ``ord:42`` + ``s1`` shared the key ``ord:42:s1``."""
        with pytest.raises(InvalidRequestError) as ei:
            Plan.from_dict(self._steps("ord", "s0", step_id))
        assert ei.value.field == "steps[1].id"
        assert "':'" in ei.value.message and ei.value.hint

    def test_staging_is_refused_only_where_its_key_is_a_canary_key(self):
        """Plan ``ord:s1`` step ``staging`` has the key of step ``s1``'s staging run of plan
        ``ord``; without a ``:`` in the plan id the name is free."""
        with pytest.raises(InvalidRequestError) as ei:
            Plan.from_dict(self._steps("ord:s1", "staging"))
        assert ei.value.field == "steps[0].id"
        assert Plan.from_dict(self._steps("ord-s1", "staging")).steps[0].id == "staging"
        assert Plan.from_dict(self._steps("ord:s1", "staging2")).steps[0].id == "staging2"

    def test_plan_ids_keep_their_colons(self):
        """Only step ids lost ``:``: a plan id such as ``order:42`` is still valid."""
        assert Plan.from_dict(self._steps("order:42", "s1")).plan_id == "order:42"

    def test_keys_of_valid_plans_are_distinct(self):
        """Over ids made of the characters that mattered, no two (plan, step) or (plan, step,
        staging) share a key among the manifests that validate."""
        parts = ["a", "b", "a:b", "b:a", "staging", "a:staging", "s.1", "s-1"]
        seen: dict[str, tuple[str, str, bool]] = {}
        for plan_id in parts:
            for step_id in parts:
                try:
                    Plan.from_dict(self._steps(plan_id, step_id))
                except InvalidRequestError:
                    continue
                for staged in (False, True):
                    key = idempotency_key(plan_id, step_id) + (CANARY_SUFFIX if staged else "")
                    assert key not in seen, (key, seen[key], (plan_id, step_id, staged))
                    seen[key] = (plan_id, step_id, staged)
        assert idempotency_key("order:42", "s1") == "order:42:s1"  # the shape stored plans use


class TestReservedPlanIds:
    """Ids Proctor derives (predictable ones) are reserved (``check_chosen_plan_id``)."""

    @pytest.mark.parametrize(
        "plan_id", ["mcp-0123456789abcdef01234567-0", "idem-0123456789abcdef01234567", "MCP-x"]
    )
    def test_a_derived_prefix_is_refused(self, plan_id):
        """Named ``plan_id``, with a hint; whatever the case."""
        with pytest.raises(InvalidRequestError) as ei:
            check_chosen_plan_id(plan_id)
        assert ei.value.field == "plan_id" and ei.value.hint

    @pytest.mark.parametrize(
        "plan_id", [None, "trip-001", "mcp_1", "idem", "p-1", "tc-1", "x-mcp-1"]
    )
    def test_other_ids_are_the_callers(self, plan_id):
        """Only the prefixes: ids that merely contain the words stay valid."""
        check_chosen_plan_id(plan_id)
