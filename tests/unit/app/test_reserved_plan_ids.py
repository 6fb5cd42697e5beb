"""Plan ids under the prefixes Proctor derives are Proctor's: the library refuses them too.

The squat: plan ids are one namespace and ``mcp-<hash>-<n>`` / ``idem-<hash>`` are
predictable, so a plan submitted under another agent's future id (and left waiting for an
approval) made that agent's call fail ``plan_id_reused`` for the approval TTL.
"""

from __future__ import annotations

import pytest

from proctor import Proctor
from proctor.core.plans import DERIVED_PLAN_ID_PREFIXES, Plan
from proctor.errors import InvalidRequestError
from proctor.http.routes_plans import idempotent_plan_id
from proctor.mcp.governance import call_key, current_plan_id, manifest
from proctor.testing import make_plan

SEARCH = ("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})


@pytest.mark.parametrize("plan_id", ["mcp-0123456789abcdef01234567-0", "idem-0123", "Idem-x"])
def test_the_librarys_submit_refuses_a_reserved_prefix(plan_id):
    """Refused naming ``plan_id`` and audited (``plan.rejected``); nothing is stored."""
    p = Proctor.in_memory()

    with pytest.raises(InvalidRequestError) as ei:
        p.submit(make_plan([SEARCH], plan_id=plan_id))

    assert ei.value.field == "plan_id"
    assert p.gateway.store.get_plan(plan_id) is None
    assert [e.type for e in p.events()] == ["plan.rejected"]


def test_the_code_that_derived_the_id_may_submit_it():
    """The MCP proxies derive ``mcp-`` ids in process and say so (``derived_id``)."""
    p = Proctor.in_memory()
    key = call_key("bot", "client", "travel.search", dict(SEARCH[1]))
    plan_id = current_plan_id(key, p.gateway.store.get_plan)
    doc = manifest(
        plan_id=plan_id,
        agent_id="bot",
        client="client",
        on_behalf_of="alice",
        action="travel.search",
        tool="search",
        arguments=dict(SEARCH[1]),
    )

    rec = p.gateway.submit(doc, derived_id=True)

    assert rec.plan_id == plan_id and rec.status.value == "succeeded"
    with pytest.raises(InvalidRequestError):
        p.submit(doc)  # the same manifest, from a caller that did not derive it


def test_the_derivers_use_a_reserved_prefix():
    """Both predictable derivations produce ids under ``DERIVED_PLAN_ID_PREFIXES``."""
    derived = [idempotent_plan_id("bot", "k"), current_plan_id("k", lambda _: None)]
    for plan_id in derived:
        assert plan_id.startswith(DERIVED_PLAN_ID_PREFIXES)
        Plan.from_dict(make_plan([SEARCH], plan_id=plan_id))  # still a valid id
