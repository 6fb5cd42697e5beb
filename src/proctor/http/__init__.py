"""The HTTP API (``proctor serve``): FastAPI on uvicorn, bearer-token or JWT auth.

Everything here is an adapter over ``proctor._library.Proctor``: routes translate HTTP to
gateway calls and errors to status codes (``errors.py``), and nothing here decides. The
server dependencies are the ``server`` extra; importing this package without them raises
``MissingDependencyError`` naming it.
"""

from __future__ import annotations

from proctor.errors import MissingDependencyError

try:
    import fastapi  # noqa: F401 - checked here so the message names the extra
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise MissingDependencyError(
        f"the HTTP service needs the 'server' extra ({exc.name} is missing)",
        field="server",
        hint="pip install 'proctor[server]'",
    ) from exc

from proctor.http.app import create_app
from proctor.http.settings import HttpSettings, JwtSettings, load_http_settings

__all__ = ["HttpSettings", "JwtSettings", "create_app", "load_http_settings"]
