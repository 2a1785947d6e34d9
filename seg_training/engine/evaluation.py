"""Validation: mIoU (segmentation) or top-k accuracy (classification) over a loader, and
``train-seg eval``."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import data as datasets
from ..data.errors import InputError
from . import distributed
from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import from_json, load_config
from .distributed import DistInfo, all_reduce_sum, autocast
from .loaders import device_batches, val_loader
from .metrics import confusion_matrix, predict_probs, segmentation_scores, topk_correct
from .runlog import format_seg_report

METRIC = {"seg": "miou", "cls": "top1"}  # the score that picks best.pt
METRIC_LABEL = {"miou": "mIoU", "top1": "top-1"}


def _eval_bar(loader: DataLoader, max_batches: int | None, info: DistInfo, progress: bool) -> tqdm:
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    # Used as a context: the bar is closed (its line cleared) before an error from the loader is printed.
    return tqdm(
        total=total, desc="eval", leave=False, disable=not (progress and info.is_main), file=sys.stderr
    )


@torch.no_grad()
def evaluate_seg(
    model: nn.Module,
    loader: DataLoader,
    classes: list[str],
    ignore_index: int,
    info: DistInfo,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    max_batches: int | None = None,
    amp: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Confusion matrix over the loader (summed over processes) -> mIoU, per-class IoU, pixel accuracy."""
    model.eval()
    n = len(classes)
    confusion = torch.zeros(n, n, dtype=torch.int64, device=info.device)
    with _eval_bar(loader, max_batches, info, progress) as bar:
        for images, masks in device_batches(loader, info.device, bar.total, bar):
            with autocast(info, amp):
                probs = predict_probs(model, images, list(scales), flip)
            confusion += confusion_matrix(probs.argmax(1), masks, n, ignore_index)
    return segmentation_scores(all_reduce_sum(confusion, info), classes)


@torch.no_grad()
def evaluate_cls(
    model: nn.Module,
    loader: DataLoader,
    info: DistInfo,
    max_batches: int | None = None,
    amp: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Top-1 / top-5 accuracy and mean cross-entropy, summed over processes."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=info.device)  # top1, top5, loss sum, count
    with _eval_bar(loader, max_batches, info, progress) as bar:
        for images, targets in device_batches(loader, info.device, bar.total, bar):
            with autocast(info, amp):
                logits = model(images).float()
            top1, top5 = topk_correct(logits, targets, (1, 5))
            loss = nn.functional.cross_entropy(logits, targets, reduction="sum")
            sums += torch.tensor(
                [top1, top5, float(loss), len(targets)], dtype=torch.float64, device=info.device
            )
    top1, top5, loss, count = all_reduce_sum(sums, info).tolist()
    count = max(count, 1.0)
    return {"top1": top1 / count, "top5": top5 / count, "val_loss": loss / count}


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    config: dict[str, Any],
    classes: list[str],
    info: DistInfo,
    amp: bool,
    progress: bool,
) -> dict[str, Any]:
    """The config's validation (its task, eval.scales, eval.flip, eval.max_batches) of ``model``."""
    eval_cfg = config["eval"]
    if config["task"] == "seg":
        return evaluate_seg(
            model,
            loader,
            list(classes),
            int(config["data"].get("ignore_index", 255)),
            info,
            eval_cfg["scales"] or [1.0],
            bool(eval_cfg["flip"]),
            eval_cfg["max_batches"],
            amp,
            progress,
        )
    return evaluate_cls(model, loader, info, eval_cfg["max_batches"], amp, progress)


def without_confusion(scores: dict[str, Any]) -> dict[str, Any]:
    """Scores as stored in checkpoints and summaries (the confusion matrix is printed, not kept)."""
    return {k: v for k, v in scores.items() if k != "confusion"}


def evaluate_checkpoint(
    checkpoint: str | Path,
    config_path: str | Path | None = None,
    overrides: Sequence[tuple[str, Any]] = (),
    output: str | Path | None = None,
) -> dict[str, Any]:
    """``train-seg eval``: a segmentation checkpoint on the validation split of its config (or
    ``config_path``)."""
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, checkpoint, task="seg", needed_by="train-seg eval")
    config = load_config("seg", config_path, list(overrides), base_config=from_json(ckpt["config"]))
    info = distributed.setup(config["device"])
    try:
        classes = list(ckpt["classes"])
        if len(config["data"]["classes"]) != len(classes):
            raise InputError(
                f"config has {len(config['data']['classes'])} classes, checkpoint {checkpoint} "
                f"has {len(classes)}"
            )
        model.to(info.device)
        val_set = datasets.build_seg_dataset(config["data"], "val")
        scores = evaluate(
            model,
            val_loader(config, val_set, info),
            config,
            classes,
            info,
            bool(config["train"]["amp"]),
            bool(config["output"]["progress"]),
        )
        if info.is_main:
            eval_cfg = config["eval"]
            print(
                f"{checkpoint}: epoch {ckpt['epoch']}, {len(val_set)} val images, scales "
                f"{eval_cfg['scales'] or [1.0]}{' + flip' if eval_cfg['flip'] else ''}"
            )
            print(format_seg_report(scores))
            if output is not None:
                Path(output).write_text(json.dumps(scores, indent=2))
        return scores
    finally:
        distributed.cleanup()
