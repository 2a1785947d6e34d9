"""Score a packed model (.gnpk) through the torch-free runtime, as the service will run it.

The validation images are read at full size, with no resizing of our own: the packed file's input
rules (long side at most ``max_side``, padding to ``size_divisor``) apply exactly as in
``seg-service``. Scores come from the same confusion-matrix code as ``train-seg eval``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable
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
) -> dict[str, Any]:
    """mIoU, per-class IoU, pixel accuracy and per-image latency of a packed model on a config's val split."""
    if config_path is None:
        raise InputError("--config is required with --packed (the packed file holds no data settings)")
    config, model, progress = load_packed_with_config(model_path, config_path, overrides, threads, progress)
    classes = list(config["data"]["classes"])
    val_set = datasets.build_seg_dataset(config["data"], "val")
    ignore = int(config["data"]["ignore_index"])
    cm = torch.zeros(len(classes), len(classes), dtype=torch.int64)
    flip = bool(config["eval"]["flip"])  # --eval.flip true: the runtime's mirrored second pass
    seconds = []
    for index in tqdm(range(len(val_set)), desc="packed eval", disable=not progress, dynamic_ncols=True):
        rgb, mask = val_set.load(index)
        start = time.perf_counter()
        pred = model.predict(rgb, flip=flip)
        seconds.append(time.perf_counter() - start)
        cm += torch.from_numpy(confusion_matrix(pred, mask, len(classes), ignore))
    scores = segmentation_scores(cm, classes)
    scores["model"] = str(model_path)
    scores["images"] = len(val_set)
    scores["median_ms_per_image"] = 1000 * statistics.median(seconds)
    scores["flip"] = flip
    print(
        f"{model_path}: {len(val_set)} val images at full size through the packed runtime"
        f"{' with flip test-time augmentation' if flip else ''}, "
        f"median {scores['median_ms_per_image']:.1f} ms per image"
    )
    print(format_seg_report(scores))
    if output:
        Path(output).write_text(json.dumps(scores, indent=2, default=_plain))
    return scores


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
