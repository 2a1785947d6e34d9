"""Score a packed model (.gnpk) through the torch-free runtime, as the service will run it.

The validation images are read at full size, with no resizing of our own: the packed file's input
rules (long side at most ``max_side``, padding to ``size_divisor``) apply exactly as in
``seg-service``. Scores come from the same confusion-matrix code as ``train-seg eval``.

Every image is also scored alone (its mIoU over the classes in its truth or prediction), so the
images a model fails on can be listed (``--worst N``) and looked at (``--overlays DIR``): a data
set's mean hides whether a model is a little wrong everywhere or wholly wrong on a few images.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import data as datasets
from ..data.errors import InputError
from .config import load_config
from .metrics import confusion_matrix, segmentation_scores
from .runlog import format_seg_report


def load_packed_with_config(
    model_path: str | Path,
    config_path: str | Path,
    overrides: Iterable[tuple[str, Any]],
    threads: int | None,
    progress: bool | None,
) -> tuple[dict[str, Any], Any, bool]:
    """(config, loaded PackedModel, progress flag) for a packed model scored on a config's data; the
    model's classes must match the config's. ``progress`` None: the config's output.progress."""
    from seg_service.runtime import load_model, set_num_threads

    config = load_config("seg", config_path, overrides)
    if progress is None:  # the config's output.progress, so --output.progress false silences the bar
        progress = bool(config["output"]["progress"])
    if threads:
        set_num_threads(int(threads))
    model = load_model(model_path)
    classes = list(config["data"]["classes"])
    if model.num_classes != len(classes):
        raise InputError(
            f"{model_path} predicts {model.num_classes} classes but the config lists {len(classes)}"
        )
    return config, model, progress


def evaluate_packed(
    model_path: str | Path,
    config_path: str | Path | None,
    overrides: Iterable[tuple[str, Any]] = (),
    output: str | Path | None = None,
    threads: int | None = None,
    progress: bool | None = None,
    worst: int = 0,
    overlays: str | Path | None = None,
) -> dict[str, Any]:
    """mIoU, per-class IoU, pixel accuracy and per-image latency of a packed model on a config's val
    split, and each image's own mIoU and pixel accuracy (``per_image``, worst first). ``worst``: print
    that many of the worst images; ``overlays``: write a sheet for each of them to that folder."""
    if config_path is None:
        raise InputError("--config is required with --packed (the packed file holds no data settings)")
    config, model, progress = load_packed_with_config(model_path, config_path, overrides, threads, progress)
    classes = list(config["data"]["classes"])
    val_set = datasets.build_seg_dataset(config["data"], "val")
    ignore = int(config["data"]["ignore_index"])
    cm = torch.zeros(len(classes), len(classes), dtype=torch.int64)
    # The file's own test-time augmentation unless --eval.flip / --eval.scales replace a part of it.
    eval_cfg = config["eval"]
    try:
        tta = model.augmentation(eval_cfg["flip"], eval_cfg["scales"])
    except ValueError as exc:
        raise InputError(f"--eval.scales: {exc}") from None
    seconds = []
    per_image = []
    for index in tqdm(range(len(val_set)), desc="packed eval", disable=not progress, dynamic_ncols=True):
        rgb, mask = val_set.load(index)
        start = time.perf_counter()
        pred = model.predict(rgb, flip=tta.flip, scales=tta.scales)
        seconds.append(time.perf_counter() - start)
        image_cm = torch.from_numpy(confusion_matrix(pred, mask, len(classes), ignore))
        cm += image_cm
        alone = segmentation_scores(image_cm, classes)
        if int(image_cm.sum()) == 0:  # every pixel ignored: nothing to score, listed last
            alone["miou"] = float("nan")
        per_image.append(
            {
                "index": index,
                "image": val_set.pairs[index][0].name,
                "miou": alone["miou"],
                "pixel_acc": alone["pixel_acc"],
            }
        )
    per_image.sort(key=lambda row: (_nan_last(row["miou"]), row["index"]))
    scores = segmentation_scores(cm, classes)
    scores["model"] = str(model_path)
    scores["images"] = len(val_set)
    scores["median_ms_per_image"] = 1000 * statistics.median(seconds)
    scores["flip"] = tta.flip
    scores["scales"] = list(tta.scales)
    passes = f" ({tta.describe()})"
    print(
        f"{model_path}: {len(val_set)} val images at full size through the packed runtime"
        f"{passes if tta.passes > 1 else ''}, "
        f"median {scores['median_ms_per_image']:.1f} ms per image"
    )
    print(format_seg_report(scores))
    scores["per_image"] = [  # JSON has no NaN: an image with nothing scored gets null
        {
            "image": row["image"],
            "miou": None if np.isnan(row["miou"]) else row["miou"],
            "pixel_acc": row["pixel_acc"],
        }
        for row in per_image
    ]
    shown = per_image[: max(0, worst)]
    if shown:
        print(format_worst(shown, len(per_image)))
    if overlays and shown:
        folder = write_overlay_sheets(val_set, model, shown, Path(overlays), ignore, tta.flip, tta.scales)
        print(f"{len(shown)} overlay sheets (prediction | truth | errors in red) in {folder}/")
    if output:
        Path(output).write_text(json.dumps(scores, indent=2, default=_plain))
    return scores


