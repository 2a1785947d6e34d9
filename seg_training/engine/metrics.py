"""Losses and metrics: segmentation (CE, Dice, Lovasz; confusion matrix, IoU) and classification (top-k)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from ..data.segmentation import NO_TEACHER


class SegmentationLoss(nn.Module):
    """Weighted sum of cross-entropy, Dice and Lovasz-softmax, all ignoring ``ignore_index`` pixels.

    ``class_weights`` (one per class) weight the cross-entropy only: the class-balanced loss of SegNet
    (median-frequency weights) that lets thin, rare classes count; Dice and Lovasz already average
    over classes.

    ``distill`` weighs a distillation term: with a teacher map (uint8, the teacher's probability of
    class 1 x 254, 255 = no value; data/teacher_maps.py) the cross-entropy against the teacher's
    soft two-class target, over the pixels that have both a teacher value and a label: what a
    stronger network is sure of and where it hesitates (near an outline, on hands and hair), which
    hard labels do not say. For the person model with MediaPipe as teacher it bought nothing at
    equal false alarms (docs/training.md).

    ``ohem_thresh`` turns the cross-entropy into online hard example mining (as in the bootstrapped
    losses of street-scene networks): it averages over the labelled pixels whose softmax probability
    of their own class is at most the threshold, and over at least ``ohem_min_kept`` of the labelled
    pixels (a fraction; the least certain first), so the easy road and sky pixels stop drowning the
    edges of thin objects once they are learnt. Class weights still weight the kept pixels.
    """

    def __init__(
        self,
        ce: float = 1.0,
        dice: float = 0.0,
        lovasz: float = 0.0,
        ignore_index: int = 255,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
        distill: float = 0.0,
        ohem_thresh: float | None = None,
        ohem_min_kept: float = 0.0625,
    ) -> None:
        super().__init__()
        if ce <= 0 and dice <= 0 and lovasz <= 0:
            raise ValueError("at least one of loss.ce, loss.dice, loss.lovasz must be positive")
        if distill < 0:
            raise ValueError(f"loss.distill must be >= 0, got {distill}")
        if ohem_thresh is not None and not 0.0 < ohem_thresh <= 1.0:
            raise ValueError(f"loss.ohem_thresh must be in (0, 1] or null, got {ohem_thresh}")
        if not 0.0 <= ohem_min_kept <= 1.0:
            raise ValueError(f"loss.ohem_min_kept must be in [0, 1], got {ohem_min_kept}")
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept
        self.weights = {"ce": ce, "dice": dice, "lovasz": lovasz, "distill": distill}
        self.ignore_index = ignore_index
        weight = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
        self.ce = nn.CrossEntropyLoss(
            weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing
        )
        self.dice = smp.losses.DiceLoss("multiclass", ignore_index=ignore_index) if dice > 0 else None
        self.lovasz = smp.losses.LovaszLoss("multiclass", ignore_index=ignore_index) if lovasz > 0 else None

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits = logits.float()
        total = logits.new_zeros(())
        if self.weights["distill"] > 0 and teacher is not None:
            total = total + self.weights["distill"] * self.distillation(logits, target, teacher)
        if self.weights["ce"] > 0:
            ce = self.ce(logits, target) if self.ohem_thresh is None else self.hard_pixel_ce(logits, target)
            total = total + self.weights["ce"] * ce
        if self.dice is not None:
            total = total + self.weights["dice"] * self.dice(logits, target)
        if self.lovasz is not None:
            total = total + self.weights["lovasz"] * self.lovasz(logits, target)
        return total

    def hard_pixel_ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The (class-weighted) cross-entropy over the hard pixels only (``ohem_thresh``)."""
        assert self.ohem_thresh is not None
        per_pixel = F.cross_entropy(
            logits,
            target,
            weight=self.ce.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.ce.label_smoothing,
            reduction="none",
        )
        valid = target != self.ignore_index
        count = int(valid.sum())
        if count == 0:
            return logits.new_zeros(())
        with torch.no_grad():
            safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
            p_true = F.softmax(logits, dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)[valid]
            threshold = torch.tensor(self.ohem_thresh, dtype=p_true.dtype, device=p_true.device)
            min_kept = min(count, max(1, int(round(self.ohem_min_kept * count))))
            # the min_kept-th least certain pixel: when fewer than min_kept pixels are below the
            # threshold, it becomes the threshold
            threshold = torch.maximum(threshold, p_true.kthvalue(min_kept).values)
            keep = p_true <= threshold
            pixel_weight = (
                torch.ones_like(p_true) if self.ce.weight is None else self.ce.weight[target[valid].long()]
            )
            denominator = (pixel_weight * keep).sum().clamp(min=1e-12)
        return (per_pixel[valid] * keep).sum() / denominator

    def distillation(self, logits: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the two-class softmax against the teacher's probabilities, over
        the pixels with a teacher value and a label (0 when there are none)."""
        if logits.shape[1] != 2:
            raise ValueError(f"loss.distill needs a two-class network, got {logits.shape[1]} classes")
        valid = (teacher != NO_TEACHER) & (target != self.ignore_index)
        if not bool(valid.any()):
            return logits.new_zeros(())
        p = teacher[valid].float() / 254.0
        log_probs = F.log_softmax(logits, dim=1)
        return -(p * log_probs[:, 1][valid] + (1.0 - p) * log_probs[:, 0][valid]).mean()


@overload
def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int
) -> torch.Tensor: ...
@overload
def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int
) -> np.ndarray: ...
def confusion_matrix(
    pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, num_classes: int, ignore_index: int
) -> torch.Tensor | np.ndarray:
    """int64 [num_classes, num_classes], rows = ground truth, columns = prediction; ignored pixels skipped.

    Tensors (any device, the training evaluation) or numpy arrays of any integer type (masks from the
    packed runtime); the result is of the inputs' kind.
    """
    if isinstance(pred, np.ndarray):
        return confusion_matrix(
            torch.from_numpy(pred.astype(np.int64)),
            torch.from_numpy(np.asarray(target, np.int64)),
            num_classes,
            ignore_index,
        ).numpy()
    assert isinstance(target, torch.Tensor)
    keep = target != ignore_index
    index = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def segmentation_scores(confusion: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """mIoU, per-class IoU, pixel accuracy and mean class accuracy from a confusion matrix.

    A class with no pixels in either ground truth or prediction has IoU NaN and is left out of the mean.
    """
    cm = confusion.double().cpu()
    tp = cm.diag()
    gt = cm.sum(1)
    pred = cm.sum(0)
    union = gt + pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    total = cm.sum()
    return {
        "miou": float(iou.nanmean()) if (union > 0).any() else 0.0,
        "pixel_acc": float(tp.sum() / total) if total > 0 else 0.0,
        "mean_acc": float(acc.nanmean()) if (gt > 0).any() else 0.0,
        "iou": {name: float(v) for name, v in zip(classes, iou.tolist(), strict=True)},
        "confusion": confusion.cpu().tolist(),
    }


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> list[int]:
    """Number of samples whose target is among the top-k predictions, for each k (capped at #classes)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == target[:, None]
    return [int(hit[:, : min(k, kmax)].any(1).sum()) for k in ks]


@torch.no_grad()
def predict_probs(model: nn.Module, images: torch.Tensor, scales: list[float], flip: bool) -> torch.Tensor:
    """Softmax averaged over test scales (and horizontal flips), at the input resolution."""
    size = images.shape[-2:]
    total = None
    for scale in scales:
        x = (
            images
            if scale == 1.0
            else F.interpolate(
                images, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False
            )
        )
        views = [x, x.flip(-1)] if flip else [x]
        for i, view in enumerate(views):
            logits = model(view).float()
            if i == 1:
                logits = logits.flip(-1)
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            total = probs if total is None else total + probs
    assert total is not None
    return total
