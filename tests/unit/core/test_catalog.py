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

    @pytest.mark.parametrize("name", ["Shop Order", "shop.order\n"])
    def test_bad_name(self, name):
        """Names are dotted lower-case words (and nothing after them, not even a newline)."""
        with pytest.raises(ConfigError):
            _spec(name=name)

    def test_reversible_needs_undo(self):
        """A reversible action without a way to undo it is refused."""
        with pytest.raises(ConfigError):
            _spec(reversible=True)

    def test_bad_schema(self):
        """An invalid JSON Schema is a configuration error."""
        with pytest.raises(ConfigError):
            _spec(params_schema={"type": "nonsense"})

    def test_a_schema_that_is_not_an_object_is_a_config_error(self):
        """``params_schema=5`` names the params, rather than escape as a TypeError."""
        with pytest.raises(ConfigError) as ei:
            _spec(params_schema=5)

        assert ei.value.field == "catalog.shop.order.params"

    def test_a_bad_cost_names_the_cost(self):
        """A fractional cost names ``cost``, not only the action."""
        with pytest.raises(ConfigError) as ei:
            _spec(cost=1.5)

        assert ei.value.field == "catalog.shop.order.cost"

    def test_validate_params_names_field(self):
        """A schema violation names the param and the rule."""
        with pytest.raises(InvalidRequestError) as ei:
            _spec().validate_params({"qty": 0}, field_prefix="steps[0].params")
        assert ei.value.field == "steps[0].params.qty"
        assert ei.value.details["rule"] == "minimum"

    def test_describe(self):
        """The summary renders params; missing placeholders stay visible."""
        assert _spec().describe({"qty": 2}) == "Order 2 x {item}"

    def test_describe_cuts_a_long_value(self):
        """A value over 2,000 characters is cut in the one-line summary, with its length."""
        short = _spec().describe({"qty": "q" * 2000, "item": "i"})
        long = _spec().describe({"qty": "q" * 50_000, "item": "i"})

        assert short == "Order " + "q" * 2000 + " x i"
        assert long == "Order " + "q" * 2000 + "… (50000 characters) x i"

    def test_amount(self):
        """The amount is the amount param plus the cost per call."""
        s = _spec(amount_param="total", cost=5)
        assert s.amount({"total": 100}) == 105
        assert s.amount({"total": 0}) == 5

    def test_amount_of_a_negative_amount_raises(self):
        """A negative amount is no money at stake: amount() refuses it rather than count it."""
        with pytest.raises(InvalidRequestError) as ei:
            _spec(amount_param="total", cost=5).amount({"total": -100})

        assert ei.value.field == "params.total"

    def test_a_ran_steps_recorded_amount_is_0_where_amount_refuses(self):
        """An outcome is recorded even when the catalog no longer reads an amount from the
        params (a negative one, decided before negatives were refused): its cost counts 0,
        where ``amount`` (for decisions) raises."""
        s = _spec(amount_param="total", cost=5)
        assert s.recorded_amount({"total": -100}) == 0
        assert s.recorded_amount({"total": 7.5}) == 0
        assert s.recorded_amount({"total": 100}) == 105

    def test_no_amount_param_counts_the_cost(self):
        """An action without an amount param costs its cost per call, whatever the params."""
        assert _spec(cost=5).amount({"total": 100.5}) == 5

    @pytest.mark.parametrize("value", ["100", 100.0, 100.5, True, None, [100]])
    def test_amount_of_a_non_integer_raises(self, value):
        """amount() never counts an unreadable amount as 0, which passes every limit."""
        s = _spec(amount_param="total", cost=5)

        with pytest.raises(InvalidRequestError) as ei:
            s.amount({"total": value})

        assert ei.value.field == "params.total"

    def test_amount_of_a_missing_amount_raises(self):
        """A declared amount param that is absent is no amount of 0 either."""
        with pytest.raises(InvalidRequestError) as ei:
            _spec(amount_param="total").amount({})

        assert ei.value.field == "params.total"


