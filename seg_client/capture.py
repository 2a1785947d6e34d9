"""Frame sources for seg-client: a camera, a video file or a network stream, read with OpenCV."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

SourceKind = Literal["camera", "video", "stream"]

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class SourceError(RuntimeError):
    """The frame source cannot be opened or read."""


@dataclass(frozen=True)
class SourceSpec:
    """What to open: a camera index or device path, a video file, or a stream URL."""

    kind: SourceKind
    target: int | str

    def describe(self) -> str:
        return f"{self.kind} {self.target}"


def camera_spec(value: str) -> SourceSpec:
    """`--camera 0` means device index 0; anything else is a device path such as /dev/video2."""
    text = value.strip()
    return SourceSpec("camera", int(text) if text.isdigit() else text)


def video_spec(value: str) -> SourceSpec:
    """`--video` takes a file path or an RTSP/HTTP(S) stream URL."""
    if value.lower().startswith(STREAM_SCHEMES):
        return SourceSpec("stream", value)
    return SourceSpec("video", value)


def output_size(frame_w: int, frame_h: int, width: int | None, height: int | None) -> tuple[int, int]:
    """Target (w, h): both given -> exact; one given -> keep the aspect ratio; none -> unchanged."""
    if width and height:
        return width, height
    if width:
        return width, max(1, round(frame_h * width / frame_w))
    if height:
        return max(1, round(frame_w * height / frame_h)), height
    return frame_w, frame_h


def resize_frame(frame: np.ndarray, width: int | None, height: int | None) -> np.ndarray:
    h, w = frame.shape[:2]
    tw, th = output_size(w, h, width, height)
    if (tw, th) == (w, h):
        return frame
    interp = cv2.INTER_AREA if tw * th < w * h else cv2.INTER_LINEAR
    return cv2.resize(frame, (tw, th), interpolation=interp)


class FrameSource:
    """Reads BGR frames from one source, resized to the requested size.

    Video files are paced at their own frame rate (or `fps`) so that they behave like a camera:
    the client then has to keep up in real time, which is what the demo shows. `fps=0` reads a
    file as fast as it decodes. Cameras and streams deliver frames at their own rate.
    """

    def __init__(
        self,
        spec: SourceSpec,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        loop: bool = False,
    ) -> None:
        self.spec = spec
        self.width = width
        self.height = height
        self.loop = loop and spec.kind == "video"
        self._fps_override = fps
        self._cap: cv2.VideoCapture | None = None
        self._next_due = 0.0
        self.frames_read = 0

    def open(self) -> FrameSource:
        spec = self.spec
        if spec.kind == "video" and not Path(str(spec.target)).is_file():
            raise SourceError(f"cannot open video {spec.target}: no such file")
        cap = cv2.VideoCapture(spec.target)
        if not cap.isOpened():
            cap.release()
            why = {
                "camera": "no such device, device busy, or no permission",
                "video": "not a video OpenCV can decode",
                "stream": "unreachable or unsupported stream",
            }[spec.kind]
            raise SourceError(f"cannot open {spec.describe()} ({why})")
        if spec.kind == "camera" and (self.width or self.height):
            # A request only: the driver picks the nearest mode; frames are resized afterwards anyway.
            if self.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            if self.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        self._cap = cap
        self._next_due = time.monotonic()
        return self

    @property
    def native_fps(self) -> float:
        """Frame rate reported by the source, 0 when unknown."""
        if self._cap is None:
            return 0.0
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        return fps if 1.0 <= fps <= 240.0 else 0.0

    @property
    def pace_fps(self) -> float:
        """Rate at which frames are handed out (0 = no pacing)."""
        if self.spec.kind != "video":
            return 0.0
        if self._fps_override is not None:
            return max(0.0, self._fps_override)
        return self.native_fps or 30.0

    @property
    def output_fps(self) -> float:
        """Frame rate to record a video at."""
        return self.pace_fps or self.native_fps or 30.0

    def read(self) -> np.ndarray | None:
        """The next frame (BGR, uint8), or None at the end of a file or a dead stream."""
        if self._cap is None:
            raise SourceError("source is not open")
        ok, frame = self._cap.read()
        if not ok and self.loop and self.frames_read > 0:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
        if not ok or frame is None:
            if self.frames_read == 0:
                raise SourceError(f"{self.spec.describe()} opened but delivered no frame")
            return None
        self._wait_for_due_time()
        self.frames_read += 1
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        return resize_frame(frame, self.width, self.height)

    def seconds_until_next(self) -> float:
        """Time left before the next paced frame is due (0 for live or unpaced sources)."""
        if self.pace_fps <= 0:
            return 0.0
        return max(0.0, self._next_due - time.monotonic())

    def _wait_for_due_time(self) -> None:
        fps = self.pace_fps
        if fps <= 0:
            return
        now = time.monotonic()
        if self.frames_read == 0:
            self._next_due = now  # the schedule starts with the first frame, not at open()
        if self._next_due > now:
            time.sleep(self._next_due - now)
        # Schedule from the due time, not from now, so small delays do not accumulate; if we fell
        # far behind (a long stall), restart the schedule instead of rushing to catch up.
        self._next_due = max(self._next_due + 1.0 / fps, time.monotonic() - 1.0 / fps)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> FrameSource:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
