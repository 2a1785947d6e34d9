"""Pydantic models of every JSON body the service sends."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    detail: str = Field(description="One-line reason.")


class HealthResponse(BaseModel):
    status: str = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    reason: str | None = Field(default=None, description="Why the server is not ready (absent when it is).")
    # The details below are left out (null) when the server has an API key and the request lacks it.
    default_model: str | None = None
    models: list[str] | None = None
    refused: list[str] | None = Field(
        default=None,
        description="Model files refused at start-up, with the reason (file names only, never server paths).",
    )


class ModelInfo(BaseModel):
    name: str
    arch: str | None = None
    classes: list[str]
    input: dict = Field(description="Preprocessing: mean, std, size_divisor, max_side, channel_order.")
    file_size: int = Field(description="Bytes.")
    checksum: str = Field(description="SHA-256 over the tensors, as stored in the file.")
    postprocess: dict | None = Field(
        default=None,
        description="Post-processing stored with the model and applied "
        "unless refine=false: guided_filter (radius, eps, subsample, clip) and/or "
        "logit_bias; null when the model has none.",
    )
    test_time: dict = Field(
        description="The test-time augmentation /segment runs unless told otherwise (flip, scales): "
        "one network pass per scale, two with flip. Video and WebSocket frames run one scale.",
    )
    default: bool


class ModelsResponse(BaseModel):
    default_model: str | None
    models: list[ModelInfo]


class ClassInfo(BaseModel):
    index: int
    name: str
    color: list[int] = Field(description="RGB palette colour used in overlays.")


class ClassesResponse(BaseModel):
    model: str
    classes: list[ClassInfo]


class RLE(BaseModel):
    size: list[int] = Field(description="[height, width].")
    counts: list[int] = Field(description="Uncompressed COCO RLE: column-major runs, starting with 0s.")


class ClassStats(BaseModel):
    index: int
    name: str
    pixels: int
    fraction: float
    rle: RLE | None = None


class SegmentResponse(BaseModel):
    width: int
    height: int
    model: str
    inference_ms: float
    classes: list[ClassStats]


class FrameStats(BaseModel):
    frame: int
    inference_ms: float
    classes: list[ClassStats]


class VideoResponse(BaseModel):
    model: str
    width: int
    height: int
    fps: float
    frames: list[FrameStats]
    inference_ms_total: float


class WsResult(BaseModel):
    """Text message sent before each binary mask on /ws/segment."""

    type: str = "result"
    frame: int
    width: int
    height: int
    model: str
    inference_ms: float
    dropped: int
    format: str = Field(
        default="png",
        description="What the binary message holds: png (label mask), alpha or "
        "probability (8-bit soft mask of the foreground).",
    )
    smoothed: bool = Field(
        default=False, description="The stream's temporal smoothing was on for this frame."
    )


class WsError(BaseModel):
    type: str = "error"
    detail: str
