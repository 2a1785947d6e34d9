"""Quick speed check of the packed-bit binary convolution kernels (not a test, not the benchmark).

Prints G binary MACs/s (out_h * out_w * out_c * k * k * in_channels per call / seconds, best of
several runs) for each ISA path at 1 and 2 threads on ResNet-18-like 3x3 shapes, and optionally
torch's fp32 conv (G multiply-adds/s) on the same shapes for scale.

    .venv/bin/python scripts/kernel_speed.py [--torch] [--isa avx512] [--op float] [--repeats 20]

--op picks the entry point: int (bconv2d_int, default), float (bconv2d with the float epilogue and a
residual) or fused (bconv2d_float: float input binarised and packed inside the call).

--op stem times the float RGB stem instead (kernels.conv2d_direct, 7x7 stride 2 padding 3, 3 -> 32
or 64 channels, bias and ReLU) against torch.nn.functional.conv2d (oneDNN, NCHW, same bias, ReLU
and thread count): medians of interleaved runs, G MACs/s and ours / torch per thread count.
--onednn-isa (e.g. avx2) caps oneDNN's ISA (ONEDNN_MAX_CPU_ISA) for a like-for-like AVX2 ratio;
--cpu-time divides by the process's CPU seconds instead of wall time (on a busy machine, at 1 thread).

    .venv/bin/python scripts/kernel_speed.py --op stem [--isa avx2] [--onednn-isa avx2]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import numpy as np

from seg_service import kernels
from seg_service.format import conv_output_size

# (name, H, W, C_in, C_out, kernel, stride, padding, dilation)
SHAPES = [
    ("28x28x128->128", 28, 28, 128, 128, 3, 1, 1, 1),
    ("14x14x256->256", 14, 14, 256, 256, 3, 1, 1, 1),
    ("56x56x64->64", 56, 56, 64, 64, 3, 1, 1, 1),
    ("7x7x512->512", 7, 7, 512, 512, 3, 1, 1, 1),
    ("64x64x256 dil2", 64, 64, 256, 256, 3, 1, 2, 2),
]


def best_seconds(setups_and_calls: list[tuple], repeats: int) -> list[float]:
    """Best time of each (setup, call) pair, with the pairs interleaved round by round so that a
    burst of load from other processes hits every variant alike (the machine may be shared)."""
    best = [float("inf")] * len(setups_and_calls)
    for setup, call in setups_and_calls:  # warm-up
        setup()
        call()
    for _ in range(repeats):
        for i, (setup, call) in enumerate(setups_and_calls):
            setup()
            start = time.perf_counter()
            call()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


# (name, H, W, C_out) of the 7x7 stride-2 padding-3 RGB stem
STEM_SHAPES = [
    ("192x256x3->32", 192, 256, 32),
    ("240x320x3->32", 240, 320, 32),
    ("240x320x3->64", 240, 320, 64),
    ("512x512x3->32", 512, 512, 32),
    ("512x512x3->64", 512, 512, 64),
]


def median_seconds(setups_and_calls: list[tuple], repeats: int, clock=time.perf_counter) -> list[float]:
    """Median time of each (setup, call) pair, interleaved round by round as best_seconds does.
    With clock=time.process_time it is CPU seconds of the process (all its threads): at one thread
    that leaves out the time a busy machine keeps the call off the CPU."""
    times: list[list[float]] = [[] for _ in setups_and_calls]
    for setup, call in setups_and_calls:  # warm-up
        setup()
        call()
    for _ in range(repeats):
        for i, (setup, call) in enumerate(setups_and_calls):
            setup()
            start = clock()
            call()
            times[i].append(clock() - start)
    return [statistics.median(t) for t in times]


def stem_speed(isas: list[str], threads: list[int], repeats: int, cpu_time: bool = False) -> None:
    """conv2d_direct on the stem shapes per ISA path and thread count, against torch (oneDNN)."""
    import torch

    rng = np.random.default_rng(0)
    print(
        f"7x7/2 stem, G MACs per {'CPU ' if cpu_time else ''}second (medians of {repeats} interleaved runs); "
        f"ratio = ours / torch, same threads; oneDNN ISA cap: {os.environ.get('ONEDNN_MAX_CPU_ISA', 'none')}"
    )
    header = f"{'shape':<16}" + "".join(f"{isa + ' t' + str(t):>11}" for isa in isas for t in threads)
    header += "".join(f"{'torch t' + str(t):>11}" for t in threads)
    header += "".join(f"{isa + '/torch t' + str(t):>17}" for isa in isas for t in threads)
    print(header)
    for name, h, w, o in STEM_SHAPES:
        x = rng.standard_normal((h, w, 3)).astype(np.float32)
        wt = (rng.standard_normal((o, 7, 7, 3)) * 0.1).astype(np.float32)
        bias = rng.standard_normal(o).astype(np.float32)
        ho, wo = (h + 6 - 7) // 2 + 1, (w + 6 - 7) // 2 + 1
        macs = ho * wo * o * 7 * 7 * 3
        ours = functools.partial(kernels.conv2d_direct, x, wt, bias, 2, 3, 1, True)
        xt = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()
        wtt = torch.from_numpy(wt).permute(0, 3, 1, 2).contiguous()
        bt = torch.from_numpy(bias)

        @torch.inference_mode()
        def theirs(xt=xt, wtt=wtt, bt=bt) -> None:
            torch.relu_(torch.nn.functional.conv2d(xt, wtt, bt, stride=2, padding=3))

        variants = []
        for isa in isas:
            for t in threads:

                def setup(isa: str = isa, t: int = t) -> None:
                    kernels.set_isa(isa)
                    kernels.set_num_threads(t)

                variants.append((setup, ours))
        for t in threads:
            variants.append((functools.partial(torch.set_num_threads, t), theirs))
        clock = time.process_time if cpu_time else time.perf_counter
        rates = [macs / sec / 1e9 for sec in median_seconds(variants, repeats, clock)]
        ours_rates, torch_rates = rates[: len(isas) * len(threads)], rates[len(isas) * len(threads) :]
        ratios = [
            ours_rates[i * len(threads) + j] / torch_rates[j]
            for i in range(len(isas))
            for j in range(len(threads))
        ]
        print(
            f"{name:<16}" + "".join(f"{r:>11.1f}" for r in rates) + "".join(f"{r:>17.2f}" for r in ratios),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", action="append", help="ISA path(s) to time (default: all available)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--op", choices=["int", "float", "fused", "stem"], default="int")
    parser.add_argument("--torch", action="store_true", help="also time torch fp32 conv2d")
    parser.add_argument(
        "--onednn-isa", help="with --op stem: cap oneDNN's ISA (ONEDNN_MAX_CPU_ISA), e.g. avx2"
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="with --op stem: time CPU seconds of the process, not wall time (a busy machine)",
    )
    args = parser.parse_args()
    isas = args.isa or kernels.available_isas()
    if args.op == "stem":
        if args.onednn_isa:
            os.environ["ONEDNN_MAX_CPU_ISA"] = args.onednn_isa.upper()  # read at oneDNN's first use
        stem_speed(isas, args.threads, args.repeats, args.cpu_time)
        return
    rng = np.random.default_rng(0)

    header = f"{'shape':<18}" + "".join(f"{isa + ' t' + str(t):>14}" for isa in isas for t in args.threads)
    if args.torch:
        header += "".join(f"{'torch t' + str(t):>14}" for t in args.threads)
    print(f"G binary MACs/s, op={args.op} (torch: G fp32 MACs/s)")
    print(header)
    for name, h, w, c, o, k, stride, pad, dil in SHAPES:
        x = rng.standard_normal((h, w, c)).astype(np.float32)
        a = kernels.pack_bits(x)
        wt = kernels.pack_bits(rng.standard_normal((o, k * k, c)).astype(np.float32)).reshape(o, k, k, -1)
        ho = conv_output_size(h, k, stride, pad, dil)
        wo = conv_output_size(w, k, stride, pad, dil)
        macs = ho * wo * o * k * k * c
        mul = rng.uniform(0.5, 1.5, o).astype(np.float32)
        bias = rng.standard_normal(o).astype(np.float32)
        residual = rng.standard_normal((ho, wo, o)).astype(np.float32)
        epilogue = (mul, bias, False, True, residual)
        calls = {
            "int": functools.partial(kernels.bconv2d_int, a, wt, c, stride, pad, dil),
            "float": functools.partial(kernels.bconv2d, a, wt, c, stride, pad, dil, *epilogue),
            "fused": functools.partial(kernels.bconv2d_float, x, wt, stride, pad, dil, *epilogue),
        }
        variants = []
        for isa in isas:
            for t in args.threads:

                def setup(isa: str = isa, t: int = t) -> None:
                    kernels.set_isa(isa)
                    kernels.set_num_threads(t)

                variants.append((setup, calls[args.op]))
        if args.torch:
            import torch

            xt = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()
            wf = torch.randn(o, c, k, k)
            conv = functools.partial(
                torch.nn.functional.conv2d, xt, wf, stride=stride, padding=pad, dilation=dil
            )
            for t in args.threads:
                variants.append((functools.partial(torch.set_num_threads, t), torch.inference_mode()(conv)))
        seconds = best_seconds(variants, args.repeats)
        row = f"{name:<18}" + "".join(f"{macs / sec / 1e9:>14.1f}" for sec in seconds)
        print(row, flush=True)


if __name__ == "__main__":
    main()
