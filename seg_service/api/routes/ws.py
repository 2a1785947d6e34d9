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
from seg_service.api.schemas import WsError, WsResult
from seg_service.api.streams import MASK_FORMATS, StreamState, frame_mask, parse_foreground
from seg_service.runtime import PackedModel
from seg_service.runtime.softmask import resolve_foreground

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


SETTINGS_KEYS = {"model", "format", "flip", "refine", "smooth", "foreground"}


def _frame_job(
    data: bytes,
    model: PackedModel,
    max_pixels: int,
    flip: bool,
    refine: bool,
    output: str,
    foreground: list[str] | None,
    stream: StreamState,
) -> tuple[bytes, int, int, float]:
    rgb = imaging.decode_image(data, max_pixels, imaging.PNG_MAX_SIDE, "the PNG mask")
    mask, ms = frame_mask(model, rgb, flip, refine, MASK_FORMATS[output], foreground, stream)
    del rgb
    return imaging.encode_mask_png(mask, soft=output != "png"), mask.shape[1], mask.shape[0], ms


class _Session:
    def __init__(self, websocket: WebSocket, service: Service, model: PackedModel) -> None:
        self.ws = websocket
        self.service = service
        self.model = model
        self.flip = False  # test-time augmentation, off by default: it doubles each frame's time
        self.refine = True  # the model's stored post-processing, as in POST /segment
        self.output = "png"  # the mask sent: "png" (labels), "alpha" or "probability"
        self.foreground: list[str] | None = None  # class names of the soft masks (None: the default)
        # Temporal smoothing, on by default for streams; its state belongs to this connection only.
        self.stream = StreamState(smooth=True)
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
            await self.send_error(
                f"settings message too long: {len(text)} characters, the limit is {MAX_SETTINGS_CHARS}"
            )
            return
        try:
            request = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
            await self.send_error('text messages must be JSON like {"model": "person", "format": "png"}')
            return
        if not isinstance(request, dict):
            await self.send_error("settings message must be a JSON object")
            return
        unknown = sorted(set(request) - SETTINGS_KEYS)
        if unknown:
            await self.send_error(f"unknown settings key(s): {', '.join(map(str, unknown))}")
            return
        detail = self.check_settings(request)
        if detail is not None:
            await self.send_error(detail)
            return
        if "model" in request:
            chosen = self.service.registry.get(request["model"])
            assert chosen is not None  # check_settings found it
            self.model = chosen
        for key in ("flip", "refine"):
            if key in request:
                setattr(self, key, request[key])
        if "format" in request:
            self.output = request["format"]
        if "foreground" in request:
            self.foreground = parse_foreground(request["foreground"])
        if "smooth" in request:
            self.stream.set_smooth(request["smooth"])

    def check_settings(self, request: dict) -> str | None:
        """Why a settings message cannot apply (None: it can); nothing changes unless all of it can."""
        requested = request.get("format", "png")
        if not isinstance(requested, str) or requested not in MASK_FORMATS:  # a dict is not hashable
            return f"unsupported format {requested!r}: one of {', '.join(repr(f) for f in MASK_FORMATS)}"
        for key in ("flip", "refine", "smooth"):
            if key in request and not isinstance(request[key], bool):
                return f"{key} must be true or false, got {request[key]!r}"
        model = self.model
        if "model" in request:
            named = self.service.registry.get(request["model"]) if isinstance(request["model"], str) else None
            if named is None:
                return f"unknown model {request['model']!r}; keeping {self.model.name!r}"
            model = named
        try:
            foreground = (
                parse_foreground(request["foreground"]) if "foreground" in request else self.foreground
            )
            if request.get("format", self.output) != "png":
                resolve_foreground(model.classes, foreground)
        except ValueError as e:
            return str(e)
        return None

    async def process_loop(self) -> None:
        settings = self.service.settings
        while not self.closed:
            await self.wakeup.wait()
            self.wakeup.clear()
            if self.pending is None:
                continue
            index, data = self.pending
            self.pending = None
            model, output, foreground = self.model, self.output, self.foreground
            try:
                png, width, height, ms = await self.service.gate.run_when_free(
                    _frame_job,
                    data,
                    model,
                    settings.max_image_pixels,
                    self.flip,
                    self.refine,
                    output,
                    foreground,
                    self.stream,
                )
            except imaging.ImageInputError as e:
                await self.send_error(e.detail, frame=index)
                continue
            except ValueError as e:  # a foreground the model (switched meanwhile) does not have
                await self.send_error(str(e), frame=index)
                continue
            self.processed += 1
            self.service.metrics.add("frames_processed")
            self.service.metrics.observe_inference(model.name, ms / 1e3)
            result = WsResult(
                frame=index,
                width=width,
                height=height,
                model=model.name,
                inference_ms=round(ms, 3),
                dropped=self.dropped,
                format=output,
                smoothed=self.stream.smooth,
            )
            async with self.send_lock:
                await self.ws.send_text(result.model_dump_json())
                await self.ws.send_bytes(png)


@router.websocket("/ws/segment")
async def ws_segment(
    websocket: WebSocket,
    model: str | None = None,
    api_key: str | None = None,
    flip: bool = False,
    refine: bool = True,
    smooth: bool = True,
    format: str = "png",
    foreground: str | None = None,
) -> None:
    """Query: `model` (default: the server's), `api_key` (browsers cannot set headers on a WebSocket;
    the X-API-Key header works too), `flip`, `refine`, `smooth`, `format` and `foreground` (the starting
    values of those settings; docs/service.md)."""
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
        detail = (
            f"unknown model {model!r}"
            if model is not None
            else f"default model {service.registry.default_name!r} is not loaded"
        )
        await websocket.send_text(WsError(detail=detail).model_dump_json())
        await websocket.close(CLOSE_POLICY_VIOLATION, close_reason(detail))
        return

    if service.websockets >= service.settings.max_websockets:
        detail = (
            f"server busy: {service.settings.max_websockets} WebSocket sessions already open, retry later"
        )
        await websocket.send_text(WsError(detail=detail).model_dump_json())
        await websocket.close(CLOSE_TRY_AGAIN_LATER, close_reason(detail))
        return

    session = _Session(websocket, service, chosen)
    starting = {"format": format, "foreground": foreground} if foreground is not None else {"format": format}
    problem = session.check_settings(starting)
    if problem is not None:
        await websocket.send_text(WsError(detail=problem).model_dump_json())
        await websocket.close(CLOSE_POLICY_VIOLATION, close_reason(problem))
        return
    session.flip, session.refine, session.output = flip, refine, format
    session.foreground = parse_foreground(foreground)
    session.stream.set_smooth(smooth)
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
        websocket.state.log_extra = {
            "model": session.model.name,
            "frames_received": session.received,
            "frames_processed": session.processed,
            "frames_dropped": session.dropped,
            "format": session.output,
            "smooth": session.stream.smooth,
        }
        if (
            websocket.application_state == WebSocketState.CONNECTED
            and websocket.client_state == WebSocketState.CONNECTED
        ):
            with contextlib.suppress(Exception):
                await websocket.close(close_code)
