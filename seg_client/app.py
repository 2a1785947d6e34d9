"""The drawing loop: read a frame, hand it to the streamer, draw the newest mask on it, show or write it.

The loop never waits for the server beyond the time until the next frame is due, so a slow or
absent server makes the masks stale (and frames get dropped in the streamer), never the video.
In file mode every input frame produces exactly one output frame.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from seg_client.capture import FrameSource, SourceError, SourceSpec
from seg_client.display import DisplayError, VideoFileSink, WindowSink, gui_support
from seg_client.overlay import VIEWS, Background, ClassInfo, View, compose, draw_hud, mask_format_for
from seg_client.transport import (
    Backoff,
    ConnectionLost,
    FrameRejected,
    SegResult,
    ServerError,
    Streamer,
    TransportName,
    inference_options,
)

log = logging.getLogger("seg-client")

KEY_ESC = 27
KEY_HELP = "keys: o/m/s/b/r view  [ ] blur  n model  p snapshot  q quit"
# Blur strengths the [ and ] keys step through (Gaussian standard deviation, pixels).
BLUR_STEPS = (2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0)


@dataclass
class ClientConfig:
    source: SourceSpec
    server: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    transport: TransportName = "ws"
    model: str | None = None
    flip: bool = False  # the server's mirrored second pass (twice the time per frame)
    refine: bool = True  # the model's stored post-processing
    smooth: bool = True  # the server's temporal smoothing of the stream (WebSocket)
    foreground: list[str] | None = None  # classes Blur and Replace keep (None: the server's default)
    blur: float = 8.0  # Gaussian standard deviation of the background blur, pixels
    background: Background = field(default_factory=Background)  # what Replace puts behind
    width: int | None = None
    height: int | None = None
    jpeg_quality: int = 80
    fps: float | None = None
    loop: bool = False
    headless: bool = False
    out: Path | None = None
    max_frames: int | None = None
    view: View = "overlay"
    alpha: float = 0.5
    snapshot_dir: Path = field(default_factory=Path.cwd)
    backoff: Backoff = field(default_factory=Backoff)
    timeout: float = 30.0
    stats_json: Path | None = None


class RateMeter:
    """Events per second over a sliding window of the last `window` seconds."""

    def __init__(self, window: float = 2.0) -> None:
        self.window = window
        self._times: deque[float] = deque()

    def tick(self) -> None:
        now = time.monotonic()
        self._times.append(now)
        while now - self._times[0] > self.window:
            self._times.popleft()

    @property
    def rate(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


class DemoClient:
    def __init__(self, cfg: ClientConfig) -> None:
        self.cfg = cfg
        self.view: View = cfg.view
        self.blur = cfg.blur
        self.latest: SegResult | None = None
        self.models: list[str] = []
        self.display_rate = RateMeter()
        self.result_rate = RateMeter()
        self.frames_read = 0
        # Per output frame: how many frames older than it the drawn mask is (None: no mask yet).
        self.mask_ages: list[int | None] = []
        self.snapshots: list[Path] = []

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if not cfg.headless:
            ok, why = gui_support()
            if not ok:
                raise DisplayError(why)
        streamer = Streamer(  # connects only once started
            cfg.server,
            cfg.api_key,
            cfg.transport,
            cfg.model,
            cfg.jpeg_quality,
            cfg.backoff,
            cfg.timeout,
            inference_options(cfg.flip, cfg.refine, cfg.smooth, mask_format_for(cfg.view), cfg.foreground),
        )
        try:
            source = FrameSource(cfg.source, cfg.width, cfg.height, cfg.fps, cfg.loop).open()
        except SourceError:
            streamer.stop()
            raise
        window: WindowSink | None = None
        recorder: VideoFileSink | None = None
        try:
            recorder = VideoFileSink(cfg.out, source.output_fps) if cfg.out else None
            streamer.start()
            # Wait for the server before the first frame, so a recording does not open with bare
            # frames and a dead server is reported before anything else happens.
            if not streamer.wait_connected():
                raise ServerError(streamer.fatal or "transport stopped")
            self.models = self._list_models(streamer)
            window = None if cfg.headless else WindowSink()
            self._loop(source, streamer, window, recorder)
        finally:
            streamer.stop()
            source.close()
            if recorder is not None:
                recorder.close()
            if window is not None:
                window.close()
        if streamer.fatal:
            raise ServerError(streamer.fatal)
        return self._summary(streamer, recorder)

    def _list_models(self, streamer: Streamer) -> list[str]:
        try:
            names, _default = streamer.api.models()
            return names
        except (ConnectionLost, FrameRejected) as exc:
            log.warning("cannot list models (%s); the n key is disabled", exc)
            return []

    def _loop(
        self,
        source: FrameSource,
        streamer: Streamer,
        window: WindowSink | None,
        recorder: VideoFileSink | None,
    ) -> None:
        cfg = self.cfg
        while cfg.max_frames is None or self.frames_read < cfg.max_frames:
            frame = source.read()
            if frame is None:
                log.info("end of %s", source.spec.describe())
                break
            self.frames_read += 1
            seq = self.frames_read
            streamer.submit(seq, frame)
            # Use the time until the next frame is due to wait for this frame's own mask.
            streamer.wait_result(seq, source.seconds_until_next())
            result = streamer.take_result()
            if result is not None:
                self.latest = result
                self.result_rate.tick()
            if streamer.fatal:
                return
            self.display_rate.tick()
            self.mask_ages.append(None if self.latest is None else seq - self.latest.seq)
            image = self._render(frame, streamer)
            if recorder is not None:
                recorder.write(image)
            if window is not None and not self._handle_key(window.show(image), image, streamer):
                return

    def _render(self, frame: np.ndarray, streamer: Streamer) -> np.ndarray:
        latest = self.latest
        classes = latest.classes if latest else ClassInfo.unknown()
        image = compose(
            self.view,
            frame,
            latest.mask if latest else None,
            classes,
            self.cfg.alpha,
            latest.mask_format if latest else "png",
            self.blur,
            self.cfg.background,
        )
        lines, warning = self.hud_text(streamer)
        return draw_hud(image, lines, warning)

    def hud_text(self, streamer: Streamer) -> tuple[list[str], str | None]:
        """The HUD's status lines and its red warning line (None: no warning).

        The model named is the one that made the mask shown, as the server reported it.
        """
        latest = self.latest
        stats = streamer.stats
        lines = [
            f"{latest.model if latest else '-'}  {self.display_rate.rate:4.1f} fps  {self.view}"
            + (f" {self.blur:g}px" if self.view == "blur" else "")
        ]
        if latest is not None:
            lines.append(
                f"rtt {latest.round_trip_ms:.0f} ms  infer {latest.inference_ms:.0f} ms"
                f"  masks {self.result_rate.rate:.1f}/s  dropped {stats.frames_dropped}"
            )
        else:
            lines.append("waiting for the first mask")
        if not self.cfg.headless:
            lines.append(KEY_HELP)
        warning: str | None
        if streamer.state == "reconnecting":
            warning = f"server connection lost: reconnecting (attempt {streamer.retry_attempt})"
        elif streamer.last_error:
            warning = f"server: {streamer.last_error[:100]}"
        else:
            warning = streamer.current_notice()
        return lines, warning

    def _handle_key(self, key: int, image: np.ndarray, streamer: Streamer) -> bool:
        """Acts on a key press; False means quit."""
        if key in (ord("q"), KEY_ESC):
            return False
        views = {
            ord("o"): "overlay",
            ord("m"): "mask",
            ord("s"): "side",
            ord("b"): "blur",
            ord("r"): "replace",
        }
        if key in views:
            self.view = views[key]  # type: ignore[assignment]
            streamer.request_format(mask_format_for(self.view))
        elif key in (ord("["), ord("]")):
            self.blur = step_blur(self.blur, -1 if key == ord("[") else 1)
        elif key == ord("n"):
            self._next_model(streamer)
        elif key == ord("p"):
            self._snapshot(image)
        return True

    def _next_model(self, streamer: Streamer) -> None:
        if len(self.models) < 2:
            log.info("only one model on the server; nothing to switch to")
            return
        current = self.latest.model if self.latest else (self.cfg.model or self.models[0])
        index = self.models.index(current) if current in self.models else -1
        name = self.models[(index + 1) % len(self.models)]
        log.info("switching to model %s", name)
        streamer.request_model(name)

    def _snapshot(self, image: np.ndarray) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = self.cfg.snapshot_dir / f"seg-client-{stamp}-{self.frames_read:06d}"
        cv2.imwrite(str(base) + ".png", image)
        paths = [Path(str(base) + ".png")]
        if self.latest is not None:
            cv2.imwrite(str(base) + "-mask.png", self.latest.mask)
            paths.append(Path(str(base) + "-mask.png"))
        self.snapshots.extend(paths)
        log.info("snapshot saved: %s", ", ".join(str(p) for p in paths))

    def _summary(self, streamer: Streamer, recorder: VideoFileSink | None) -> dict[str, Any]:
        summary = {"frames_read": self.frames_read, **streamer.stats.summary()}
        summary["frames_written"] = recorder.frames_written if recorder else 0
        summary["last_model"] = self.latest.model if self.latest else None
        summary["mask_age"] = self.mask_ages
        if self.cfg.stats_json:
            self.cfg.stats_json.write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def step_blur(current: float, direction: int) -> float:
    """The next blur strength of BLUR_STEPS below (direction -1) or above (+1) the current one."""
    if direction < 0:
        return max([s for s in BLUR_STEPS if s < current], default=BLUR_STEPS[0])
    return min([s for s in BLUR_STEPS if s > current], default=BLUR_STEPS[-1])


def run_client(cfg: ClientConfig) -> dict[str, Any]:
    """Runs the demo until the source ends, --max-frames, or the user quits; returns a run summary."""
    if cfg.view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}")
    return DemoClient(cfg).run()
