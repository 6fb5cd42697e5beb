"""Reading a JSON request body exactly as sent, for ``POST /v1/plans`` and the error handlers.

Here and not in ``routes_plans``: ``errors`` uses it too, and ``routes_plans`` imports
``errors``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from proctor.core.canonical import MAX_SAFE_INT, printable
from proctor.errors import InvalidRequestError

__all__ = ["parse_body"]

_LONG_INTEGER = re.compile(rb"[0-9]{19}").search
_TOO_LONG = object()
"""Stands in, while a body is read, for an integer Python will not convert."""


def parse_body(body: bytes) -> Any:
    r"""The JSON value of a request body, exactly as sent.

    orjson reads an integer beyond 64 bits as a float (``10**29`` became
    ``99999999999999991433150857216.0``, and was accepted) and refuses a lone-surrogate
    escape (``"\ud800"``) that JSON allows. A body with a run of 19 or more digits, or one
    orjson refuses, is read again by the standard library, which keeps every integer exact
    (the gateway then refuses one beyond 2**53, naming its field) and every string as
    written. NaN and Infinity stay refused. The common body takes one scan more, no more.

    An integer of more digits than Python converts (4300 by default, a guard against
    CPU exhaustion: CVE-2020-10735) is no JSON error, so it is not answered as one: it is
    refused naming where it is.

    Raises:
        ValueError: the body is not JSON.
        InvalidRequestError: an integer in it is too long to read, naming its field.
    """
    if not _LONG_INTEGER(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # maybe a lone surrogate: the standard library decides
    digits: list[int] = []

    def exact_int(text: str) -> Any:
        try:
            return int(text)
        except ValueError:
            digits.append(len(text.lstrip("-")))
            return _TOO_LONG

    doc = json.loads(body, parse_constant=_no_constant, parse_int=exact_int)
    if digits:
        where = _path_to(doc, _TOO_LONG)
        raise InvalidRequestError(
            f"{where} is an integer of {digits[0]} digits, too long to read",
            field=where,
            hint=f"Integers are at most {MAX_SAFE_INT} (2**53 - 1); amounts are minor units.",
        )
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _path_to(doc: Any, target: object) -> str:
    """The field (``steps[0].params.n``) where ``target`` first is in ``doc``.

    ``body`` for the document itself. Keys are printable: the field is sent back, and may be
    logged.
    """
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        value, at = stack.pop()
        if value is target:
            return at or "body"
        if isinstance(value, dict):
            items = [(v, f"{at}.{printable(k)}" if at else printable(k)) for k, v in value.items()]
            stack.extend(reversed(items))
        elif isinstance(value, list):
            stack.extend(reversed([(v, f"{at}[{i}]") for i, v in enumerate(value)]))
    return "body"
