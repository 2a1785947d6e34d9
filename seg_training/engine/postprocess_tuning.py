"""Fit a packed model's post-processing (guided filter and decision bias) on training images.

``train-seg tune-postprocess --packed F --config C --out G`` runs the packed model once per image of
the config's *training* split (full size, no augmentation, exactly as the service sees images),
scores every candidate of a small grid on the same logits, and writes the best one by mIoU into a
copy of the file (``export-model --repack`` semantics: graph and weights copied bit for bit). By
default the validation split is never looked at, so ``train-seg eval --packed G`` stays an honest score.

``--split val`` fits on images the network never trained on instead. A network is more confident
on its own training images than on new ones, most of all on thin classes it has half memorised, so
biases fitted on training images under-bias those classes on new images: CamVid's sign class kept
3 IoU on val with training-fitted biases and 25 with biases fitted on the other half of val
(docs/training.md). The validation score of such a file is then in-sample; ``--folds K`` gives the
honest figure: the images in K contiguous blocks (consecutive video frames stay together), each
block scored with the post-processing fitted on the others.

Two-class models get a bias on the foreground from one sorted pass per filter. Models of more
classes get one bias per class, fitted after the filter by coordinate ascent on the mIoU: a network
trained with few epochs rarely lets thin classes (poles, signs) win the argmax even where they are
second, and a per-class offset is the cheapest fix that keeps the network untouched.

``--test-time SPEC`` (repeated) also chooses the stored test-time augmentation: the post-processing
is fitted for each candidate's passes in turn, and the file written is the candidate with the best
held-out mIoU (``--folds``), else the best fitted mIoU. Which passes pay depends on the network:
camvid's output-stride-32 network gained 3.9 mIoU held out from passes at 1 and 1.5 times the size
over passes at 0.75 and 1, the person network lost 7 points on everyday photos from a pass at 1.25.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
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


# Multi-class bias search: pixels kept per image (every STRIDE-th row and column) and rounds of
# coordinate ascent over the classes (each round visits every class once; the mIoU never decreases).
BIAS_PIXEL_STRIDE = 2
BIAS_ROUNDS = 3


def _check_out(model_path: str | Path, out: str | Path) -> None:
    if Path(out).resolve() == Path(model_path).resolve():
        raise InputError("--out must differ from --packed (the input file is never overwritten)")


def filters_by_default(classes: int) -> bool:
    """Whether the guided-filter grid is tried unless told: for two-class models only. On camvid's
    11 classes no filter paid (docs/training.md): the grid's clips tie the centred logits of the
    classes, and unclipped small filters scored within 0.1 mIoU of none, with pole lower; the grid's
    18 candidates made the run 1.5 times as long."""
    return classes == 2


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


def _class_bias_confusions(
    scores: np.ndarray, target: np.ndarray, bias: np.ndarray, cls: int, grid: np.ndarray
) -> np.ndarray:
    """Confusion matrices [len(grid), n, n] of ``argmax(scores + bias)`` with class ``cls``'s bias
    replaced by each grid value, all from one pass: a pixel goes to ``cls`` exactly when its margin
    over the best other class exceeds minus that bias, else to that best other class.
    ``scores`` float32 [P, n], ``target`` int [P] (ignored pixels already removed)."""
    n = scores.shape[1]
    shifted = scores + bias.astype(np.float32)
    own = scores[:, cls]
    shifted[:, cls] = -np.inf
    other = shifted.argmax(axis=1)
    margin = own - shifted[np.arange(len(other)), other]
    del shifted
    # first grid index whose bias makes the pixel cls: grid[k] > -margin
    first = np.searchsorted(grid, -margin, side="right")
    g = len(grid)
    to_cls = np.bincount(first * n + target, minlength=(g + 1) * n).reshape(g + 1, n)
    to_other = np.bincount((first * n + target) * n + other, minlength=(g + 1) * n * n).reshape(g + 1, n, n)
    out = np.zeros((g, n, n), dtype=np.int64)
    out[:, :, cls] = np.cumsum(to_cls, axis=0)[:g]  # first <= k
    out += np.cumsum(to_other[::-1], axis=0)[::-1][1:]  # first > k
    return out


def fit_class_biases(
    scores: np.ndarray, target: np.ndarray, grid: np.ndarray | None = None, rounds: int = BIAS_ROUNDS
) -> tuple[np.ndarray, np.ndarray]:
    """(per-class biases float64 [n], confusion matrix of ``argmax(scores + bias)``) by coordinate
    ascent on the mIoU, starting from no bias; each step keeps a class's bias unless a grid value
    scores strictly higher."""
    grid = np.asarray(BIASES if grid is None else grid, dtype=np.float64)
    n = scores.shape[1]
    bias = np.zeros(n, dtype=np.float64)
    best_cm = confusion_matrix(scores.argmax(axis=1), target, n, -1)
    best = _miou(best_cm)
    for _ in range(rounds):
        changed = False
        for cls in range(n):
            cms = _class_bias_confusions(scores, target, bias, cls, grid)
            values = [_miou(cm) for cm in cms]
            k = int(np.argmax(values))
            if values[k] > best + 1e-9 and grid[k] != bias[cls]:
                bias[cls], best, best_cm, changed = float(grid[k]), values[k], cms[k], True
        if not changed:
            break
    return bias, best_cm


def _miou(cm: np.ndarray) -> float:
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - inter
    present = union > 0
    return float(100 * np.mean(inter[present] / union[present])) if present.any() else 0.0


def fold_blocks(count: int, folds: int) -> np.ndarray:
    """Block index of each of ``count`` images: ``folds`` contiguous blocks of near-equal size (all 0
    when ``folds`` is 0). Contiguous, because a data set's consecutive images are often consecutive
    frames of one video, and a frame's neighbour in the fitting set would flatter the estimate."""
    if not folds:
        return np.zeros(count, dtype=np.int64)
    return np.arange(count) * folds // count


