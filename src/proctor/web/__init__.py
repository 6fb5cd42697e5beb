"""The web console (``proctor serve`` at ``/``): server-rendered pages over the gateway.

Sign-in with an API token (or a JWT) opens a server-side session; every state-changing form
carries a CSRF token. Pages show only what the principal's roles allow; the core actions
(sign in, approve, reject, confirm, undo) work without JavaScript. docs/console.md describes
it. Needs the ``server`` extra (FastAPI, Jinja2, python-multipart).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from proctor.http.context import Context
from proctor.web.routes import COOKIE, console_router

__all__ = ["COOKIE", "console_router", "mount_console"]

STATIC = Path(__file__).parent / "static"


def mount_console(app: FastAPI, ctx: Context) -> None:
    """Serve the console's pages at ``/`` and its CSS and JavaScript at ``/static``."""
    app.include_router(console_router(ctx))
    app.mount("/static", StaticFiles(directory=STATIC), name="console-static")