class TestNothingToUndo:
    def test_a_read_only_look_up_has_nothing_to_undo(self):
        """A ``read`` action without a compensation of its own left no effect to undo."""
        assert _spec(category="read").nothing_to_undo is True

    @pytest.mark.parametrize(
        "kw",
        [
            {"category": "purchase"},
            {"category": "general"},
            {"category": "read", "reversible": True, "compensate": "m.t:undo"},
            {"category": "read", "compensation": "shop.cancel"},
        ],
        ids=["purchase", "general-irreversible", "read-reversible", "read-compensation"],
    )
    def test_anything_else_has_an_effect(self, kw):
        """Another category, or a look-up that declares how to undo it, is undone as declared."""
        assert _spec(**kw).nothing_to_undo is False


class TestAmountValidation:
    """The amount param is a JSON integer, or the plan is refused at validation."""

    def _pay(self, amount_schema=None):
        props = {"amount": amount_schema} if amount_schema is not None else {}
        return _spec(
            name="shop.pay",
            category="payment",
            amount_param="amount",
            params_schema={"type": "object", "properties": props},
        )

    def test_an_integer_passes(self):
        """An integer amount passes."""
        self._pay({"type": "integer"}).validate_params({"amount": 640000}, field_prefix="p")

    @pytest.mark.parametrize("value", [640000.0, 5e7, 0.0, -1.0, 12.5])
    def test_a_float_is_refused_even_an_integral_one(self, value):
        """640000.0 passes JSON Schema's integer type, but is refused naming the field.

        Regression: it counted as an amount of 0 and executed past auto_payment_max.
        """
        spec = self._pay({"type": "integer", "minimum": 1})

        with pytest.raises(InvalidRequestError) as ei:
            spec.validate_params({"amount": value}, field_prefix="steps[0].params")

        assert ei.value.field == "steps[0].params.amount"
        assert "minor units" in (ei.value.hint or "")

    @pytest.mark.parametrize("value", [True, "640000", None, [1], {"v": 1}, 640000.0])
    def test_anything_but_an_integer_is_refused_when_the_schema_says_nothing(self, value):
        """Without a type in the schema, the amount param is still held to be an integer."""
        with pytest.raises(InvalidRequestError) as ei:
            self._pay().validate_params({"amount": value}, field_prefix="steps[2].params")

        assert ei.value.field == "steps[2].params.amount"
        assert "minor units" in (ei.value.hint or "")

    @pytest.mark.parametrize("schema", [None, {"type": "integer"}])
    def test_a_negative_amount_is_refused_naming_the_field(self, schema):
        """-5 is refused at validation even when the schema has no ``minimum``.

        Regression: the quickstart's @governed refund executed ``amount=-5`` at once; guards
        clamp a negative amount to 0 and the policy compares it with thresholds, so it
        passed every limit.
        """
        spec = self._pay(schema)

        with pytest.raises(InvalidRequestError) as ei:
            spec.validate_params({"amount": -5}, field_prefix="steps[0].params")

        assert ei.value.field == "steps[0].params.amount"
        assert "negative" in ei.value.message
        spec.validate_params({"amount": 0}, field_prefix="steps[0].params")

    def test_a_missing_amount_is_refused(self):
        """An action that declares an amount param must receive it."""
        with pytest.raises(InvalidRequestError) as ei:
            self._pay({"type": "integer"}).validate_params({}, field_prefix="steps[0].params")

        assert ei.value.field == "steps[0].params.amount"

    def test_a_schema_type_error_on_the_amount_carries_the_hint(self):
        """The schema's own refusal of the amount says that amounts are integers."""
        with pytest.raises(InvalidRequestError) as ei:
            self._pay({"type": "integer"}).validate_params(
                {"amount": "12"}, field_prefix="steps[0].params"
            )

        assert ei.value.field == "steps[0].params.amount"
        assert ei.value.details["rule"] == "type"
        assert "minor units" in (ei.value.hint or "")