def _iou_percent(cm: np.ndarray) -> list[float]:
    return (np.diag(cm) / np.maximum(cm.sum(0) + cm.sum(1) - np.diag(cm), 1) * 100).tolist()


def _held_out_grid(block_cms: np.ndarray, zero_bias: int) -> dict[str, Any]:
    """Held-out scores of the grid search: each block scored with the (filter, bias) candidate that
    scores best on the other blocks, against no post-processing (no filter, bias index
    ``zero_bias``). ``block_cms`` [K, filters, biases, n, n]."""
    total = block_cms.sum(axis=0)
    held = np.zeros(total.shape[2:], dtype=np.int64)
    for k in range(block_cms.shape[0]):
        others = total - block_cms[k]
        f, b = max(np.ndindex(*others.shape[:2]), key=lambda fb: _miou(others[fb]))
        held += block_cms[k][f, b]
    return _held_out_row(block_cms.shape[0], total[0, zero_bias], held)


def _held_out_row(folds: int, base: np.ndarray, held: np.ndarray) -> dict[str, Any]:
    return {
        "folds": folds,
        "none": {"miou": _miou(base), "iou": _iou_percent(base)},
        "fitted": {"miou": _miou(held), "iou": _iou_percent(held)},
    }


def tune_postprocess(
    model_path: str | Path,
    config_path: str | Path | None,
    overrides: list[tuple[str, Any]],
    out: str | Path,
    threads: int | None = None,
    limit: int | None = None,
    report: str | Path | None = None,
    progress: bool | None = None,
    filters: bool | None = None,
    split: str | None = None,
    folds: int = 0,
) -> dict[str, Any]:
    """Grid-search the post-processing on the training split (or ``split``); write the best into
    ``out``. ``filters``: try the guided-filter grid (True), or the bias only (False); None tries it
    for two-class models only (``filters_by_default``). ``folds`` >= 2 adds the held-out estimate
    (``held_out`` in the report; see the module docstring).

    Returns the report: every candidate's mIoU on the images used, the chosen spec and the baseline.
    """
    from ..export import ExportError, repack_model

    if config_path is None:
        raise InputError("--config is required (it names the data the post-processing is fitted on)")
    _check_out(model_path, out)
    if folds == 1 or folds < 0:
        raise InputError(f"--folds must be 0 (no held-out estimate) or at least 2, not {folds}")
    config, model, progress = load_packed_with_config(model_path, config_path, overrides, threads, progress)
    classes = list(config["data"]["classes"])
    # the fitting images (the training split unless told), read as validation images are (full size,
    # no augmentation)
    named = {"train": config["data"]["train_split"], "val": config["data"]["val_split"]}
    data = dict(config["data"], val_split=named.get(split or "train", split))
    images = datasets.build_seg_dataset(data, "val")
    count = len(images) if not limit else min(int(limit), len(images))
    if folds > count:
        raise InputError(f"--folds {folds} needs at least {folds} images; the split has {count}")
    blocks = fold_blocks(count, folds)
    ignore = int(data["ignore_index"])
    n = len(classes)
    if filters is None:
        filters = filters_by_default(n)
        if not filters:
            print(f"{n} classes: no guided-filter grid (none paid on many-class models; --filter tries it)")
    candidates = candidate_filters() if filters else [None]
    biases = BIASES if n == 2 else (0.0,)
    # one set of confusion matrices per block of images, for the held-out estimate
    block_cms = np.zeros((max(folds, 1), len(candidates), len(biases), n, n), dtype=np.int64)
    for index in tqdm(range(count), desc="tune postprocess", disable=not progress, dynamic_ncols=True):
        rgb, target = images.load(index)
        logits, guide = model.processed_logits(rgb)
        cms = block_cms[blocks[index]]
        for fi, gf in enumerate(candidates):
            scores = _scores_at(logits, guide, {"guided_filter": gf} if gf else {}, target.shape)
            if n == 2:
                cms[fi] += _binary_confusions(scores[..., 1] - scores[..., 0], target, biases)
            else:
                cms[fi, 0] += confusion_matrix(scores.argmax(axis=2), target, n, ignore)
    cms = block_cms.sum(axis=0)
    rows = [
        _iou_row(cms[fi, bi], gf, float(bias))
        for (fi, gf), (bi, bias) in itertools.product(enumerate(candidates), enumerate(biases))
    ]
    baseline = next(r for r in rows if r["guided_filter"] is None and r["bias"] == 0.0)
    best = max(rows, key=lambda r: r["miou"])
    spec: dict[str, Any] = {}
    if best["guided_filter"] is not None:
        spec["guided_filter"] = best["guided_filter"]
    if n == 2 and best["bias"] != 0.0:
        spec["logit_bias"] = [0.0, best["bias"]]
    held_out = _held_out_grid(block_cms, biases.index(0.0)) if folds else None
    if n > 2:
        fitted, held_out_bias = _fit_multiclass_bias(
            model, images, count, ignore, spec, progress, blocks, folds
        )
        if fitted is not None and fitted["miou"] > best["miou"]:
            rows.append(fitted)
            best = fitted
            spec["logit_bias"] = fitted["bias"]
        if "logit_bias" in spec:  # else the file stores no biases: the grid's estimate stands
            held_out = held_out_bias
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
        "held_out": held_out,
        "candidates": sorted(rows, key=lambda r: -r["miou"]),
    }
    _print_summary(result, classes)
    if report:
        Path(report).write_text(json.dumps(result, indent=2))
    return result


