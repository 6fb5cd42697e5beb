"""``proctor serve`` with the ``/v1/mcp`` routes, for as long as ``create_app`` lacks them.

Usage: python serve_mcp.py HOME PORT. The same app, worker and settings as ``proctor serve``
(``proctor.cli.service``), plus ``proctor.http.routes_mcp``'s router.
"""

import sys
from pathlib import Path

import uvicorn

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.app.worker import Worker
from proctor.http import create_app, load_http_settings, routes_mcp
from proctor.http.auth import Auth, FailureLimiter
from proctor.http.context import Context

home, port = Path(sys.argv[1]), int(sys.argv[2])
settings = load_http_settings(home)
p = Proctor.open(home)
app = create_app(p, settings=settings)
gw = p.gateway
auth = Auth(
    TokenService(gw.store, gw.clock),
    limiter=FailureLimiter(settings.auth_failures_per_minute),
    jwt=None,
    token_cache_seconds=settings.token_cache_seconds,
    unsafe_no_auth=False,
)
app.include_router(routes_mcp.router(Context(proctor=p, settings=settings, auth=auth)))
worker = Worker(gw)
worker.start()
try:
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
finally:
    worker.stop()
    p.close()
