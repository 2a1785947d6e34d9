"""Build the person training set: several labelled sources as one images/ + masks/ folder.

The default ``person`` model learns from every source of labelled people there is here, each
brought to one mask convention (0 background, 1 person, 255 ignore):

- ``ccp``: Clothing Co-Parsing full-body street photos, label > 0 = person; 0001-0904 train,
  0905-1004 validation (the project's split);
- ``portraits``: Flickr head-and-shoulders portraits (EG1800's source), the authors' train/test
  lists; images in neither list go to train;
- ``camvid``: CamVid street scenes: pedestrians are person, bicyclists (rider and bike in one label)
  and void are ignored, every other class is background, so the set also holds many images with no
  person at all. The train split trains; the val split (when present) is a third validation set,
  ``val_camvid.txt``, of small distant people (not in ``val.txt``, which stays CCP + portraits);
- ``scenes``: people-free photos, every pixel background: Imagenette (``imagenette96/``) images of
  the classes that rarely show a person (cassette player, church, garbage truck, gas pump),
  upscaled to 288x288. CCP and portraits each hold a person in every photo, and a model that
  learns only from them marks colourful walls, shop fronts and machines as person; these teach it
  that a photo may hold no one (and copy-paste puts people on them). 200 training images per class;
  50 validation images per class form ``val_scenes.txt``, where the share of pixels marked person
  measures false alarms (not in ``val.txt``).
- ``everyday`` (only with ``--mediapipe-python``): Imagenette photos of people, the everyday
  pictures the other sources lack (men with chain saws, players of French horns, a few golfers and
  parachutists: seated, in groups, half in frame, small and soft), upscaled like the scenes and
  labelled by MediaPipe's selfie segmenter, with a band of ignore along its outline
  (``pseudo_label``). Only the photos of ``everyday_checked.txt`` are used (``--everyday-list``
  names another): unchecked, MediaPipe's masks on these classes were mostly wrong (it marks held
  fish, horns and saws, golf balls, parachute canopies and dogs as person), and a first version of
  this source that trusted them taught the model those mistakes. The list's ``val`` photos form
  ``val_everyday.txt`` (not in ``val.txt``): 159 checked masks, MediaPipe's outline at 96 pixels
  (so still coarse at the edges, which the ignore band leaves out of the score).

Images are linked (or copied with ``--copy``), masks written as 8-bit PNGs, names prefixed by
source (``ccp_0001``, ``portraits_00001``, ``camvid_0001TP_006690``). List files: ``train.txt``,
``val.txt`` (CCP and portraits validation), ``val_ccp.txt``, ``val_portraits.txt``,
``val_camvid.txt``, ``val_everyday.txt``, ``val_mini.txt`` (a quick interleaved subset of CCP and
portraits validation for progress during training), ``train_tune.txt`` (every 5th training image,
for ``train-seg tune-postprocess``). Usage::

    python -m seg_training.data.person_mix --data ../shared/data --out /work/data/person_mix \\
        [--mediapipe-python /path/to/mediapipe-env/bin/python]

CCP labels only the photo's subject: bystanders behind her are background in its masks, which would
teach the model to miss people. With ``--mediapipe-python`` MediaPipe's selfie segmenter (general
model, run in its own environment) looks at every CCP training image, and each person-like region
it finds away from the labelled subject becomes ``ignore`` (see ``unlabelled_people``); its masks
stay in ``<out>/mediapipe/`` for inspection. CCP and portraits validation masks are never changed.
It also looks at the ``scenes`` images, training and validation: what it takes for a person there
(a rare passer-by, or a person-like shape) becomes ``ignore``, so neither training nor the false-alarm
figure counts it as background.
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
# Imagenette classes whose photos rarely show a person: the people-free scenes of the mix.
SCENE_CLASSES = {
    "n02979186": "cassette player",
    "n03028079": "church",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
}
SCENE_SIDE = 288  # Imagenette here is 96x96: upscaled once (bicubic) rather than by the loader
SCENES_PER_CLASS = {"train": 200, "val": 50}
# Imagenette photos of people whose MediaPipe mask was checked by eye (the file's header says how):
# the ``everyday`` source. Unchecked, most of MediaPipe's masks on these classes were wrong.
EVERYDAY_CHECKED = Path(__file__).with_name("everyday_checked.txt")
EVERYDAY_SPLITS = {"train": "train", "val": "val_everyday"}  # list's Imagenette folder -> person_mix list
EVERYDAY_SHARE = (0.05, 0.85)  # share of pixels MediaPipe marks: fewer is no one, more is a mistake
EVERYDAY_BAND = 3  # pixels of ignore on each side of MediaPipe's outline


def unlabelled_people(
    truth: np.ndarray,
    reference: np.ndarray,
    gap: float = 0.025,
    min_area: float = 0.002,
    min_height: float = 0.06,
    margin: int = 4,
) -> np.ndarray:
    """Where ``reference`` (another segmenter's person mask) sees a person that ``truth`` does not label.

    A connected region of the reference counts when it lies more than ``gap`` x the image diagonal
    from every labelled person pixel (so disagreements along the subject's outline do not), covers at
    least ``min_area`` of the image, and stands upright: at least ``min_height`` of the image tall and
    at least 0.8 times as tall as wide (shadows cast on the ground are wide and flat). Returns a
    boolean mask of those regions grown by ``margin`` pixels, limited to pixels ``truth`` calls
    background (0).
    """
    import cv2

    if truth.shape != reference.shape:
        raise InputError(f"reference mask is {reference.shape}, the label mask {truth.shape}")
    h, w = truth.shape
    r = max(1, round(gap * float(np.hypot(h, w))))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    near_subject = cv2.dilate((truth == 1).astype(np.uint8), disc) > 0
    candidates = ((reference > 0) & ~near_subject).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(candidates, connectivity=8)
    area, width = stats[:, cv2.CC_STAT_AREA], stats[:, cv2.CC_STAT_WIDTH]
    height = stats[:, cv2.CC_STAT_HEIGHT]
    upright = (area >= min_area * h * w) & (height >= min_height * h) & (height >= 0.8 * width)
    upright[0] = False  # component 0 is everything else
    found = upright[labels].astype(np.uint8)
    if margin > 0 and found.any():
        found = cv2.dilate(found, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1,) * 2))
    return (found > 0) & (truth == 0)


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
    for folder, split in (("train", "train"), ("val", "val_camvid")):
        for stem in _stems(root / folder / "images"):
            labels = read_mask(root / folder / "masks" / f"{stem}.png")
            mask = (labels == CAMVID_PEDESTRIAN).astype(np.uint8)
            mask[(labels == CAMVID_BICYCLIST) | (labels >= CAMVID_VOID)] = IGNORE
            yield split, f"camvid_{stem}", root / folder / "images" / f"{stem}.jpg", mask


def _upscaled(path: Path) -> np.ndarray:
    """An Imagenette photo (BGR) upscaled once to ``SCENE_SIDE`` (bicubic), or InputError."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"cannot read image {path}")
    return cv2.resize(image, (SCENE_SIDE, SCENE_SIDE), interpolation=cv2.INTER_CUBIC)


def scene_items(root: Path) -> Iterator[tuple[str, str, Path | np.ndarray, np.ndarray]]:
    """Imagenette photos of ``SCENE_CLASSES`` as people-free scenes: an even spread of
    ``SCENES_PER_CLASS`` files per class and split, upscaled to ``SCENE_SIDE``, masks all background."""
    for folder, split in (("train", "train"), ("val", "val_scenes")):
        for wnid in SCENE_CLASSES:
            files = sorted((root / folder / wnid).glob("*.jpg"))
            limit = SCENES_PER_CLASS[folder]
            for path in files[:: max(1, len(files) // limit)][:limit]:
                background = np.zeros((SCENE_SIDE, SCENE_SIDE), np.uint8)
                yield split, f"scenes_{wnid}_{path.stem}", _upscaled(path), background


def pseudo_label(reference: np.ndarray, band: int = EVERYDAY_BAND) -> np.ndarray:
    """A training mask from another segmenter's person mask ``reference`` (> 0 person): person
    where the mask eroded by ``band`` pixels is, background beyond the mask grown by ``band``, and
    ignore (255) in the band between, where a coarse outline would teach wrong edges."""
    import cv2

    person = (reference > 0).astype(np.uint8)
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    label = np.zeros_like(person)
    label[cv2.dilate(person, kernel) > 0] = IGNORE
    label[cv2.erode(person, kernel) > 0] = 1
    return label


def checked_photos(path: Path) -> dict[str, list[str]]:
    """The lines of a checked-photo list such as ``EVERYDAY_CHECKED``: Imagenette folder (``train``
    or ``val``) -> ``class/stem`` entries in file order; ``#`` lines are comments. InputError on a
    line of another form."""
    photos: dict[str, list[str]] = {folder: [] for folder in EVERYDAY_SPLITS}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in photos or parts[1].count("/") != 1:
            raise InputError(f"{path}:{number}: expected 'train|val CLASS/STEM', got {line!r}")
        photos[parts[0]].append(parts[1])
    return photos


def add_everyday_people(
    root: Path,
    out: Path,
    mediapipe_python: str,
    lists: dict[str, list[str]],
    checked: Path = EVERYDAY_CHECKED,
) -> None:
    """The ``everyday`` source: the Imagenette (``root``) photos listed in ``checked``, upscaled to
    ``SCENE_SIDE`` and written to ``out``, labelled by MediaPipe (``pseudo_label``), kept where its
    mask covers ``EVERYDAY_SHARE`` of the photo (a MediaPipe release that sees a listed photo
    differently drops it rather than teach its new mistake); their names go to ``lists["train"]``
    and ``lists["val_everyday"]`` by the folder the list gives."""
    import cv2

    for folder, entries in checked_photos(checked).items():
        names = []
        for entry in entries:
            wnid, stem = entry.split("/")
            path = root / folder / wnid / f"{stem}.jpg"
            if not path.is_file():
                raise InputError(f"{path}: listed in {checked} but missing")
            name = f"everyday_{wnid}_{stem}"
            _write(out / "images" / f"{name}.jpg", _upscaled(path), [cv2.IMWRITE_JPEG_QUALITY, 95])
            names.append(name)
        if not names:
            continue
        references = _reference_masks(out, names, mediapipe_python, f"mediapipe/everyday_{folder}")
        for name, reference in zip(names, references, strict=True):
            share = float((reference > 0).mean())
            if EVERYDAY_SHARE[0] <= share <= EVERYDAY_SHARE[1]:
                _write(out / "masks" / f"{name}.png", pseudo_label(reference))
                lists[EVERYDAY_SPLITS[folder]].append(name)
            else:  # not used: no mask, so no image either
                (out / "images" / f"{name}.jpg").unlink()


SOURCES = {"ccp": ccp_items, "portraits": portrait_items, "camvid": camvid_items, "scenes": scene_items}
# Sources labelled by MediaPipe, used only when --mediapipe-python names it: each adds its images
# to the folder and its names to the lists itself, from the checked-photo list build() passes.
PSEUDO_SOURCES = {"everyday": add_everyday_people}
# A source's folder under --data where it is not the source's name.
SOURCE_FOLDERS = {"scenes": "imagenette96", "everyday": "imagenette96"}


def _write(path: Path, array: np.ndarray, params: Sequence[int] = ()) -> None:
    """An image or mask file (format by suffix), or InputError."""
    import cv2

    if not cv2.imwrite(str(path), array, list(params)):
        raise InputError(f"cannot write {path}")


def build(
    data: Path,
    out: Path,
    sources: Sequence[str] = (*SOURCES, *PSEUDO_SOURCES),
    copy: bool = False,
    mediapipe_python: str | None = None,
    everyday_list: Path = EVERYDAY_CHECKED,
) -> dict[str, int]:
    """Write the folder; returns the number of images per list (and, with ``mediapipe_python``, of
    CCP training masks given ignored bystanders, as ``ccp_bystanders``, and of scene masks given
    ignored people, as ``scene_people``). The ``PSEUDO_SOURCES`` are left out without
    ``mediapipe_python``; ``everyday_list`` names the checked photos the everyday source uses."""
    import cv2

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {
        "train": [],
        "val_ccp": [],
        "val_portraits": [],
        "val_camvid": [],
        "val_scenes": [],
        "val_everyday": [],
    }
    for source in sources:
        if source in PSEUDO_SOURCES and not mediapipe_python:
            continue
        root = data / SOURCE_FOLDERS.get(source, source)
        if not root.is_dir():
            others = ",".join(x for x in sources if x != source)
            hint = f" (or leave that source out: --sources {others})" if others else ""
            raise InputError(f"data set folder not found: {root}{hint}")
        if source in PSEUDO_SOURCES:
            PSEUDO_SOURCES[source](root, out, str(mediapipe_python), lists, everyday_list)
            continue
        for split, name, image, mask in SOURCES[source](root):
            target = out / "images" / f"{name}.jpg"
            if target.is_symlink() or target.exists():
                target.unlink()
            if isinstance(image, np.ndarray):  # made here (resized): written, not linked
                _write(target, image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            elif copy:
                shutil.copyfile(image, target)
            else:
                os.symlink(image.resolve(), target)
            _write(out / "masks" / f"{name}.png", mask)
            lists[split].append(name)
    lists["val"] = lists["val_ccp"] + lists["val_portraits"]
    # A quick validation set for progress during training: every 4th image of each set, interleaved.
    lists["val_mini"] = [n for pair in zip(lists["val_ccp"][::2], lists["val_portraits"][::4]) for n in pair]
    # Every 5th training image of every source: enough to fit a stored post-processing on, in minutes.
    lists["train_tune"] = lists["train"][::5]
    for split, names in lists.items():
        (out / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    counts = {split: len(names) for split, names in lists.items()}
    if mediapipe_python and "ccp" in sources:
        counts["ccp_bystanders"] = ignore_ccp_bystanders(out, lists["train"], mediapipe_python)
    if mediapipe_python and "scenes" in sources:
        scenes = [n for n in lists["train"] + lists["val_scenes"] if n.startswith("scenes_")]
        counts["scene_people"] = ignore_scene_people(out, scenes, mediapipe_python)
    return counts


def _reference_masks(out: Path, names: Sequence[str], mediapipe_python: str, folder: str) -> list[np.ndarray]:
    """MediaPipe general's person masks of images ``names`` of ``out``, kept in ``out/<folder>/general``
    (mask i for names[i])."""
    # The peer runner lives with the comparison tools; imported here so building without it needs
    # no MediaPipe environment.
    from ..peers.compare import mediapipe_masks

    workdir = out / folder
    workdir.mkdir(parents=True, exist_ok=True)
    return mediapipe_masks(
        mediapipe_python, "general", [str(out / "images" / f"{n}.jpg") for n in names], workdir
    )


def ignore_scene_people(out: Path, names: Sequence[str], mediapipe_python: str, grow: int = 4) -> int:
    """Mark what MediaPipe takes for a person in the people-free scenes ``names`` of ``out`` as
    ignore, grown by ``grow`` pixels; returns how many masks changed."""
    import cv2

    changed = 0
    kernel = np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)
    for name, reference in zip(
        names, _reference_masks(out, names, mediapipe_python, "mediapipe/scenes"), strict=True
    ):
        if not reference.any():
            continue
        path = out / "masks" / f"{name}.png"
        mask = read_mask(path)
        mask[cv2.dilate((reference > 0).astype(np.uint8), kernel) > 0] = IGNORE
        _write(path, mask)
        changed += 1
    return changed


def ignore_ccp_bystanders(out: Path, train: Sequence[str], mediapipe_python: str) -> int:
    """Mark ``unlabelled_people`` found by MediaPipe as ignore in the CCP training masks of ``out``;
    returns how many masks changed."""

    names = [n for n in train if n.startswith("ccp_")]
    changed = 0
    for name, reference in zip(
        names, _reference_masks(out, names, mediapipe_python, "mediapipe"), strict=True
    ):
        path = out / "masks" / f"{name}.png"
        mask = read_mask(path)
        extra = unlabelled_people(mask, reference)
        if extra.any():
            mask[extra] = IGNORE
            _write(path, mask)
            changed += 1
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seg_training.data.person_mix", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("../shared/data"),
        help="folder holding ccp/, portraits/, camvid/, imagenette96/ (default ../shared/data)",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write (images/, masks/, *.txt)")
    parser.add_argument(
        "--sources",
        default=",".join((*SOURCES, *PSEUDO_SOURCES)),
        help=f"comma list of {[*SOURCES, *PSEUDO_SOURCES]} (everyday only with --mediapipe-python)",
    )
    parser.add_argument("--copy", action="store_true", help="copy images instead of linking them")
    parser.add_argument(
        "--mediapipe-python",
        help="python of an environment with mediapipe installed: its selfie segmenter finds the "
        "bystanders CCP leaves unlabelled and the rare people in the scenes, which become ignore, "
        "and labels the everyday photos of people (without it they are left out)",
    )
    parser.add_argument(
        "--everyday-list",
        type=Path,
        default=EVERYDAY_CHECKED,
        help="the checked photos the everyday source uses, one 'train|val CLASS/STEM' per line "
        "(default: the list shipped with this package, everyday_checked.txt)",
    )
    args = parser.parse_args(argv)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [s for s in sources if s not in SOURCES and s not in PSEUDO_SOURCES]
    if unknown:
        parser.error(f"unknown source(s) {unknown}; choose from {[*SOURCES, *PSEUDO_SOURCES]}")
    if args.mediapipe_python and not Path(args.mediapipe_python).is_file():
        parser.error(f"--mediapipe-python: no such file {args.mediapipe_python}")
    if not args.everyday_list.is_file():
        parser.error(f"--everyday-list: no such file {args.everyday_list}")
    try:
        counts = build(args.data, args.out, sources, args.copy, args.mediapipe_python, args.everyday_list)
    except InputError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    skipped = [s for s in sources if s in PSEUDO_SOURCES and not args.mediapipe_python]
    if skipped:
        print(f"left out {', '.join(skipped)}: its labels come from MediaPipe (--mediapipe-python)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
