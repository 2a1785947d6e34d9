"""Up-front data check (``train-seg check-data``, and the first thing a segmentation run does).

Every image and mask of the splits is read once, in a thread pool (decoding releases the GIL), so a
bad file in the validation split shows up before the first epoch rather than after it. The report
lists every problem with its file, the label histogram per class and the class balance; problems
are collected, never raised one at a time.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, one_line
from .io import read_image, read_mask
from .labels import INVALID, build_label_map
from .segmentation import Pair, find_pairs

# Problems shown at the start of training before "and N more" (check-data always lists them all).
MAX_SHOWN = 20


@dataclass
class SplitStats:
    """Label histogram of one split: pixels per class, images holding each class, image sizes."""

    name: str
    num_classes: int
    images: int = 0
    pixels: np.ndarray = field(init=False)  # int64[num_classes]
    ignored: int = 0
    images_with: np.ndarray = field(init=False)  # int64[num_classes]
    # labelled pixels of the images that hold each class: SegNet's median-frequency denominator
    pixels_in_images_with: np.ndarray = field(init=False)  # int64[num_classes]
    sizes: set[tuple[int, int]] = field(default_factory=set)  # (width, height)

    def __post_init__(self) -> None:
        self.pixels = np.zeros(self.num_classes, dtype=np.int64)
        self.images_with = np.zeros(self.num_classes, dtype=np.int64)
        self.pixels_in_images_with = np.zeros(self.num_classes, dtype=np.int64)


@dataclass
class DataReport:
    classes: list[str]
    ignore_index: int
    splits: dict[str, SplitStats]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "ignore_index": self.ignore_index,
            "problems": self.problems,
            "splits": {
                name: {
                    "images": s.images,
                    "pixels": s.pixels.tolist(),
                    "ignored_pixels": s.ignored,
                    "images_with_class": s.images_with.tolist(),
                    "median_frequency_weights": median_frequency_weights(s).tolist(),
                    "sizes": sorted(s.sizes),
                }
                for name, s in self.splits.items()
            },
        }


def scan_pair(
    image_path: Path, mask_path: Path, table: np.ndarray, num_classes: int, ignore_index: int
) -> tuple[list[str], np.ndarray | None, tuple[int, int] | None]:
    """(problems, pixel counts per stored class index incl. ignore as int64[256], (w, h)) of one pair."""
    problems: list[str] = []
    image = mask = None
    try:
        image = read_image(image_path)
    except InputError as exc:
        problems.append(one_line(exc))
    try:
        mask = read_mask(mask_path)
    except InputError as exc:
        problems.append(one_line(exc))
    if mask is None:
        return problems, None, None
    height, width = mask.shape
    if image is not None and image.shape[:2] != mask.shape:
        problems.append(
            f"size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} but mask "
            f"{mask_path} is {width}x{height}"
        )
    mapped = table[mask]
    invalid = mapped == INVALID
    if invalid.any():
        bad = sorted(int(v) for v in np.unique(mask[invalid]))
        shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
        problems.append(
            f"mask {mask_path} has label value(s) {shown} outside the class list "
            f"(0..{num_classes - 1}, ignore {ignore_index}) in {int(invalid.sum())} pixels; "
            f"fix data.classes or set data.remap / data.void_labels"
        )
        mapped = np.where(invalid, ignore_index, mapped)
    counts = np.bincount(mapped.astype(np.uint8).ravel(), minlength=256).astype(np.int64)
    return problems, counts, (width, height)


def check_pairs(
    splits: Mapping[str, Sequence[Pair]],
    table: np.ndarray,
    classes: Sequence[str],
    ignore_index: int,
    workers: int | None = None,
    progress: bool = True,
    missing: Sequence[tuple[str, Pair]] = (),
) -> DataReport:
    """Read every pair of every split once, in ``workers`` threads (default: the CPU count)."""
    num_classes = len(classes)
    stats = {name: SplitStats(name, num_classes) for name in splits}
    problems_at: dict[tuple[int, int], list[str]] = {}
    jobs = [(s, i, pair) for s, (name, pairs) in enumerate(splits.items()) for i, pair in enumerate(pairs)]
    workers = max(1, workers or _cpu_count())
    from tqdm import tqdm

    bar = tqdm(
        total=len(jobs),
        desc="checking data",
        unit="img",
        disable=not progress,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )
    names = list(splits)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {
                pool.submit(scan_pair, *pair, table, num_classes, ignore_index): (s, i) for s, i, pair in jobs
            }
            for future in as_completed(futures):
                s, i = futures[future]
                problems, counts, size = future.result()
                split = stats[names[s]]
                split.images += 1
                if problems:
                    problems_at[(s, i)] = problems
                if counts is not None and size is not None:
                    split.pixels += counts[:num_classes]
                    present = counts[:num_classes] > 0
                    split.images_with += present
                    split.pixels_in_images_with += present * int(counts[:num_classes].sum())
                    split.ignored += int(counts[ignore_index]) if 0 <= ignore_index < 256 else 0
                    split.sizes.add(size)
                bar.update()
    finally:
        bar.close()  # before anything is printed: a report never shares a line with the bar
    problems = [
        f"missing mask for image {image}: expected {mask} ({name} split)" for name, (image, mask) in missing
    ]
    for key in sorted(problems_at):  # in data set order, whatever order the threads finished in
        problems += problems_at[key]
    return DataReport(list(classes), ignore_index, stats, problems)


def check_config_data(
    config: dict[str, Any],
    splits: Sequence[str] = ("train", "val"),
    workers: int | None = None,
    progress: bool = True,
) -> DataReport:
    """The data check of a seg config's splits; images without masks are reported, not raised."""
    data = config["data"]
    classes = list(data["classes"])
    ignore = int(data["ignore_index"])
    table = build_label_map(len(classes), ignore, data.get("remap"), data.get("void_labels") or ())
    found: dict[str, list[Pair]] = {}
    missing: list[tuple[str, Pair]] = []
    for split in splits:
        lacking: list[Pair] = []
        found[split] = find_pairs(
            data["layout"],
            Path(data["root"]),
            data[f"{split}_split"],
            data.get("image_dir"),
            data.get("mask_dir"),
            missing=lacking,
        )
        missing += [(split, pair) for pair in lacking]
        if not found[split] and not lacking:
            raise InputError(
                f"empty data set: no images found for {split} split {data[f'{split}_split']!r} "
                f"of {data['layout']} data at {data['root']}"
            )
    return check_pairs(found, table, classes, ignore, workers, progress, missing)


