"""Export a trained Group-Net segmentation model to a packed ``.gnpk`` file (docs/format.md).

The exporter walks the module tree with one explicit function per module type (no tracing), so
every fold is visible here:

* binary conv weights become sign bits packed along input channels (bit = 1 for -1);
* the per-output-channel weight scale mean|W| and the BatchNorm that follows a binary conv fold
  into the conv's epilogue ``mul * pre(dot) + bias``; because mean|W| >= 0 it commutes with the
  ReLU between conv and BN (Bi-Real ordering: binarize -> conv -> ReLU -> BN -> + residual);
* a K-conv ensemble (layer-wise decomposition, binary heads) becomes K binary convs chained through
  the ``residual`` input, the ensemble weights folded into each conv's ``mul``;
* branch scales lambda_k and soft gates sigmoid(g) become ``lincomb`` coefficients;
* full-precision layers (stem, projection, classifiers, every conv of a ``precision="full"`` model)
  stay float32 with BatchNorm folded into weight and bias.

Files are written through ``seg_service.format``, the single source of truth for the layout (the
sign-bit packing included).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seg_service import format as gnpk

from .binary import BinaryConv2d, BinaryConvEnsemble, get_mode
from .models import ModelConfig, model_name
from .models.groupnet import BasicBranch, BottleneckBranch, GroupBlock, GroupNetEncoder
from .models.heads import ASPPHead, FCNHead, PSPHead, SkipDecoder, SkipJoin
from .models.wrappers import GroupNetSegmentation

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ExportError(ValueError):
    """The model cannot be exported (unsupported module, stage-1 tanh mode, bad metadata)."""


# --------------------------------------------------------------------------------------------
# Tensor helpers
# --------------------------------------------------------------------------------------------


def weight_sign_bits(weight: torch.Tensor) -> np.ndarray:
    """Binary conv weight [O, I, kh, kw] -> the file's sign bits u64 [O, kh, kw, ceil(I/64)]
    (``seg_service.format.pack_sign_bits`` on the weight as [O, kh, kw, I])."""
    return gnpk.pack_sign_bits(weight.detach().cpu().permute(0, 2, 3, 1).numpy())


def weight_scale(weight: torch.Tensor) -> np.ndarray:
    """mean |W| per output channel (seg_training.binary.ScaledSign), float64."""
    return weight.detach().double().abs().mean(dim=(1, 2, 3)).cpu().numpy()


def bn_fold(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BatchNorm as y = scale * x + shift, float64."""
    if not bn.track_running_stats or bn.running_var is None or bn.running_mean is None:
        raise ExportError("BatchNorm without running statistics cannot be folded")
    invstd = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(invstd)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(invstd)
    scale = weight * invstd
    shift = bias - bn.running_mean.double() * scale
    return scale.detach().cpu().numpy(), shift.detach().cpu().numpy()


