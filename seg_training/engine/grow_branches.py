"""More binary branches for a trained Group-Net: K -> m*K without losing what the network learnt.

A Group-Net block sums its K branches with learnt scales, and every binary conv ensemble of the
heads averages (or sums with learnt scales) its K convs. Tiling the branches m times and dividing
each sum's scales by m gives a network with m*K branches that computes the *same* function: branch
``j`` of the grown network is a copy of branch ``j % K``, reads the same input (the soft gates mix
branch ``j`` of one block into branch ``j`` of the next, and the copies stay equal by induction) and
contributes 1/m of the original's share. A binary network is limited by its capacity long before
it overfits (the person model's training and validation IoU are within a few points), and training
a wider one from scratch costs the epochs a 2-core CPU does not have; growing keeps every epoch
already spent.

Exact copies would stay exact copies (they get the same gradients), so the copies' latent binary
weights get a little Gaussian noise (``noise`` times the tensor's mean |w|): the weights nearest
zero flip sign, the branches start to differ, and the function moves only slightly. The tool checks
the grown network against the original before the noise (eval mode, random input) and reports the
share of flipped signs.

Only branch layouts whose per-branch settings repeat with period K can grow: BPAC networks give
each branch its own dilation, so an output-stride-8/16 BPAC encoder refuses with a clear message
(grow its branches with ``model.bpac: false`` or at output stride 32).

    python -m seg_training.engine.grow_branches runs/person/last.pt --k 4 --out person_k4.pt
    train-seg --config person --model.k 4 --train.init_from person_k4.pt --train.init_scope all ...
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..binary.layers import BinaryConv2d, BinaryConvEnsemble
from ..binary.quantizers import binary_sign
from ..data.errors import InputError
from ..models import ModelConfig, create_model
from ..models.groupnet import GroupBlock
from .checkpoint import FORMAT, VERSION, load_checkpoint, model_from_checkpoint, save_atomic

_BRANCH_KEY = re.compile(r"^(?P<block>.+)\.branches\.(?P<index>\d+)\.(?P<rest>.+)$")


@dataclasses.dataclass
class GrowReport:
    """What :func:`grow_branches` did: branch counts, the equivalence check and the symmetry break."""

    k_from: int
    k_to: int
    max_abs_difference: float  # grown (no noise) vs original, eval mode, random input
    flipped_share: float  # share of the copies' binary weights whose sign the noise flipped

    def describe(self) -> str:
        return (
            f"K {self.k_from} -> {self.k_to}: the exact copy differs from the original by at most "
            f"{self.max_abs_difference:.2e}; the noise flipped {100 * self.flipped_share:.2f} % of the "
            "copies' binary weights"
        )


def _grown_state(
    old: nn.Module, new: nn.Module, blocks: dict[str, int], k_old: int, k_new: int
) -> dict[str, torch.Tensor]:
    """The grown network's state dict: every tensor of ``new`` from its counterpart in ``old``
    (``blocks``: the original's Group-Net blocks and their branch counts)."""
    # Group-wise networks copy whole branches (a block of K branches); layer-wise ones (one branch
    # per block) copy the K convs of each ensemble. Either way each sum's scales are divided by m.
    m = k_new // k_old
    old_state, state = old.state_dict(), new.state_dict()
    ensembles = {name for name, mod in new.named_modules() if isinstance(mod, BinaryConvEnsemble)}
    for key in state:
        # a branch of a grown block reads its source branch (j % K); then the ensemble and
        # scale rules apply to that source as they would to any tensor
        source, match = key, _BRANCH_KEY.match(key)
        if match and match["block"] in blocks:
            source = (
                f"{match['block']}.branches.{int(match['index']) % blocks[match['block']]}.{match['rest']}"
            )
        owner, _, leaf = key.rpartition(".")
        src = old_state[source]
        if owner in blocks and leaf == "scales":
            reps = state[key].numel() // src.numel()
            state[key] = src.repeat(reps) / reps
        elif owner in ensembles and leaf == "scales":
            state[key] = src.repeat(m) / m
        elif owner.endswith(".conv") and owner.removesuffix(".conv") in ensembles and leaf == "weight":
            grouped = src.view(k_old, src.shape[0] // k_old, *src.shape[1:])
            state[key] = grouped.repeat(m, *([1] * (grouped.dim() - 1))).view(-1, *src.shape[1:]).clone()
        elif src.shape == state[key].shape:
            state[key] = src.clone()
        else:
            raise InputError(f"cannot grow {key}: no counterpart of shape {tuple(state[key].shape)}")
    return state


def _group_blocks(model: nn.Module) -> dict[str, GroupBlock]:
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, GroupBlock)}


