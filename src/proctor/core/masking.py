"""Masking sensitive params before they are written to the audit log.

Rules are JSON pointers (RFC 6901) into an action's params, in the spirit of OPA's
decision-log masking: ``/card/number`` erases the value at that path and writes ``"***"``
in its place. The event keeps ``payload_hash``, the hash of the *unmasked* params (keyed
with the instance's secret, ``proctor.app.journal.keyed_payload_hash``), so an auditor holding
the original payload and the key can still prove it is the one that ran. Masked values that
come back in results, errors and reasons are redacted by ``proctor.app.redaction``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MASK", "mask", "resolve"]

MASK = "***"


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def mask(params: Mapping[str, Any], pointers: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``params`` with the value at each pointer replaced by ``"***"``.

    Pointers that do not resolve are ignored: masking is best-effort on shape, never a
    reason to fail an action. A pointer ``""`` (the whole document) masks everything.
    """
    pointers = list(pointers)
    if not pointers:
        return dict(params)
    out: dict[str, Any] = copy.deepcopy(dict(params))
    for pointer in pointers:
        if pointer == "":
            return {MASK: MASK}
        tokens = [_unescape(t) for t in pointer.lstrip("/").split("/")]
        node: Any = out
        for tok in tokens[:-1]:
            node = _child(node, tok)
            if node is None:
                break
        else:
            last = tokens[-1]
            if isinstance(node, dict) and last in node:
                node[last] = MASK
            elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
                node[int(last)] = MASK
    return out


def resolve(doc: Any, pointer: str) -> Any:
    """Return the value at ``pointer`` in ``doc`` (RFC 6901), or None when it does not resolve."""
    if pointer == "":
        return doc
    node = doc
    for raw in pointer.lstrip("/").split("/"):
        node = _child(node, _unescape(raw))
        if node is None:
            return None
    return node


def _child(node: Any, tok: str) -> Any:
    if isinstance(node, dict):
        return node.get(tok)
    if isinstance(node, list) and tok.isdigit() and int(tok) < len(node):
        return node[int(tok)]
    return None
