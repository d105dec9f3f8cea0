"""The FastAPI app factory. `create_app(settings)` wires the store, queue, metrics, routes and
error handlers; nothing is built at import time.

Run it with `metahmr serve`, or in a container with
`uvicorn --factory service.main:app_from_env`.
"""

from __future__ import annotations

import logging
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.config import Settings, get_settings
from service.contract import RecoverOptions
from service.demo import install_pages
from service.deps import ApiError, AppState
from service.jobs import JobStore, configure_logging
from service.metrics import ApiMetrics
from service.queue import TaskQueue
from service.routes import router

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "upload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
}


def _version() -> str:
    try:
        return version("metahmr")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(settings: Settings) -> FastAPI:
    """Build the API for `settings` (which must name a Redis URL)."""
    store = JobStore.from_url(settings.require_redis_url(), ttl_s=settings.result_ttl_s)
    queue = TaskQueue(settings, store)
    app = FastAPI(
        title="metahmr",
        version=_version(),
        description="Human mesh recovery: POST an image, poll the job, read SMPL parameters. "
        "A page for people: /demo.",
        # FastAPI's own pages load their scripts from a CDN; /docs is served from this
        # package instead (service.demo), and there is no /redoc.
        docs_url=None,
        redoc_url=None,
    )
    app.state.metahmr = AppState(
        settings=settings, store=store, queue=queue, metrics=ApiMetrics(store, queue.depth)
    )
    app.include_router(router)
    install_pages(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    _install_error_handlers(app)
    app.middleware("http")(_observe_request)
    return app


def app_from_env() -> FastAPI:
    """`uvicorn --factory` entry point: settings and logging from the environment."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    return create_app(settings)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus `RecoverOptions`: POST /recover reads its options from a
    multipart part by hand (deps.parse_options), so FastAPI does not see the model."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        options = RecoverOptions.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(options.pop("$defs", {}))
        components["RecoverOptions"] = options
        app.openapi_schema = schema
    return app.openapi_schema


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}"
            for err in exc.errors()[:5]
        ]
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(redis.RedisError)
    async def _store_error(_: Request, exc: redis.RedisError) -> JSONResponse:
        log.error("Redis error: %s", exc)
        return error_response(503, "store_unavailable", "the job store is unavailable; retry later")

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; see the service logs")


async def _observe_request(request: Request, call_next):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        request.app.state.metahmr.metrics.observe(
            request.method, path, status, time.perf_counter() - start
        )
