"""POST /segment/video: an uploaded video processed frame by frame."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from pathlib import Path
from typing import IO, Annotated, Literal

import cv2
import numpy as np
from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from seg_service.api import imaging
from seg_service.api.deps import ModelDep, RefineQuery, ServiceDep, require_api_key
from seg_service.api.inference import Busy
from seg_service.api.metrics import Metrics
from seg_service.api.routes.segment import ERROR_RESPONSES, check_foreground, class_stats
from seg_service.api.schemas import FrameStats, VideoResponse
from seg_service.api.settings import Settings
from seg_service.api.streams import FOREGROUND_DESCRIPTION, MaskKind, StreamState, frame_mask
from seg_service.runtime import PackedModel

router = APIRouter(tags=["segment"], dependencies=[Depends(require_api_key)])

# Used when the container does not state a frame rate.
FALLBACK_FPS = 25.0


class ClientGone(Exception):
    """The client closed its connection: the job stops at the next frame and frees its slot."""


def _video_job(
    upload: IO[bytes],
    model: PackedModel,
    settings: Settings,
    output: str,
    metrics: Metrics,
    flip: bool = False,
    refine: bool = True,
    cancel: threading.Event | None = None,
    smooth: bool = True,
    foreground: list[str] | None = None,
) -> tuple[bytes | VideoResponse, int, float]:
    with tempfile.TemporaryDirectory(prefix="seg-video-") as tmp:
        src = Path(tmp) / "input"
        with open(src, "wb") as f:
            upload.seek(0)
            shutil.copyfileobj(upload, f)
        if src.stat().st_size == 0:
            raise imaging.ImageInputError(400, "empty upload: the file has 0 bytes")
        _check_frame_count(src, settings, cancel)
        cap = cv2.VideoCapture(str(src), cv2.CAP_FFMPEG)
        try:
            return _process(
                cap,
                Path(tmp) / "overlay.mp4",
                model,
                settings,
                output,
                metrics,
                flip,
                refine,
                cancel,
                smooth,
                foreground,
            )
        finally:
            cap.release()


def _frame_limit(cap: cv2.VideoCapture, settings: Settings) -> tuple[int, float]:
    """(most frames allowed, frames per second) for an opened video."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if np.isfinite(fps) and 0 < fps <= 1000 else FALLBACK_FPS
    return max(1, min(settings.max_video_frames, int(settings.max_video_seconds * fps))), fps


