"""Popcount methods: in-register ceilings of each kernel path and per-layer speed (not a test).

    .venv/bin/python scripts/popcount_speed.py ceilings [--repeats 9] [--seconds 0.05] [--rounds 3]
    .venv/bin/python scripts/popcount_speed.py layers [--isa avx2] [--method lut --method mix2 ...]
                                                      [--threads 1] [--repeats 40] [--json FILE]

`ceilings` runs kernels.popcount_ceilings: register-only loops of each way to count bits with AVX2
and the integer units (nibble-table VPSHUFB as the avx2 microkernel does it, the textbook unsplit
table, Harley-Seal carry-save adders, 64-bit POPCNT, vector + POPCNT mixes) and, on a CPU with
AVX-512 VPOPCNTDQ, the avx512 microkernel's VPXORQ + VPOPCNTQ + VPADDQ step; G binary MAC/s per
core by the thread's CPU time, median (and range) over `repeats` x `rounds` runs.

`layers` times kernels.bconv2d_float (prepared weights, float in and out, as seg-bench layers
does) on the ResNet-18 3x3 shapes and the 512-input segmentation shapes, for each popcount
method (kernels.set_popcount), interleaved sample by sample (median ms, median and best G binary
MAC/s per core: on a loaded machine the best sample is the least disturbed one); at 1 thread each
call is timed by the thread's CPU time (time.thread_time: robust to a shared machine), at more
threads by wall time.
Every method's output is checked against the first method's (exact: same integer dots, same FMA
epilogue).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time

import numpy as np

from seg_service import kernels

# (name, H, W, C_in, C_out, dilation); 3x3, stride 1, padding = dilation
SHAPES = [
    ("56x56x64->64", 56, 56, 64, 64, 1),
    ("28x28x128->128", 28, 28, 128, 128, 1),
    ("14x14x256->256", 14, 14, 256, 256, 1),
    ("7x7x512->512", 7, 7, 512, 512, 1),
    ("128x128x64->64", 128, 128, 64, 64, 1),
    ("64x64x128->128", 64, 64, 128, 128, 1),
    ("64x64x256->256 d2", 64, 64, 256, 256, 2),
    ("64x64x512->512 d4", 64, 64, 512, 512, 4),
    # webcam-sized networks (320x240 input, width 0.5): 32- and 64-channel maps
    ("120x160x32->32", 120, 160, 32, 32, 1),
    ("60x80x64->64", 60, 80, 64, 64, 1),
]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        family = fields.get("cpu family\t", "?").strip()
        return f"{fields.get('model name	', platform.processor()).strip()} (family {family})"
    except OSError:
        return platform.processor()


def ceilings(args: argparse.Namespace) -> None:
    runs: dict[str, list[float]] = {}
    rows: dict[str, dict] = {}  # method -> its last row (path, detail)
    for _ in range(args.rounds):
        for row in kernels.popcount_ceilings(args.method or [], args.repeats, args.seconds):
            runs.setdefault(row["method"], []).extend(row["gbmacs"])
            rows[row["method"]] = row
    if not runs:
        print("this CPU has neither AVX2 + POPCNT nor AVX-512 VPOPCNTDQ: no ceilings")
        return
    print(f"CPU: {cpu_model()}; load average {open('/proc/loadavg').read().split()[:3]}")
    print(
        f"{'method':12s} {'path':6s} {'median':>8s} {'min':>8s} {'max':>8s}  "
        "G binary MAC/s per core (thread CPU time)"
    )
    for name, values in runs.items():
        med = statistics.median(values)
        spread = f"{med:8.1f} {min(values):8.1f} {max(values):8.1f}"
        print(f"{name:12s} {rows[name]['isa']:6s} {spread}  {rows[name]['detail']}")


def layers(args: argparse.Namespace) -> None:
    isa = args.isa
    if isa not in kernels.available_isas():
        raise SystemExit(f"ISA {isa} not available here: {kernels.available_isas()}")
    kernels.set_isa(isa)
    kernels.set_num_threads(args.threads)
    legacy = not hasattr(kernels, "set_popcount")  # a build before the popcount methods: its one way
    methods = ["lut"] if legacy else args.method or kernels.available_popcounts()

    def use(method: str) -> None:
        if not legacy:
            kernels.set_popcount(method)

    rng = np.random.default_rng(0)
    results = []
    print(
        f"CPU: {cpu_model()}; isa {isa}; threads {args.threads}; "
        f"load average {open('/proc/loadavg').read().split()[:3]}"
    )
    print(f"{'shape':20s} " + " ".join(f"{m + ' ms':>10s} {'G/s':>6s} {'best':>6s}" for m in methods))
    print(f"{'':20s} " + " ".join(f"{'median':>10s} {'median':>6s} {'G/s':>6s}" for m in methods))
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    for name, h, w, cin, cout, dil in SHAPES:
        if args.shapes and name not in args.shapes:
            continue
        x = rng.standard_normal((h, w, cin)).astype(np.float32)
        wt = kernels.pack_bits(rng.standard_normal((cout, 9, cin)).astype(np.float32)).reshape(cout, 3, 3, -1)
        pw = kernels.prepare_weights(wt, cin)
        mul = rng.standard_normal(cout).astype(np.float32)
        bias = rng.standard_normal(cout).astype(np.float32)

        call = functools.partial(kernels.bconv2d_float, x, pw, 1, dil, dil, mul, bias, False, True)

        outs = []
        for m in methods:
            use(m)
            outs.append(call())
        for m, o in zip(methods, outs):
            if not np.array_equal(o, outs[0]):
                raise SystemExit(f"{name}: method {m} differs from {methods[0]}")
        macs = h * w * cout * cin * 9
        # calls per sample: about 2 ms of work each, so thread_time's resolution does not matter
        per_sample = max(1, int(2e-3 / (macs / 200e9)))
        times: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(args.repeats):
            for m in methods:
                use(m)
                start = clock()
                for _ in range(per_sample):
                    call()
                times[m].append((clock() - start) / per_sample)
        row = {"shape": name, "threads": args.threads, "isa": isa}
        cells = []
        for m in methods:
            med, best = statistics.median(times[m]), min(times[m])
            gbs = macs / med / args.threads * 1e-9
            row[m] = {
                "median_ms": med * 1e3,
                "min_ms": best * 1e3,
                "gbmacs_per_core": gbs,
                "gbmacs_per_core_best": macs / best / args.threads * 1e-9,
            }
            cells.append(f"{med * 1e3:10.3f} {gbs:6.0f} {macs / best / args.threads * 1e-9:6.0f}")
        results.append(row)
        print(f"{name:20s} " + " ".join(cells), flush=True)
    use("auto")
    if args.json:
        info = {} if legacy else kernels.dispatch_info()
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "results": results, "dispatch": info}, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("ceilings")
    c.add_argument("--method", action="append", help="method(s) to run (default: all)")
    c.add_argument("--repeats", type=int, default=9)
    c.add_argument("--seconds", type=float, default=0.05, help="CPU seconds per repeat")
    c.add_argument("--rounds", type=int, default=3, help="passes over all methods (interleaves them)")
    l_ = sub.add_parser("layers")
    l_.add_argument("--isa", default="avx2")
    l_.add_argument("--method", action="append", help="popcount method(s) (default: all available)")
    l_.add_argument("--shapes", action="append", help="shape name(s) (default: all)")
    l_.add_argument("--threads", type=int, default=1)
    l_.add_argument("--repeats", type=int, default=40)
    l_.add_argument("--json")
    args = parser.parse_args()
    ceilings(args) if args.what == "ceilings" else layers(args)


if __name__ == "__main__":
    main()
