"""The FastAPI application: bearer auth, DO error bodies, and the resource routers."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from lab.api import (
    routes_actions,
    routes_catalog,
    routes_droplets,
    routes_firewalls,
    routes_load_balancers,
    routes_ssh_keys,
    routes_tags,
    routes_vpcs,
)
from lab.api.deps import Lab
from lab.api.errors import NOT_FOUND, UNAUTHORIZED, ApiError, error_response
from lab.api.machine_ops import MachineOps
from lab.api.store import Store
from lab.cloud import Cloud

log = logging.getLogger(__name__)
ROUTERS = (
    routes_catalog,
    routes_ssh_keys,
    routes_tags,
    routes_vpcs,
    routes_droplets,
    routes_actions,
    routes_firewalls,
    routes_load_balancers,
)


def create_app(
    cloud: Cloud,
    token: str,
    state_file: Path,
    *,
    poll_interval: float = 0.5,
    ready_timeout: float = 600.0,
) -> FastAPI:
    """`poll_interval`: how often droplets waiting to boot are asked `droplet_ready`;
    `ready_timeout`: how long a booting droplet may take before its action is `errored`."""
    store = Store(Path(state_file))
    ops = MachineOps(store, cloud, poll_interval=poll_interval, ready_timeout=ready_timeout)
    expected = f"Bearer {token}".encode()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ops.start()
        try:
            yield
        finally:
            ops.stop()

    app = FastAPI(
        title="Lifeboat lab: DigitalOcean API stand-in", lifespan=lifespan, openapi_url=None
    )
    app.state.lab = Lab(store=store, ops=ops)

    @app.middleware("http")
    async def authenticate(request: Request, call_next):  # type: ignore[no-untyped-def]
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return error_response(401, UNAUTHORIZED)
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(404, NOT_FOUND)
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # A malformed id in the path names no resource; anything else is bad input.
        if any(err.get("loc", ("",))[0] == "path" for err in exc.errors()):
            return error_response(404, NOT_FOUND)
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error_response(422, details)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "Server Error")

    for module in ROUTERS:
        app.include_router(module.router)
    return app
