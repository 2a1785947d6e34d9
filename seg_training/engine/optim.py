"""Optimizers with separate encoder (backbone) and head learning rates, and per-iteration schedules."""

from __future__ import annotations

import bisect
from typing import Any

import torch
from torch import nn


def param_groups(model: nn.Module, lr: float, head_lr_mult: float) -> list[dict[str, Any]]:
    """Encoder parameters ("encoder.*") at ``lr``; everything else (head, classifier) at lr * head_lr_mult."""
    encoder: list[nn.Parameter] = []
    head: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (encoder if name.startswith("encoder.") else head).append(param)
    groups = [
        {"params": encoder, "lr": lr, "name": "encoder"},
        {"params": head, "lr": lr * head_lr_mult, "name": "head"},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, train: dict[str, Any]) -> torch.optim.Optimizer:
    groups = param_groups(model, float(train["lr"]), float(train["head_lr_mult"]))
    wd = float(train["weight_decay"])
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(
            groups, lr=float(train["lr"]), momentum=float(train["momentum"]), weight_decay=wd
        )
    if train["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=float(train["lr"]), weight_decay=wd)
    return torch.optim.Adam(groups, lr=float(train["lr"]), weight_decay=wd)


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
