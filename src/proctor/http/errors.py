"""HTTP status codes of Proctor's errors: the one mapping table, and the handlers that use it.

Every error response is JSON ``{"code", "message", "field"}`` (plus ``hint`` when there is
one). Bad input never gets a 5xx: validation, malformed JSON, oversized bodies and unknown
routes are mapped here; a 500 means a bug, and is logged with its traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

# RateLimitedError lives in proctor.errors (the gateway raises it for step-up codes too);
# it is still importable from here.
from proctor.core.plans import PERSON_NAME_HINT, PERSON_NAME_RULE
from proctor.errors import InvalidRequestError, ProctorError, RateLimitedError
from proctor.http.body import parse_body
from proctor.http.schemas import PERSON_PATTERN

__all__ = [
    "STATUS",
    "PayloadTooLargeError",
    "RateLimitedError",
    "UnauthenticatedError",
    "error_response",
    "install_error_handlers",
]

log = logging.getLogger("proctor.http")


class UnauthenticatedError(ProctorError):
    """No credentials, or credentials that do not verify (401)."""

    code = "unauthenticated"


class PayloadTooLargeError(InvalidRequestError):
    """The request body is larger than the limit (413)."""

    code = "payload_too_large"


STATUS: Final[Mapping[str, int]] = {
    "invalid_request": 422,
    "bad_signature": 422,
    "not_found": 404,
    "permission_denied": 403,
    "unauthenticated": 401,
    "conflict": 409,
    "invalid_transition": 409,
    "plan_id_reused": 409,
    "approval_expired": 410,
    "payload_too_large": 413,
    "rate_limited": 429,
    "method_not_allowed": 405,
    "storage_error": 503,
    "retryable": 503,  # a tool's transient failure never escapes the gateway; if it did
    "policy_engine_error": 503,
    "config_error": 503,
    "invalid_policy": 503,
    "audit_integrity": 503,
    "missing_dependency": 503,
    "internal_error": 500,
}
"""HTTP status by ``ProctorError.code`` (docs/http.md, "Errors"). An unknown code is a 500."""


def _json(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def error_response(exc: ProctorError, *, status: int | None = None) -> Response:
    """Return the JSON response of a ``ProctorError``."""
    code = STATUS.get(exc.code, 500) if status is None else status
    headers = None
    if isinstance(exc, RateLimitedError):
        headers = {"Retry-After": str(exc.details.get("retry_after", 60))}
    elif isinstance(exc, UnauthenticatedError):
        headers = {"WWW-Authenticate": 'Bearer realm="proctor"'}
    return _json(code, exc.to_dict(), headers)


def _field(loc: Sequence[str | int]) -> str:
    """Turn pydantic's ``("body", "steps", 0, "id")`` into ``steps[0].id``."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        kind = parts.pop(0)
        if not parts:
            return str(kind)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return _json(
            400,
            {"code": "invalid_request", "message": "the body is not valid JSON", "field": "body"},
        )
    field = _field(first.get("loc", ("body",)))
    ctx = first.get("ctx")
    if (
        first.get("type") == "string_pattern_mismatch"
        and isinstance(ctx, dict)
        and ctx.get("pattern") == PERSON_PATTERN
    ):
        # A person's name (``on_behalf_of`` of /v1/mcp/calls): refused in the words and with
        # the hint of the gateway's refusal (POST /v1/plans), not as a regular expression. A
        # user named ``josé`` must learn that names are ASCII and to use a login or e-mail.
        return error_response(
            InvalidRequestError(
                f"{field} must be {PERSON_NAME_RULE}", field=field, hint=PERSON_NAME_HINT
            )
        )
    message = f"{field}: {first.get('msg', 'invalid value')}"
    return _json(422, {"code": "invalid_request", "message": message, "field": field})


async def _proctor(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProctorError)
    status = STATUS.get(exc.code, 500)
    if status >= 500:
        log.warning("%s %s failed: %s", request.method, request.url.path, exc.diagnostics())
    return error_response(exc)


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        body = {"code": "not_found", "message": "no such route", "field": None}
    elif exc.status_code == 405:
        body = {"code": "method_not_allowed", "message": "method not allowed", "field": None}
    elif exc.status_code == 400:
        too_long = await _too_long_integer(request, exc)
        if too_long is not None:
            return error_response(too_long)
        body = {"code": "invalid_request", "message": str(exc.detail), "field": "body"}
    else:
        body = {"code": "invalid_request", "message": str(exc.detail), "field": None}
    return _json(exc.status_code, body, exc.headers)


async def _too_long_integer(request: Request, exc: Exception) -> ProctorError | None:
    """The error naming an integer too long to read in a route's JSON body, if that is why.

    FastAPI answers 400 "error parsing the body" when ``json.loads`` raises a ValueError that
    is no JSONDecodeError: a body that is not UTF-8, or an integer of more digits than Python
    converts. The second is valid JSON with a value out of range, so a 422 naming its field,
    as ``POST /v1/plans`` answers (``parse_body``). The route has read the body: the request
    keeps it, so reading it again reads no more of the connection.
    """
    cause = exc.__cause__
    if not isinstance(cause, ValueError) or isinstance(
        cause, json.JSONDecodeError | UnicodeDecodeError
    ):
        return None
    try:
        parse_body(await request.body())
    except ProctorError as err:
        return err
    except ValueError:
        return None
    return None


async def _unexpected(request: Request, exc: Exception) -> Response:
    # A bug, not bad input: log the traceback for us, say nothing inside to the client.
    log.error("%s %s raised", request.method, request.url.path, exc_info=exc)
    return _json(500, {"code": "internal_error", "message": "internal server error", "field": None})


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception the app can raise to a JSON error response."""
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(ProctorError, _proctor)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
