"""Distillation targets: a teacher's person probability for every training image of a folder data set.

The teacher is MediaPipe's selfie segmenter (general model), run in its own environment: a
full-precision network trained on far more photos of people than this project has, and the peer
the person model is measured against. Its confidence, the mean of each image's pass and its
mirror's, is written as ``<root>/<out>/<stem>.png`` (0-254 = probability x 254; 255 is "no
value", which padding and rotation fill in during augmentation). ``loss.distill`` with
``data.teacher_dir`` then trains on these soft targets beside the labels (docs/training.md).

Images whose name starts with a ``--skip-prefix`` get no map and train on their labels alone. The
default leaves out the people-free scenes, whose labels are right by construction and where the
teacher fires on colourful things (person_mix marks those spots ignore), and CamVid's street
frames, whose pedestrians are a few dozen pixels tall and which the teacher does not find (person
IoU 2 on CamVid val). Usage::

    python -m seg_training.data.teacher_maps --root ../data/person_mix --split train.txt \\
        --mediapipe-python mp/bin/python [--out teacher] [--skip-prefix camvid_ --skip-prefix scenes_]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError
from .segmentation import images_by_stem, select_stems


def write_teacher_maps(
    root: Path,
    split: str,
    mediapipe_python: str,
    out: str = "teacher",
    skip_prefixes: Sequence[str] = ("camvid_", "scenes_"),
    image_dir: str = "images",
    model: str = "general",
) -> int:
    """Write ``root/out/<stem>.png`` for the images of ``split`` (each stem once); returns how many."""
    # The peer runner lives with the comparison tools; imported here so the data package needs no
    # MediaPipe environment.
    from ..peers.compare import mediapipe_outputs

    images = images_by_stem(root / image_dir)
    stems = list(dict.fromkeys(select_stems(sorted(images), split, root, str(root / image_dir))))
    stems = [s for s in stems if not s.startswith(tuple(skip_prefixes))]
    target = root / out
    target.mkdir(parents=True, exist_ok=True)
    # MediaPipe writes into a folder beside the maps, so that each map arrives by a rename: a killed
    # run leaves no half-written one behind.
    with tempfile.TemporaryDirectory(prefix=".teacher_", dir=root) as work:
        written = mediapipe_outputs(
            mediapipe_python, model, [str(images[s]) for s in stems], Path(work), kind="probabilities"
        )
        for stem, path in zip(stems, written, strict=True):
            path.replace(target / f"{stem}.png")
    return len(stems)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a teacher's (MediaPipe's) person probability for each training image, as "
        "distillation targets for train-seg (loss.distill with data.teacher_dir).",
    )
    parser.add_argument("--root", required=True, type=Path, help="folder data set (images/ + masks/)")
    parser.add_argument(
        "--split", default="train.txt", help="list file or range of images (default train.txt)"
    )
    parser.add_argument(
        "--mediapipe-python", required=True, help="python of an environment with mediapipe installed"
    )
    parser.add_argument("--out", default="teacher", help="folder under --root for the maps (default teacher)")
    parser.add_argument(
        "--skip-prefix",
        action="append",
        default=None,
        help="leave out images whose name starts with this (repeatable; default camvid_ and scenes_)",
    )
    parser.add_argument("--model", choices=["general", "landscape"], default="general")
    args = parser.parse_args(argv)
    if not Path(args.mediapipe_python).is_file():
        parser.error(f"--mediapipe-python: no such file {args.mediapipe_python}")
    skip = ("camvid_", "scenes_") if args.skip_prefix is None else tuple(p for p in args.skip_prefix if p)
    try:
        count = write_teacher_maps(
            args.root, args.split, args.mediapipe_python, args.out, skip, model=args.model
        )
    except InputError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {count} teacher maps to {args.root / args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
