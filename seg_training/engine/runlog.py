"""Run logs: a CSV with one row per epoch, and the end-of-run summary."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any


def write_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the whole log from the run history (kept in checkpoints, so a resumed run's log
    has exactly one row per completed epoch)."""
    if not history:
        return
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
    tmp.replace(path)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return value


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_seg_report(scores: dict[str, Any], show_confusion: bool = True) -> str:
    """mIoU, pixel accuracy, per-class IoU and (for up to 21 classes) the confusion matrix."""
    lines = [
        f"mIoU {100 * scores['miou']:.2f}   pixel acc {100 * scores['pixel_acc']:.2f}   "
        f"mean class acc {100 * scores['mean_acc']:.2f}",
        "per-class IoU:",
    ]
    width = max(len(name) for name in scores["iou"])
    for name, iou in scores["iou"].items():
        shown = "   n/a" if math.isnan(iou) else f"{100 * iou:6.2f}"
        lines.append(f"  {name:<{width}}  {shown}")
    confusion = scores.get("confusion")
    if show_confusion and confusion and len(confusion) <= 21:
        lines.append("confusion matrix (rows: ground truth, columns: prediction, pixels):")
        cell = max(6, max(len(str(v)) for row in confusion for v in row) + 1)
        for name, row in zip(scores["iou"], confusion, strict=True):
            lines.append(f"  {name:<{width}} " + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)