def format_report(report: DataReport, max_problems: int | None = None) -> str:
    """The histogram table, the balance and the warnings, then the problems (one per line)."""
    names = list(report.splits)
    width = max([len(c) for c in report.classes] + [9])
    head = f"{'class':<{width}}" + "".join(f"  {n + ' pixels':>16} {'share':>6} {'images':>9}" for n in names)
    lines = [head]
    rows = [*enumerate(report.classes), (None, "(ignored)")]
    for index, name in rows:
        line = f"{name:<{width}}"
        for split in names:
            s = report.splits[split]
            total = int(s.pixels.sum()) + s.ignored
            pixels = s.ignored if index is None else int(s.pixels[index])
            share = 100.0 * pixels / max(total, 1)
            images = "" if index is None else f"{int(s.images_with[index])}/{s.images}"
            line += f"  {pixels:>16,} {share:>5.1f}% {images:>9}"
        lines.append(line)
    for split in names:
        s = report.splits[split]
        if s.sizes:
            widths = sorted(w for w, _ in s.sizes)
            heights = sorted(h for _, h in s.sizes)
            size = (
                f"{widths[0]}x{heights[0]}"
                if len(s.sizes) == 1
                else f"{widths[0]}-{widths[-1]} x {heights[0]}-{heights[-1]}"
            )
            lines.append(f"{split}: {s.images} images, {size} px")
    lines += balance_notes(report)
    if report.problems:
        shown = report.problems if max_problems is None else report.problems[:max_problems]
        lines.append(f"{len(report.problems)} problem(s):")
        lines += [f"  {p}" for p in shown]
        if len(shown) < len(report.problems):
            lines.append(
                f"  ... and {len(report.problems) - len(shown)} more (train-seg check-data lists all)"
            )
    else:
        lines.append("no problems found")
    return "\n".join(lines)