def _check_frame_count(src: Path, settings: Settings, cancel: threading.Event | None) -> None:
    """Count the frames by demuxing and decoding them (no conversion, no inference) and refuse a video
    over the limit before any inference: containers that declare no length, or a wrong one, cannot
    make the server segment up to the limit only to refuse the video then. Stops counting as soon
    as the limit is passed."""
    cap = cv2.VideoCapture(str(src), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            return  # _process answers 415
        limit, fps = _frame_limit(cap, settings)
        declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if declared > limit:  # the container's own count: no need to decode anything
            raise imaging.ImageInputError(
                413,
                f"video has {declared} frames at {fps:g} fps; the limit is {settings.max_video_frames} "
                f"frames and {settings.max_video_seconds:g} s",
            )
        count = 0
        while cap.grab():
            count += 1
            if count > limit:
                raise imaging.ImageInputError(
                    413,
                    f"video is longer than the limit of {limit} frames ({settings.max_video_frames} "
                    f"frames and {settings.max_video_seconds:g} s at {fps:g} fps)",
                )
            if cancel is not None and cancel.is_set():
                raise ClientGone()
    finally:
        cap.release()


def _process(
    cap: cv2.VideoCapture,
    dst: Path,
    model: PackedModel,
    settings: Settings,
    output: str,
    metrics: Metrics,
    flip: bool = False,
    refine: bool = True,
    cancel: threading.Event | None = None,
    smooth: bool = True,
    foreground: list[str] | None = None,
) -> tuple[bytes | VideoResponse, int, float]:
    if not cap.isOpened():
        raise imaging.ImageInputError(415, "not a readable video file")
    max_frames, fps = _frame_limit(cap, settings)
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    declared_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if width * height > settings.max_image_pixels:
        raise imaging.ImageInputError(
            413, f"video frames are {width}x{height}, over the limit of {settings.max_image_pixels} pixels"
        )
    if declared_frames > max_frames:
        raise imaging.ImageInputError(
            413,
            f"video has {declared_frames} frames at {fps:g} fps; the limit is {settings.max_video_frames} "
            f"frames and {settings.max_video_seconds:g} s",
        )
    palette = np.asarray(model.palette)
    writer: cv2.VideoWriter | None = None
    frames: list[FrameStats] = []
    total_ms = 0.0
    stream = StreamState(smooth)  # this video's own temporal smoothing
    kind: MaskKind = "alpha" if output == "alpha" else "labels"
    try:
        while True:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            if cancel is not None and cancel.is_set():
                raise ClientGone()
            if len(frames) >= max_frames:
                # The container under-declared its length: still a hard limit.
                raise imaging.ImageInputError(413, f"video is longer than the limit of {max_frames} frames")
            rgb = np.ascontiguousarray(bgr[:, :, ::-1])
            mask, ms = frame_mask(model, rgb, flip, refine, kind, foreground, stream)
            total_ms += ms
            metrics.observe_inference(model.name, ms / 1e3)
            metrics.add("frames_processed")
            if output == "json":
                frames.append(
                    FrameStats(
                        frame=len(frames),
                        inference_ms=round(ms, 3),
                        classes=class_stats(mask, model, with_rle=False),
                    )
                )
                continue
            if writer is None:
                writer = cv2.VideoWriter(
                    str(dst), cv2.VideoWriter.fourcc(*"mp4v"), fps, (rgb.shape[1], rgb.shape[0])
                )
                if not writer.isOpened():
                    raise RuntimeError("cannot open the MP4 writer (OpenCV built without FFmpeg?)")
            if kind == "alpha":  # the matte as a grey picture
                writer.write(np.repeat(mask[:, :, None], 3, axis=2))
            else:
                writer.write(imaging.overlay(rgb, mask, palette, bgr=True))
            frames.append(FrameStats(frame=len(frames), inference_ms=round(ms, 3), classes=[]))
    finally:
        if writer is not None:
            writer.release()
    if not frames:
        raise imaging.ImageInputError(415, "no decodable video frames")
    if output == "json":
        return (
            VideoResponse(
                model=model.name,
                width=width,
                height=height,
                fps=round(fps, 3),
                frames=frames,
                inference_ms_total=round(total_ms, 3),
            ),
            len(frames),
            total_ms,
        )
    return dst.read_bytes(), len(frames), total_ms


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set `cancel` when the client disconnects. The body has been read in full by now, so the next
    ASGI message can only be the disconnect."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


@router.post(
    "/segment/video",
    response_model=VideoResponse,
    responses={
        200: {
            "content": {"video/mp4": {}},
            "description": "format=mp4: the overlay video (MPEG-4 Part 2, same size and frame rate); "
            "format=alpha: the foreground's alpha matte as a grey video (same codec, "
            "lossy); "
            "format=json: per-frame class statistics. Headers X-Frames, "
            "X-Inference-Time-Ms (total).",
        },
        **ERROR_RESPONSES,
    },
)
async def segment_video(
    request: Request,
    service: ServiceDep,
    model: ModelDep,
    file: Annotated[
        UploadFile, File(description="A video file (MP4, AVI, WebM, ... anything FFmpeg reads).")
    ],
    output: Annotated[
        Literal["mp4", "json", "alpha"],
        Query(alias="format", description="mp4 (overlay video), json or alpha (matte video)."),
    ] = "mp4",
    flip: Annotated[
        bool,
        Query(
            description="Test-time augmentation on every frame: also run the mirrored "
            "frame and average the two (twice the time)."
        ),
    ] = False,
    refine: RefineQuery = True,
    smooth: Annotated[
        bool,
        Query(
            description="Temporal smoothing over the video's frames (removes "
            "flicker; moving parts follow at once). false: every frame "
            "on its own."
        ),
    ] = True,
    foreground: Annotated[str | None, Query(description=FOREGROUND_DESCRIPTION)] = None,
) -> Response:
    """Segment every frame of an uploaded video. Limits: SEG_MAX_VIDEO_BYTES, SEG_MAX_VIDEO_FRAMES,
    SEG_MAX_VIDEO_SECONDS, and SEG_MAX_IMAGE_PIXELS per frame."""
    names = check_foreground(model, foreground, output == "alpha")
    cancel = threading.Event()
    watcher = asyncio.create_task(_watch_disconnect(request, cancel))
    try:
        result, n_frames, total_ms = await service.gate.run_now(
            _video_job,
            file.file,
            model,
            service.settings,
            output,
            service.metrics,
            flip,
            refine,
            cancel,
            smooth,
            names,
        )
    except Busy as e:
        raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
    except imaging.ImageInputError as e:
        raise HTTPException(e.status, e.detail) from None
    except ClientGone:
        # Nobody reads the answer; 499 (nginx's "client closed request") marks it in the log and metrics.
        request.state.log_extra = {"model": model.name, "cancelled": True}
        return Response(status_code=499)
    finally:
        watcher.cancel()
    request.state.log_extra = {"model": model.name, "frames": n_frames, "inference_ms": round(total_ms, 2)}
    headers = {"X-Frames": str(n_frames), "X-Inference-Time-Ms": f"{total_ms:.3f}", "X-Model": model.name}
    if isinstance(result, VideoResponse):
        return JSONResponse(result.model_dump(exclude_none=True), headers=headers)
    return Response(result, media_type="video/mp4", headers=headers)
