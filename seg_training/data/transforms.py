"""albumentations pipelines for training and evaluation.

Each training pipeline is re-seeded per sample (see SeededSampler), so augmentation is reproducible
across workers, processes and resumed runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def jitter_sizes(base_size: int, scale_range: Sequence[float], step: float = 0.125) -> list[int]:
    """Short-side sizes for scale jitter: base_size * s for s in [lo, hi] in steps of ``step``."""
    lo, hi = float(scale_range[0]), float(scale_range[1])
    scales = np.arange(lo, hi + 1e-9, step) if hi > lo else np.array([lo])
    return sorted({max(8, int(round(base_size * s))) for s in scales})


def seed_pipeline(pipeline: object, seed: int) -> None:
    """Re-seed an albumentations pipeline for one sample, every step with a seed of its own, all
    derived from ``seed`` (so a sample's augmentation stays a function of (seed, epoch)).

    albumentations' own ``Compose.set_random_seed`` hands every step a generator with the same seed,
    so their first draws are equal: each step with p applied exactly when the rarer ones did (every
    rotated image was also mirrored; grey only with rotation, blur, noise and JPEG together), and
    the crop position was correlated with the scale (0.3 over 200 seeds). Found 2026-12-06; every
    model trained before was trained so."""
    draws = np.random.default_rng(seed)

    def visit(step: object) -> None:
        # A compose seeds its children with its own seed: each child is re-seeded right after.
        step.set_random_seed(int(draws.integers(2**31)))  # type: ignore[attr-defined]
        for child in getattr(step, "transforms", []):
            if hasattr(child, "set_random_seed"):
                visit(child)

    visit(pipeline)


def seg_train_transform(
    crop_size: int,
    base_size: int | None,
    scale_range: Sequence[float] = (0.5, 2.0),
    hflip: bool = True,
    ignore_index: int = 255,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augment: str = "basic",
    low_resolution: float = 0.0,
) -> A.Compose:
    """Scale jitter (short side to base_size * s, or the original size * s without a base size),
    pad to the crop with the ignore label in the mask, random crop, flip, normalize.

    augment "strong" adds what cheap cameras and casual photos do to an image (see photometric_steps);
    "strong_colour" also takes colour away as a cue (grey images and large hue turns more often), for
    a model that must find people by shape: the person model of 2026-12-06, trained "strong", lost
    10 IoU points on grey CCP photos and 28 on portraits turned 60 degrees in hue, MediaPipe 1-2.

    ``low_resolution``: the probability of a crop whose detail is that of an image 1/4 to 3/5 its
    size, upscaled back (``low_resolution_step``). The twelfth session's person file lost 15 IoU
    points on portraits and 41 on CCP photos shrunk to 96 pixels and enlarged again, MediaPipe 0-3: it had
    learnt to find people by fine texture, which small, soft and upscaled photos do not have.
    """
    if base_size:
        rescale = A.SmallestMaxSize(max_size=jitter_sizes(base_size, scale_range), p=1.0)
    else:
        rescale = A.RandomScale(scale_limit=(scale_range[0] - 1.0, scale_range[1] - 1.0), p=1.0)
    steps = [
        rescale,
        A.PadIfNeeded(
            min_height=crop_size,
            min_width=crop_size,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=ignore_index,
        ),
        A.RandomCrop(height=crop_size, width=crop_size),
    ]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if low_resolution > 0.0:
        # before the camera effects: a small photo's noise and JPEG blocks are not upscaled away
        steps.append(low_resolution_step(low_resolution))
    if augment in ("strong", "strong_colour"):
        steps += photometric_steps(ignore_index, colour_free=augment == "strong_colour")
    elif augment != "basic":
        raise ValueError(f"data.augment must be 'basic', 'strong' or 'strong_colour', got {augment!r}")
    steps += [A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()]
    return A.Compose(steps, seed=0)


def photometric_steps(ignore_index: int, colour_free: bool = False) -> list[A.BasicTransform]:
    """Tilted cameras, lighting and colour casts, grey images, focus and motion blur, sensor noise
    and JPEG artefacts: the look of webcam frames and phone snapshots that clean training photos
    lack. ``colour_free``: grey images 4x as often (20 %) and, in 15 % of the images, a hue turn of
    up to 90 degrees, so that skin and clothing colours stop being enough to call a pixel person."""
    colour = [A.ToGray(p=0.2 if colour_free else 0.05)]
    if colour_free:
        # OpenCV's uint8 hue runs 0-180: 45 is a quarter turn
        colour.append(A.HueSaturationValue(hue_shift_limit=45, sat_shift_limit=0, val_shift_limit=0, p=0.15))
    return [
        A.Affine(rotate=(-15, 15), p=0.3, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index),
        A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.5, hue=0.06, p=0.8),
        *colour,
        A.OneOf([A.GaussianBlur(blur_limit=(3, 7)), A.MotionBlur(blur_limit=(3, 7))], p=0.2),
        A.GaussNoise(std_range=(0.02, 0.08), p=0.2),
        A.ImageCompression(quality_range=(25, 90), p=0.3),
    ]


def low_resolution_step(probability: float) -> A.BasicTransform:
    """With ``probability``, shrink the image (area averaging) to 1/4 to 3/5 of its size and enlarge
    it back (bilinear): the mask keeps its full resolution, so the network learns to find the
    outline from blurred detail."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"data.low_resolution must be in [0, 1], got {probability}")
    return A.Downscale(
        scale_range=(0.25, 0.6),
        interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
        p=probability,
    )


def seg_eval_transform(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, short_side: int | None = None
) -> A.Compose:
    """Evaluation at the original resolution (or with the short side resized, when given)."""
    steps = [A.SmallestMaxSize(max_size=short_side)] if short_side else []
    steps += [A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()]
    return A.Compose(steps)


def cls_train_transform(
    crop_size: int,
    scale: Sequence[float] = (0.08, 1.0),
    hflip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Inception-style random resized crop, flip, normalize (the standard ImageNet recipe)."""
    steps = [A.RandomResizedCrop(size=(crop_size, crop_size), scale=tuple(scale))]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    steps += [A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()]
    return A.Compose(steps, seed=0)


def cls_eval_transform(
    crop_size: int,
    resize: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Short side to ``resize``, centre crop, normalize (e.g. 256 -> 224 on ImageNet)."""
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=resize),
            A.CenterCrop(height=crop_size, width=crop_size),
            A.Normalize(mean=tuple(mean), std=tuple(std)),
            ToTensorV2(),
        ]
    )
