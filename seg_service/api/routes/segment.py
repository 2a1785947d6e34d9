"""POST /segment: one uploaded image -> label mask PNG, overlay JPEG, or JSON statistics."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from seg_service.api import imaging
from seg_service.api.deps import ModelDep, RefineQuery, ServiceDep, require_api_key
from seg_service.api.inference import Busy, timed_predict
from seg_service.api.masks import class_counts, coco_rle
from seg_service.api.schemas import RLE, ClassStats, ErrorResponse, SegmentResponse
from seg_service.api.streams import FOREGROUND_DESCRIPTION, MASK_FORMATS, frame_mask, parse_foreground
from seg_service.format import parse_scales
from seg_service.runtime import PackedModel
from seg_service.runtime.softmask import resolve_foreground

router = APIRouter(tags=["segment"], dependencies=[Depends(require_api_key)])

OutputFormat = Literal["png", "overlay", "json", "alpha", "probability"]

ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "Empty, truncated or corrupt image."),
        (401, "Missing or wrong API key (only when the server has one)."),
        (404, "Unknown model."),
        (413, "Upload too large, or too many pixels."),
        (415, "Not a supported image."),
        (422, "Bad parameters."),
        (503, "Over the in-flight limit, or the default model is not loaded."),
    )
}


def check_foreground(model: PackedModel, foreground: str | None, soft: bool) -> list[str] | None:
    """The ``foreground`` query as class names for the soft formats (other formats ignore it), checked
    against the model before inference: 422 for a name the model lacks, or for a model whose
    foreground cannot be guessed when none is named."""
    if not soft:
        return None
    try:
        names = parse_foreground(foreground)
        resolve_foreground(model.classes, names)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    return names


def class_stats(mask: np.ndarray, model: PackedModel, with_rle: bool) -> list[ClassStats]:
    counts = class_counts(mask, len(model.classes))
    total = max(int(mask.size), 1)
    return [
        ClassStats(
            index=i,
            name=name,
            pixels=int(counts[i]),
            fraction=round(int(counts[i]) / total, 6),
            rle=RLE.model_validate(coco_rle(mask == i)) if with_rle else None,
        )
        for i, name in enumerate(model.classes)
    ]


# Largest side the encoder of each output format can write (None: no encoder, no limit).
MAX_SIDE_FOR_OUTPUT: dict[str, tuple[int | None, str]] = {
    "png": (imaging.PNG_MAX_SIDE, "format=png (a PNG mask)"),
    "overlay": (imaging.JPEG_MAX_SIDE, "format=overlay (a JPEG)"),
    "json": (None, "format=json"),
    "alpha": (imaging.PNG_MAX_SIDE, "format=alpha (a PNG matte)"),
    "probability": (imaging.PNG_MAX_SIDE, "format=probability (a PNG)"),
}


def _segment_job(
    data: bytes,
    model: PackedModel,
    max_pixels: int,
    output: str,
    with_rle: bool,
    flip: bool | None,
    refine: bool,
    foreground: list[str] | None = None,
    scales: tuple[float, ...] | None = None,
) -> tuple[bytes | SegmentResponse, float]:
    max_side, what = MAX_SIDE_FOR_OUTPUT[output]
    rgb = imaging.decode_image(data, max_pixels, max_side, what)
    if output in ("alpha", "probability"):
        soft, ms = frame_mask(model, rgb, flip, refine, MASK_FORMATS[output], foreground, scales=scales)
        del rgb
        return imaging.encode_mask_png(soft, soft=True), ms
    mask, ms = timed_predict(model, rgb, flip, refine, scales)
    if output == "png":
        del rgb  # free the decoded image before the encoder allocates
        return imaging.encode_mask_png(mask), ms
    if output == "overlay":
        blended = imaging.overlay(rgb, mask, np.asarray(model.palette), bgr=True)
        del rgb, mask
        return imaging.encode_jpeg(blended, bgr=True), ms
    h, w = mask.shape
    return SegmentResponse(
        width=w,
        height=h,
        model=model.name,
        inference_ms=round(ms, 3),
        classes=class_stats(mask, model, with_rle),
    ), ms


@router.post(
    "/segment",
    response_model=SegmentResponse,
    responses={
        200: {
            "content": {"image/png": {}, "image/jpeg": {}},
            "description": "format=png: 8-bit label mask (pixel = class index) at the original size; "
            "format=overlay: JPEG of the image blended with the class colours; "
            "format=alpha: 8-bit alpha matte of the foreground class(es) (0 background, "
            "255 foreground, soft across edges); format=probability: 8-bit "
            "round(255 * P(foreground)); "
            "format=json: the statistics below. Headers X-Inference-Time-Ms and X-Network-Passes "
            "(test-time augmentation: scales x flip).",
        },
        **ERROR_RESPONSES,
    },
)
async def segment(
    request: Request,
    service: ServiceDep,
    model: ModelDep,
    file: Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP or GIF image.")],
    output: Annotated[
        OutputFormat,
        Query(
            alias="format", description="png (label mask), overlay, json, alpha (soft matte) or probability."
        ),
    ] = "png",
    rle: Annotated[bool, Query(description="format=json: add COCO RLE per class.")] = False,
    flip: Annotated[
        bool | None,
        Query(
            description="Test-time augmentation: also run the mirrored image and "
            "average the passes (twice the time, usually a little more "
            "accurate). Default: the model's own setting (GET /models, test_time)."
        ),
    ] = None,
    scales: Annotated[
        str | None,
        Query(
            description="Test-time augmentation: run the image at these sizes relative to the model's "
            "input size, comma-separated (e.g. 0.75,1,1.25), and average the passes (one pass per "
            "scale, two with flip). 1 for a single pass. Default: the model's own setting."
        ),
    ] = None,
    refine: RefineQuery = True,
    foreground: Annotated[str | None, Query(description=FOREGROUND_DESCRIPTION)] = None,
) -> Response:
    """Segment one image. Grayscale, RGBA, 16-bit, CMYK, animated (first frame) and EXIF-rotated
    images are accepted; the mask always matches the upright image's size."""
    names = check_foreground(model, foreground, output in ("alpha", "probability"))
    try:
        tta = model.augmentation(flip, None if scales is None else parse_scales(scales))
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    data = await file.read()
    try:
        result, ms = await service.gate.run_now(
            _segment_job,
            data,
            model,
            service.settings.max_image_pixels,
            output,
            rle,
            tta.flip,
            refine,
            names,
            tta.scales,
        )
    except Busy as e:
        raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
    except imaging.ImageInputError as e:
        raise HTTPException(e.status, e.detail) from None
    service.metrics.observe_inference(model.name, ms / 1e3)
    request.state.log_extra = {
        "model": model.name,
        "inference_ms": round(ms, 2),
        "format": output,
        "flip": tta.flip,
        "scales": list(tta.scales),
        "refine": refine,
    }
    headers = {"X-Inference-Time-Ms": f"{ms:.3f}", "X-Model": model.name, "X-Network-Passes": str(tta.passes)}
    if isinstance(result, SegmentResponse):
        return JSONResponse(result.model_dump(exclude_none=True), headers=headers)
    media_type = "image/jpeg" if output == "overlay" else "image/png"
    return Response(result, media_type=media_type, headers=headers)
