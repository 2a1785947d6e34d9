"""Side-by-side timing of the RGB stem (kernels.conv2d_direct, 7x7 stride 2 padding 3, 3 -> 32, bias)
in two builds of seg_service and in PyTorch (not a test, not the benchmark).

Each sample is a fresh subprocess that times `--calls` consecutive calls `--samples` times after a
warm-up; the variants (baseline build, this build, torch NCHW, torch channels_last) take turns,
round after round, so a busy shared machine slows them alike. Figures are medians (and the best
sample) over all rounds: ms per call, G MAC/s (out_h * out_w * 32 * 147 / s), % of the FMA peak
(`--peak` G MAC/s per core x threads; Ice Lake server: 2 x 16 lanes x 2.8 GHz = 89.6 with
AVX-512, 2 x 8 lanes x ~3.4 GHz turbo = 54 with AVX2), speedup new / old and torch / new.

    python scripts/stem_ab.py --baseline /tmp/stem_old --isa avx512 --threads 1 2 --size 256x320 384x480

`--baseline` is a directory holding another build's `seg_service` package (e.g. a copy of the tree
with its built extension); this tree's is the current PYTHONPATH's. `--cpu-time`: at 1 thread,
CPU seconds of the process (leaves out the time a busy machine keeps the call off the CPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CHILD = "--child"


def child(which: str, isa: str, threads: int, h: int, w: int, samples: int, calls: int, cpu: bool) -> None:
    """Prints `samples` seconds-per-call figures for one variant (CPU seconds of the process if `cpu`)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((h, w, 3)).astype(np.float32)
    weight = (rng.standard_normal((32, 7, 7, 3)) * 0.2).astype(np.float32)
    bias = rng.standard_normal(32).astype(np.float32)
    if which in ("old", "new"):
        from seg_service import kernels

        kernels.set_isa(isa)
        if kernels.isa() != isa:
            raise SystemExit(f"ISA path {isa} not available")
        kernels.set_num_threads(threads)

        def call() -> object:
            return kernels.conv2d_direct(x, weight, bias, 2, 3, 1, False)

    else:
        import torch

        torch.set_num_threads(threads)
        fmt = torch.channels_last if which == "torch_cl" else torch.contiguous_format
        xt = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous(memory_format=fmt)
        wt = torch.from_numpy(weight).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
        bt = torch.from_numpy(bias)

        @torch.inference_mode()
        def call() -> object:
            return torch.nn.functional.conv2d(xt, wt, bt, 2, 3)

    for _ in range(calls * 2):
        call()
    clock = time.process_time if cpu else time.perf_counter
    out = []
    for _ in range(samples):
        start = clock()
        for _ in range(calls):
            call()
        out.append((clock() - start) / calls)
    print(" ".join(repr(t) for t in out))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", required=True, help="directory with the baseline build's seg_service")
    parser.add_argument("--isa", default="avx512")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", nargs="+", default=["256x320", "384x480"], help="input HxW")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--peak", type=float, default=None, help="FMA peak, G MAC/s per core")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="at 1 thread, time CPU seconds of the process instead of wall time (a busy machine)",
    )
    args = parser.parse_args()
    peak = args.peak or (89.6 if args.isa == "avx512" else 54.0)
    here = os.environ.get("PYTHONPATH", os.getcwd())
    variants = {"old": args.baseline, "new": here}
    if not args.no_torch:
        variants |= {"torch_nchw": here, "torch_cl": here}
    clock = "CPU time at 1 thread, wall time otherwise" if args.cpu_time else "wall time"
    print(
        f"stem 7x7/2 3->32, isa {args.isa}, medians (best) of {args.rounds} rounds x {args.samples} samples,",
        clock,
    )
    for threads in args.threads:
        for size in args.size:
            h, w = (int(v) for v in size.split("x"))
            macs = ((h - 1) // 2 + 1) * ((w - 1) // 2 + 1) * 32 * 147
            times: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(args.rounds):
                for name, path in variants.items():
                    cmd = [sys.executable, __file__, CHILD, name, args.isa, str(threads), str(h), str(w)]
                    cmd += [str(args.samples), str(args.calls), str(int(args.cpu_time and threads == 1))]
                    env = dict(os.environ, PYTHONPATH=path)
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
                    times[name] += [float(v) for v in out.split()]
            med = {k: statistics.median(v) for k, v in times.items()}
            best = {k: min(v) for k, v in times.items()}
            line = f"t={threads} {size:>8}"
            for name in variants:
                g = macs / med[name] / 1e9
                ms = f"{med[name] * 1e3:.3f} ms ({best[name] * 1e3:.3f})"
                line += f" | {name} {ms} {g:5.1f} G {g / peak / threads:4.0%}"
            line += f" | new/old {med['old'] / med['new']:.2f}x ({best['old'] / best['new']:.2f}x)"
            if not args.no_torch:
                tm = min(med["torch_nchw"], med["torch_cl"])
                tb = min(best["torch_nchw"], best["torch_cl"])
                line += f" | torch/new {tm / med['new']:.2f}x ({tb / best['new']:.2f}x)"
            print(line, flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        a = sys.argv[2:]
        child(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]), int(a[6]), a[7] == "1")
    else:
        main()
