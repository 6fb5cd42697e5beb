"""Masking params before they reach the audit log."""

from __future__ import annotations

from proctor.core.masking import MASK, mask


class TestMask:
    def test_no_rules(self):
        """Without rules the params are unchanged."""
        assert mask({"a": 1}, []) == {"a": 1}

    def test_nested_pointer(self):
        """A nested pointer masks only that value and leaves the input untouched."""
        params = {"card": {"number": "4242", "exp": "12/30"}, "amount": 5}
        out = mask(params, ["/card/number"])
        assert out == {"card": {"number": MASK, "exp": "12/30"}, "amount": 5}
        assert params["card"]["number"] == "4242"

    def test_array_index_and_missing(self):
        """Array indices resolve; pointers that do not resolve are ignored."""
        out = mask({"xs": ["a", "b"]}, ["/xs/1", "/nope/x"])
        assert out == {"xs": ["a", MASK]}

    def test_escaped_tokens(self):
        """RFC 6901 escapes (~1 for /, ~0 for ~) are honoured."""
        assert mask({"a/b": 1, "c~d": 2}, ["/a~1b", "/c~0d"]) == {"a/b": MASK, "c~d": MASK}