def median_frequency_weights(split: SplitStats) -> np.ndarray:
    """SegNet's class weights (Eigen & Fergus): ``median(f) / f_c``, where ``f_c`` is the class's pixels
    over the labelled pixels of the images that hold it. Rare, thin classes get weights above 1, the
    common ones below; a class no mask holds gets 0 (there is nothing to weight). float64[num_classes]."""
    present = split.pixels > 0
    weights = np.zeros(split.num_classes, dtype=np.float64)
    if not present.any():
        return weights
    freq = split.pixels[present] / split.pixels_in_images_with[present]
    weights[present] = np.median(freq) / freq
    return weights


def balance_notes(report: DataReport) -> list[str]:
    """Class balance of the training split (or the first one), and classes no mask holds."""
    split = report.splits.get("train") or next(iter(report.splits.values()))
    notes = []
    present = split.pixels[split.pixels > 0]
    if len(present) >= 2:
        ratio = float(present.max()) / float(present.min())
        rare = report.classes[
            int(np.argmin(np.where(split.pixels > 0, split.pixels, np.iinfo(np.int64).max)))
        ]
        common = report.classes[int(np.argmax(split.pixels))]
        note = f"class balance ({split.name}): {common!r} has {ratio:,.1f}x the pixels of {rare!r}"
        if ratio > 100:
            note += "; consider loss.dice or loss.lovasz (less sensitive to rare classes than cross-entropy)"
        notes.append(note)
    absent = [c for c, n in zip(report.classes, split.pixels) if n == 0]
    if absent and split.images:
        notes.append(
            f"warning: no {split.name} mask holds class(es) {', '.join(repr(c) for c in absent)}: the "
            f"model cannot learn them; check data.classes ({len(report.classes)} names)"
        )
    return notes


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_check_data(
    config: dict[str, Any], splits: Sequence[str], workers: int | None, output: str | Path | None
) -> int:
    """``train-seg check-data``: the report on stdout; InputError (exit status 2) when there are problems."""
    data = config["data"]
    print(
        f"checking {', '.join(splits)} of {data['layout']} data at {data['root']}: "
        f"{len(data['classes'])} classes "
        f"({', '.join(data['classes'])}), ignore index {data['ignore_index']}",
        flush=True,
    )
    report = check_config_data(config, splits, workers, bool(config["output"]["progress"]))
    print(format_report(report), flush=True)
    if output is not None:
        Path(output).write_text(json.dumps(report.to_dict(), indent=2))
    if not report.ok:
        raise InputError(f"{len(report.problems)} problem(s) in the data (listed above)")
    return 0


def check_before_training(
    config: dict[str, Any], train_set: Any, val_set: Any, progress: bool, log: Callable[[str], Any]
) -> tuple[DataReport | None, str | None]:
    """The check at the start of a run, on its data sets: (the report, or None when the sets are not
    image/mask files; the one-line failure message, or None)."""
    data = config["data"]
    if not all(hasattr(d, "pairs") and hasattr(d, "label_map") for d in (train_set, val_set)):
        log("data check skipped: the data set is not a list of image/mask files")  # e.g. a composite set
        return None, None
    report = check_pairs(
        {"train": train_set.pairs, "val": val_set.pairs},
        train_set.label_map,
        list(data["classes"]),
        int(data["ignore_index"]),
        None,
        progress,
    )
    log(
        "data check (every image and mask read once; --data.check false skips it):\n"
        + format_report(report, MAX_SHOWN)
    )
    if report.ok:
        return report, None
    return report, (
        f"data check: {len(report.problems)} problem(s) in the data, listed above (first: "
        f"{report.problems[0]}); fix them, or see train-seg check-data; --data.check false skips the check"
    )
