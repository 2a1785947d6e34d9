"""BatchNorm re-estimation: running statistics recomputed for a checkpoint's final weights.

Why: BatchNorm's running mean and variance are an exponential average over the last few hundred
training steps, each taken with different weights. In a binary network a small weight update flips
signs and moves the activations abruptly, so those averages lag the weights actually kept, and
validation swings from one evaluation to the next. Recomputing the statistics as a plain average
over training batches, with the final weights held fixed, removes the lag. The packed export folds
these statistics into its thresholds and affine epilogues, so the runtime sees the same effect.

    train-seg recalibrate-bn --checkpoint runs/x/best.pt --out runs/x/best_bn.pt [--batches N]
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.errors import InputError
from . import distributed
from .checkpoint import CheckpointState, load_checkpoint, model_from_checkpoint, save_atomic
from .config import from_json, load_config, to_json
from .evaluation import METRIC, METRIC_LABEL, evaluate, without_confusion
from .loaders import build_datasets, train_loader, val_loader


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer (1d/2d/3d and SyncBatchNorm) that keeps running statistics."""
    return [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[Any],
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
    autocast: Any = None,
) -> tuple[int, int]:
    """Replace every BatchNorm's running statistics by their plain average over ``batches``.

    ``batches`` yields input tensors or (input, target) pairs. Weights are not touched; the model's
    train/eval mode and each layer's momentum are restored afterwards. Returns (BatchNorm layers,
    images seen). With equal batch sizes the new running mean is exactly the mean of the batch means.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0, 0
    momenta = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches instead of an exponential one
    model.train()
    seen = 0
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            with autocast if autocast is not None else contextlib.nullcontext():
                model(images.to(device, non_blocking=True))
            seen += len(images)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    if seen == 0:
        raise InputError("no batches to re-estimate BatchNorm statistics from")
    return len(layers), seen


def recalibrate_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    batches: int | None = None,
    config_path: str | Path | None = None,
    overrides: Iterable[tuple[str, Any]] = (),
) -> dict[str, Any]:
    """Re-estimate a checkpoint's BatchNorm statistics on its training split (augmented as in training),
    validate before and after, and write the result to ``out`` as a checkpoint of the same layout
    (export-model, train-seg eval and --train.init_from read it). ``batches``: default one epoch."""
    checkpoint, out = Path(checkpoint), Path(out)
    if out.resolve() == checkpoint.resolve():
        raise InputError(f"--out {out} would overwrite the checkpoint it is computed from; name another file")
    if batches is not None and batches < 1:
        raise InputError(f"--batches must be at least 1, got {batches}")
    ckpt = load_checkpoint(checkpoint)
    task = ckpt.get("task")
    if task not in ("seg", "cls"):
        raise InputError(f"{checkpoint}: unknown task {task!r}")
    state = CheckpointState.from_dict(ckpt)
    config = load_config(task, config_path, overrides, base_config=from_json(state.config))
    info = distributed.setup(config["device"])
    try:
        if info.distributed:
            raise InputError("recalibrate-bn runs in one process; start it without torchrun")
        model = model_from_checkpoint(ckpt, checkpoint, task=task)
        model.to(info.device)
        train_set, val_set, classes = build_datasets(config)
        train_data, val_data = train_loader(config, train_set, info), val_loader(config, val_set, info)
        amp = bool(config["train"]["amp"])
        progress = bool(config["output"]["progress"])
        metric = METRIC[task]
        before = evaluate(model, val_data, config, classes, info, amp, progress)
        layers, seen = recalibrate_batchnorm(
            model, train_data.loader, info.device, batches, distributed.autocast(info, amp) if amp else None
        )
        after = evaluate(model, val_data, config, classes, info, amp, progress)
        state.model = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        state.metrics = without_confusion(after)
        state.bn_recalibration = to_json(
            {
                "source": str(checkpoint),
                "layers": layers,
                "images": seen,
                "metric": metric,
                "before": before[metric],
                "after": after[metric],
            }
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        save_atomic(state.to_dict(), out)
        print(
            f"re-estimated {layers} BatchNorm layers over {seen} training images: val {METRIC_LABEL[metric]} "
            f"{100 * before[metric]:.2f} -> {100 * after[metric]:.2f}; wrote {out}",
            flush=True,
        )
        return {"layers": layers, "images": seen, "before": before, "after": after}
    finally:
        distributed.cleanup()


def recalibration_record(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The ``bn_recalibration`` entry of a checkpoint written by :func:`recalibrate_checkpoint`."""
    record = ckpt.get("bn_recalibration")
    return json.loads(record) if isinstance(record, str) else None
