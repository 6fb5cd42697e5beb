"""Canonical JSON (RFC 8785, JCS) and the SHA-256 digests built on it.

The reference implementation is the ``rfc8785`` package; it is pure Python and costs about
114 µs for an audit event. ``orjson`` with sorted keys produces the same bytes for the values
Proctor's events are made of (objects, arrays, strings, booleans, null and integers in the
IEEE-754 safe range, with keys in the Basic Multilingual Plane), in about 1 µs. ``canonical``
takes the fast path only after ``fast_path_ok`` has proven the value is of that shape;
anything else (a float, a big integer, a key outside the BMP) goes to the reference
implementation. ``tests/unit/core/test_canonical.py`` proves byte equality with Hypothesis.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import rfc8785

from proctor.errors import InvalidRequestError

__all__ = ["MAX_SAFE_INT", "canonical", "digest", "fast_path_ok", "printable", "sha256_tagged"]

# JCS serialises numbers as IEEE-754 doubles; integers beyond 2**53 are not representable,
# and rfc8785 rejects them. We reject them too rather than silently change a value.
MAX_SAFE_INT = 2**53 - 1
"""The largest integer JSON carries exactly (IEEE-754); the bound of every integer input."""
_SAFE_INT = MAX_SAFE_INT
_SORT = orjson.OPT_SORT_KEYS


def fast_path_ok(value: Any) -> bool:
    """Return True when orjson's sorted output is byte-equal to RFC 8785 for ``value``."""
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is str or v is None or t is bool:
            continue
        if t is int:
            if -_SAFE_INT <= v <= _SAFE_INT:
                continue
            return False
        if t is dict:
            for k, item in v.items():
                # orjson sorts keys by UTF-8 bytes, JCS by UTF-16 code units: the orders agree
                # exactly when no key has a character outside the BMP (no surrogate pairs).
                if type(k) is not str or (not k.isascii() and max(k) > "\uffff"):
                    return False
                stack.append(item)
            continue
        if t is list or t is tuple:
            stack.extend(v)
            continue
        return False  # floats and anything exotic take the reference path
    return True


def canonical(value: Any, *, fast: bool | None = None) -> bytes:
    """Return the RFC 8785 canonical JSON bytes of ``value``.

    Args:
        value: A JSON-shaped value.
        fast: The caller already knows whether ``_fast_path_ok(value)`` holds (for a value
            it built from one it checked); None checks here.

    Raises:
        InvalidRequestError: if the value cannot be represented in JCS (a NaN, an integer
            beyond the IEEE-754 safe range, a non-string key, a string with a lone UTF-16
            surrogate); ``field`` is the path of the first such value inside ``value``.
    """
    if fast if fast is not None else fast_path_ok(value):
        try:
            return orjson.dumps(value, option=_SORT)
        except orjson.JSONEncodeError as exc:
            # The shape check does not look inside strings: a lone surrogate ("\ud800",
            # which JSON text may spell and Python keeps) has no UTF-8 form. Found here, on
            # the rare failure, so the hot path pays nothing for it.
            raise _unrepresentable(value, exc) from exc
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise _unrepresentable(value, exc) from exc


def _unrepresentable(value: Any, exc: Exception) -> InvalidRequestError:
    where = _first_unrepresentable(value, "")  # "" is the value itself
    what = f"{where} cannot" if where else "value cannot"
    return InvalidRequestError(
        f"{what} be written as canonical JSON (RFC 8785): {exc}",
        field=where or None,
        hint="Use strings or integers in minor units for money; no NaN, no huge integers, "
        "no lone surrogates (\\ud800-\\udfff) in strings.",
    )


def _first_unrepresentable(value: Any, where: str) -> str | None:
    """Return the path (``steps[0].params.amount``) of the first value JCS cannot encode.

    None when there is none (the encoder failed for another reason); "" for ``value`` itself.

    The path is printable and UTF-8-safe: a key holding a lone surrogate is written with a
    backslash escape, so the error naming it can itself be serialised and audited.
    """
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, str):
            if not _utf8_ok(v):
                return at
        elif isinstance(v, int):
            if not -_SAFE_INT <= v <= _SAFE_INT:
                return at
        elif isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                return at
        elif isinstance(v, dict):
            items = []
            for k, item in v.items():
                if not isinstance(k, str):
                    return at
                if not _utf8_ok(k):
                    name = printable(k)
                    return f"{at}.{name}" if at else name
                items.append((item, f"{at}.{k}" if at else k))
            stack.extend(reversed(items))
        elif isinstance(v, list | tuple):
            stack.extend(reversed([(item, f"{at}[{i}]") for i, item in enumerate(v)]))
        else:
            return at
    return None


def printable(text: str) -> str:
    """``text`` with any lone surrogate written as a backslash escape: it has a UTF-8 form.

    For error messages, fields and audit events that quote bad input.
    """
    if _utf8_ok(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _utf8_ok(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


def digest(value: Any) -> str:
    """Return ``sha256:<hex>`` over the canonical form of ``value``."""
    return "sha256:" + hashlib.sha256(canonical(value)).hexdigest()


def sha256_tagged(data: bytes) -> str:
    """Return ``sha256:<hex>`` of raw bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
