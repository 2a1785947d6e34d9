"""Health, readiness, model and class listings, metrics, and the browser demo page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from seg_service.api.deps import ServiceDep, _api_key_header, key_matches, resolve_model
from seg_service.api.schemas import (
    ClassesResponse,
    ClassInfo,
    ErrorResponse,
    HealthResponse,
    ModelInfo,
    ModelsResponse,
    ReadyResponse,
)

router = APIRouter(tags=["meta"])

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"


@router.get("/health", response_model=HealthResponse)
async def health() -> HealthResponse:
    """Liveness: the process answers."""
    return HealthResponse()


@router.get(
    "/ready",
    response_model=ReadyResponse,
    response_model_exclude_none=True,
    responses={503: {"model": ReadyResponse}},
)
async def ready(
    service: ServiceDep, api_key: Annotated[str | None, Depends(_api_key_header)] = None
) -> JSONResponse:
    """Readiness: 200 once the default model is loaded, else 503. When the server has an API key, the
    details (model names, refused files) need it; the status and its reason are open to probes."""
    registry = service.registry
    body = ReadyResponse(ready=registry.ready, reason=registry.not_ready_reason())
    if service.settings.api_key is None or (
        api_key is not None and key_matches(service.settings.api_key, api_key)
    ):
        body.default_model = registry.default_name
        body.models = sorted(registry.models)
        body.refused = [
            r.reason if r.reason.startswith(r.path.name) else f"{r.path.name}: {r.reason}"
            for r in registry.refused
        ]
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if registry.ready else 503)


@router.get("/models", response_model=ModelsResponse)
async def models(service: ServiceDep) -> ModelsResponse:
    """Loaded models: classes, input preprocessing, file size and checksum."""
    registry = service.registry
    return ModelsResponse(
        default_model=registry.default_name,
        models=[
            ModelInfo(
                name=m.name,
                arch=getattr(m, "arch", None),
                classes=list(m.classes),
                input=dict(m.input_spec),
                file_size=int(m.file_size),
                checksum=m.checksum,
                postprocess=dict(m.postprocess) or None,
                test_time=m.test_time.to_json(),
                default=name == registry.default_name,
            )
            for name, m in sorted(registry.models.items())
        ],
    )


@router.get(
    "/classes",
    response_model=ClassesResponse,
    responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
async def classes(
    service: ServiceDep, model: str | None = Query(None, min_length=1, max_length=100)
) -> ClassesResponse:
    """Class names and overlay colours of a model (default: the server's default model)."""
    m = resolve_model(service, model)
    palette = np.asarray(m.palette)
    return ClassesResponse(
        model=m.name,
        classes=[
            ClassInfo(index=i, name=name, color=[int(c) for c in palette[i]])
            for i, name in enumerate(m.classes)
        ],
    )


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(service: ServiceDep) -> PlainTextResponse:
    """Prometheus text format, version 0.0.4."""
    return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