def f32(a: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(a, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Graph builder
# --------------------------------------------------------------------------------------------


class GraphBuilder:
    """Accumulates ops and tensors; hands out unique value and tensor names."""

    def __init__(self) -> None:
        self.ops: list[dict[str, Any]] = []
        self.tensors: dict[str, np.ndarray] = {}
        self._counter = 0

    def value(self, hint: str) -> str:
        self._counter += 1
        return f"{hint}#{self._counter}"

    def tensor(self, name: str, array: np.ndarray) -> str:
        if name in self.tensors:
            raise ExportError(f"duplicate tensor name {name!r}")
        self.tensors[name] = array
        return name

    def op(self, kind: str, out_hint: str, **fields: Any) -> str:
        out = self.value(out_hint)
        self.ops.append({"op": kind, "out": out, **fields})
        return out

    # ---- primitive emitters --------------------------------------------------------------

    def float_conv(
        self,
        x: str,
        prefix: str,
        weight: np.ndarray,
        bias: np.ndarray,
        stride: int,
        padding: int,
        dilation: int,
        relu: bool,
    ) -> str:
        """weight: float [O, I, kh, kw] (PyTorch layout), stored as [O, kh, kw, I]."""
        w = self.tensor(f"{prefix}.weight", f32(np.transpose(weight, (0, 2, 3, 1))))
        b = self.tensor(f"{prefix}.bias", f32(bias))
        return self.op(
            "conv2d",
            prefix,
            **{"in": x},
            weight=w,
            bias=b,
            stride=int(stride),
            padding=int(padding),
            dilation=int(dilation),
            relu=bool(relu),
        )

    def binary_conv(
        self,
        x: str,
        prefix: str,
        weight: torch.Tensor,
        conv: BinaryConv2d,
        mul: np.ndarray,
        bias: np.ndarray,
        relu_before: bool,
        relu_after: bool,
        residual: str | None,
    ) -> str:
        w = self.tensor(f"{prefix}.weight", weight_sign_bits(weight))
        m = self.tensor(f"{prefix}.mul", f32(mul))
        b = self.tensor(f"{prefix}.bias", f32(bias))
        fields: dict[str, Any] = {
            "in": x,
            "weight": w,
            "in_channels": int(conv.in_channels),
            "kernel": int(conv.kernel_size),
            "stride": int(conv.stride),
            "padding": int(conv.padding),
            "dilation": int(conv.dilation),
            "mul": m,
            "bias": b,
            "relu_before": bool(relu_before),
            "relu_after": bool(relu_after),
        }
        if residual is not None:
            fields["residual"] = residual
        return self.op("bconv2d", prefix, **fields)

    def affine(
        self,
        x: str,
        prefix: str,
        mul: np.ndarray,
        bias: np.ndarray,
        relu_before: bool,
        relu_after: bool,
        residual: str | None,
    ) -> str:
        m = self.tensor(f"{prefix}.mul", f32(mul))
        b = self.tensor(f"{prefix}.bias", f32(bias))
        fields: dict[str, Any] = {
            "in": x,
            "mul": m,
            "bias": b,
            "relu_before": bool(relu_before),
            "relu_after": bool(relu_after),
        }
        if residual is not None:
            fields["residual"] = residual
        return self.op("affine", prefix, **fields)

    def lincomb(self, ins: list[str], coeffs: Sequence[float] | np.ndarray, hint: str) -> str:
        return self.op("lincomb", hint, ins=list(ins), coeffs=[float(c) for c in coeffs])


# --------------------------------------------------------------------------------------------
# Conv + BatchNorm, the one pattern every layer of the model is made of
# --------------------------------------------------------------------------------------------


def _conv_parts(conv: nn.Module) -> tuple[BinaryConv2d, list[torch.Tensor], np.ndarray]:
    """A conv module as (its BinaryConv2d, the weight of each of its K convs, ensemble weights)."""
    if isinstance(conv, BinaryConvEnsemble):
        inner = conv.conv
        weights = list(inner.weight.detach().reshape(conv.k, conv.out_channels, *inner.weight.shape[1:]))
        return inner, weights, conv.scales.detach().double().cpu().numpy()
    if isinstance(conv, BinaryConv2d):
        return conv, [conv.weight.detach()], np.ones(1)
    raise ExportError(f"cannot export conv module {type(conv).__name__}")


def _is_binary(conv: BinaryConv2d) -> bool:
    qname = conv.input_quantizer.name
    if qname == "tanh":
        raise ExportError(
            "the model is in 'tanh' mode (training stage 1); switch it to 'sign' "
            "(seg_training.binary.set_mode) or finish stage 2 before exporting"
        )
    binary_in, binary_w = qname == "sign", conv.weight_quantizer.binary
    if binary_in != binary_w:
        raise ExportError(
            f"conv with input quantizer {qname!r} and weight quantizer "
            f"{conv.weight_quantizer.name!r}: mixed binary/float convs are not supported"
        )
    return binary_in


def emit_conv_bn(
    g: GraphBuilder,
    x: str,
    prefix: str,
    conv: nn.Module,
    bn: nn.BatchNorm2d | None,
    *,
    relu_between: bool,
    relu_after: bool = False,
    residual: str | None = None,
) -> str:
    """Emit ``post(BN(pre(conv(x))) + residual)`` where pre = ReLU if relu_between, post = ReLU if relu_after.

    conv is a BinaryConv2d (binary or float) or a BinaryConvEnsemble (sum_k s_k conv_k).
    """
    inner, weights, ens = _conv_parts(conv)
    out_ch = weights[0].shape[0]
    bn_scale, bn_shift = bn_fold(bn) if bn is not None else (np.ones(out_ch), np.zeros(out_ch))

    if not _is_binary(inner):
        # Float convs are linear: the ensemble is one conv with the combined weight.
        combined = sum(float(s) * w.double() for s, w in zip(ens, weights, strict=True))
        assert isinstance(combined, torch.Tensor)  # weights is never empty
        weight = combined.cpu().numpy()
        if relu_between or residual is not None:
            y = g.float_conv(
                x,
                f"{prefix}.conv",
                weight,
                np.zeros(out_ch),
                inner.stride,
                inner.padding,
                inner.dilation,
                relu=relu_between,
            )
            return g.affine(y, f"{prefix}.bn", bn_scale, bn_shift, False, relu_after, residual)
        weight = weight * bn_scale[:, None, None, None]
        return g.float_conv(
            x,
            f"{prefix}.conv",
            weight,
            bn_shift,
            inner.stride,
            inner.padding,
            inner.dilation,
            relu=relu_after,
        )

    # Binary: dot -> alpha_k * dot is conv_k's output (alpha = mean|W_k| >= 0, so it commutes with ReLU).
    alphas = [weight_scale(w) for w in weights]
    if len(weights) == 1 and (not relu_between or ens[0] >= 0):
        mul = bn_scale * ens[0] * alphas[0]
        return g.binary_conv(
            x, f"{prefix}.conv", weights[0], inner, mul, bn_shift, relu_between, relu_after, residual
        )
    if not relu_between:
        # BN(sum_k s_k alpha_k dot_k) + residual: chain the K convs through the residual input.
        acc = residual
        for k, w in enumerate(weights):
            last = k == len(weights) - 1
            acc = g.binary_conv(
                x,
                f"{prefix}.conv{k}",
                w,
                inner,
                bn_scale * ens[k] * alphas[k],
                bn_shift if last else np.zeros(out_ch),
                False,
                relu_after and last,
                acc,
            )
        assert acc is not None  # weights is never empty
        return acc
    # ReLU sits between the sum and the BN: chain the sum, then one affine for ReLU -> BN -> + residual.
    acc = None
    for k, w in enumerate(weights):
        acc = g.binary_conv(
            x, f"{prefix}.conv{k}", w, inner, ens[k] * alphas[k], np.zeros(out_ch), False, False, acc
        )
    assert acc is not None  # weights is never empty
    return g.affine(acc, f"{prefix}.bn", bn_scale, bn_shift, True, relu_after, residual)


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------


def export_basic_branch(g: GraphBuilder, branch: BasicBranch, x: str, residual: str, prefix: str) -> str:
    out = emit_conv_bn(g, x, f"{prefix}.1", branch.conv1, branch.bn1, relu_between=True, residual=residual)
    return emit_conv_bn(g, out, f"{prefix}.2", branch.conv2, branch.bn2, relu_between=True, residual=out)


def export_bottleneck_branch(
    g: GraphBuilder, branch: BottleneckBranch, x: str, residual: str, prefix: str
) -> str:
    out1 = emit_conv_bn(g, x, f"{prefix}.1", branch.conv1, branch.bn1, relu_between=True)
    out2 = emit_conv_bn(
        g,
        out1,
        f"{prefix}.2",
        branch.conv2,
        branch.bn2,
        relu_between=True,
        residual=out1 if branch.inner_residual else None,
    )
    return emit_conv_bn(
        g, out2, f"{prefix}.3", branch.conv3, branch.bn3, relu_between=True, residual=residual
    )


def export_group_block(
    g: GraphBuilder, block: GroupBlock, previous: list[str] | None, aggregate: str, prefix: str
) -> tuple[list[str], str]:
    """Mirror GroupBlock.forward: gated branch inputs, shared shortcut, K branches, aggregation."""
    k = len(block.branches)
    if block.gate is None or previous is None or len(previous) != k:
        inputs = [aggregate] * k
    else:
        gate = float(torch.sigmoid(block.gate.detach().double()).item())
        inputs = [
            g.lincomb([y, aggregate], [gate, 1.0 - gate], f"{prefix}.b{i}.in") for i, y in enumerate(previous)
        ]
    shared = None
    shortcut = block.shortcut()
    if shortcut is not None:
        conv, bn = shortcut
        shared = emit_conv_bn(g, aggregate, f"{prefix}.down", conv, bn, relu_between=False)
    ys = []
    for i, (branch, x) in enumerate(zip(block.branches, inputs, strict=True)):
        residual = x if shared is None else shared
        if isinstance(branch, BasicBranch):
            ys.append(export_basic_branch(g, branch, x, residual, f"{prefix}.b{i}"))
        elif isinstance(branch, BottleneckBranch):
            ys.append(export_bottleneck_branch(g, branch, x, residual, f"{prefix}.b{i}"))
        else:
            raise ExportError(f"cannot export branch type {type(branch).__name__}")
    scales = block.scales.detach().double().cpu().numpy()
    return ys, g.lincomb(ys, scales, f"{prefix}.sum")


def export_stem_pool(g: GraphBuilder, pool: nn.Module, stem: str) -> str:
    if not isinstance(pool, nn.MaxPool2d):
        raise ExportError(f"cannot export a stem pool of type {type(pool).__name__}")
    if pool.ceil_mode or pool.dilation not in (1, (1, 1)):
        raise ExportError("the stem max pool must use floor mode and no dilation")
    kernel, stride, padding = pool.kernel_size, pool.stride, pool.padding
    if not isinstance(kernel, int) or not isinstance(stride, int) or not isinstance(padding, int):
        raise ExportError("the stem max pool must give kernel, stride and padding as single numbers")
    return g.op(
        "maxpool2d",
        "pool",
        **{"in": stem},
        kernel=int(kernel),
        stride=int(stride),
        padding=int(padding),
    )


def export_encoder(g: GraphBuilder, encoder: GroupNetEncoder, x: str) -> list[str]:
    """Stem (float conv + BN, and a max pool unless the conv strides to 4) and the four stages;
    returns the feature maps as GroupNetEncoder.forward does: [stem, layer1, ..., layer4]."""
    conv = encoder.conv1
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ExportError("the stem conv must be a plain zero-padded conv")
    scale, shift = bn_fold(encoder.bn1)
    weight = conv.weight.detach().double().cpu().numpy() * scale[:, None, None, None]
    bias = shift + (scale * conv.bias.detach().double().cpu().numpy() if conv.bias is not None else 0.0)
    # The stem has no ReLU (GroupNetEncoder.forward_stem: a ReLU would make layer1's binarised input
    # all +1); an encoder that adds one says so with a `stem_relu` attribute.
    stem = g.float_conv(
        x,
        "stem",
        weight,
        bias,
        conv.stride[0],
        conv.padding[0],
        conv.dilation[0],
        relu=bool(getattr(encoder, "stem_relu", False)),
    )
    # The "conv7_s4" stem has no pool (nn.Identity): its conv's stride replaces it.
    pool = encoder.maxpool
    aggregate = stem if isinstance(pool, nn.Identity) else export_stem_pool(g, pool, stem)
    previous: list[str] | None = None
    features = [stem]
    for s, blocks in enumerate(encoder.stage_blocks(), start=1):
        for j, block in enumerate(blocks):
            previous, aggregate = export_group_block(g, block, previous, aggregate, f"layer{s}.{j}")
        features.append(aggregate)
    return features


# --------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------


def export_conv_bn_relu(g: GraphBuilder, block: nn.Module, x: str, prefix: str) -> str:
    """A ConvBNReLU (a head conv -> BatchNorm2d -> ReLU)."""
    if not isinstance(block, nn.Sequential):
        raise ExportError(f"{prefix}: expected conv -> BatchNorm2d -> ReLU, got {type(block).__name__}")
    conv, bn, act = block
    if not isinstance(bn, nn.BatchNorm2d) or not isinstance(act, nn.ReLU):
        raise ExportError(f"{prefix}: expected conv -> BatchNorm2d -> ReLU")
    return emit_conv_bn(g, x, prefix, conv, bn, relu_between=False, relu_after=True)


def export_classifier(g: GraphBuilder, classifier: nn.Module, x: str, prefix: str = "classifier") -> str:
    if isinstance(classifier, nn.Identity):  # a head under a decoder: the decoder classifies
        return x
    # Its last module; the Dropout before it is the identity in eval.
    conv = classifier[-1] if isinstance(classifier, nn.Sequential) else None
    if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (1, 1):
        raise ExportError("the classifier must end in a 1x1 Conv2d")
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
    return g.float_conv(
        x,
        prefix,
        conv.weight.detach().double().cpu().numpy(),
        bias.double().cpu().numpy(),
        1,
        0,
        1,
        relu=False,
    )


def export_float_conv_bn_relu(g: GraphBuilder, seq: nn.Sequential, x: str, prefix: str) -> str:
    """nn.Conv2d -> BatchNorm2d -> ReLU (the ASPP projection), folded into one float conv."""
    conv, bn, act = seq
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or not isinstance(act, nn.ReLU):
        raise ExportError(f"{prefix}: expected Conv2d -> BatchNorm2d -> ReLU")
    if isinstance(conv.padding, str):
        raise ExportError(f"{prefix}: the conv's padding must be given in pixels, not {conv.padding!r}")
    scale, shift = bn_fold(bn)
    weight = conv.weight.detach().double().cpu().numpy() * scale[:, None, None, None]
    bias = shift + (scale * conv.bias.detach().double().cpu().numpy() if conv.bias is not None else 0.0)
    return g.float_conv(x, prefix, weight, bias, conv.stride[0], conv.padding[0], conv.dilation[0], relu=True)


def export_fcn_head(g: GraphBuilder, head: FCNHead, x: str) -> str:
    return export_classifier(g, head.classifier, export_conv_bn_relu(g, head.block, x, "head.block"))


def export_aspp_head(g: GraphBuilder, head: ASPPHead, x: str) -> str:
    parts = [export_conv_bn_relu(g, b, x, f"head.aspp{i}") for i, b in enumerate(head.branches)]
    pooled = g.op("global_avgpool", "head.pool", **{"in": x})
    pooled = export_conv_bn_relu(g, head.pooling.block, pooled, "head.pool")
    parts.append(g.op("upsample_bilinear", "head.pool.up", **{"in": pooled}, like=x))
    cat = g.op("concat", "head.cat", ins=parts)
    return export_classifier(
        g, head.classifier, export_float_conv_bn_relu(g, head.project, cat, "head.project")
    )


def export_psp_head(g: GraphBuilder, head: PSPHead, x: str) -> str:
    pyramid = [x]
    for b, stage in zip(head.bins, head.stages, strict=True):
        pooled = g.op("adaptive_avgpool", f"head.psp{b}.pool", **{"in": x}, size=int(b))
        y = export_conv_bn_relu(g, stage, pooled, f"head.psp{b}")
        pyramid.append(g.op("upsample_bilinear", f"head.psp{b}.up", **{"in": y}, like=x))
    cat = g.op("concat", "head.cat", ins=pyramid)
    return export_classifier(
        g, head.classifier, export_conv_bn_relu(g, head.bottleneck, cat, "head.bottleneck")
    )


def export_skip_join(g: GraphBuilder, stage: SkipJoin, x: str, skip: str, prefix: str) -> str:
    """Mirror a decoder stage's join: upsample ``x`` to the skip, float 1x1 projection + BN of the
    skip, concat, BN, binary 3x3 conv + BN + ReLU; returns the conv's output.

    The BatchNorm on the joined map is per channel, so it folds into what feeds it: into an affine on
    ``x`` before the upsampling (bilinear weights sum to one, so the two commute), at a quarter or
    less of the pixels, and into the projection's weights. The full-resolution map is never touched
    twice."""
    conv, bn = stage.project
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise ExportError(f"{prefix}.project: expected Conv2d -> BatchNorm2d")
    norm_scale, norm_shift = bn_fold(stage.norm)
    c = stage.norm.num_features - conv.out_channels
    head = g.affine(x, f"{prefix}.norm", norm_scale[:c], norm_shift[:c], False, False, None)
    up = g.op("upsample_bilinear", f"{prefix}.up", **{"in": head}, like=skip)
    scale, shift = bn_fold(bn)
    scale, shift = scale * norm_scale[c:], shift * norm_scale[c:] + norm_shift[c:]
    weight = conv.weight.detach().double().cpu().numpy() * scale[:, None, None, None]
    projected = g.float_conv(skip, f"{prefix}.project", weight, shift, 1, 0, 1, relu=False)
    cat = g.op("concat", f"{prefix}.cat", ins=[up, projected])
    return export_conv_bn_relu(g, stage.fuse, cat, f"{prefix}.fuse")


def export_skip_decoder(g: GraphBuilder, decoder: SkipDecoder, x: str, skip: str, stem: str) -> str:
    """Mirror SkipDecoder.forward: the join at the skip's stride, the classifier, and the stem stage
    when the decoder has one (its logits added to the first stage's, both at the stem's stride)."""
    fused = export_skip_join(g, decoder, x, skip, "decoder")
    logits = export_classifier(g, decoder.classifier, fused)
    refine = decoder.stem_refine
    if refine is None:
        return logits
    fine = export_skip_join(g, refine, fused, stem, "decoder.stem")
    fine_logits = export_classifier(g, refine.classifier, fine, "decoder.stem.classifier")
    coarse = g.op("upsample_bilinear", "decoder.stem.coarse", **{"in": logits}, like=stem)
    return g.op("lincomb", "decoder.stem.logits", ins=[coarse, fine_logits], coeffs=[1.0, 1.0])


# Head class -> its exporter, which takes an instance of exactly that class (not expressible as a type).
HEAD_EXPORTERS: dict[type[nn.Module], Callable[[GraphBuilder, Any, str], str]] = {
    ASPPHead: export_aspp_head,
    FCNHead: export_fcn_head,
    PSPHead: export_psp_head,
}


def build_graph(model: nn.Module) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The packed graph and tensors of a Group-Net segmentation model (eval semantics)."""
    if not isinstance(model, GroupNetSegmentation):
        raise ExportError(f"export supports Group-Net segmentation models, got {type(model).__name__}")
    head_exporter = HEAD_EXPORTERS.get(type(model.head))
    if head_exporter is None:
        raise ExportError(f"cannot export head {type(model.head).__name__}")
    g = GraphBuilder()
    with torch.no_grad():
        features = export_encoder(g, model.encoder, "input")
        logits = head_exporter(g, model.head, features[-1])
        if model.decoder is not None:
            logits = export_skip_decoder(
                g, model.decoder, logits, features[model.cfg.skip_stage], features[0]
            )
    g.ops.append({"op": "upsample_bilinear", "out": "logits", "in": logits, "like": "input"})
    graph = {"inputs": ["input"], "outputs": ["logits"], "ops": g.ops}
    return graph, g.tensors


# --------------------------------------------------------------------------------------------
# Metadata and files
# --------------------------------------------------------------------------------------------


def default_palette(n: int) -> list[list[int]]:
    """The PASCAL VOC colour map (bit-interleaved class index), extended to n classes."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


def export_model(
    model: nn.Module,
    out: str | Path,
    *,
    name: str | None = None,
    classes: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    size_divisor: int = 32,
    max_side: int = 512,
    extra: dict[str, Any] | None = None,
    stem_u8: bool = False,
) -> str:
    """Write ``model`` as a packed file at ``out``; returns the file's checksum. ``stem_u8``: the
    stem as an integer conv of the image's u8 pixels (``integer_stem``)."""
    if not isinstance(model, GroupNetSegmentation):
        raise ExportError(f"export supports Group-Net segmentation models, got {type(model).__name__}")
    cfg: ModelConfig = model.cfg
    if get_mode(model) == "tanh":
        raise ExportError("the model is in 'tanh' mode (training stage 1); export needs 'sign' mode")
    classifier = model.classifier
    final = classifier[-1] if isinstance(classifier, nn.Sequential) else None
    if not isinstance(final, nn.Conv2d):
        raise ExportError("the classifier must end in a 1x1 Conv2d")
    num_classes = final.out_channels
    classes = list(classes) if classes is not None else [f"class_{i}" for i in range(num_classes)]
    if len(classes) != num_classes:
        raise ExportError(f"{len(classes)} class names given but the model predicts {num_classes} classes")
    palette = [list(map(int, p)) for p in palette] if palette is not None else default_palette(num_classes)
    if len(palette) != num_classes:
        raise ExportError(
            f"{len(palette)} palette colours given but the model predicts {num_classes} classes"
        )
    graph, tensors = build_graph(model)
    if stem_u8:
        graph, tensors = integer_stem(graph, tensors, mean, std)
    description = {
        "name": name or model_name(cfg),
        "arch": cfg.arch,
        "classes": classes,
        "palette": palette,
        "input": {
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "size_divisor": int(size_divisor),
            "max_side": int(max_side),
            "channel_order": "RGB",
        },
        "config": cfg.to_dict(),
    }
    if extra:
        description.update(extra)
    try:
        return gnpk.write_model(out, description, graph, tensors)
    except gnpk.ModelFormatError as exc:
        raise ExportError(str(exc)) from None


def integer_stem(
    graph: dict[str, Any], tensors: dict[str, np.ndarray], mean: Sequence[float], std: Sequence[float]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The graph with its stem, the float conv that reads the normalised image, as a ``conv2d_u8``
    (docs/format.md): the weights moved to the pixel scale (w / (255 std)) and rounded per output
    channel to 7-bit integers (-64 .. 63). Everything else is copied."""
    name = graph["inputs"][0]
    stems = [i for i, op in enumerate(graph["ops"]) if name in (op.get("in"), *op.get("ins", []))]
    if len(stems) != 1 or graph["ops"][stems[0]]["op"] != "conv2d":
        raise ExportError("an integer stem needs exactly one reader of the image, a float conv2d")
    index = stems[0]
    op = graph["ops"][index]
    weight = tensors[op["weight"]].astype(np.float64)
    if op["dilation"] != 1 or weight.shape[1] != weight.shape[2] or weight.shape[1] > gnpk.U8_CONV_MAX_KERNEL:
        raise ExportError(
            f"the stem conv (kernel {weight.shape[1:3]}, dilation {op['dilation']}) has no integer form"
        )
    if len(mean) != weight.shape[3] or len(std) != weight.shape[3]:
        raise ExportError(f"mean and std need {weight.shape[3]} values, one per input channel")
    pixel_scale = [255.0 * float(v) for v in std]
    pixel_zero = [255.0 * float(v) for v in mean]
    per_pixel = weight / np.asarray(pixel_scale)  # the conv of (p - pixel_zero)
    low, high = gnpk.U8_CONV_WEIGHT_RANGE
    peak = np.maximum(per_pixel.max(axis=(1, 2, 3)) / high, per_pixel.min(axis=(1, 2, 3)) / low)
    scale = np.where(peak > 0, peak, 1.0)
    q = np.clip(np.rint(per_pixel / scale[:, None, None, None]), low, high).astype(np.int8)
    tensors = dict(tensors)
    tensors.pop(op["weight"])
    tensors[op["weight"] + ".q"] = q
    tensors[op["weight"] + ".scale"] = scale.astype(np.float32)
    new_op = {
        "op": "conv2d_u8",
        "in": op["in"],
        "out": op["out"],
        "weight": op["weight"] + ".q",
        "scale": op["weight"] + ".scale",
        "bias": op["bias"],
        "pixel_scale": pixel_scale,
        "pixel_zero": pixel_zero,
        "stride": op["stride"],
        "padding": op["padding"],
        "relu": op["relu"],
    }
    graph = dict(graph)
    graph["ops"] = [new_op if i == index else op for i, op in enumerate(graph["ops"])]
    return graph, tensors


def repack_model(
    src: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    classes: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    size_divisor: int | None = None,
    max_side: int | None = None,
    postprocess: dict[str, Any] | None | bool = False,
    stem_u8: bool = False,
    test_time: dict[str, Any] | None | bool = False,
) -> str:
    """Rewrite a packed file's description (name, class names, palette, input rules, post-processing);
    the graph and tensors are copied bit for bit. Trades speed for accuracy (``max_side``) without the
    checkpoint. ``postprocess``: a new post-processing object, None to remove it, False to keep it;
    ``test_time`` (the default test-time augmentation) likewise. ``stem_u8``: also turn the float
    stem into the integer one (``integer_stem``)."""
    try:
        packed = gnpk.read_model(src)
    except (gnpk.ModelFormatError, OSError) as exc:
        raise ExportError(str(exc)) from None
    description = json.loads(json.dumps(packed.model))
    count = len(description["classes"])
    if name:
        description["name"] = name
    if classes is not None:
        if len(classes) != count:
            raise ExportError(f"{len(classes)} class names given but the model predicts {count} classes")
        description["classes"] = list(classes)
    if palette is not None:
        if len(palette) != count:
            raise ExportError(f"{len(palette)} palette colours given but the model predicts {count} classes")
        description["palette"] = [list(map(int, p)) for p in palette]
    if size_divisor is not None:
        description["input"]["size_divisor"] = int(size_divisor)
    if max_side is not None:
        description["input"]["max_side"] = int(max_side)
    if postprocess is None:
        description.pop("postprocess", None)
    elif postprocess is not False:
        description["postprocess"] = postprocess
    if test_time is None:
        description.pop("test_time", None)
    elif test_time is not False:
        description["test_time"] = test_time
    graph, tensors = packed.graph, packed.tensors
    if stem_u8:
        graph, tensors = integer_stem(
            graph, tensors, description["input"]["mean"], description["input"]["std"]
        )
    try:
        return gnpk.write_model(out, description, graph, tensors)
    except gnpk.ModelFormatError as exc:
        raise ExportError(str(exc)) from None


SILENT_CONTRIBUTION = 1e-3  # largest output change of a binary conv channel below which it is silent


def silent_binary_channels(path: str | Path) -> tuple[dict[str, float], int, int]:
    """The packed file's binary conv output channels that cannot move their output by
    SILENT_CONTRIBUTION (|mul| times the fan-in): (share of such channels per conv that has any,
    silent channels, all binary conv channels). Their latent weights collapsed to zero in training
    (weight decay, docs/training.md): they cost run time and add nothing."""
    packed = gnpk.read_model(path)
    shares: dict[str, float] = {}
    silent = total = 0
    for op in packed.graph["ops"]:
        if op["op"] != "bconv2d":
            continue
        fan_in = int(op["in_channels"]) * int(op["kernel"]) ** 2
        quiet = np.abs(packed.tensors[op["mul"]]) * fan_in < SILENT_CONTRIBUTION
        silent, total = silent + int(quiet.sum()), total + quiet.size
        if quiet.any():
            shares[str(op["weight"]).removesuffix(".weight")] = float(quiet.mean())
    return shares, silent, total


def _report_written(path: str | Path, checksum: str) -> None:
    """export-model's last words: the file written, then a warning if it has silent channels."""
    print(f"wrote {path} ({Path(path).stat().st_size / 1e6:.2f} MB, sha256 {checksum[:16]}...)")
    shares, silent, total = silent_binary_channels(path)
    if silent:
        worst = sorted(shares.items(), key=lambda item: -item[1])[:5]
        shown = ", ".join(f"{name} {100 * share:.0f} %" for name, share in worst)
        print(
            f"warning: {silent} of {total} binary conv output channels ({100 * silent / total:.1f} %) are "
            f"silent: their weights collapsed in training (docs/training.md, train.binary_weight_decay); "
            f"most in {shown}",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``export-model``: checkpoint -> packed .gnpk file (arguments: seg_training.export_cli)."""
    from .export_cli import build_parser

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.postprocess is not False and not args.repack:
        parser.error(
            "--postprocess needs --repack (fit it with train-seg tune-postprocess on an exported file)"
        )
    if args.test_time is not False and not args.repack:
        parser.error("--test-time needs --repack (set it on an exported file)")
    classes = args.classes
    if args.repack:
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            checksum = repack_model(
                args.repack,
                args.out,
                name=args.name,
                classes=classes,
                palette=args.palette,
                size_divisor=args.size_divisor,
                max_side=args.max_side,
                postprocess=args.postprocess,
                stem_u8=args.stem_u8,
                test_time=args.test_time,
            )
        except (ExportError, OSError) as exc:
            print(f"export-model: error: {exc}", file=sys.stderr)
            return 2
        _report_written(args.out, checksum)
        return 0
    from .data.errors import InputError
    from .engine.checkpoint import load_checkpoint, model_from_checkpoint

    try:
        try:
            ckpt = load_checkpoint(args.checkpoint)
            model = model_from_checkpoint(ckpt, args.checkpoint, task="seg", needed_by="export-model")
        except InputError as exc:
            raise ExportError(str(exc)) from None
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        palette = args.palette or ckpt.get("palette")
        if palette is None:  # say so: a silent VOC colour map surprises anyone with their own classes
            print(
                "palette: none given (--palette) and none in the checkpoint (data.palette); using the "
                "PASCAL VOC colour map",
                file=sys.stderr,
            )
        checksum = export_model(
            model,
            args.out,
            name=args.name,
            classes=classes or ckpt.get("classes"),
            palette=palette,
            mean=ckpt.get("mean") or IMAGENET_MEAN,
            std=ckpt.get("std") or IMAGENET_STD,
            size_divisor=args.size_divisor or 32,
            max_side=args.max_side or 512,
            stem_u8=args.stem_u8,
        )
    except (ExportError, OSError) as exc:
        print(f"export-model: error: {exc}", file=sys.stderr)
        return 2
    _report_written(args.out, checksum)
    return 0


if __name__ == "__main__":
    sys.exit(main())