class TestPatterns:
    """Schema patterns: a bad one is a ConfigError, and they match as ECMA-262 regexes do."""

    def _dated(self, pattern=r"^\d{4}-\d{2}-\d{2}$", **schema):
        return _spec(
            params_schema={
                "type": "object",
                "properties": {"date": {"type": "string", "pattern": pattern}},
                **schema,
            }
        )

    def test_a_bad_pattern_is_a_config_error_naming_action_and_param(self):
        """pattern = "([" is refused at load time, not an re.error on every command."""
        with pytest.raises(ConfigError) as ei:
            self._dated("([")

        assert ei.value.field == "catalog.shop.order.params.properties.date.pattern"
        assert "'shop.order'" in ei.value.message
        assert "'date'" in ei.value.message
        assert "unterminated character set at position 1" in ei.value.message

    def test_a_bad_nested_pattern_names_its_place(self):
        """A pattern deep in items or anyOf is found too."""
        schema = {
            "type": "object",
            "properties": {
                "legs": {
                    "type": "array",
                    "items": {"anyOf": [{"type": "string", "pattern": "(?<"}]},
                }
            },
        }

        with pytest.raises(ConfigError) as ei:
            _spec(params_schema=schema)

        assert ei.value.field == (
            "catalog.shop.order.params.properties.legs.items.anyOf[0].pattern"
        )
        assert "'legs'" in ei.value.message

    def test_a_bad_pattern_property_is_a_config_error(self):
        """A patternProperties key that is no regex is refused the same way."""
        with pytest.raises(ConfigError) as ei:
            _spec(params_schema={"type": "object", "patternProperties": {"([": {}}})

        assert ei.value.field == "catalog.shop.order.params.patternProperties.(["

    def test_a_pattern_that_is_not_a_string_is_a_config_error(self):
        """pattern = 5 is refused, not a TypeError."""
        with pytest.raises(ConfigError) as ei:
            self._dated(5)

        assert ei.value.field == "catalog.shop.order.params.properties.date.pattern"

    def test_ascii_digits_match(self):
        """A date of ASCII digits passes the date pattern."""
        self._dated().validate_params({"qty": 1, "date": "2027-03-12"}, field_prefix="p")

    @pytest.mark.parametrize(
        "date",
        [
            "\uff12\uff10\uff12\uff17-\uff10\uff13-\uff11\uff12",  # fullwidth
            "\u0662\u0660\u0662\u0667-\u0660\u0663-\u0661\u0662",  # Arabic-Indic
        ],
    )
    def test_non_ascii_digits_do_not_match_backslash_d(self, date):
        """\\d is [0-9] as in ECMA-262, not Python's Unicode digits."""
        with pytest.raises(InvalidRequestError) as ei:
            self._dated().validate_params({"qty": 1, "date": date}, field_prefix="steps[0].params")

        assert ei.value.field == "steps[0].params.date"
        assert ei.value.details["rule"] == "pattern"
        # The message shows the pattern as the catalog wrote it.
        assert "must match pattern ^\\d{4}-\\d{2}-\\d{2}$ " in ei.value.message

    def test_backslash_w_is_ascii(self):
        """\\w is [A-Za-z0-9_]: an accented letter does not match."""
        spec = self._dated(r"^\w+$")
        spec.validate_params({"date": "abc_1"}, field_prefix="p")

        with pytest.raises(InvalidRequestError):
            spec.validate_params({"date": "caf\u00e9"}, field_prefix="p")

    def test_pattern_properties_are_ascii_too(self):
        """A patternProperties key matches property names as ECMA-262 would."""
        spec = _spec(
            params_schema={
                "type": "object",
                "patternProperties": {r"^x\d$": {"type": "integer"}},
                "additionalProperties": False,
            }
        )
        spec.validate_params({"x1": 1}, field_prefix="p")

        with pytest.raises(InvalidRequestError):
            spec.validate_params({"x\uff11": 1}, field_prefix="p")

    def test_a_param_named_pattern_and_data_are_left_alone(self):
        """Only schema keywords are rewritten: a param called "pattern" or an enum is data."""
        spec = _spec(
            params_schema={
                "type": "object",
                "properties": {
                    "pattern": {"type": "string", "enum": ["^a$"]},
                    "opts": {"const": {"pattern": "(["}},
                },
            }
        )

        spec.validate_params({"pattern": "^a$", "opts": {"pattern": "(["}}, field_prefix="p")
        assert spec.params_schema["properties"]["pattern"]["enum"] == ["^a$"]


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
