"""``create_app``: the ASGI application of ``proctor serve``."""

# NOTE(http): no `from __future__ import annotations` here: FastAPI reads the route
# signatures at runtime, and the aliases they use (Caller, PlanId) are local names.

import logging
from importlib import metadata
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from proctor._library import Proctor
from proctor.app.tokens import TokenService
from proctor.core.principals import Principal
from proctor.errors import ConfigError, StorageError
from proctor.http import routes_audit, routes_guards, routes_mcp, routes_observe, routes_plans
from proctor.http.auth import Auth, FailureLimiter
from proctor.http.context import AUTH_ERRORS, Context, errors_doc, json_response
from proctor.http.errors import install_error_handlers
from proctor.http.jwt import JwtVerifier
from proctor.http.middleware import BodyLimit
from proctor.http.schemas import Health, PlanManifest, WhoAmI
from proctor.http.settings import HttpSettings

__all__ = ["create_app"]

log = logging.getLogger("proctor.http")


class _UnsafeWarning:
    """Logs a warning on every request served without authentication."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            log.warning(
                "UNSAFE --unsafe-no-auth: %s %s served as 'local' without authentication",
                scope.get("method"),
                scope.get("path"),
            )
        await self.app(scope, receive, send)


def _version() -> str:
    try:
        return metadata.version("proctor")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    # The manifest is validated by the gateway (which audits rejections), not by FastAPI;
    # its schema is published for clients all the same.
    manifest = PlanManifest.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(manifest.pop("$defs", {}))
    components["PlanManifest"] = manifest
    # FastAPI's own validation error shapes are never sent: ErrorBody is.
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema


def create_app(
    proctor: Proctor,
    *,
    settings: HttpSettings | None = None,
    unsafe_no_auth: bool = False,
) -> FastAPI:
    """Build the HTTP API over a ``Proctor`` (docs/http.md is the contract).

    Args:
        proctor: The instance to serve; the caller keeps and closes it.
        settings: Limits, auth and streaming settings. Default ``HttpSettings()``.
        unsafe_no_auth: Serve every request as ``local`` (admin, approver, user) without
            authentication. For a laptop demo only: anyone who reaches the port can
            approve anything. Every request logs a warning.

    Raises:
        ConfigError: if the JWT settings name a JWKS file that cannot be read.
    """
    settings = settings or HttpSettings()
    gateway = proctor.gateway
    verifier = None
    if settings.jwt is not None:
        verifier = JwtVerifier(settings.jwt)
        try:
            verifier.load()
        except ConfigError:
            if settings.jwt.jwks_file is not None:
                raise
            # A JWKS URL may be down for a moment at start-up: retried on the first token.
            log.warning("cannot fetch the JWKS at start-up; will retry", exc_info=True)
    auth = Auth(
        TokenService(gateway.store, gateway.clock),
        limiter=FailureLimiter(settings.auth_failures_per_minute),
        jwt=verifier,
        token_cache_seconds=settings.token_cache_seconds,
        unsafe_no_auth=unsafe_no_auth,
    )
    ctx = Context(proctor=proctor, settings=settings, auth=auth)
    app = FastAPI(
        title="Proctor",
        version=_version(),
        description="Supervise AI-agent actions: submit plans, approve, audit (docs/http.md).",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.proctor = proctor
    app.state.context = ctx  # ``proctor serve`` closes it (submissions in flight) on exit
    install_error_handlers(app)

    @app.get("/healthz", response_model=Health, tags=["system"], summary="Liveness")
    async def healthz() -> Response:
        """The process is up."""
        return json_response({"status": "ok"})

    def ready() -> Response:
        try:
            gateway.store.get_meta("schema_version")
        except StorageError as exc:
            return json_response(
                {"code": exc.code, "message": f"the store does not answer: {exc}", "field": None},
                503,
            )
        if gateway.policy is None:
            return json_response(
                {"code": "config_error", "message": "no policy is loaded", "field": "policy"},
                503,
            )
        return json_response({"status": "ready"})

    @app.get(
        "/readyz",
        response_model=Health,
        tags=["system"],
        summary="Readiness",
        responses=errors_doc(503),
    )
    async def readyz() -> Response:
        """Ready when the store answers and a policy is loaded; else 503."""
        return await run_in_threadpool(ready)

    Caller = Annotated[Principal, Depends(ctx.auth)]

    @app.get(
        "/v1/me",
        response_model=WhoAmI,
        tags=["system"],
        summary="Who the caller is (any authenticated principal)",
        responses=errors_doc(*AUTH_ERRORS),
    )
    def me(caller: Caller) -> Response:
        """The caller's name, roles and approver groups, as its credential says.

        A client checks with it that a credential names whom it expects before acting with
        it (``proctor mcp --user-token``: the user who confirms).
        """
        return json_response(
            {"name": caller.name, "roles": list(caller.roles), "groups": list(caller.groups)}
        )

    app.include_router(routes_plans.router(ctx))
    app.include_router(routes_audit.router(ctx))
    app.include_router(routes_guards.router(ctx))
    app.include_router(routes_observe.router(ctx))
    app.include_router(routes_mcp.router(ctx))  # a remote `proctor mcp --server` (docs/mcp.md)
    # Imported here: proctor.web builds on proctor.http, so a module-level import would
    # be circular.
    from proctor.web import mount_console

    mount_console(app, ctx)  # the web console at / (docs/console.md)
    # The last added is the outermost: the body limit applies to the submit path too.
    app.add_middleware(routes_plans.SubmitRoute, ctx=ctx)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if unsafe_no_auth:
        app.add_middleware(_UnsafeWarning)

    def openapi() -> dict[str, Any]:
        return _openapi(app)

    app.openapi = openapi  # type: ignore[method-assign]
    return app