def _scores_at(
    logits: np.ndarray, guide: np.ndarray, spec: dict[str, Any], shape: tuple[int, ...]
) -> np.ndarray:
    """The scores ``predict`` takes the argmax of under post-processing ``spec``, at the mask's size
    (predict() resizes the mask the same way)."""
    from seg_service.runtime import apply_postprocess, resize_nearest

    scores = apply_postprocess(logits, guide, spec) if spec else logits
    if scores.shape[:2] != shape:
        scores = resize_nearest(scores, shape[0], shape[1])
    return scores


def _iou_row(cm: np.ndarray, guided_filter: dict[str, Any] | None, bias: Any) -> dict[str, Any]:
    return {"guided_filter": guided_filter, "bias": bias, "miou": _miou(cm), "iou": _iou_percent(cm)}


def _fit_multiclass_bias(
    model: Any,
    images: Any,
    count: int,
    ignore: int,
    spec: dict[str, Any],
    progress: bool,
    blocks: np.ndarray,
    folds: int,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(The candidate row of ``spec`` plus one bias per class, or None when no bias helps; the
    held-out estimate when ``folds``, else None).

    Pass 1 keeps every BIAS_PIXEL_STRIDE-th pixel's scores (after ``spec``'s filter) and fits the
    biases on them; pass 2 scores the result on every pixel through the runtime's own
    post-processing, so the row's mIoU is the one ``predict`` gives, comparable with the grid's.
    The held-out estimate fits each block's biases on the other blocks' kept pixels and scores the
    block's kept pixels (``spec``'s filter, when there is one, stays the one chosen on all images).
    """
    n = len(model.classes)
    stride = BIAS_PIXEL_STRIDE
    kept_scores, kept_targets = [], []
    for index in tqdm(range(count), desc="class biases", disable=not progress, dynamic_ncols=True):
        rgb, target = images.load(index)
        logits, guide = model.processed_logits(rgb)
        scores = _scores_at(logits, guide, spec, target.shape)
        sub_target = target[::stride, ::stride].ravel()
        keep = sub_target != ignore
        kept_scores.append(scores[::stride, ::stride].reshape(-1, n)[keep].astype(np.float32))
        kept_targets.append(sub_target[keep].astype(np.int64))
    held_out = _held_out_biases(kept_scores, kept_targets, blocks, folds, n) if folds else None
    bias, _ = fit_class_biases(np.concatenate(kept_scores), np.concatenate(kept_targets))
    del kept_scores, kept_targets
    if not bias.any():
        return None, held_out
    with_bias = dict(spec, logit_bias=[float(b) for b in bias])
    cm = np.zeros((n, n), dtype=np.int64)
    for index in tqdm(range(count), desc="score biases", disable=not progress, dynamic_ncols=True):
        rgb, target = images.load(index)
        logits, guide = model.processed_logits(rgb)
        scores = _scores_at(logits, guide, with_bias, target.shape)
        cm += confusion_matrix(scores.argmax(axis=2), target, n, ignore)
    return _iou_row(cm, spec.get("guided_filter"), with_bias["logit_bias"]), held_out


def _held_out_biases(
    scores: list[np.ndarray], targets: list[np.ndarray], blocks: np.ndarray, folds: int, n: int
) -> dict[str, Any]:
    """Each block's kept pixels scored with biases fitted on the other blocks, against no bias."""
    base = np.zeros((n, n), dtype=np.int64)
    held = np.zeros((n, n), dtype=np.int64)
    for k in range(folds):
        inside = [i for i in range(len(scores)) if blocks[i] == k]
        outside = [i for i in range(len(scores)) if blocks[i] != k]
        bias, _ = fit_class_biases(
            np.concatenate([scores[i] for i in outside]), np.concatenate([targets[i] for i in outside])
        )
        block_scores = np.concatenate([scores[i] for i in inside])
        block_targets = np.concatenate([targets[i] for i in inside])
        base += confusion_matrix(block_scores.argmax(axis=1), block_targets, n, -1)
        held += confusion_matrix(
            (block_scores + bias.astype(np.float32)).argmax(axis=1), block_targets, n, -1
        )
    return _held_out_row(folds, base, held)


