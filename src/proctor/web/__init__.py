"""The web console (``proctor serve`` at ``/``): server-rendered pages over the gateway.

Sign-in with an API token (or a JWT) opens a server-side session; every state-changing form
carries a CSRF token. Pages show only what the principal's roles allow; the core actions
(sign in, approve, reject, confirm, undo) work without JavaScript. docs/console.md describes
it. Needs the ``server`` extra (FastAPI, Jinja2, python-multipart).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from proctor.errors import InvalidRequestError, NotFoundError, ProctorError
from proctor.http.context import Context
from proctor.web.routes import COOKIE, ErrorPage, console_pages, console_router

__all__ = ["COOKIE", "console_router", "mount_console"]

STATIC = Path(__file__).parent / "static"
# Paths of the API and of the machines: their errors stay JSON whoever asks.
_API_PATHS = ("/openapi.json", "/metrics", "/healthz", "/readyz")

Handler = Callable[[Request, Exception], Awaitable[Response]]


def mount_console(app: FastAPI, ctx: Context) -> None:
    """Serve the console's pages at ``/`` and its CSS and JavaScript at ``/static``.

    A browser's request for a console page that FastAPI refuses before the page runs (a
    query or path value out of range, an unknown path) gets the console's HTML error page,
    naming the field, with the API's status (422, 404); ``/v1`` and the other API paths,
    and clients that do not ask for HTML, keep the API's JSON errors.
    """
    router, error_page = console_pages(ctx)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="console-static")
    _html_errors_for_pages(app, error_page)


def _for_a_page(request: Request) -> bool:
    path = request.url.path
    if path == "/v1" or path.startswith(("/v1/", "/static/")) or path in _API_PATHS:
        return False
    return "text/html" in request.headers.get("accept", "")


def _html_errors_for_pages(app: FastAPI, error_page: ErrorPage) -> None:
    # The API's handlers (``proctor.http.errors``, installed first): async functions.
    json_validation = cast(Handler, app.exception_handlers[RequestValidationError])
    json_http = cast(Handler, app.exception_handlers[StarletteHTTPException])

    async def validation(request: Request, exc: Exception) -> Response:
        if not (_for_a_page(request) and isinstance(exc, RequestValidationError)):
            return await json_validation(request, exc)
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(x) for x in first.get("loc", ()) if x not in ("query", "path", "body")]
        field = ".".join(loc) or "query"
        value = first.get("input")
        shown = f" (got {str(value)[:40]!r}{'…' if len(str(value)) > 40 else ''})" if value else ""
        problem = InvalidRequestError(
            f"{field}: {first.get('msg', 'invalid value')}{shown}",
            field=field,
            hint="Correct the address, or go back and use the page's links and forms.",
        )
        return await error_page(request, problem)

    async def http(request: Request, exc: Exception) -> Response:
        if (
            _for_a_page(request)
            and isinstance(exc, StarletteHTTPException)
            and exc.status_code == 404
        ):
            problem: ProctorError = NotFoundError(
                f"no page at {request.url.path[:200]}", field="path", hint="Use the menu."
            )
            return await error_page(request, problem)
        return await json_http(request, exc)

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
