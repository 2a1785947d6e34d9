"""Talking to seg-service.

- `ServerAPI`: the REST endpoints (GET /models, GET /classes, POST /segment) over httpx.
- `WebSocketSession` / `RestSession`: one connection that turns a JPEG into a label mask; the same
  interface, so the streamer falls back to REST when the WebSocket endpoint is refused.
- `Streamer`: a background thread that owns the connection, keeps at most one frame in flight
  (a newer frame replaces a waiting one: latest frame wins, stale frames are dropped), publishes
  the latest result, and reconnects with bounded exponential backoff when the server goes away.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

import cv2
import httpx
import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import connect as ws_connect

from seg_client.overlay import ClassInfo

log = logging.getLogger("seg-client")

TransportName = Literal["ws", "rest"]
API_KEY_HEADER = "X-API-Key"
WS_PATH = "/ws/segment"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
NOTICE_SECONDS = 8.0  # how long the HUD shows a refused model switch


class ServerError(RuntimeError):
    """Fatal: the server cannot be used (unreachable after retries, key refused, protocol broken)."""


class Unauthorized(ServerError):
    """The server refused the API key."""


class UnknownModel(ServerError):
    """HTTP 404 on POST /segment: the server has no such model (or, behind a proxy, no such route)."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail  # the server's own words, for reporting a refused switch


class ConnectionLost(Exception):
    """Transient: the connection dropped or timed out; the streamer reconnects."""


class FrameRejected(Exception):
    """The server answered one frame with an error; the connection itself is fine."""


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays initial, 2*initial, 4*initial, ... capped at `maximum`, for `attempts` tries."""

    initial: float = 0.5
    maximum: float = 5.0
    attempts: int = 8

    def delay(self, attempt: int) -> float:
        return min(self.maximum, self.initial * 2 ** max(0, attempt - 1))


@dataclass(frozen=True)
class ModelRefusal:
    """A model switch the server refused; the frame was segmented by the model it kept."""

    model: str  # the model asked for
    detail: str  # the server's reason


@dataclass
class FrameAnswer:
    """What the server returned for one frame."""

    mask: np.ndarray
    model: str  # the model that made this mask, as the server says
    inference_ms: float
    server_dropped: int = 0
    refused_switch: ModelRefusal | None = None  # a switch asked for with this frame and refused
    mask_format: str = "png"  # "png": label mask; "alpha": the foreground's alpha matte


@dataclass
class SegResult:
    """The latest segmentation, as handed to the drawing loop."""

    seq: int  # the client's number for the frame it belongs to
    mask: np.ndarray
    model: str
    classes: ClassInfo
    inference_ms: float
    round_trip_ms: float
    server_dropped: int
    mask_format: str = "png"  # what `mask` holds: "png" labels or an "alpha" matte


@dataclass
class StreamStats:
    frames_submitted: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0  # never sent: replaced by a newer frame, or no connection at the time
    frames_lost: int = 0  # sent, but the connection died before the answer
    frame_errors: int = 0  # answered with an error message
    results: int = 0
    connections: int = 0  # successful connects (reconnects = connections - 1)
    server_dropped_max: int = 0  # frames the server itself dropped (0 while the client paces itself)
    transport: str = ""
    round_trip_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        rtts = data.pop("round_trip_ms")
        data["reconnects"] = max(0, self.connections - 1)
        data["mean_round_trip_ms"] = round(float(np.mean(rtts)), 1) if rtts else None
        return data


def http_base(server: str) -> str:
    """Normalises --server: adds http:// when no scheme is given and drops a trailing slash."""
    url = server.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ServerError(f"bad --server {server!r}: expected http(s)://HOST:PORT")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def inference_options(
    flip: bool = False,
    refine: bool = True,
    smooth: bool = True,
    mask_format: str = "png",
    foreground: list[str] | None = None,
) -> dict[str, str]:
    """Query parameters for the server's inference switches; the defaults are left out. ``smooth``:
    the stream's temporal smoothing (WebSocket only; REST answers each frame on its own);
    ``mask_format``: "png" (labels) or "alpha" (matte of the ``foreground`` classes)."""
    options = ({"flip": "true"} if flip else {}) | ({} if refine else {"refine": "false"})
    options |= {} if smooth else {"smooth": "false"}
    options |= {} if mask_format == "png" else {"format": mask_format}
    return options | ({"foreground": ",".join(foreground)} if foreground else {})


