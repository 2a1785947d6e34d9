"""Weights from a packed model: warm-start a new network, or go on training one, from a shipped ``.gnpk``.

A packed file keeps what inference needs: each binary conv's sign bits and one folded multiplier and
bias per output channel (binary weight scale and BatchNorm together). That is enough to rebuild an
encoder that computes exactly the packed function in eval mode, so a new model (other head, other
output stride, other decoder) can start from a shipped encoder instead of from scratch:

- binary conv weights: sign bits times a constant latent magnitude ``LATENT``, so the scale
  mean|W| is ``LATENT`` and the STE has room to move before signs flip;
- each BatchNorm: its running statistics are measured on calibration images (every layer before it
  already exact), then gamma and beta are chosen so eval output = the packed multiplier and bias.
  Batch statistics in training then start close to the running ones, so the first training steps
  see (nearly) the packed function too.

- with ``--scope all``, the head and decoder too: their binary convs (K of them summed) get
  per-channel latent magnitudes so that each conv's weight scale reproduces the file's per-conv
  multiplier, the float convs (ASPP projection, skip projection, classifier) their weights, and
  every BatchNorm is set up as above. The rebuilt network computes the packed file's function, so
  a shipped model can be fine-tuned (on a user's own data, or for more epochs) when its training
  checkpoint is gone.

Only group-wise Group-Net encoders with one binary conv per branch are read (the layouts the
exporter writes for them). The result is a checkpoint usable as ``--train.init_from`` with
``--train.init_scope encoder`` (or ``all`` for ``--scope all``)::

    python -m seg_training.engine.packed_init weights/person.gnpk --out person_encoder.pt \\
        --images ../shared/data/portraits/images
    python -m seg_training.engine.packed_init weights/person.gnpk --scope all --out person_all.pt \\
        --images ../shared/data/portraits/images
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seg_service import format as gnpk

from ..binary.layers import BinaryConv2d, BinaryConvEnsemble
from ..data import read_image
from ..data.errors import InputError
from ..models import ModelConfig, create_model
from ..models.groupnet import BasicBranch, GroupNetEncoder
from ..models.heads import ASPPHead, FCNHead, PSPHead, SkipDecoder, SkipJoin
from .checkpoint import FORMAT, VERSION, save_atomic

LATENT = 0.05  # magnitude of the rebuilt latent binary weights


def sign_weights(words: np.ndarray, in_channels: int) -> np.ndarray:
    """A file's binary conv weight u64 [O, kh, kw, Wd] -> float +-1 [O, I, kh, kw] (PyTorch layout):
    the inverse of ``seg_training.export.weight_sign_bits`` (``seg_service.format.unpack_sign_bits``)."""
    negative = gnpk.unpack_sign_bits(words, in_channels)
    return np.ascontiguousarray(np.where(negative, -1.0, 1.0).astype(np.float32).transpose(0, 3, 1, 2))


class _Folded:
    """What a packed conv says about one (conv, BatchNorm) pair: eval output = mul * conv + bias."""

    def __init__(self, bn: nn.BatchNorm2d, mul: np.ndarray, bias: np.ndarray) -> None:
        self.bn, self.mul, self.bias = bn, torch.from_numpy(mul).double(), torch.from_numpy(bias).double()


def _running_stats(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A BatchNorm's running mean and variance (every BatchNorm of a Group-Net encoder keeps them)."""
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        raise InputError("a BatchNorm without running statistics cannot be set up")
    return mean, var


def _coeffs(ops: dict[str, dict[str, Any]], prefix: str) -> list[float] | None:
    op = ops.get(prefix)
    return None if op is None else [float(c) for c in op["coeffs"]]