def _nan_last(value: float) -> float:
    return float("inf") if np.isnan(value) else value


def format_worst(rows: list[dict[str, Any]], total: int) -> str:
    """The worst images as a table: rank, per-image mIoU and pixel accuracy, file name."""
    lines = [f"worst {len(rows)} of {total} images by their own mIoU:", "rank   mIoU  pix_acc  image"]
    for rank, row in enumerate(rows, 1):
        lines.append(f"{rank:4d}  {100 * row['miou']:5.1f}  {100 * row['pixel_acc']:7.1f}  {row['image']}")
    return "\n".join(lines)


def write_overlay_sheets(
    val_set: Any,
    model: Any,
    rows: list[dict[str, Any]],
    folder: Path,
    ignore: int,
    flip: bool | None = None,
    scales: Sequence[float] | None = None,
) -> Path:
    """One PNG per listed image, ``<rank>_<image stem>.png``: the prediction over the image, the truth
    over the image, and the image greyed with the wrongly labelled pixels in red (ignored pixels
    left grey). Colours are the packed file's palette; classes coloured black are left unpainted."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for rank, row in enumerate(rows, 1):
        # Read and predicted again rather than kept from the scoring pass: only these few images
        # are drawn, and keeping every mask of a large validation set would cost its memory.
        rgb, truth = val_set.load(row["index"])
        pred = model.predict(rgb, flip=flip, scales=scales)
        shown_truth = np.where(truth == ignore, 0, truth)
        grey = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2BGR) // 2
        grey[(pred != truth) & (truth != ignore)] = (0, 0, 255)
        sheet = np.hstack(
            [
                _painted_bgr(rgb, pred, model.palette),
                _painted_bgr(rgb, shown_truth, model.palette),
                grey,
            ]
        )
        path = folder / f"{rank:03d}_{Path(row['image']).stem}.png"
        if not cv2.imwrite(str(path), sheet):
            raise InputError(f"cannot write {path}")
    return folder


def _painted_bgr(rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """The image half-blended with each pixel's class colour (black classes untouched), in BGR."""
    palette = np.asarray(palette, dtype=np.uint16).reshape(-1, 3)
    colour = palette[np.minimum(labels, len(palette) - 1)]
    painted = colour.any(axis=-1, keepdims=True)
    out = np.where(painted, (rgb.astype(np.uint16) + colour + 1) // 2, rgb).astype(np.uint8)
    return np.ascontiguousarray(out[..., ::-1])


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
