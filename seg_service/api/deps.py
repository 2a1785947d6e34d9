"""Shared per-process service state and the FastAPI dependencies that hand it to routes."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, WebSocket
from fastapi.security import APIKeyHeader

from seg_service.api.inference import InferenceGate
from seg_service.api.metrics import Metrics
from seg_service.api.registry import ModelRegistry
from seg_service.api.settings import Settings
from seg_service.runtime import PackedModel


@dataclass
class Service:
    settings: Settings
    registry: ModelRegistry
    gate: InferenceGate
    metrics: Metrics
    websockets: int = 0  # open WebSocket sessions (capped by settings.max_websockets)


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]

# auto_error=False: a missing key is our own JSON 401, and no key is needed when none is configured.
_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Required when the server runs with SEG_API_KEY / --api-key.",
)


def key_matches(expected: str | None, given: str | None) -> bool:
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def require_api_key(service: ServiceDep, api_key: Annotated[str | None, Depends(_api_key_header)]) -> None:
    if not key_matches(service.settings.api_key, api_key):
        detail = "missing API key (X-API-Key header)" if api_key is None else "wrong API key"
        raise HTTPException(401, detail, headers={"WWW-Authenticate": "X-API-Key"})


def resolve_model(service: Service, name: str | None) -> PackedModel:
    model = service.registry.get(name)
    if model is not None:
        return model
    if name is None:
        raise HTTPException(503, f"default model {service.registry.default_name!r} is not loaded")
    raise HTTPException(404, f"unknown model {name!r}; loaded: {', '.join(sorted(service.registry.models))}")


ModelName = Annotated[
    str | None,
    Query(
        min_length=1, max_length=100, description="Model name (see /models); default: the server's default."
    ),
]


def get_model(service: ServiceDep, model: ModelName = None) -> PackedModel:
    return resolve_model(service, model)


ModelDep = Annotated[PackedModel, Depends(get_model)]


def websocket_service(websocket: WebSocket) -> Service:
    return websocket.app.state.service


# Inference switches shared by POST /segment and POST /segment/video (WebSocket: settings messages).
RefineQuery = Annotated[
    bool,
    Query(
        description="Apply the model's stored post-processing (edge-aware guided "
        "filter, decision bias; see /models). false: the plain argmax "
        "of the network's logits."
    ),
]
