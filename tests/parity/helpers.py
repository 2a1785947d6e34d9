"""Shared pieces of the parity tests: small randomised models, real test images, the comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from seg_training.binary import BinaryConvEnsemble
from seg_training.models import GroupBlock, create_model
from seg_training.models.heads import StemRefine

DATA = Path(__file__).resolve().parents[1] / "data"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)

# Small widths keep every parity model well under a second on the 2-core CI machine.
SMALL = {"num_classes": 5, "width": 0.25, "head_channels": 32}


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial eval state: random BN statistics and affine parameters (some BN scales negative),
    random branch scales (one negative), gates and ensemble weights, and a decoder stem stage's
    classifier. Returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(uniform(n, -0.5, 0.5))
                m.running_var.copy_(uniform(n, 0.3, 2.0))
                sign = torch.where(torch.rand(n, generator=gen) < 0.15, -1.0, 1.0)
                m.weight.copy_(sign * uniform(n, 0.4, 1.5))
                m.bias.copy_(uniform(n, -0.4, 0.4))
            elif isinstance(m, GroupBlock):
                if isinstance(m.scales, nn.Parameter):
                    scales = uniform(m.scales.shape, 0.1, 0.6)
                    scales[-1] = -scales[-1] if len(scales) > 1 else scales[-1]
                    m.scales.copy_(scales)
                if m.gate is not None:
                    m.gate.copy_(uniform(1, -2.0, 2.0))
            elif isinstance(m, BinaryConvEnsemble) and isinstance(m.scales, nn.Parameter):
                m.scales.copy_(uniform(m.scales.shape, -0.2, 0.8))
            elif isinstance(m, StemRefine):  # its classifier starts at zero: the stage would add nothing
                for p in m.classifier.parameters():
                    p.copy_(uniform(p.shape, -0.5, 0.5))
    return model.eval()


def small_model(seed: int = 0, **config) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(create_model({**SMALL, **config}), seed + 1)


def load_rgb(relative: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """An RGB uint8 test image, optionally resized to (height, width) with area interpolation."""
    import cv2

    bgr = cv2.imread(str(DATA / relative), cv2.IMREAD_COLOR)
    assert bgr is not None, relative
    if size is not None:
        bgr = cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def normalise(rgb: np.ndarray) -> np.ndarray:
    return ((rgb.astype(np.float32) / 255.0 - MEAN) / STD).astype(np.float32)


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """PyTorch eval logits for a normalised NHWC image, as [H, W, classes]."""
    with torch.no_grad():
        out = model(torch.from_numpy(x).permute(2, 0, 1)[None].contiguous())
    return out[0].permute(1, 2, 0).numpy()


def assert_parity(got: np.ndarray, ref: np.ndarray, rel_tol: float = 1e-4, what: str = "") -> None:
    """Logits agree to rel_tol of the logit scale on >= 99.9 % of values (a binarised activation that
    sits within float rounding of zero may flip and perturb a few pixels), and argmax masks agree on
    >= 99.9 % of pixels."""
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = float(np.abs(ref).max())
    err = np.abs(got.astype(np.float64) - ref)
    within = float((err <= rel_tol * scale).mean())
    agree = float((got.argmax(axis=2) == ref.argmax(axis=2)).mean())
    detail = f"{what}: max rel err {err.max() / scale:.2e}, {within:.5f} within tol, masks agree {agree:.5f}"
    assert within >= 0.999, detail
    assert agree >= 0.999, detail
