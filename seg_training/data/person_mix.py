"""Build the person training set: several labelled sources as one images/ + masks/ folder.

The default ``person`` model learns from every source of labelled people there is here, each
brought to one mask convention (0 background, 1 person, 255 ignore):

- ``ccp``: Clothing Co-Parsing full-body street photos, label > 0 = person; 0001-0904 train,
  0905-1004 validation (the project's split);
- ``portraits``: Flickr head-and-shoulders portraits (EG1800's source), the authors' train/test
  lists; images in neither list go to train;
- ``camvid``: CamVid street scenes, train split only: pedestrians are person, bicyclists (rider and
  bike in one label) and void are ignored, every other class is background, so the set also holds
  many images with no person at all.

Images are linked (or copied with ``--copy``), masks written as 8-bit PNGs, names prefixed by
source (``ccp_0001``, ``portraits_00001``, ``camvid_0001TP_006690``). List files: ``train.txt``,
``val.txt`` (both validation sets), ``val_ccp.txt``, ``val_portraits.txt``, ``val_mini.txt`` (a
quick interleaved subset of both for validation during training), ``train_tune.txt`` (every 5th
training image, for ``train-seg tune-postprocess``). Usage::

    python -m seg_training.data.person_mix --data ../shared/data --out /work/data/person_mix
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import read_mask

CAMVID_PEDESTRIAN, CAMVID_BICYCLIST, CAMVID_VOID = 9, 10, 11
IGNORE = 255


def _stems(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.jpg"))


def _list(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def ccp_items(root: Path) -> Iterator[tuple[str, str, Path, np.ndarray]]:
    for stem in _stems(root / "images"):
        split = "train" if int(stem) <= 904 else "val_ccp"
        mask = (read_mask(root / "masks" / f"{stem}.png") > 0).astype(np.uint8)
        yield split, f"ccp_{stem}", root / "images" / f"{stem}.jpg", mask


def portrait_items(root: Path) -> Iterator[tuple[str, str, Path, np.ndarray]]:
    val = set(_list(root / "val.txt"))
    for stem in _stems(root / "images"):
        mask = read_mask(root / "masks" / f"{stem}.png")
        yield (
            ("val_portraits" if stem in val else "train"),
            f"portraits_{stem}",
            root / "images" / f"{stem}.jpg",
            mask,
        )


def camvid_items(root: Path) -> Iterator[tuple[str, str, Path, np.ndarray]]:
    for stem in _stems(root / "train" / "images"):
        labels = read_mask(root / "train" / "masks" / f"{stem}.png")
        mask = (labels == CAMVID_PEDESTRIAN).astype(np.uint8)
        mask[(labels == CAMVID_BICYCLIST) | (labels >= CAMVID_VOID)] = IGNORE
        yield "train", f"camvid_{stem}", root / "train" / "images" / f"{stem}.jpg", mask


SOURCES = {"ccp": ccp_items, "portraits": portrait_items, "camvid": camvid_items}


def build(
    data: Path, out: Path, sources: Sequence[str] = tuple(SOURCES), copy: bool = False
) -> dict[str, int]:
    """Write the folder; returns the number of images per list."""
    import cv2

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {"train": [], "val_ccp": [], "val_portraits": []}
    for source in sources:
        root = data / source
        if not root.is_dir():
            raise InputError(f"data set folder not found: {root}")
        for split, name, image, mask in SOURCES[source](root):
            target = out / "images" / f"{name}.jpg"
            if target.is_symlink() or target.exists():
                target.unlink()
            if copy:
                shutil.copyfile(image, target)
            else:
                os.symlink(image.resolve(), target)
            if not cv2.imwrite(str(out / "masks" / f"{name}.png"), mask):
                raise InputError(f"cannot write {out / 'masks' / f'{name}.png'}")
            lists[split].append(name)
    lists["val"] = lists["val_ccp"] + lists["val_portraits"]
    # A quick validation set for progress during training: every 4th image of each set, interleaved.
    lists["val_mini"] = [n for pair in zip(lists["val_ccp"][::2], lists["val_portraits"][::4]) for n in pair]
    # Every 5th training image of every source: enough to fit a stored post-processing on, in minutes.
    lists["train_tune"] = lists["train"][::5]
    for split, names in lists.items():
        (out / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return {split: len(names) for split, names in lists.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seg_training.data.person_mix", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("../shared/data"),
        help="folder holding ccp/, portraits/, camvid/ (default ../shared/data)",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write (images/, masks/, *.txt)")
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma list of {list(SOURCES)}")
    parser.add_argument("--copy", action="store_true", help="copy images instead of linking them")
    args = parser.parse_args(argv)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        parser.error(f"unknown source(s) {unknown}; choose from {list(SOURCES)}")
    try:
        counts = build(args.data, args.out, sources, args.copy)
    except InputError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
