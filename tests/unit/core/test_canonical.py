"""Canonical JSON: the fast path is byte-equal to the rfc8785 reference."""

from __future__ import annotations

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from proctor.core.canonical import canonical, digest
from proctor.errors import InvalidRequestError

_keys = st.text(min_size=0, max_size=12)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.text(max_size=40)
    | st.floats(allow_nan=False, allow_infinity=False)
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_keys, children, max_size=6),
    max_leaves=30,
)
_events = st.fixed_dictionaries(
    {
        "event_id": st.text(min_size=1, max_size=32),
        "seq": st.integers(min_value=0, max_value=2**40),
        "type": st.sampled_from(["plan.submitted", "step.succeeded", "approval.granted"]),
        "timestamp": st.text(max_size=32),
        "actor": st.fixed_dictionaries({"name": st.text(max_size=20), "type": st.just("agent")}),
        "data": st.dictionaries(_keys, _values, max_size=5),
        "prev_hash": st.text(max_size=71),
    }
)


class TestCanonical:
    def test_empty_object(self):
        """The empty object is two bytes."""
        assert canonical({}) == b"{}"

    def test_keys_sorted_and_compact(self):
        """Keys are sorted and no whitespace is emitted."""
        assert canonical({"b": 1, "a": [True, None]}) == b'{"a":[true,null],"b":1}'

    @settings(max_examples=300, deadline=None)
    @given(_events)
    def test_event_shaped_data_matches_reference(self, event):
        """Event-shaped data canonicalises to the same bytes as the rfc8785 package."""
        assert canonical(event) == rfc8785.dumps(event)

    @settings(max_examples=300, deadline=None)
    @given(_values)
    def test_any_json_value_matches_reference(self, value):
        """Arbitrary JSON values (floats and non-BMP keys included) match the reference."""
        assert canonical(value) == rfc8785.dumps(value)

    def test_non_bmp_keys_sort_by_utf16(self):
        """A key outside the BMP sorts by UTF-16 code units, as RFC 8785 requires."""
        value = {"\U0001f600": 1, "\uffff": 2}
        assert canonical(value) == rfc8785.dumps(value)
        assert canonical(value).index("😀".encode()) < canonical(value).index("\uffff".encode())

    def test_unsafe_integer_is_refused(self):
        """An integer beyond 2**53 cannot be represented and is refused, not rounded."""
        with pytest.raises(InvalidRequestError):
            canonical({"n": 2**53 + 1})

    def test_a_lone_surrogate_is_refused_naming_its_path(self):
        """A string with a lone surrogate has no UTF-8 form: InvalidRequestError, not TypeError."""
        value = {"steps": [{"params": {"destination": "Lis\ud800bon"}}]}

        with pytest.raises(InvalidRequestError) as fast:
            canonical(value)
        with pytest.raises(InvalidRequestError) as told:
            canonical(value, fast=True)

        assert fast.value.field == told.value.field == "steps[0].params.destination"
        assert "surrogate" in fast.value.message

    @pytest.mark.parametrize(
        ("value", "field"),
        [
            ({"a": [1, {"b": 2**53}]}, "a[1].b"),
            ({"a": {"n": -(2**70)}}, "a.n"),
            ({"x": float("nan")}, "x"),
            ({"x": [float("inf")]}, "x[0]"),
            ({"ok": "fine", "k": {"bad\udfffkey": 1}}, "k.bad\\udfffkey"),
            ("\ud800", None),
        ],
    )
    def test_the_error_names_the_first_unrepresentable_value(self, value, field):
        """The field is the path of the value at fault, printable (a bad key is escaped)."""
        with pytest.raises(InvalidRequestError) as info:
            canonical(value)

        assert info.value.field == field
        assert canonical(info.value.to_dict())  # the error itself is representable

    def test_digest_format(self):
        """Digests are sha256: plus 64 hex digits and change with the content."""
        d = digest({"a": 1})
        assert d.startswith("sha256:") and len(d) == 71
        assert d != digest({"a": 2})
