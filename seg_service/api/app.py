"""The FastAPI application: `create_app()` wires settings, models, limits, routes and middleware."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

import seg_service
from seg_service.api.deps import Service
from seg_service.api.inference import InferenceGate
from seg_service.api.metrics import Metrics
from seg_service.api.middleware import (
    AccessLogMiddleware,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    BusyMiddleware,
    HeaderLimitMiddleware,
    OneLineStartupError,
)
from seg_service.api.registry import ModelRegistry
from seg_service.api.routes import meta, segment, video, ws
from seg_service.api.routes.meta import STATIC_DIR
from seg_service.api.settings import Settings

log = logging.getLogger("seg_service")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:300]


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return _one_line("; ".join(parts) or "invalid request")


def _configure_kernels(threads: int) -> None:
    from seg_service import kernels
    from seg_service.runtime.threads import set_num_threads

    if threads > 0:
        set_num_threads(threads)  # the binary kernels and numpy's BLAS (float layers)
    info = kernels.dispatch_info()
    # Which code the CPU gets decides the speed (an AVX2-only CPU runs about half as fast as one
    # with AVX-512 VPOPCNTDQ): say it where an operator looks first.
    log.info(
        "kernel threads per process: %d; kernel path %s (popcount %s, integer stem %s; CPU offers %s)",
        kernels.get_num_threads(),
        info["isa"],
        info["popcount"],
        info["u8_dot"],
        ", ".join(info["available_isas"]),
    )
    if kernels.get_num_threads() > 1:
        # On a VM whose host puts the CPUs on different dies, a second thread slows each request
        # (docs/service.md): the hand-off figure tells an operator which case this is.
        # 6,000 round trips: a few ms at start-up even across dies, enough for the order of magnitude
        ns = kernels.cpu_round_trip_ns(2000, 3)
        if not math.isnan(ns):  # NaN: no second CPU for this process
            log.info(
                "CPU hand-off between two of this process's CPUs: %.0f ns round trip (about 100: one die; "
                "several hundred: different dies, where --threads 1 may be faster)",
                ns,
            )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; settings default to the SEG_* environment (see docs/service.md)."""
    settings = settings or Settings.from_env()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _configure_kernels(settings.threads)
        registry = ModelRegistry(settings.model_dir, settings.default_model)
        registry.load_all()  # StartupRefused: a one-line error (OneLineStartupError), then uvicorn exits
        gate = InferenceGate(settings.max_in_flight, metrics)
        app.state.service = Service(settings=settings, registry=registry, gate=gate, metrics=metrics)
        log.info(
            "serving models %s (default %r), max in flight %d, API key %s",
            sorted(registry.models),
            registry.default_name,
            settings.max_in_flight,
            "required" if settings.api_key else "off",
        )
        try:
            yield
        finally:
            gate.shutdown()
            log.info("shut down")

    app = FastAPI(
        title="Group-Net binary segmentation service",
        version=seg_service.__version__,
        description="Semantic segmentation served by a packed-bit XNOR-popcount CPU runtime.",
        lifespan=lifespan,
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": _one_line(exc.detail)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_detail(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    app.include_router(meta.router)
    app.include_router(segment.router)
    app.include_router(video.router)
    app.include_router(ws.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # Added innermost first. The size check and, outside it, the API key check both run before any of
    # the body is read; CORS sits outside them so that their 401/413 answers carry CORS headers too;
    # the access log is outermost.
    def upload_limit(path: str) -> int:
        return settings.max_video_bytes if path.rstrip("/") == "/segment/video" else settings.max_upload_bytes

    app.add_middleware(
        BodyLimitMiddleware, limit_for_path=upload_limit, idle_timeout=settings.body_timeout_seconds
    )
    app.add_middleware(
        BusyMiddleware,
        is_full=lambda: app.state.service.gate.full(),
        on_reject=lambda: metrics.add("rejected_busy"),
        paths=("/segment", "/segment/video"),
        limit_for_path=upload_limit,
        idle_timeout=settings.body_timeout_seconds,
    )
    if settings.api_key:
        app.add_middleware(
            ApiKeyMiddleware, api_key=settings.api_key, protected_paths=("/segment", "/segment/video")
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Content-Type"],
            expose_headers=["X-Inference-Time-Ms", "X-Model", "X-Frames"],
        )
    app.add_middleware(HeaderLimitMiddleware, max_bytes=settings.max_header_bytes)
    app.add_middleware(AccessLogMiddleware, metrics=metrics)
    app.add_middleware(OneLineStartupError)
    return app
