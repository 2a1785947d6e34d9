"""ASGI middleware: request size limit while streaming, and one structured log line per request."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seg_service.api.metrics import Metrics

access_log = logging.getLogger("seg_service.access")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: the limit is {limit} bytes")


class BodyLimitMiddleware:
    """Refuses a request body over the limit: from Content-Length before reading anything, and by
    counting bytes as they arrive (chunked uploads), so an oversized upload is never buffered whole.

    The overflow is raised as an HTTPException from `receive`; FastAPI re-raises HTTPExceptions from
    body parsing, so the app's handler turns it into a JSON 413.
    """

    def __init__(self, app: ASGIApp, limit_for_path: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for_path = limit_for_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for_path(scope["path"])
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, "invalid Content-Length header")
                    return
                if declared > limit:
                    await _send_json(send, 413, f"request body too large: {declared} bytes, "
                                                f"the limit is {limit} bytes")
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


class ApiKeyMiddleware:
    """Checks the API key of protected HTTP routes before any of the body is read, so that clients
    without the key cannot make the server take in uploads. (The routes' `require_api_key`
    dependency does the same check and documents the header in OpenAPI, but FastAPI runs
    dependencies only after it has parsed the body.)"""

    def __init__(self, app: ASGIApp, api_key: str, protected_paths: tuple[str, ...]) -> None:
        self.app = app
        self.api_key = api_key
        self.protected_paths = protected_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS" \
                and scope["path"].rstrip("/") in self.protected_paths:
            given = dict(scope["headers"]).get(b"x-api-key")
            if given is None or not hmac.compare_digest(given, self.api_key.encode()):
                await _send_json(send, 401, "missing API key (X-API-Key header)" if given is None
                                 else "wrong API key")
                return
        await self.app(scope, receive, send)


class AccessLogMiddleware:
    """One JSON log line per HTTP request (and per WebSocket session), and the request metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500 if scope["type"] == "http" else 1000
        response_bytes = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_bytes
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                response_bytes += len(message.get("body", b""))
            elif message["type"] == "websocket.close":
                status = message.get("code", 1000)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - start
            route = scope.get("route")
            route_path = getattr(route, "path", None) or "<unmatched>"
            if scope["type"] == "http":
                self.metrics.observe_request(scope["method"], route_path, status, seconds)
            client = scope.get("client")
            record = {
                "type": scope["type"],
                "method": scope.get("method", "WS"),
                "path": scope["path"],
                "route": route_path,
                "status": status,
                "ms": round(seconds * 1e3, 2),
                "bytes_out": response_bytes,
                "client": f"{client[0]}:{client[1]}" if client else None,
            }
            record.update(scope.get("state", {}).get("log_extra", {}))
            access_log.info(json.dumps(record, separators=(",", ":")))


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
