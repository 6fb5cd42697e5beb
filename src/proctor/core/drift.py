"""How far a dry-run's prediction was from what really happened.

After every executed step that was simulated, the gateway records the difference between the
predicted effects and the actual result, so operators can see how far dry-runs can be trusted
(``step.succeeded`` events carry it as ``data.drift``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["drift"]

# Keys of a simulation that describe the prediction itself, not an effect.
_META = frozenset({"risk", "error", "note", "notes", "confidence"})


def drift(predicted: Any, actual: Any) -> dict[str, Any]:
    """Compare a simulation's predicted effects with a step's actual result.

    The prediction's ``effects`` mapping (or the prediction itself when it has none) is
    compared key by key with the result (or the result's ``effects``). Returns the number of
    predicted effects compared, how many matched, and each difference.

    Example:
        >>> drift({"effects": {"seats": 2}}, {"seats": 3})["differences"]
        {'seats': {'predicted': 2, 'actual': 3}}
    """
    if not isinstance(predicted, Mapping):
        return {"compared": 0, "matched": 0, "differences": {}, "note": "no structured prediction"}
    effects = predicted.get("effects", predicted)
    if not isinstance(effects, Mapping):
        return {"compared": 0, "matched": 0, "differences": {}, "note": "no structured prediction"}
    if isinstance(actual, Mapping) and isinstance(actual.get("effects"), Mapping):
        actual = actual["effects"]
    observed = actual if isinstance(actual, Mapping) else {}
    differences: dict[str, Any] = {}
    compared = 0
    for key, value in effects.items():
        if key in _META:
            continue
        compared += 1
        got = observed.get(key, _MISSING)
        if got is _MISSING:
            differences[str(key)] = {"predicted": value, "actual": None, "missing": True}
        elif got != value:
            differences[str(key)] = {"predicted": value, "actual": got}
    return {
        "compared": compared,
        "matched": compared - len(differences),
        "differences": differences,
    }


_MISSING = object()
