"""uvicorn's h11 HTTP protocol with a deadline on the request head.

uvicorn times out idle keep-alive connections only after a response; a client that connects and
then sends its request line and headers slowly (or never) holds the connection for ever. This
protocol closes a connection whose head is not complete `SEG_HEADER_TIMEOUT_SECONDS` after the
connection opened or the previous response ended. The body has its own idle timeout
(`BodyLimitMiddleware`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEADER_TIMEOUT_S = 10.0


class HeadTimeoutH11Protocol(H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The CLI writes the settings to the environment before uvicorn starts (workers included).
        self.head_timeout = float(os.environ.get("SEG_HEADER_TIMEOUT_SECONDS") or DEFAULT_HEADER_TIMEOUT_S)
        self._head_timer: asyncio.TimerHandle | None = None

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        waiting_for_head = self.cycle is None or self.cycle.response_complete
        if waiting_for_head and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._cancel_head_timer()  # the head is in: the request runs under the app's own limits

    def handle_websocket_upgrade(self, event: Any) -> None:
        self._cancel_head_timer()  # the transport now belongs to the WebSocket protocol
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)