def ws_url(server: str, model: str | None = None, options: dict[str, str] | None = None) -> str:
    """ws(s)://host:port/ws/segment[?model=...&flip=...] for an http(s) base URL. The API key travels
    in the X-API-Key header rather than the query string, which ends up in access logs. ``options``:
    inference switches (``flip``, ``refine``), as for POST /segment."""
    parts = urlsplit(http_base(server))
    scheme = "wss" if parts.scheme == "https" else "ws"
    query = urlencode(({"model": model} if model else {}) | (options or {}))
    return urlunsplit((scheme, parts.netloc, parts.path + WS_PATH, query, ""))


def decode_mask(png: bytes) -> np.ndarray:
    mask = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ServerError("server sent a mask that is not a decodable image")
    if mask.ndim == 3:  # a colour PNG: take one channel (labels are written to all of them)
        mask = mask[..., 0]
    if mask.dtype != np.uint8:
        mask = mask.astype(np.uint8)
    return mask


def _server_detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    return str(detail)[:200]


def _error_detail(response: httpx.Response) -> str:
    return f"HTTP {response.status_code}: {_server_detail(response)}"


class ServerAPI:
    """The REST side of seg-service."""

    def __init__(self, server: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.base = http_base(server)
        headers = {API_KEY_HEADER: api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.base, headers=headers, timeout=timeout)

    def _get(self, path: str, **params: str) -> Any:
        try:
            response = self._http.get(path, params=params or None)
        except httpx.TransportError as exc:
            raise ConnectionLost(f"{self.base}{path}: {exc}") from exc
        if response.status_code == 401:
            raise Unauthorized(f"server refused the API key ({_error_detail(response)}); check --api-key")
        if response.status_code >= 400:
            raise FrameRejected(f"GET {path}: {_error_detail(response)}")
        return response.json()

    def models(self) -> tuple[list[str], str | None]:
        """(model names, default model name) from GET /models."""
        data = self._get("/models")
        names = [str(item["name"]) for item in data.get("models", [])]
        return names, data.get("default_model")

    def classes(self, model: str | None) -> ClassInfo:
        """Class names and RGB colours from GET /classes: {"classes": [{"index", "name", "color"}]}."""
        data = self._get("/classes", **({"model": model} if model else {}))
        items = sorted(data.get("classes", []), key=lambda item: int(item["index"]))
        count = int(items[-1]["index"]) + 1 if items else 0
        names = [str(index) for index in range(count)]
        palette = np.zeros((count, 3), dtype=np.uint8)
        for item in items:
            names[int(item["index"])] = str(item["name"])
            palette[int(item["index"])] = np.asarray(item.get("color", (0, 0, 0)), dtype=np.uint8)[:3]
        return ClassInfo(names, palette)

    def segment(self, jpeg: bytes, model: str | None, options: dict[str, str] | None = None) -> FrameAnswer:
        params = {"format": "png", **(options or {})}  # the 8-bit label mask
        if model:
            params["model"] = model
        try:
            response = self._http.post(
                "/segment", params=params, files={"file": ("frame.jpg", jpeg, "image/jpeg")}
            )
        except httpx.TransportError as exc:
            raise ConnectionLost(f"POST /segment: {exc}") from exc
        if response.status_code == 401:
            raise Unauthorized(f"server refused the API key ({_error_detail(response)}); check --api-key")
        if response.status_code == 404:
            raise UnknownModel(f"POST /segment refused: {_error_detail(response)}", _server_detail(response))
        if response.status_code >= 400:
            raise FrameRejected(f"POST /segment: {_error_detail(response)}")
        headers = response.headers
        return FrameAnswer(
            mask=decode_mask(response.content),
            model=headers.get("X-Model", model or ""),
            inference_ms=float(headers.get("X-Inference-Time-Ms", "nan")),
            mask_format=params["format"],
        )

    def close(self) -> None:
        self._http.close()


class Session(Protocol):
    name: TransportName
    model: str | None  # the model the server last answered with (before that: the one connected with)

    def set_model(self, model: str | None) -> None: ...
    def set_format(self, mask_format: str) -> None: ...
    def segment(self, jpeg: bytes, stop: threading.Event) -> FrameAnswer: ...
    def close(self) -> None: ...


def _ws_connect_kwargs() -> dict[str, Any]:
    """Options that only newer websockets releases know: no system proxy on a loopback demo
    server, and the non-deprecated connect() behaviour."""
    params = inspect.signature(ws_connect).parameters
    extra: dict[str, Any] = {}
    if "proxy" in params:
        extra["proxy"] = None
    return extra


# Close codes after which reconnecting cannot help: the server refused the key or the model.
FATAL_CLOSE_CODES = {1008: "policy violation"}


def _closed_reason(exc: ConnectionClosed) -> tuple[int | None, str]:
    frame = exc.rcvd
    return (frame.code, frame.reason) if frame is not None else (None, "")


class WebSocketSession:
    """One /ws/segment connection: send a JPEG, receive the result JSON and the PNG mask.

    The server numbers the frames it receives on a connection from 0 and echoes that number in each
    result, which lets the session skip a stale answer instead of pairing it with the wrong frame.

    The server does not acknowledge a model switch: it answers a refused one with an error message
    without a frame number (and keeps its model), an accepted one silently. So `model` follows the
    `model` field of the results, never the request.
    """

    name: TransportName = "ws"

    def __init__(
        self,
        server: str,
        api_key: str | None,
        timeout: float,
        model: str | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        self.url = ws_url(server, model, options)
        self.mask_format = (options or {}).get("format", "png")
        self.timeout = timeout
        self.model = model  # a model the server does not have closes the connection with 1008
        self._switch: str | None = None  # asked for, neither confirmed by a result nor refused yet
        self.frames_sent = 0
        self.notices: list[str] = []  # session-level errors (e.g. a refused model switch)
        headers = {API_KEY_HEADER: api_key} if api_key else None
        self._stack = contextlib.ExitStack()
        try:
            self._ws = self._stack.enter_context(
                ws_connect(
                    self.url,
                    additional_headers=headers,
                    compression=None,  # JPEG and PNG do not deflate further; save the CPU
                    open_timeout=timeout,
                    close_timeout=1.0,
                    max_size=MAX_MESSAGE_BYTES,
                    **_ws_connect_kwargs(),
                )
            )
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            raise ConnectionLost(f"{self.url}: {exc}") from exc

    def set_model(self, model: str | None) -> None:
        """Asks for a switch; the answer to the next frame confirms it or carries the refusal."""
        if model and model != self.model:
            self._send(json.dumps({"model": model}))
            self._switch = model

    def set_format(self, mask_format: str) -> None:
        """Asks for label masks ("png") or mattes ("alpha") from the next frame on; each result says
        which it holds."""
        if mask_format != self.mask_format:
            self._send(json.dumps({"format": mask_format}))
            self.mask_format = mask_format

    def _send(self, message: str | bytes) -> None:
        try:
            self._ws.send(message)
        except ConnectionClosed as exc:
            self._raise_closed(exc)
        except OSError as exc:
            raise ConnectionLost(f"send failed: {exc}") from exc

    def _raise_closed(self, exc: ConnectionClosed) -> None:
        code, reason = _closed_reason(exc)
        if code in FATAL_CLOSE_CODES:
            detail = reason or (self.notices[-1] if self.notices else FATAL_CLOSE_CODES[code])
            if "api key" in detail.lower():
                raise Unauthorized(f"server refused the connection: {detail}; check --api-key") from exc
            raise ServerError(f"server refused the connection: {detail}") from exc
        raise ConnectionLost(f"connection closed ({code or 'no close frame'})") from exc

    def _recv(self, deadline: float, stop: threading.Event) -> str | bytes:
        # Short waits so that a stop request does not hang behind a slow answer.
        while True:
            if stop.is_set():
                raise ConnectionLost("stopped")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectionLost(f"no answer within {self.timeout:g} s")
            try:
                return self._ws.recv(timeout=min(0.2, remaining))
            except TimeoutError:
                continue
            except ConnectionClosed as exc:
                self._raise_closed(exc)
            except OSError as exc:
                raise ConnectionLost(f"connection failed: {exc}") from exc

    def segment(self, jpeg: bytes, stop: threading.Event) -> FrameAnswer:
        self._send(jpeg)
        expected = self.frames_sent
        self.frames_sent += 1
        deadline = time.monotonic() + self.timeout
        refused: ModelRefusal | None = None
        while True:
            message = self._recv(deadline, stop)
            if isinstance(message, bytes):
                continue  # a mask whose header was skipped as stale
            try:
                header = json.loads(message)
            except ValueError as exc:
                raise ServerError(f"server sent a text message that is not JSON: {message[:80]!r}") from exc
            kind = header.get("type")
            frame = header.get("frame")
            if kind == "error":
                detail = str(header.get("detail", "unknown error"))
                if frame is None:  # about the session (a settings message, or the reason for a close)
                    self.notices.append(detail)
                    if self._switch is not None:  # the only settings we send: this is its refusal
                        refused = ModelRefusal(self._switch, detail)
                        self._switch = None
                    else:
                        log.warning("server: %s", detail)
                    continue
                if int(frame) < expected:
                    continue
                raise FrameRejected(detail)
            if kind != "result":
                continue  # messages this client does not know
            png = self._recv(deadline, stop)
            if not isinstance(png, bytes):
                raise ServerError("server sent text where the binary mask should be")
            if frame is not None and int(frame) < expected:
                continue  # the answer to an earlier frame
            # This frame went after the switch, so its model is the server's answer to it.
            if header.get("model"):
                self.model = str(header["model"])
            self._switch = None
            return FrameAnswer(
                mask=decode_mask(png),
                model=self.model or "",
                inference_ms=float(header.get("inference_ms", float("nan"))),
                server_dropped=int(header.get("dropped", 0)),
                refused_switch=refused,
                mask_format=str(header.get("format", "png")),
            )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()


class RestSession:
    """The same interface over POST /segment, for servers or proxies without WebSocket support."""

    name: TransportName = "rest"

    def __init__(
        self, api: ServerAPI, model: str | None = None, options: dict[str, str] | None = None
    ) -> None:
        self.api = api
        self.model = model
        # POST /segment has no stream to smooth over: each frame is answered on its own.
        self.options = {k: v for k, v in (options or {}).items() if k != "smooth"}
        self._switch: str | None = None

    def set_format(self, mask_format: str) -> None:
        self.options = self.options | {"format": mask_format}

    def set_model(self, model: str | None) -> None:
        self._switch = model if model and model != self.model else None

    def segment(self, jpeg: bytes, stop: threading.Event) -> FrameAnswer:
        refused: ModelRefusal | None = None
        if self._switch is not None:
            switch, self._switch = self._switch, None
            try:
                answer = self.api.segment(jpeg, switch, self.options)
            except UnknownModel as exc:
                # As over WebSocket: the switch is refused, the frame goes to the model in use.
                refused = ModelRefusal(switch, exc.detail)
            else:
                self.model = answer.model or switch
                return answer
        # A 404 here is the model in use (--model, or one the server dropped): fatal.
        answer = self.api.segment(jpeg, self.model, self.options)
        self.model = answer.model or self.model
        answer.refused_switch = refused
        return answer

    def close(self) -> None:
        pass


class Streamer:
    """Background transport thread: latest-frame-wins submission, one frame in flight, reconnects."""

    def __init__(
        self,
        server: str,
        api_key: str | None = None,
        transport: TransportName = "ws",
        model: str | None = None,
        jpeg_quality: int = 80,
        backoff: Backoff | None = None,
        timeout: float = 30.0,
        options: dict[str, str] | None = None,
    ) -> None:
        self.server = server
        self.options = options  # inference switches sent with every connection or request
        self.api_key = api_key
        self.transport: TransportName = transport
        self.jpeg_quality = jpeg_quality
        self.backoff = backoff or Backoff()
        self.timeout = timeout
        self.api = ServerAPI(server, api_key, timeout)
        self.stats = StreamStats()
        self.state = "connecting"  # connecting | connected | reconnecting | failed | stopped
        self.retry_attempt = 0
        self.fatal: str | None = None
        self.last_error: str | None = None
        self.notice: str | None = None  # the last refused model switch, see current_notice()
        self._notice_until = 0.0
        # What the server last answered with (--model until then): a reconnect asks for this one,
        # then sends _wanted_model as a switch, so a refused model never ends up in the URL.
        self.active_model = model
        self._wanted_model = model
        self._wanted_format = (options or {}).get("format", "png")  # "png" labels or "alpha" mattes
        self._classes: dict[str, ClassInfo] = {}
        self._cond = threading.Condition()
        self._pending: tuple[int, np.ndarray] | None = None
        self._result: SegResult | None = None
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="seg-client-transport", daemon=True)

    # ---- called from the drawing loop -------------------------------------------------------
    def start(self) -> Streamer:
        self._thread.start()
        return self

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Blocks until the first connection is up (True) or the retries ran out (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._connected.wait(0.05):
            if self.fatal is not None or not self._thread.is_alive():
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False
        return True

    def submit(self, seq: int, frame: np.ndarray) -> None:
        """Offers a frame; it replaces (drops) a frame that is still waiting to be sent."""
        with self._cond:
            self.stats.frames_submitted += 1
            if self._pending is not None:
                self.stats.frames_dropped += 1
            self._pending = (seq, frame)
            self._cond.notify_all()

    def take_result(self) -> SegResult | None:
        """The newest result not yet taken, or None."""
        with self._cond:
            result, self._result = self._result, None
            return result

    def wait_result(self, seq: int, timeout: float) -> None:
        """Waits up to `timeout` s for the result of frame `seq` (or a later one) to be ready."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self._result is not None and self._result.seq >= seq):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.fatal is not None:
                    return
                self._cond.wait(remaining)

    def request_model(self, model: str) -> None:
        with self._cond:
            self._wanted_model = model
            self.notice = None

    def request_format(self, mask_format: str) -> None:
        """Label masks ("png") or alpha mattes ("alpha") from the next frame sent on."""
        with self._cond:
            self._wanted_format = mask_format

    def current_notice(self) -> str | None:
        """The last refused model switch, for NOTICE_SECONDS after it happened."""
        return self.notice if time.monotonic() < self._notice_until else None

    def classes_for(self, model: str | None) -> ClassInfo:
        """Class names and colours for a model, fetched once from GET /classes."""
        key = model or ""
        if key not in self._classes:
            try:
                self._classes[key] = self.api.classes(model)
            except (ConnectionLost, FrameRejected) as exc:
                log.warning("no class list for model %s (%s); using default colours", model, exc)
                return ClassInfo.unknown()
        return self._classes[key]

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=self.timeout + 5)
        with self._cond:
            if self._pending is not None:
                self.stats.frames_dropped += 1
                self._pending = None
        if self.state != "failed":
            self.state = "stopped"
        self.api.close()

    # ---- transport thread --------------------------------------------------------------------
    def _open_session(self) -> Session:
        if self.transport == "ws":
            try:
                return WebSocketSession(
                    self.server, self.api_key, self.timeout, self.active_model, self.options
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status == 401:
                    raise Unauthorized("server refused the API key on /ws/segment; check --api-key") from exc
                if status >= 500:
                    raise ConnectionLost(f"WebSocket handshake answered HTTP {status}") from exc
                # 403/404 on the handshake: no WebSocket route (or a proxy that blocks upgrades).
                # Ask the REST side; it tells a missing route apart from a refused key.
                self.api.models()
                log.warning("WebSocket refused (HTTP %s); falling back to REST POST /segment", status)
                self.transport = "rest"
            except WebSocketException as exc:
                raise ConnectionLost(str(exc)) from exc
        else:
            self.api.models()  # REST has no connection to open: check that the server answers
        return RestSession(self.api, self.active_model, self.options)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                session = self._open_session()
            except ServerError as exc:
                self._fail(str(exc))
                return
            except (ConnectionLost, FrameRejected) as exc:
                attempt += 1
                self.retry_attempt = attempt
                self.last_error = str(exc)
                if attempt > self.backoff.attempts:
                    self._fail(
                        f"server {self.api.base} unreachable after {self.backoff.attempts} retries ({exc})"
                    )
                    return
                delay = self.backoff.delay(attempt)
                log.info(
                    "cannot connect (%s); retry %d/%d in %.1f s", exc, attempt, self.backoff.attempts, delay
                )
                self._stop.wait(delay)
                continue
            self.stats.connections += 1
            self.stats.transport = session.name
            self.state = "connected"
            self._connected.set()
            log.info(
                "connected to %s over %s", self.api.base, "WebSocket" if session.name == "ws" else "REST"
            )
            try:
                got_result = self._serve(session)
            except ServerError as exc:
                self._fail(str(exc))
                return
            finally:
                session.close()
            if self._stop.is_set():
                return
            # Reset the retry budget only after real progress, so a server that accepts and then
            # immediately drops every connection still ends in a clear failure.
            attempt = 0 if got_result else attempt + 1
            self.state = "reconnecting"
            self.retry_attempt = attempt
            log.warning("connection lost (%s); reconnecting", self.last_error)

    def _serve(self, session: Session) -> bool:
        """Sends frames until the connection drops or stop(); True if at least one result came back."""
        got_result = False
        while not self._stop.is_set():
            with self._cond:
                if self._pending is None:
                    self._cond.wait(0.1)
                if self._pending is None:
                    continue
                seq, frame = self._pending
                self._pending = None
                wanted_model = self._wanted_model
                wanted_format = self._wanted_format
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:
                raise ServerError("cannot JPEG-encode a frame")
            sent_at = time.monotonic()
            try:
                session.set_model(wanted_model)
                session.set_format(wanted_format)
                self.stats.frames_sent += 1
                answer = session.segment(jpeg.tobytes(), self._stop)
            except ConnectionLost as exc:
                if not self._stop.is_set():  # an answer cut short by stop() is not a lost frame
                    self.stats.frames_lost += 1
                    self.last_error = str(exc)
                return got_result
            except FrameRejected as exc:
                self.stats.frame_errors += 1
                self.last_error = str(exc)
                log.warning("server error: %s", exc)
                continue
            round_trip_ms = (time.monotonic() - sent_at) * 1000.0
            self.active_model = answer.model or self.active_model
            if answer.refused_switch is not None:
                self._switch_refused(answer.refused_switch, answer.model)
            if not got_result:
                log.info("first mask on this connection after %.0f ms", round_trip_ms)
            got_result = True
            self.last_error = None
            result = SegResult(
                seq=seq,
                mask=answer.mask,
                model=answer.model,
                classes=self.classes_for(answer.model or None),
                inference_ms=answer.inference_ms,
                round_trip_ms=round_trip_ms,
                server_dropped=answer.server_dropped,
                mask_format=answer.mask_format,
            )
            with self._cond:
                self.stats.results += 1
                self.stats.round_trip_ms.append(round_trip_ms)
                self.stats.server_dropped_max = max(self.stats.server_dropped_max, answer.server_dropped)
                self._result = result
                self._cond.notify_all()
        return got_result

    def _switch_refused(self, refusal: ModelRefusal, model_in_use: str) -> None:
        message = f"server refused model {refusal.model!r} ({refusal.detail}); still using {model_in_use!r}"
        log.warning("%s", message)
        with self._cond:
            # Stop asking (the user may ask again); unless a newer request came in meanwhile.
            if self._wanted_model == refusal.model:
                self._wanted_model = model_in_use or None
            self.notice = message
            self._notice_until = time.monotonic() + NOTICE_SECONDS

    def _fail(self, message: str) -> None:
        self.fatal = message
        self.state = "failed"
        with self._cond:
            if self._pending is not None:
                self.stats.frames_dropped += 1
                self._pending = None