def _print_summary(result: dict[str, Any], classes: list[str]) -> None:
    def describe(row: dict[str, Any]) -> str:
        gf = row["guided_filter"]
        what = (
            "no filter"
            if gf is None
            else f"guided filter r={gf['radius']} eps={gf['eps']:g} clip={gf['clip']:g}"
        )
        bias = row["bias"]
        if isinstance(bias, list):
            return what + ", class biases " + " ".join(f"{b:+g}" for b in bias)
        return what + (f", bias {bias:+g}" if bias else "")

    print(f"{result['images']} images of split {result['split']}, mIoU through the packed runtime:")
    for row in result["candidates"][:5]:
        print(f"  {row['miou']:6.2f}  {describe(row)}")
    base, best = result["baseline"], result["best"]
    per_class = ", ".join(f"{c} {b:.2f} -> {a:.2f}" for c, b, a in zip(classes, base["iou"], best["iou"]))
    print(f"baseline {base['miou']:.2f} -> chosen {best['miou']:.2f} ({describe(best)}); {per_class}")
    held = result["held_out"]
    if held:
        per_class = ", ".join(
            f"{c} {b:.2f} -> {a:.2f}" for c, b, a in zip(classes, held["none"]["iou"], held["fitted"]["iou"])
        )
        print(
            f"held out ({held['folds']} contiguous blocks, each scored with what the others fitted): "
            f"{held['none']['miou']:.2f} -> {held['fitted']['miou']:.2f}; {per_class}"
        )
    print(
        f"wrote {result['out']} (sha256 {result['sha256'][:16]}...) "
        f"with postprocess {json.dumps(result['postprocess'])}"
    )


