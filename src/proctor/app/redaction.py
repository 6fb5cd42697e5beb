"""Keeping masked values out of the audit log, whatever event they would reach it through.

An action's ``mask`` pointers erase params in ``plan.submitted``, but the same values can come
back in a step's result, its error text, a simulation's effects, a compensation's or a plan's
reason ("card 4111… declined"). So every event of a plan that has a masked param passes through
one ``Redaction`` (``Journal.emit``):

- the step's pointers are applied to its ``result`` and to its simulation ``effects`` where
  they resolve there (a result echoing the params' shape is masked like them);
- every *masked value* is replaced by ``"***"`` wherever it appears in the event's ``data``:
  as a whole string or number, inside a longer string (an error message), or as a key;
- so is the start of a masked value (``MIN_SECRET`` characters or more) that ends a string:
  a message cut at its length limit may end inside the value.

NOTE(short values): only masked values of at least ``MIN_SECRET`` (4) characters are searched
for inside text (a number by its decimal form). Replacing a masked ``"1"`` or ``"EU"`` in every
string would make the log unreadable and protects nothing (such a value is guessable anyway);
those are still masked at their pointers, in params and in results shaped like the params.

Plans whose actions mask nothing cost nothing: the journal skips all of this when the catalog
has no masked action, and the gateway returns no redaction for a plan without one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proctor.core.masking import MASK, mask, resolve

__all__ = ["MIN_SECRET", "Redaction", "redaction_for"]

MIN_SECRET = 4
"""The shortest masked value searched for inside text (shorter ones are masked in place)."""
MAX_CUT = 500
"""How far from a string's end a cut masked value is looked for (the longest cut text)."""


@dataclass(frozen=True, slots=True)
class Redaction:
    """What to erase from the events of one plan: pointers per step, and the masked values."""

    pointers: Mapping[str, tuple[str, ...]]
    """The mask pointers of each masked step, by step id."""
    texts: frozenset[str]
    """The masked values (strings, and numbers in decimal) of at least ``MIN_SECRET`` chars."""
    numbers: frozenset[int | float]
    """The masked numbers, replaced when a value equals one."""
    pattern: re.Pattern[str] | None
    """``texts`` as one alternation, longest first (so a value inside another goes too)."""

    def apply(self, data: Mapping[str, Any], step_id: str | None) -> dict[str, Any]:
        """Return ``data`` with the pointers applied and every masked value replaced."""
        out = dict(data)
        pointers = self.pointers.get(step_id) if step_id is not None else None
        if pointers and isinstance(out.get("result"), dict):
            out["result"] = mask(out["result"], pointers)
        effects = out.get("effects")
        if isinstance(effects, dict):
            # simulation.completed: {step id: effects}
            out["effects"] = {
                sid: mask(eff, self.pointers[sid])
                if sid in self.pointers and isinstance(eff, dict)
                else eff
                for sid, eff in effects.items()
            }
        scrubbed: dict[str, Any] = self._scrub(out)
        return scrubbed

    def text(self, value: str) -> str:
        """Return ``value`` with every masked value (and a cut one at its end) replaced."""
        if self.pattern is None:
            return value
        return self._cut_end(self.pattern.sub(MASK, value))

    def _cut_end(self, value: str) -> str:
        """Replace the start of a masked value that ends ``value`` (a message cut short).

        Only the last ``MAX_CUT`` characters are searched (a cut text is at most that long),
        for where a masked value's first ``MIN_SECRET`` characters begin and the rest of the
        string is a proper prefix of it: linear in the string, whatever the values' length.
        """
        tail = max(0, len(value) - MAX_CUT)
        for t in self.texts:
            head = t[:MIN_SECRET]
            i = value.find(head, tail)
            while i != -1:
                rest = value[i:]
                if len(rest) < len(t) and t.startswith(rest):
                    return value[:i] + MASK
                i = value.find(head, i + 1)
        return value

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self._scrub(k): self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        if isinstance(value, int | float) and not isinstance(value, bool) and self.numbers:
            return MASK if value in self.numbers else value
        return value


def redaction_for(
    steps: Sequence[tuple[str, Mapping[str, Any], Sequence[str]]],
) -> Redaction | None:
    """Build the redaction of a plan from ``(step id, params, mask pointers)``, or None.

    None when no step masks anything, so the caller skips redaction.
    """
    pointers: dict[str, tuple[str, ...]] = {}
    texts: set[str] = set()
    numbers: set[int | float] = set()
    for step_id, params, masks in steps:
        if not masks:
            continue
        pointers[step_id] = tuple(masks)
        for pointer in masks:
            for leaf in _leaves(resolve(params, pointer)):
                if isinstance(leaf, bool) or leaf is None:
                    continue
                if isinstance(leaf, int | float):
                    text = str(leaf)
                    if len(text.lstrip("-")) >= MIN_SECRET:
                        numbers.add(leaf)
                        texts.add(text)
                elif isinstance(leaf, str) and len(leaf) >= MIN_SECRET:
                    texts.add(leaf)
    if not pointers:
        return None
    pattern = None
    if texts:
        ordered = sorted(texts, key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(t) for t in ordered))
    return Redaction(
        pointers=pointers, texts=frozenset(texts), numbers=frozenset(numbers), pattern=pattern
    )


def _leaves(value: Any) -> list[Any]:
    """The scalars of a masked value (a masked object hides everything in it)."""
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]