def load_packed_encoder(model: nn.Module, packed: gnpk.PackedFile) -> list[_Folded]:
    """Copy the packed encoder's weights into ``model.encoder``; BatchNorms are set up to be exact
    with unit running statistics. Returns every BatchNorm with its packed multiplier and bias, for
    :func:`calibrate`."""
    encoder = model.encoder
    if not isinstance(encoder, GroupNetEncoder):
        raise InputError(f"{packed.path}: only Group-Net encoders can be read into")
    t = packed.tensors
    ops = {op["out"].split("#")[0]: op for op in packed.graph["ops"]}
    folded: list[_Folded] = []

    def need(name: str) -> np.ndarray:
        return _tensor(
            packed, name, "only group-wise Group-Net encoders with one binary conv per branch can be read"
        )

    def binary(conv: nn.Module, bn: nn.BatchNorm2d, prefix: str) -> None:
        weight = getattr(conv, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
            raise InputError(f"{prefix}: the model's conv is not a single binary conv")
        signs = sign_weights(need(f"{prefix}.weight"), weight.shape[1])
        if signs.shape != tuple(weight.shape):
            raise InputError(
                f"{prefix}: packed weight {signs.shape} does not fit the model's {tuple(weight.shape)}"
            )
        weight.copy_(torch.from_numpy(signs) * LATENT)
        # The packed multiplier includes the weight scale (LATENT here): mul / LATENT per unit of conv output.
        folded.append(
            _Folded(
                bn,
                need(f"{prefix}.mul").astype(np.float64) / LATENT,
                need(f"{prefix}.bias").astype(np.float64),
            )
        )

    with torch.no_grad():
        stem_u8 = [
            op for op in packed.graph["ops"] if op["op"] == "conv2d_u8" and op["weight"] == "stem.weight.q"
        ]
        # [O, kh, kw, I], BatchNorm folded in (an integer stem: the float weights it stands for)
        stem = gnpk.u8_conv_float_weight(stem_u8[0], t) if stem_u8 else need("stem.weight")
        if stem.shape != tuple(encoder.conv1.weight.permute(0, 2, 3, 1).shape):
            raise InputError(f"stem weight {stem.shape} does not fit the model's stem")
        encoder.conv1.weight.copy_(torch.from_numpy(np.ascontiguousarray(stem.transpose(0, 3, 1, 2))))
        folded.append(_Folded(encoder.bn1, np.ones(stem.shape[0]), need("stem.bias").astype(np.float64)))
        for s, blocks in enumerate(encoder.stage_blocks(), start=1):
            for j, block in enumerate(blocks):
                prefix = f"layer{s}.{j}"
                shortcut = block.shortcut()
                if shortcut is not None:
                    binary(shortcut[0], shortcut[1], f"{prefix}.down.conv")
                for i, branch in enumerate(block.branch_modules()):
                    if not isinstance(branch, BasicBranch):
                        raise InputError("only BasicBlock encoders (ResNet-18/34) can be read")
                    binary(branch.conv1, branch.bn1, f"{prefix}.b{i}.1.conv")
                    binary(branch.conv2, branch.bn2, f"{prefix}.b{i}.2.conv")
                scales = _coeffs(ops, f"{prefix}.sum")
                k = len(block.branches)
                if scales is None or len(scales) < k:
                    raise InputError(f"{prefix}: the packed block has no aggregation of {k} branches")
                # Fewer branches than the file has: the first k, scaled to the same total weight.
                kept = torch.tensor(scales[:k], dtype=torch.float64)
                block.scales.copy_((kept * sum(scales) / kept.sum()).float())
                gate = _coeffs(ops, f"{prefix}.b0.in")
                if block.gate is not None and gate is not None:
                    g = min(max(gate[0], 1e-6), 1 - 1e-6)
                    block.gate.fill_(math.log(g / (1 - g)))
        _make_exact(folded)  # exact in eval before calibration: x -> mul * x + bias
    return folded


def _tensor(
    packed: gnpk.PackedFile, name: str, why: str = "the file's head or decoder is not the model's"
) -> np.ndarray:
    """A tensor of the file, or an InputError saying which one is missing and ``why``."""
    if name not in packed.tensors:
        raise InputError(f"{packed.path}: no tensor {name!r}; {why}")
    return packed.tensors[name]


def _load_head_conv(block: nn.Module, packed: gnpk.PackedFile, prefix: str) -> _Folded:
    """A head ConvBNReLU (binary conv or BinaryConvEnsemble of K -> BatchNorm -> ReLU) from the
    file's ``prefix.conv`` (one conv) or ``prefix.conv0 .. conv{K-1}`` (a chain whose k-th
    multiplier is bn_scale * s_k * alpha_k and whose last bias is the BatchNorm's shift).

    Conv k's latent weights get the per-channel magnitude a_k that makes its weight scale
    (mean |W|) carry the ratio between the K multipliers; the BatchNorm carries the rest."""
    if not isinstance(block, nn.Sequential) or not isinstance(block[1], nn.BatchNorm2d):
        raise InputError(f"{prefix}: expected conv -> BatchNorm2d -> ReLU")
    conv, bn = block[0], block[1]
    if isinstance(conv, BinaryConvEnsemble):
        inner, k, ens = conv.conv, conv.k, conv.scales.detach().double()
    elif isinstance(conv, BinaryConv2d):
        inner, k, ens = conv, 1, torch.ones(1, dtype=torch.float64)
    else:
        raise InputError(f"{prefix}: cannot read a {type(conv).__name__} from a packed file")
    names = [f"{prefix}.conv"] if k == 1 else [f"{prefix}.conv{i}" for i in range(k)]
    out = inner.out_channels // k
    signs = [sign_weights(_tensor(packed, f"{n}.weight"), inner.in_channels) for n in names]
    if signs[0].shape != (out, *inner.weight.shape[1:]):
        raise InputError(f"{prefix}: packed weight {signs[0].shape} does not fit the model's conv")
    # per conv and channel: bn_scale * alpha_k, with the ensemble weight s_k taken out
    per_conv = torch.stack(
        [
            torch.from_numpy(_tensor(packed, f"{n}.mul").astype(np.float64)) / ens[i]
            for i, n in enumerate(names)
        ]
    )
    mean = per_conv.mean(dim=0)
    if bool((per_conv * mean < 0).any()):
        raise InputError(f"{prefix}: the packed multipliers of one channel differ in sign")
    safe = torch.where(mean == 0, torch.ones_like(mean), mean)
    magnitude = torch.where(mean == 0, torch.ones_like(per_conv), per_conv / safe) * LATENT
    weight = torch.cat([torch.from_numpy(sg) * magnitude[i].view(-1, 1, 1, 1) for i, sg in enumerate(signs)])
    inner.weight.copy_(weight.float())
    return _Folded(bn, (mean / LATENT).numpy(), _tensor(packed, f"{names[-1]}.bias").astype(np.float64))


def _batchnorm(module: nn.Module, where: str) -> nn.BatchNorm2d:
    if not isinstance(module, nn.BatchNorm2d):
        raise InputError(f"{where}: expected a BatchNorm2d after the conv, got {type(module).__name__}")
    return module


def _load_float_conv(conv: nn.Module, packed: gnpk.PackedFile, prefix: str) -> np.ndarray:
    """A float conv's weight from the file ([O, kh, kw, I] -> PyTorch's [O, I, kh, kw]); returns
    its stored bias (the folded BatchNorm's shift, or the classifier's own bias)."""
    weight = getattr(conv, "weight", None)
    stored = _tensor(packed, f"{prefix}.weight")
    if not isinstance(weight, torch.Tensor) or stored.transpose(0, 3, 1, 2).shape != tuple(weight.shape):
        raise InputError(f"{prefix}: packed weight {stored.shape} does not fit the model's conv")
    weight.copy_(torch.from_numpy(np.ascontiguousarray(stored.transpose(0, 3, 1, 2))))
    return _tensor(packed, f"{prefix}.bias").astype(np.float64)


def load_packed_head(model: nn.Module, packed: gnpk.PackedFile) -> list[_Folded]:
    """Copy the packed head, decoder and classifier into ``model`` (the inverse of the exporter's
    head and decoder emitters); like :func:`load_packed_encoder`, every BatchNorm is returned with
    its packed multiplier and bias for :func:`calibrate`."""
    with torch.no_grad():
        folded = _read_head(model, packed)
        _make_exact(folded)
    return folded


def _read_head(model: nn.Module, packed: gnpk.PackedFile) -> list[_Folded]:
    head, decoder = model.get_submodule("head"), getattr(model, "decoder", None)
    folded: list[_Folded] = []
    if isinstance(head, ASPPHead):
        for i, branch in enumerate(head.branches):
            folded.append(_load_head_conv(branch, packed, f"head.aspp{i}"))
        folded.append(_load_head_conv(head.pooling.block, packed, "head.pool"))
        bias = _load_float_conv(head.project[0], packed, "head.project")
        folded.append(_Folded(_batchnorm(head.project[1], "head.project"), np.ones_like(bias), bias))
    elif isinstance(head, FCNHead):
        folded.append(_load_head_conv(head.block, packed, "head.block"))
    elif isinstance(head, PSPHead):
        for b, stage in zip(head.bins, head.stages, strict=True):
            folded.append(_load_head_conv(stage, packed, f"head.psp{b}"))
        folded.append(_load_head_conv(head.bottleneck, packed, "head.bottleneck"))
    else:
        raise InputError(f"cannot read a {type(head).__name__} head from a packed file")
    if isinstance(decoder, SkipDecoder):
        folded += _read_skip_join(decoder, packed, "decoder")
    classifier = model.classifier if hasattr(model, "classifier") else None
    final = classifier[-1] if isinstance(classifier, nn.Sequential) else None
    if not isinstance(final, nn.Conv2d) or final.bias is None:
        raise InputError("the model's classifier must end in a 1x1 Conv2d with a bias")
    final.bias.copy_(torch.from_numpy(_load_float_conv(final, packed, "classifier")).float())
    refine = decoder.stem_refine if isinstance(decoder, SkipDecoder) else None
    if refine is not None:
        folded += _read_skip_join(refine, packed, "decoder.stem")
        final = refine.classifier[-1]
        if not isinstance(final, nn.Conv2d) or final.bias is None:
            raise InputError("the decoder's stem stage must end in a 1x1 Conv2d with a bias")
        final.bias.copy_(torch.from_numpy(_load_float_conv(final, packed, "decoder.stem.classifier")).float())
    return folded


def _read_skip_join(stage: SkipJoin, packed: gnpk.PackedFile, prefix: str) -> list[_Folded]:
    """A decoder stage's projection, joined-map BatchNorm and binary conv (export_skip_join's inverse).

    The exporter folded the stage's norm into an affine on the upsampled input's channels and into
    the projection's weights; here the projection's BatchNorm takes the folded shift and the norm is
    the identity on the projection's channels."""
    bias = _load_float_conv(stage.project[0], packed, f"{prefix}.project")
    folded = [_Folded(_batchnorm(stage.project[1], f"{prefix}.project"), np.ones_like(bias), bias)]
    extra = len(bias)
    mul = np.concatenate([_tensor(packed, f"{prefix}.norm.mul").astype(np.float64), np.ones(extra)])
    shift = np.concatenate([_tensor(packed, f"{prefix}.norm.bias").astype(np.float64), np.zeros(extra)])
    if len(mul) != stage.norm.num_features:
        raise InputError(f"{prefix}.norm: the file's channels do not fit the model's decoder")
    folded.append(_Folded(stage.norm, mul, shift))
    folded.append(_load_head_conv(stage.fuse, packed, f"{prefix}.fuse"))
    return folded


def _make_exact(folded: Sequence[_Folded]) -> None:
    """Unit running statistics, gamma = the packed multiplier, beta = its bias: eval gives mul * x + bias."""
    for f in folded:
        running_mean, running_var = _running_stats(f.bn)
        running_mean.zero_()
        running_var.fill_(1.0 - f.bn.eps)
        f.bn.weight.copy_(f.mul.float())
        f.bn.bias.copy_(f.bias.float())


def calibrate(model: nn.Module, folded: Sequence[_Folded], images: torch.Tensor) -> None:
    """Give every BatchNorm the running statistics of its input on ``images`` while keeping its eval
    function: gamma = mul * sqrt(var + eps), beta = bias + mul * mean. The model runs in eval mode,
    so each BatchNorm's input is already the exact packed value."""
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(bn: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        x = inputs[0].double()
        stats[bn] = (x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False))

    handles = [f.bn.register_forward_hook(hook) for f in folded]
    encoder = model.get_submodule("encoder")
    encoder_bns = {id(m) for m in encoder.modules()}
    # the whole network when a head's or decoder's BatchNorm is among them, else the encoder alone
    run = encoder if all(id(f.bn) in encoder_bns for f in folded) else model
    model.eval()
    with torch.no_grad():
        run(images)
    for h in handles:
        h.remove()
    with torch.no_grad():
        for f in folded:
            mean, var = stats[f.bn]
            running_mean, running_var = _running_stats(f.bn)
            running_mean.copy_(mean.float())
            running_var.copy_(var.float())
            f.bn.weight.copy_((f.mul * torch.sqrt(var + f.bn.eps)).float())
            f.bn.bias.copy_((f.bias + f.mul * mean).float())


def calibration_batch(
    folder: Path, count: int, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """``count`` images of ``folder`` (evenly spread over its sorted files), resized to size x size."""
    import cv2

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise InputError(f"no images in {folder}")
    chosen = [files[i * len(files) // count] for i in range(min(count, len(files)))]
    batch = []
    for path in chosen:
        rgb = (
            cv2.resize(read_image(path), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
            / 255.0
        )
        batch.append((rgb - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
    return torch.from_numpy(np.stack(batch).transpose(0, 3, 1, 2).copy())


def packed_checkpoint(
    packed_path: str | Path,
    images: Path,
    count: int = 32,
    size: int = 256,
    branches: int | None = None,
    scope: str = "encoder",
) -> dict[str, Any]:
    """A training checkpoint whose ``model`` holds the packed file's encoder (``scope`` "encoder")
    or its whole network (``scope`` "all"), calibrated.

    ``branches`` < the file's K keeps the first ``branches`` branches of every encoder block (a
    smaller, faster encoder that still starts from what the large one learnt); encoder scope only."""
    if scope not in ("encoder", "all"):
        raise InputError(f"scope must be 'encoder' or 'all', got {scope!r}")
    packed = gnpk.read_model(packed_path)
    cfg = dict(packed.model["config"])
    if cfg.get("decomposition", "group") != "group" or cfg.get("precision", "binary") != "binary":
        raise InputError(f"{packed_path}: only binary group-wise Group-Net encoders can be read")
    if branches is not None:
        if scope != "encoder":
            raise InputError("--branches changes the encoder only: use it with --scope encoder")
        if not 1 <= branches <= int(cfg["k"]):
            raise InputError(f"--branches must be in 1..{cfg['k']} for {packed_path}, got {branches}")
        cfg.update(k=branches, bpac_rates=None)
        if cfg.get("stage_k") is not None:
            cfg["stage_k"] = [min(branches, int(k)) for k in cfg["stage_k"]]
    model = create_model(ModelConfig.from_dict(cfg))
    folded = load_packed_encoder(model, packed)
    if scope == "all":
        folded += load_packed_head(model, packed)
    spec = packed.model["input"]
    calibrate(model, folded, calibration_batch(images, count, size, spec["mean"], spec["std"]))
    state = model.state_dict()
    if scope == "encoder":
        state = {k: v for k, v in state.items() if k.startswith("encoder.")}
    return {
        "format": FORMAT,
        "version": VERSION,
        "task": "seg-encoder" if scope == "encoder" else "seg",
        "epoch": 0,
        "model": state,
        "model_config": cfg,
        "source": str(packed_path),
    }


def encoder_checkpoint(
    packed_path: str | Path, images: Path, count: int = 32, size: int = 256, branches: int | None = None
) -> dict[str, Any]:
    """:func:`packed_checkpoint` of the encoder alone."""
    return packed_checkpoint(packed_path, images, count, size, branches, "encoder")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seg_training.engine.packed_init",
        description="Rebuild the encoder (or the whole network) of a packed Group-Net model as a "
        "training checkpoint: use it with --train.init_from FILE --train.init_scope encoder (or all).",
    )
    parser.add_argument("packed", help="a .gnpk file with a group-wise binary Group-Net encoder")
    parser.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    parser.add_argument(
        "--images", required=True, type=Path, help="a folder of real photos for BatchNorm calibration"
    )
    parser.add_argument(
        "--scope",
        choices=("encoder", "all"),
        default="encoder",
        help="encoder: the encoder alone, for a new head or decoder (default); all: encoder, head, "
        "decoder and classifier, to go on training the file's own network",
    )
    parser.add_argument("--count", type=int, default=32, help="calibration images (default 32)")
    parser.add_argument("--size", type=int, default=256, help="calibration image side (default 256)")
    parser.add_argument(
        "--branches",
        type=int,
        default=None,
        help="keep only the first N branches of each block (default: all)",
    )
    args = parser.parse_args(argv)
    try:
        ckpt = packed_checkpoint(args.packed, args.images, args.count, args.size, args.branches, args.scope)
    except (InputError, gnpk.ModelFormatError) as exc:
        parser.exit(2, f"error: {exc}\n")
    save_atomic(ckpt, args.out)
    print(f"wrote {args.out}: {len(ckpt['model'])} {args.scope} tensors from {args.packed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