def _check_dilations(old_blocks: dict[str, GroupBlock], new: nn.Module) -> None:
    for name, block in _group_blocks(new).items():
        before, after = old_blocks[name].dilations, block.dilations
        if any(after[j] != before[j % len(before)] for j in range(len(after))):
            raise InputError(
                f"{name}: branch dilations {after} do not repeat the original's {before}; BPAC gives "
                "each branch its own rate, so grow with model.bpac false or at output stride 32"
            )


def _copy_masks(new: nn.Module, branches_old: dict[str, int], k_old: int) -> dict[str, torch.Tensor]:
    """For each binary weight of ``new`` that holds copies: a mask of the copied entries."""
    masks: dict[str, torch.Tensor] = {}
    for name, block in _group_blocks(new).items():
        for j, branch in list(enumerate(block.branch_modules()))[branches_old[name] :]:
            for conv_name, conv in branch.named_modules():
                if isinstance(conv, BinaryConv2d):
                    key = f"{name}.branches.{j}.{conv_name}.weight"
                    masks[key] = torch.ones_like(conv.weight, dtype=torch.bool)
    for name, mod in new.named_modules():
        key = f"{name}.conv.weight"
        if isinstance(mod, BinaryConvEnsemble) and key not in masks:
            mask = torch.zeros_like(mod.conv.weight, dtype=torch.bool)
            mask[k_old * mod.out_channels :] = True
            masks[key] = mask
    return masks


def grow_branches(
    ckpt: dict[str, Any], k: int, noise: float = 0.1, seed: int = 0, source: str | Path = "checkpoint"
) -> tuple[dict[str, Any], GrowReport]:
    """A checkpoint of the same network with ``k`` branches (a multiple of its own K), and a report.

    The result loads with ``--train.init_from FILE --train.init_scope all`` under ``model.k = k``.
    """
    old = model_from_checkpoint(ckpt, source)
    cfg = dict(ckpt["model_config"])
    k_old = int(cfg["k"])
    if k <= k_old or k % k_old:
        raise InputError(f"--k must be a multiple of the network's K = {k_old} larger than it, got {k}")
    if cfg.get("stage_k"):
        raise InputError("a network with model.stage_k (branches per stage) cannot grow to one K")
    if cfg.get("bpac_rates"):
        raise InputError("a network with explicit model.bpac_rates cannot grow (the rates name K branches)")
    grown_cfg = dataclasses.asdict(ModelConfig(**{**cfg, "k": k, "bpac_rates": None}))
    new = create_model(grown_cfg).eval()
    old_blocks = _group_blocks(old)
    _check_dilations(old_blocks, new)
    branches_old = {name: len(block.branches) for name, block in old_blocks.items()}
    state = _grown_state(old, new, branches_old, k_old, k)
    new.load_state_dict(state)

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 128, 128, generator=generator)
    with torch.no_grad():
        difference = float((old(x) - new(x)).abs().max())

    flipped = total = 0
    for key, mask in _copy_masks(new, branches_old, k_old).items():
        w = state[key]
        scale = float(w.abs().mean())
        noisy = w + noise * scale * torch.randn(w.shape, generator=generator)
        flips = (binary_sign(noisy) != binary_sign(w)) & mask
        flipped += int(flips.sum())
        total += int(mask.sum())
        state[key] = torch.where(mask, noisy, w)
    out = {
        "format": FORMAT,
        "version": VERSION,
        "task": ckpt.get("task", "seg"),
        "epoch": 0,
        "model": state,
        "model_config": grown_cfg,
        "classes": ckpt.get("classes"),
        "palette": ckpt.get("palette"),
        "mean": ckpt.get("mean"),
        "std": ckpt.get("std"),
        "source": str(source),
    }
    return out, GrowReport(k_old, k, difference, flipped / max(total, 1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seg_training.engine.grow_branches",
        description="Give a trained Group-Net more binary branches (K -> a multiple of K) that start as "
        "copies of the trained ones, so training goes on from the same function with more capacity. "
        "Use the result with --model.k K --train.init_from FILE --train.init_scope all.",
    )
    parser.add_argument("checkpoint", help="a training checkpoint (.pt) of a Group-Net model")
    parser.add_argument(
        "--k", type=int, required=True, help="branches of the grown network (a multiple of K)"
    )
    parser.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    parser.add_argument(
        "--noise",
        type=float,
        default=0.1,
        help="Gaussian noise on the copies' latent binary weights, times each tensor's mean |w| "
        "(breaks the copies' symmetry; default 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    args = parser.parse_args(argv)
    try:
        ckpt = load_checkpoint(args.checkpoint)
        grown, report = grow_branches(ckpt, args.k, args.noise, args.seed, args.checkpoint)
    except InputError as exc:
        parser.exit(2, f"error: {exc}\n")
    save_atomic(grown, args.out)
    print(f"wrote {args.out}: {report.describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
