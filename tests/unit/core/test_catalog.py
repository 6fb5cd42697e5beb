"""Catalog entries: validation at construction, params checks, summaries."""

from __future__ import annotations

import pytest

from proctor.core.assessment import Scores
from proctor.core.catalog import ActionSpec, Catalog
from proctor.errors import ConfigError, InvalidRequestError

LOW = Scores(risk=1, auditability=1, ux=1, recovery=1, cost=1)


def _spec(**kw):
    base = {
        "name": "shop.order",
        "summary": "Order {qty} x {item}",
        "category": "purchase",
        "baselines": LOW,
        "params_schema": {
            "type": "object",
            "required": ["qty"],
            "properties": {"qty": {"type": "integer", "minimum": 1}},
        },
    }
    base.update(kw)
    return ActionSpec(**base)


class TestActionSpec:
    def test_unknown_category_is_refused(self):
        """An unknown category fails closed at load time, naming it."""
        with pytest.raises(ConfigError) as ei:
            _spec(category="misc")
        assert "misc" in ei.value.message

    def test_bad_name(self):
        """Names are dotted lower-case words."""
        with pytest.raises(ConfigError):
            _spec(name="Shop Order")

    def test_reversible_needs_undo(self):
        """A reversible action without a way to undo it is refused."""
        with pytest.raises(ConfigError):
            _spec(reversible=True)

    def test_bad_schema(self):
        """An invalid JSON Schema is a configuration error."""
        with pytest.raises(ConfigError):
            _spec(params_schema={"type": "nonsense"})

    def test_validate_params_names_field(self):
        """A schema violation names the param and the rule."""
        with pytest.raises(InvalidRequestError) as ei:
            _spec().validate_params({"qty": 0}, field_prefix="steps[0].params")
        assert ei.value.field == "steps[0].params.qty"
        assert ei.value.details["rule"] == "minimum"

    def test_describe(self):
        """The summary renders params; missing placeholders stay visible."""
        assert _spec().describe({"qty": 2}) == "Order 2 x {item}"

    def test_amount(self):
        """The amount is the amount param plus the cost per call; non-integers count 0."""
        s = _spec(amount_param="total", cost=5)
        assert s.amount({"total": 100}) == 105
        assert s.amount({"total": "100"}) == 5


class TestCatalog:
    def test_empty(self):
        """An empty catalog knows no action."""
        with pytest.raises(InvalidRequestError):
            Catalog().require("shop.order")

    def test_duplicate(self):
        """Declaring an action twice is a configuration error unless replacing."""
        c = Catalog([_spec()])
        with pytest.raises(ConfigError):
            c.add(_spec())
        c.add(_spec(summary="x"), replace=True)
        assert c.require("shop.order").summary == "x"

    def test_policy_data(self):
        """The policy view carries category and baselines."""
        assert Catalog([_spec()]).policy_data()["shop.order"]["category"] == "purchase"
