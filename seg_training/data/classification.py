"""ImageFolder classification data: root/<class>/<image>, classes sorted by folder name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import InputError
from .io import IMAGE_EXTENSIONS, read_image
from .transforms import seed_pipeline


def scan_image_folder(
    root: Path, classes: Sequence[str] | None = None
) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and (image, class index) samples. With ``classes`` given (e.g. the training split's),
    a folder name outside that list is an error, so train and val indices always agree."""
    if not root.is_dir():
        raise InputError(f"image folder not found: {root} (set --data.root)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    if classes is None:
        classes = found
    else:
        extra = [c for c in found if c not in classes]
        if extra:
            raise InputError(f"class folder {root / extra[0]} is not among the training classes")
    index = {name: i for i, name in enumerate(classes)}
    samples = [
        (path, index[name])
        for name in found
        for path in sorted((root / name).iterdir())
        if path.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not samples:
        raise InputError(f"empty data set: no images in class folders under {root}")
    return list(classes), samples


class ImageFolderDataset(Dataset):
    """(float image [3, H, W], class index); items indexed like SegmentationDataset ((index, seed)
    or index)."""

    def __init__(
        self,
        root: Path,
        transform: Callable[..., dict[str, Any]] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.root = root
        self.classes, self.samples = scan_image_folder(root, classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        path, target = self.samples[index]
        image: np.ndarray | torch.Tensor = read_image(path)
        if self.transform is not None:
            if seed is not None and hasattr(self.transform, "set_random_seed"):
                seed_pipeline(self.transform, seed)
            image = self.transform(image=image)["image"]
        if not isinstance(image, torch.Tensor):
            image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return image, target
