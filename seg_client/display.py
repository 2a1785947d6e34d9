"""Where rendered frames go: an OpenCV window (GUI build) or a video file (works with any build)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np

NO_GUI_HINT = (
    "this OpenCV build has no GUI (opencv-python-headless): run with --headless --out FILE, "
    "or install opencv-python in a separate environment (see docs/client.md)"
)


class DisplayError(RuntimeError):
    """The window or the output file cannot be opened."""


def gui_support() -> tuple[bool, str]:
    """(True, "") when cv2 can open windows here, else (False, reason)."""
    info = cv2.getBuildInformation()
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "GUI" and value.strip().upper() == "NONE":
            return False, NO_GUI_HINT
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        # Checked before touching highgui: some backends abort the process when there is no display.
        return False, "no display (DISPLAY/WAYLAND_DISPLAY unset): run with --headless --out FILE"
    try:
        cv2.namedWindow("seg-client-probe", cv2.WINDOW_AUTOSIZE)
        cv2.destroyWindow("seg-client-probe")
    except cv2.error:
        return False, NO_GUI_HINT
    return True, ""


class WindowSink:
    """Shows frames in a resizable window and reports key presses."""

    def __init__(self, title: str = "seg-client") -> None:
        self.title = title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
        except cv2.error as exc:
            raise DisplayError(NO_GUI_HINT) from exc
        self._shown = False

    def show(self, image: np.ndarray) -> int:
        """Displays one frame; returns the key pressed (-1 if none). Closing the window reads as 'q'."""
        if self._shown and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            return ord("q")
        cv2.imshow(self.title, image)
        self._shown = True
        key = cv2.waitKey(1)
        return -1 if key < 0 else key & 0xFF

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass


# FourCC per container; MPEG-4 Part 2 ("mp4v") ships with every opencv-python wheel's FFmpeg.
FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}


class VideoFileSink:
    """Writes frames to a video file; opened on the first frame, whose size fixes the video's size."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in FOURCC_BY_SUFFIX:
            raise DisplayError(
                f"cannot write {self.path}: unsupported extension {suffix or '(none)'}; "
                f"use one of {', '.join(sorted(FOURCC_BY_SUFFIX))}"
            )
        if not self.path.parent.exists():
            raise DisplayError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        self.fourcc = cv2.VideoWriter.fourcc(*FOURCC_BY_SUFFIX[suffix])
        self.fps = fps
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self.frames_written = 0

    def write(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        if self._writer is None:
            self._writer = cv2.VideoWriter(str(self.path), self.fourcc, self.fps, (w, h))
            if not self._writer.isOpened():
                raise DisplayError(f"cannot write {self.path}: OpenCV has no encoder for this format here")
            self._size = (w, h)
        if (w, h) != self._size:
            # A camera can change mode mid-run; a video file needs one size throughout.
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)
        self.frames_written += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
