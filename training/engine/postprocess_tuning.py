"""Fit a packed model's post-processing (guided filter and decision bias) on training images.

``train-seg tune-postprocess --packed F --config C --out G`` runs the packed model once per image of
the config's *training* split (full size, no augmentation, exactly as the service sees images),
scores every candidate of a small grid on the same logits, and writes the best one by mIoU into a
copy of the file (``export-model --repack`` semantics: graph and weights copied bit for bit). The
validation split is never looked at, so ``train-seg eval --packed G`` stays an honest score.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .. import data as datasets
from ..data.errors import InputError
from .metrics import confusion_matrix
from .packed_eval import load_packed_with_config

# The grid: radius in pixels of the resized image, eps on colours in [0, 1], clip on centred logits.
RADII = (8, 12, 16)
EPS = (1e-3, 1e-2)
CLIPS = (1.0, 2.0, 4.0)
SUBSAMPLE = 4
# Two-class models also get a bias on class 1 (the foreground), in steps of 1/8 logit. +-3 logits:
# a briefly trained model can be far off calibration (the person model of 2026-12 chose -1, the
# former edge of a +-1 grid); every bias is scored from one sorted pass, so the range costs little.
BIASES = tuple(np.round(np.arange(-3.0, 3.0001, 0.125), 3))


def candidate_filters() -> list[dict[str, Any] | None]:
    """None (no filter) and every guided filter of the grid."""
    grid = [
        {"radius": r, "eps": e, "subsample": SUBSAMPLE, "clip": c}
        for r, e, c in itertools.product(RADII, EPS, CLIPS)
    ]
    return [None, *grid]


def _binary_confusions(margin: np.ndarray, target: np.ndarray, biases: tuple[float, ...]) -> np.ndarray:
    """Two-class confusion matrices [len(biases), 2, 2] of ``margin + bias > 0`` for every bias at once
    (pixels labelled neither 0 nor 1, i.e. ignored, are left out)."""
    out = np.zeros((len(biases), 2, 2), dtype=np.int64)
    thresholds = -np.asarray(biases, dtype=np.float32)
    for label in (0, 1):
        values = np.sort(margin[target == label].astype(np.float32))
        positive = values.size - np.searchsorted(values, thresholds, side="right")  # margin > -bias
        out[:, label, 1] = positive
        out[:, label, 0] = values.size - positive
    return out


def _miou(cm: np.ndarray) -> float:
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - inter
    present = union > 0
    return float(100 * np.mean(inter[present] / union[present])) if present.any() else 0.0


def tune_postprocess(
    model_path: str | Path,
    config_path: str | Path | None,
    overrides: list[tuple[str, Any]],
    out: str | Path,
    threads: int | None = None,
    limit: int | None = None,
    report: str | Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Grid-search the post-processing on the training split; write the best into ``out``.

    Returns the report: every candidate's mIoU on the images used, the chosen spec and the baseline.
    """
    from seg_service.runtime import apply_postprocess, resize_nearest

    from ..export import ExportError, repack_model

    if config_path is None:
        raise InputError("--config is required (it names the data the post-processing is fitted on)")
    if Path(out).resolve() == Path(model_path).resolve():
        raise InputError("--out must differ from --packed (the input file is never overwritten)")
    config, model, progress = load_packed_with_config(model_path, config_path, overrides, threads, progress)
    classes = list(config["data"]["classes"])
    # the training images, read as validation images are (full size, no augmentation)
    data = dict(config["data"], val_split=config["data"]["train_split"])
    images = datasets.build_seg_dataset(data, "val")
    count = len(images) if not limit else min(int(limit), len(images))
    ignore = int(data["ignore_index"])
    n = len(classes)
    filters = candidate_filters()
    biases = BIASES if n == 2 else (0.0,)
    cms = np.zeros((len(filters), len(biases), n, n), dtype=np.int64)
    for index in tqdm(range(count), desc="tune postprocess", disable=not progress, dynamic_ncols=True):
        rgb, target = images.load(index)
        logits, guide = model.processed_logits(rgb)
        for fi, gf in enumerate(filters):
            scores = logits if gf is None else apply_postprocess(logits, guide, {"guided_filter": gf})
            if scores.shape[:2] != target.shape:  # predict() resizes the mask the same way
                scores = resize_nearest(scores, target.shape[0], target.shape[1])
            if n == 2:
                cms[fi] += _binary_confusions(scores[..., 1] - scores[..., 0], target, biases)
            else:
                cms[fi, 0] += confusion_matrix(scores.argmax(axis=2), target, n, ignore)
    rows = []
    for (fi, gf), (bi, bias) in itertools.product(enumerate(filters), enumerate(biases)):
        rows.append(
            {
                "guided_filter": gf,
                "bias": float(bias),
                "miou": _miou(cms[fi, bi]),
                "iou": (
                    np.diag(cms[fi, bi])
                    / np.maximum(cms[fi, bi].sum(0) + cms[fi, bi].sum(1) - np.diag(cms[fi, bi]), 1)
                    * 100
                ).tolist(),
            }
        )
    baseline = next(r for r in rows if r["guided_filter"] is None and r["bias"] == 0.0)
    best = max(rows, key=lambda r: r["miou"])
    spec: dict[str, Any] = {}
    if best["guided_filter"] is not None:
        spec["guided_filter"] = best["guided_filter"]
    if best["bias"] != 0.0:
        spec["logit_bias"] = [0.0, best["bias"]]
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        checksum = repack_model(model_path, out, postprocess=spec or None)
    except (ExportError, OSError) as exc:
        raise InputError(str(exc)) from None
    result = {
        "model": str(model_path),
        "out": str(out),
        "sha256": checksum,
        "images": count,
        "split": data["val_split"],
        "baseline": baseline,
        "best": best,
        "postprocess": spec or None,
        "candidates": sorted(rows, key=lambda r: -r["miou"]),
    }
    _print_summary(result, classes)
    if report:
        Path(report).write_text(json.dumps(result, indent=2))
    return result


def _print_summary(result: dict[str, Any], classes: list[str]) -> None:
    def describe(row: dict[str, Any]) -> str:
        gf = row["guided_filter"]
        what = (
            "no filter"
            if gf is None
            else f"guided filter r={gf['radius']} eps={gf['eps']:g} clip={gf['clip']:g}"
        )
        return what + (f", bias {row['bias']:+g}" if row["bias"] else "")

    print(f"{result['images']} training images ({result['split']}), mIoU through the packed runtime:")
    for row in result["candidates"][:5]:
        print(f"  {row['miou']:6.2f}  {describe(row)}")
    base, best = result["baseline"], result["best"]
    per_class = ", ".join(f"{c} {b:.2f} -> {a:.2f}" for c, b, a in zip(classes, base["iou"], best["iou"]))
    print(f"baseline {base['miou']:.2f} -> chosen {best['miou']:.2f} ({describe(best)}); {per_class}")
    print(
        f"wrote {result['out']} (sha256 {result['sha256'][:16]}...) "
        f"with postprocess {json.dumps(result['postprocess'])}"
    )
