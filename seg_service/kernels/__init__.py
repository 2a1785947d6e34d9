"""Packed-bit XNOR-popcount binary convolution kernels (C++ extension ``seg_service.kernels._core``).

Layout: NHWC, batch 1, bits packed along channels into uint64 words (bit ``i`` of word ``j`` is
channel ``64*j + i``; bit = 1 means -1, i.e. ``x < 0``; zero, -0.0 and NaN pack as +1). Padding is
+1: padded taps are zero words and count, so ``n = k*k*in_channels`` for every output pixel and
``dot = n - 2*popcount(a XOR w)``. See docs/architecture.md (Kernel API) and docs/format.md.

The ISA path (AVX-512 VPOPCNTDQ, AVX2, scalar) is chosen at run time; ``SEG_ISA`` forces one at
import and ``SEG_THREADS`` sets the thread count. The AVX2 path has several ways to count bits
(``available_popcounts``: nibble lookup "lut", lookup + integer POPCNT "mix1"/"mix2"), chosen per
CPU by a short calibration at its first call; ``SEG_POPCOUNT`` (or ``set_popcount``) forces one.
``dispatch_info()`` says which path and method run; ``popcount_ceilings`` measures the in-register
ceiling of each way on this core, the AVX-512 path's ``vpopcntq`` step included
(scripts/popcount_speed.py). ``prepare_weights`` arranges a layer's
weights for the kernels once (a model does it at load time); the conv functions take the result in
place of the weight array. ``lincomb_group`` runs the float linear combinations between binary convs
(a Group-Net block's branch sum and soft gates) in one pass; ``upsample_bilinear`` is the graph's
bilinear resampling; ``conv2d_direct`` is the RGB stem's float convolution and ``conv2d_u8`` its
integer version (uint8 image, 7-bit weights, AVX-512 VNNI or AVX-VNNI where the CPU has it, a
per-class bias table; every ISA path gives the same bits), whose u8 pixels ``image_pixels``
recovers from a normalised input; ``conv1x1`` the 1x1 float convs (projections, classifier) of
a map or of the parts of a channel concat, and
``pack_bits_concat`` the sign bits of a concat without building it (``pack_bits_into`` and
``upsample_bilinear_bits`` write one part's bits into the concat's); ``affine`` a per-channel
BatchNorm left standing; ``global_avgpool`` an image-pooling branch's mean; ``guided_coefficients``,
``guided_apply`` and ``half_logit_difference`` (the two-class filter's source) run a model's stored
guided filter (runtime/refine.py); ``resize_area`` is the input's area resize and
``normalize_image`` writes the network input (and the filter's guide) from the image,
``image_guide`` the guide alone (for an integer stem, which reads the pixels themselves).
``reference.py`` is a plain numpy version of the same API that defines the expected results.
"""

from __future__ import annotations

import math
import os

from seg_service.kernels._core import (
    PreparedWeights,
    add_mirrored,
    affine,
    argmax_channels,
    available_isas,
    available_popcounts,
    bconv2d,
    bconv2d_chain,
    bconv2d_float,
    bconv2d_int,
    conv1x1,
    conv2d_direct,
    conv2d_u8,
    cpu_round_trip_ns,
    dispatch_info,
    get_num_threads,
    global_avgpool,
    guided_apply,
    guided_coefficients,
    half_logit_difference,
    image_guide,
    image_pixels,
    isa,
    lincomb_group,
    maxpool2d,
    normalize_image,
    pack_bits,
    pack_bits_concat,
    pack_bits_into,
    popcount,
    popcount_ceilings,
    prepare_weights,
    resize_area,
    set_isa,
    set_num_threads,
    set_popcount,
    upsample_bilinear,
    upsample_bilinear_bits,
)

__all__ = [
    "add_mirrored",
    "PreparedWeights",
    "affine",
    "argmax_channels",
    "available_isas",
    "available_popcounts",
    "bconv2d",
    "bconv2d_chain",
    "bconv2d_float",
    "bconv2d_int",
    "conv1x1",
    "conv2d_direct",
    "conv2d_u8",
    "dispatch_info",
    "get_num_threads",
    "guided_apply",
    "cpu_round_trip_ns",
    "image_guide",
    "image_pixels",
    "guided_coefficients",
    "half_logit_difference",
    "isa",
    "lincomb_group",
    "global_avgpool",
    "maxpool2d",
    "normalize_image",
    "pack_bits",
    "pack_bits_concat",
    "pack_bits_into",
    "popcount",
    "popcount_ceilings",
    "prepare_weights",
    "resize_area",
    "set_isa",
    "set_num_threads",
    "set_popcount",
    "upsample_bilinear",
    "upsample_bilinear_bits",
    "cpu_round_trip_note",
]


def cpu_round_trip_note(before_ns: float, after_ns: float) -> str:
    """A benchmark report's line on the CPU hand-off (``cpu_round_trip_ns``) measured before and after
    its run: several hundred ns or more mean two dies or sockets (a VM's host moves its CPUs), where
    a two-thread time may lose to one thread, so two-thread figures compare only at similar values."""
    if math.isnan(before_ns) or math.isnan(after_ns):  # a single CPU, or not Linux
        return "CPU hand-off: not measured (one CPU, or not Linux)"
    return (
        f"CPU hand-off: {before_ns:.0f} ns before the run, {after_ns:.0f} ns after (a cache line's round "
        "trip between two of this process's CPUs; two-thread times compare only at similar figures, and "
        "a few hundred ns or more means two dies, where two threads can lose to one)"
    )


def _apply_environment() -> None:
    forced_isa = os.environ.get("SEG_ISA", "").strip().lower()
    if forced_isa:
        set_isa(forced_isa)  # ValueError names the supported paths
    forced_popcount = os.environ.get("SEG_POPCOUNT", "").strip().lower()
    if forced_popcount:
        set_popcount(forced_popcount)  # ValueError names the supported methods
    threads = os.environ.get("SEG_THREADS", "").strip()
    if threads:
        try:
            count = int(threads)
        except ValueError:
            raise ValueError(f"SEG_THREADS must be a positive integer, got {threads!r}") from None
        set_num_threads(count)


_apply_environment()
