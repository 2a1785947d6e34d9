"""Optimizers with separate encoder (backbone) and head learning rates, and per-iteration schedules."""

from __future__ import annotations

import bisect
from typing import Any

import torch
from torch import nn

from ..binary.layers import binary_convs


def param_groups(
    model: nn.Module,
    lr: float,
    head_lr_mult: float,
    weight_decay: float = 0.0,
    binary_weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Encoder parameters ("encoder.*") at ``lr``; everything else (head, classifier) at lr * head_lr_mult.

    The latent weights of binary convs form groups of their own with ``binary_weight_decay``: their
    scale is divided out by the BatchNorm after them, so decay only shrinks them, and once a conv's
    output variance falls below the BatchNorm's epsilon the conv stops contributing and its
    gradient vanishes (docs/training.md: a person model trained about 60 epochs with decay 1e-4 on
    every weight lost 57 % of its binary channels that way).
    """
    latent = {id(c.weight) for c in binary_convs(model) if c.weight_quantizer.binary}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            part = "encoder" if name.startswith("encoder.") else "head"
            # equal decays keep the two-group layout of runs started before the split (resume)
            binary = binary_weight_decay != weight_decay and id(param) in latent
            groups.setdefault((part, binary), []).append(param)
    out = []
    for part in ("encoder", "head"):
        for binary in (False, True):
            params = groups.get((part, binary))
            if params:
                out.append(
                    {
                        "params": params,
                        "lr": lr * (1.0 if part == "encoder" else head_lr_mult),
                        "weight_decay": binary_weight_decay if binary else weight_decay,
                        "name": f"{part}_binary" if binary else part,
                    }
                )
    return out


def build_optimizer(model: nn.Module, train: dict[str, Any]) -> torch.optim.Optimizer:
    wd = float(train["weight_decay"])
    binary_wd = float(train.get("binary_weight_decay") or 0.0)
    groups = param_groups(model, float(train["lr"]), float(train["head_lr_mult"]), wd, binary_wd)
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=float(train["lr"]), momentum=float(train["momentum"]))
    if train["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=float(train["lr"]))
    return torch.optim.Adam(groups, lr=float(train["lr"]))


def lr_factor_fn(train: dict[str, Any], iters_per_epoch: int):
    """Learning-rate multiplier as a function of the iteration: linear warm-up, then
    poly (1 - t/T)^power, step (x gamma at each milestone epoch) or constant."""
    total = max(1, int(train["epochs"]) * iters_per_epoch)
    warmup = int(float(train["warmup_epochs"]) * iters_per_epoch)
    milestones = sorted(int(m) * iters_per_epoch for m in train["milestones"])
    schedule, gamma, power = train["schedule"], float(train["gamma"]), float(train["poly_power"])

    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        if schedule == "poly":
            return max(0.0, 1.0 - it / total) ** power
        if schedule == "step":
            return gamma ** bisect.bisect_right(milestones, it)
        return 1.0

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, train: dict[str, Any], iters_per_epoch: int):
    """LambdaLR stepped once per iteration; its state dict holds only plain values."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(train, iters_per_epoch))
