"""Data sets and augmentation pipelines for classification and segmentation training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .classification import ImageFolderDataset, scan_image_folder
from .copy_paste import CopyPaste, Mix, PasteInPlace, chain
from .errors import InputError, one_line
from .io import read_image, read_mask
from .labels import apply_label_map, build_label_map
from .sampling import SeededSampler, ShardSampler, pad_collate, sample_seed, seed_worker
from .segmentation import LAYOUTS, SegmentationDataset, find_pairs
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    cls_eval_transform,
    cls_train_transform,
    seg_eval_transform,
    seg_train_transform,
)


def build_seg_dataset(data: dict[str, Any], split: str) -> SegmentationDataset:
    """The "train" or "val" split described by a config's ``data`` section."""
    root = Path(data["root"])
    split_value = data[f"{split}_split"]
    pairs = find_pairs(data["layout"], root, split_value, data.get("image_dir"), data.get("mask_dir"))
    classes = list(data["classes"])
    table = build_label_map(
        len(classes), int(data["ignore_index"]), data.get("remap"), data.get("void_labels") or ()
    )
    if split == "train":
        transform = seg_train_transform(
            int(data["crop_size"]),
            data.get("base_size"),
            data["scale_range"],
            bool(data["hflip"]),
            int(data["ignore_index"]),
            data["mean"],
            data["std"],
            str(data.get("augment", "basic")),
            float(data.get("low_resolution") or 0.0),
        )
    else:
        transform = seg_eval_transform(data["mean"], data["std"])
    what = f"{split} split {split_value!r} of {data['layout']} data at {root}"
    teacher = data.get("teacher_dir") if split == "train" else None
    teacher_dir = None if not teacher else root / str(teacher)  # an absolute path stays absolute
    dataset = SegmentationDataset(
        pairs, table, len(classes), transform, description=what, teacher_dir=teacher_dir
    )
    if split == "train":
        mixes: list[Mix] = []
        if float(data.get("copy_paste") or 0.0) > 0.0:
            mixes.append(CopyPaste(float(data["copy_paste"]), ignore_index=int(data["ignore_index"])))
        paste_classes = data.get("paste_in_place") or []
        if isinstance(paste_classes, str):  # "pole,signsymbol" from a command line
            paste_classes = [name.strip() for name in paste_classes.split(",") if name.strip()]
        paste_p = float(data.get("paste_in_place_p") or 0.0)
        if not 0.0 <= paste_p <= 1.0:
            raise InputError(f"data.paste_in_place_p must be in [0, 1], got {paste_p}")
        if paste_classes and paste_p > 0.0:
            mixes.append(PasteInPlace(paste_p, class_indices(paste_classes, classes)))
        if mixes:
            dataset.mix = mixes[0] if len(mixes) == 1 else chain(*mixes)
    return dataset


def class_indices(names: list[Any], classes: list[str]) -> list[int]:
    """Indices of ``names`` (class names, or indices) among ``classes``; a clear error for an unknown one."""
    out = []
    for name in names:
        if isinstance(name, int) and not isinstance(name, bool) and 0 <= name < len(classes):
            out.append(name)
        elif str(name) in classes:
            out.append(classes.index(str(name)))
        else:
            known = ", ".join(classes)
            raise InputError(f"data.paste_in_place: unknown class {name!r}; the classes are {known}")
    return out


def build_cls_dataset(
    data: dict[str, Any], split: str, classes: list[str] | None = None
) -> ImageFolderDataset:
    """The "train" or "val" ImageFolder split described by a config's ``data`` section."""
    root = Path(data["root"]) / data[f"{split}_dir"]
    if split == "train":
        transform = cls_train_transform(
            int(data["crop_size"]), data["scale"], bool(data["hflip"]), data["mean"], data["std"]
        )
    else:
        transform = cls_eval_transform(int(data["crop_size"]), int(data["resize"]), data["mean"], data["std"])
    return ImageFolderDataset(root, transform, classes)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAYOUTS",
    "ImageFolderDataset",
    "InputError",
    "SeededSampler",
    "SegmentationDataset",
    "ShardSampler",
    "apply_label_map",
    "build_cls_dataset",
    "build_label_map",
    "build_seg_dataset",
    "cls_eval_transform",
    "cls_train_transform",
    "find_pairs",
    "one_line",
    "pad_collate",
    "read_image",
    "read_mask",
    "sample_seed",
    "scan_image_folder",
    "seed_worker",
    "seg_eval_transform",
    "seg_train_transform",
]
