"""ASGI middleware: request size limit while streaming, and one structured log line per request."""

from __future__ import annotations

import asyncio
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

    def __init__(
        self, app: ASGIApp, limit_for_path: Callable[[str], int], idle_timeout: float | None = None
    ) -> None:
        self.app = app
        self.limit_for_path = limit_for_path
        self.idle_timeout = idle_timeout

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
                    await _send_json(
                        send, 413, f"request body too large: {declared} bytes, the limit is {limit} bytes"
                    )
                    return
        received = 0
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done or self.idle_timeout is None:
                message = await receive()  # after the body: only a disconnect can come, wait for it
            else:
                try:
                    message = await asyncio.wait_for(receive(), self.idle_timeout)
                except TimeoutError:
                    raise HTTPException(408, f"upload stalled: no data for {self.idle_timeout:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


class HeaderLimitMiddleware:
    """Answers 431 when the request line and headers together exceed the limit. uvicorn's h11 parser
    (`h11_max_incomplete_event_size`) bounds what it buffers while headers are still incomplete, but
    accepts a head that arrives whole in one read; this checks the parsed total, so the limit holds
    either way."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            size = (
                len(scope.get("raw_path") or b"")
                + len(scope.get("query_string") or b"")
                + sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            )
            if size > self.max_bytes:
                if scope["type"] == "http":
                    await _send_json(
                        send,
                        431,
                        f"request headers too large: {size} bytes, the limit is {self.max_bytes} bytes",
                    )
                else:  # a WebSocket handshake: refused before it is accepted (HTTP 403)
                    await send({"type": "websocket.close", "code": 1008})
                return
        await self.app(scope, receive, send)


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
        if (
            scope["type"] == "http"
            and scope["method"] != "OPTIONS"
            and scope["path"].rstrip("/") in self.protected_paths
        ):
            given = dict(scope["headers"]).get(b"x-api-key")
            if given is None or not hmac.compare_digest(given, self.api_key.encode()):
                await _send_json(
                    send, 401, "missing API key (X-API-Key header)" if given is None else "wrong API key"
                )
                return
        await self.app(scope, receive, send)


class BusyMiddleware:
    """Answers 503 to an inference request when every inference slot is already taken, deciding before
    the body is parsed: the body is read off the socket and discarded (no multipart parsing, no
    spooling to disk), then the 503 goes out. Discarding rather than closing at once matters: closing
    a socket with unread data makes the kernel send a reset, and a client still writing its upload
    would lose the 503 and see a connection error instead. Draining stops at the path's upload
    limit or when the upload pauses for `idle_timeout`; the connection is then closed.
    (The route checks again when the job starts; a slot freed meanwhile is used.)"""

    def __init__(
        self,
        app: ASGIApp,
        is_full: Callable[[], bool],
        on_reject: Callable[[], None],
        paths: tuple[str, ...],
        limit_for_path: Callable[[str], int],
        idle_timeout: float,
    ) -> None:
        self.app = app
        self.is_full = is_full
        self.on_reject = on_reject
        self.paths = paths
        self.limit_for_path = limit_for_path
        self.idle_timeout = idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].rstrip("/") in self.paths
            and self.is_full()
        ):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for_path(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limit:
            await self.app(scope, receive, send)  # BodyLimitMiddleware answers 400 / 413
            return
        self.on_reject()
        if not await self._drain(receive, limit):
            return  # the client has gone: nobody to answer
        await _send_json(
            send,
            503,
            "server busy: every inference slot is taken, retry later",
            extra_headers=[(b"retry-after", b"1")],
        )

    async def _drain(self, receive: Receive, limit: int) -> bool:
        """Read and drop the body; False when the client disconnected."""
        received = 0
        while received <= limit:
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout)
            except TimeoutError:
                return True
            if message["type"] == "http.disconnect":
                return False
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
        return True


class OneLineStartupError:
    """Turns a StartupRefused raised by the lifespan (a configuration the server cannot serve) into a
    one-line message for uvicorn's log instead of a traceback; other start-up errors keep theirs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                lines = str(message.get("message") or "").strip().splitlines()
                if lines and lines[-1].startswith(
                    ("StartupRefused: ", "seg_service.api.registry.StartupRefused: ")
                ):
                    message = {
                        **message,
                        "message": "seg-service cannot start: " + lines[-1].split(": ", 1)[1],
                    }
            await send(message)

        await self.app(scope, receive, send_wrapper)


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


async def _send_json(
    send: Send, status: int, detail: str, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *(extra_headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
