"""WS /ws/segment: live frames in, label masks out; the protocol is in docs/service.md.

The receiver keeps only the newest unprocessed frame (a one-slot mailbox): a frame that arrives while
another is still waiting replaces it and counts as dropped, so a slow server never builds a backlog
and the client always sees the most recent picture segmented.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from seg_service.api import imaging
from seg_service.api.deps import Service, key_matches
from seg_service.api.inference import timed_predict
from seg_service.api.schemas import WsError, WsResult
from seg_service.runtime import PackedModel

router = APIRouter(tags=["stream"])
log = logging.getLogger("seg_service.ws")

CLOSE_POLICY_VIOLATION = 1008  # missing/wrong API key, unknown model at connect
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013  # over the open-session limit (SEG_MAX_WEBSOCKETS)
# A settings message is a handful of short keys; anything longer is refused unparsed, which also keeps
# the JSON parser away from deeply nested input.
MAX_SETTINGS_CHARS = 4096


def close_reason(text: str, limit: int = 123) -> str:
    """A close frame's reason is at most 123 bytes of UTF-8: cut there, never inside a character."""
    return text.encode()[:limit].decode(errors="ignore")


def _frame_job(data: bytes, model: PackedModel, max_pixels: int, flip: bool,
               refine: bool) -> tuple[bytes, int, int, float]:
    rgb = imaging.decode_image(data, max_pixels, imaging.PNG_MAX_SIDE, "the PNG mask")
    mask, ms = timed_predict(model, rgb, flip, refine)
    del rgb
    return imaging.encode_mask_png(mask), mask.shape[1], mask.shape[0], ms


class _Session:
    def __init__(self, websocket: WebSocket, service: Service, model: PackedModel) -> None:
        self.ws = websocket
        self.service = service
        self.model = model
        self.flip = False  # test-time augmentation, off by default: it doubles each frame's time
        self.refine = True  # the model's stored post-processing, as in POST /segment
        self.pending: tuple[int, bytes] | None = None
        self.wakeup = asyncio.Event()
        self.closed = False
        self.received = 0
        self.processed = 0
        self.dropped = 0
        self.send_lock = asyncio.Lock()

    async def send_error(self, detail: str, **extra: object) -> None:
        async with self.send_lock:
            await self.ws.send_text(json.dumps(WsError(detail=detail).model_dump() | extra))

    async def receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                if self.pending is not None:
                    self.dropped += 1
                    self.service.metrics.add("frames_dropped")
                self.pending = (self.received, message["bytes"])
                self.received += 1
                self.wakeup.set()
            elif message.get("text") is not None:
                await self.apply_settings(message["text"])

    async def apply_settings(self, text: str) -> None:
        if len(text) > MAX_SETTINGS_CHARS:
            await self.send_error(f"settings message too long: {len(text)} characters, the limit is "
                                  f"{MAX_SETTINGS_CHARS}")
            return
        try:
            request = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
            await self.send_error("text messages must be JSON like {\"model\": \"person\", \"format\": \"png\"}")
            return
        if not isinstance(request, dict):
            await self.send_error("settings message must be a JSON object")
            return
        unknown = sorted(set(request) - {"model", "format", "flip", "refine"})
        if unknown:
            await self.send_error(f"unknown settings key(s): {', '.join(map(str, unknown))}")
            return
        if "format" in request and request["format"] != "png":
            await self.send_error(f"unsupported format {request['format']!r}: only \"png\" is available")
            return
        for key in ("flip", "refine"):
            if key in request and not isinstance(request[key], bool):
                await self.send_error(f"{key} must be true or false, got {request[key]!r}")
                return
        if "model" in request:
            model = self.service.registry.get(request["model"]) if isinstance(request["model"], str) else None
            if model is None:
                await self.send_error(f"unknown model {request['model']!r}; keeping {self.model.name!r}")
                return
            self.model = model
        if "flip" in request:
            self.flip = request["flip"]
        if "refine" in request:
            self.refine = request["refine"]

    async def process_loop(self) -> None:
        settings = self.service.settings
        while not self.closed:
            await self.wakeup.wait()
            self.wakeup.clear()
            if self.pending is None:
                continue
            index, data = self.pending
            self.pending = None
            model = self.model
            try:
                png, width, height, ms = await self.service.gate.run_when_free(
                    _frame_job, data, model, settings.max_image_pixels, self.flip, self.refine)
            except imaging.ImageInputError as e:
                await self.send_error(e.detail, frame=index)
                continue
            self.processed += 1
            self.service.metrics.add("frames_processed")
            self.service.metrics.observe_inference(model.name, ms / 1e3)
            result = WsResult(frame=index, width=width, height=height, model=model.name,
                              inference_ms=round(ms, 3), dropped=self.dropped)
            async with self.send_lock:
                await self.ws.send_text(result.model_dump_json())
                await self.ws.send_bytes(png)


@router.websocket("/ws/segment")
async def ws_segment(websocket: WebSocket, model: str | None = None, api_key: str | None = None,
                     flip: bool = False, refine: bool = True) -> None:
    """Query: `model` (default: the server's), `api_key` (browsers cannot set headers on a WebSocket;
    the X-API-Key header works too), `flip` and `refine` (the starting values of those settings)."""
    service: Service = websocket.app.state.service
    await websocket.accept()
    given_key = api_key if api_key is not None else websocket.headers.get("x-api-key")
    if not key_matches(service.settings.api_key, given_key):
        detail = "missing API key" if given_key is None else "wrong API key"
        await websocket.send_text(WsError(detail=detail).model_dump_json())
        await websocket.close(CLOSE_POLICY_VIOLATION, close_reason(detail))
        return
    chosen = service.registry.get(model)
    if chosen is None:
        detail = (f"unknown model {model!r}" if model is not None
                  else f"default model {service.registry.default_name!r} is not loaded")
        await websocket.send_text(WsError(detail=detail).model_dump_json())
        await websocket.close(CLOSE_POLICY_VIOLATION, close_reason(detail))
        return

    if service.websockets >= service.settings.max_websockets:
        detail = f"server busy: {service.settings.max_websockets} WebSocket sessions already open, retry later"
        await websocket.send_text(WsError(detail=detail).model_dump_json())
        await websocket.close(CLOSE_TRY_AGAIN_LATER, close_reason(detail))
        return

    session = _Session(websocket, service, chosen)
    session.flip, session.refine = flip, refine
    service.metrics.add("ws_connections")
    service.websockets += 1
    processor = asyncio.create_task(session.process_loop())
    receiver = asyncio.create_task(session.receive_loop())
    close_code = 1000
    try:
        done, _ = await asyncio.wait({receiver, processor}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            # A send that races the client's disconnect is a normal end, anything else is a bug.
            if error is not None and not isinstance(error, WebSocketDisconnect):
                raise error
    except Exception as e:  # a bug, not bad input: tell the client with a close code, log the cause
        log.exception("websocket session failed")
        close_code = CLOSE_INTERNAL_ERROR
        with contextlib.suppress(Exception):
            await session.send_error(f"internal error: {type(e).__name__}")
    finally:
        session.closed = True
        session.wakeup.set()
        for task in (processor, receiver):
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        service.metrics.add("ws_connections", -1)
        service.websockets -= 1
        websocket.state.log_extra = {"model": session.model.name, "frames_received": session.received,
                                     "frames_processed": session.processed, "frames_dropped": session.dropped}
        if websocket.application_state == WebSocketState.CONNECTED and \
                websocket.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close(close_code)