def choose_test_time(
    model_path: str | Path,
    config_path: str | Path | None,
    overrides: list[tuple[str, Any]],
    out: str | Path,
    candidates: list[dict[str, Any] | None],
    report: str | Path | None = None,
    **tune: Any,
) -> dict[str, Any]:
    """``tune_postprocess`` for each candidate test-time augmentation (a ``test_time`` object, None
    for one plain pass) stored in a copy of the model; writes the best to ``out``: by held-out mIoU
    when ``tune["folds"]`` >= 2, else by the fitted mIoU. Returns the winner's report with
    ``test_time_candidates``: every candidate's passes, pixel cost and scores."""
    from seg_service.format import augmentation_from_json

    from ..export import ExportError, repack_model

    if not candidates:
        raise InputError("--test-time needs at least one candidate")
    _check_out(model_path, out)
    augmentations = []
    for spec in candidates:
        try:
            augmentations.append(augmentation_from_json(spec, "--test-time"))
        except ValueError as exc:
            raise InputError(str(exc)) from None
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    # candidates' files live beside ``out`` so that the winner is moved into place by a rename
    with tempfile.TemporaryDirectory(dir=Path(out).parent, prefix=".test_time_") as scratch:
        for index, (spec, aug) in enumerate(zip(candidates, augmentations)):
            print(f"== test-time candidate {index + 1}/{len(candidates)}: {aug.describe()}")
            source, fitted = Path(scratch) / f"in{index}.gnpk", Path(scratch) / f"out{index}.gnpk"
            try:
                repack_model(model_path, source, test_time=spec)
            except (ExportError, OSError) as exc:
                raise InputError(str(exc)) from None
            result = tune_postprocess(source, config_path, overrides, fitted, **tune)
            held = result["held_out"]
            rows.append(
                {
                    "test_time": aug.to_json(),
                    "description": aug.describe(),
                    "passes": aug.passes,
                    "pixel_cost": aug.pixel_cost,
                    "miou": result["best"]["miou"],
                    "held_out_miou": held["fitted"]["miou"] if held else None,
                }
            )
            results.append(result)
        key = "held_out_miou" if all(r["held_out_miou"] is not None for r in rows) else "miou"
        chosen = max(range(len(rows)), key=lambda i: rows[i][key])
        os.replace(Path(scratch) / f"out{chosen}.gnpk", out)
    best = dict(results[chosen], model=str(model_path), out=str(out))
    best["test_time_candidates"] = [dict(r, chosen=i == chosen) for i, r in enumerate(rows)]
    label = "held-out mIoU" if key == "held_out_miou" else "fitted mIoU (in-sample: add --folds 2)"
    print(f"test-time candidates, by {label}; pixel cost relative to one pass at the processed size:")
    for r in sorted(best["test_time_candidates"], key=lambda r: -r[key]):
        mark = "  <- written" if r["chosen"] else ""
        print(f"  {r[key]:6.2f}  cost {r['pixel_cost']:5.2f}  {r['description']}{mark}")
    print(f"wrote {out} (sha256 {best['sha256'][:16]}...)")
    if report:
        Path(report).write_text(json.dumps(best, indent=2))
    return best
