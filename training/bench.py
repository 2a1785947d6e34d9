"""seg-bench: whole-network latency of the packed-bit runtime against PyTorch, side by side.

In one run, on the same input and the same thread count, it times

- **runtime**: the Group-Net exported to a packed file and run by ``seg_service.runtime`` (numpy +
  the XNOR-popcount kernels; no torch);
- **pytorch**: the very same network (same weights) run by PyTorch in eval mode, i.e. the float
  simulation of the binary network the training code uses;
- optionally the full-precision networks a user would otherwise deploy (smp DeepLabV3-ResNet18,
  torchvision LRASPP-MobileNetV3), random weights, fp32.

The engines are timed round-robin (one call of each per repeat, so load from other processes hits
all alike) and each figure is the median over repeats. The runtime's and PyTorch's outputs are
compared (mask agreement) so the two rows provably ran the same network. The CPU model, the
kernels' ISA path and the thread counts are printed; ``--json FILE`` writes everything.

    seg-bench [--quick] [--threads 2] [--repeats 10] [--sizes 320x240 512x512] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seg_service import kernels
from seg_service.runtime import load_model, set_num_threads

from .export import export_model
from .models import ModelConfig, create_model, model_name

DEFAULT_SIZES = ("320x240", "512x512")  # width x height
QUICK_SIZES = ("320x240",)
REFERENCE_ARCHS = {"smp_deeplabv3_resnet18": "smp DeepLabV3-ResNet18 fp32",
                   "lraspp_mobilenet_v3_large": "torchvision LRASPP-MobileNetV3 fp32"}


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted: Sequence[str] = ("avx2", "avx512f", "avx512_vpopcntdq")) -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in flags]
    except OSError:
        pass
    return []


def environment(threads: int) -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "isa": kernels.isa(),
        "available_isas": kernels.available_isas(),
        "threads": threads,
        "kernel_threads": kernels.get_num_threads(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def time_round_robin(calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each engine; one call of each per round."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    return samples


def parse_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 320x240, got {text!r}") from None
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError(f"size must be at least 32x32, got {text!r}")
    return h, w


def calibrate_batchnorm(model: nn.Module, batches: int = 2, size: int = 96) -> nn.Module:
    """Give a randomly initialised network data-like BatchNorm statistics (a few train-mode passes on
    random images), as a trained one has; returns it in eval mode. With the identity statistics of a
    fresh BatchNorm many binary conv outputs are exactly 0, where PyTorch's float simulation rounds
    to +-1e-8 and so binarises them either way, and the comparison of the two engines means little."""
    with torch.no_grad():
        model.train()
        for _ in range(batches):
            model(torch.randn(2, 3, size, size))
    return model.eval()


def float_megabytes(model: nn.Module) -> float:
    return sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point()) / 1e6


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def run_model_benchmark(cfg: ModelConfig, sizes: Sequence[tuple[int, int]], repeats: int, threads: int,
                        references: bool = True, profile: bool = True, seed: int = 0) -> dict[str, Any]:
    torch.set_num_threads(threads)
    set_num_threads(threads)
    torch.manual_seed(seed)
    model = calibrate_batchnorm(create_model(cfg))
    name = model_name(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.gnpk"
        export_model(model, path)
        runtime = load_model(path)
    refs: dict[str, nn.Module] = {}
    if references:
        for arch in REFERENCE_ARCHS:
            try:
                refs[arch] = create_model(arch=arch, num_classes=cfg.num_classes).eval()
            except ImportError as exc:  # a bench extra is missing: report, keep going
                print(f"note: skipping {arch}: {exc}", file=sys.stderr)

    result: dict[str, Any] = {
        "model": name, "config": cfg.to_dict(), "packed_file_mb": runtime.file_size / 1e6,
        "float_weights_mb": float_megabytes(model), "sizes": [],
    }
    rng = np.random.default_rng(seed)
    for h, w in sizes:
        x = rng.standard_normal((h, w, 3)).astype(np.float32)
        xt = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()

        def torch_call(m: nn.Module = model, xt: torch.Tensor = xt) -> torch.Tensor:
            with torch.inference_mode():
                return m(xt)

        calls: dict[str, Callable[[], object]] = {"runtime": lambda x=x: runtime.forward(x), "pytorch": torch_call}
        for arch, ref in refs.items():
            calls[arch] = lambda ref=ref: torch_call(ref)
        samples = time_round_robin(calls, repeats)

        ours, theirs = runtime.forward(x), torch_call()[0].permute(1, 2, 0).numpy()
        agreement = float((ours.argmax(axis=2) == theirs.argmax(axis=2)).mean())
        rel_err = float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-12))
        base = statistics.median(samples["runtime"])
        rows = []
        for engine, times in samples.items():
            med = statistics.median(times)
            rows.append({
                "engine": engine,
                "label": {"runtime": f"{name} packed runtime", "pytorch": f"{name} PyTorch (float simulation)",
                          **REFERENCE_ARCHS}[engine],
                "median_ms": med * 1e3, "min_ms": min(times) * 1e3, "repeats": len(times),
                "vs_runtime": med / base,
                "file_mb": result["packed_file_mb"] if engine == "runtime"
                else float_megabytes(refs[engine]) if engine in refs else result["float_weights_mb"],
            })
        entry: dict[str, Any] = {"height": h, "width": w, "rows": rows, "mask_agreement": agreement,
                                 "max_rel_logit_err": rel_err}
        if profile:  # time per op kind; the fastest of three runs (least disturbed by other load)
            best: tuple[float, dict[str, float]] | None = None
            for _ in range(3):
                spent: dict[str, float] = {}
                start = time.perf_counter()
                runtime._executor.run({"input": x}, profile=spent)
                total = time.perf_counter() - start
                if best is None or total < best[0]:
                    best = (total, spent)
            total, spent = best
            entry["runtime_profile_ms"] = {k: v * 1e3 for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
            entry["runtime_profile_total_ms"] = total * 1e3
        result["sizes"].append(entry)
    return result


def format_report(env: dict[str, Any], result: dict[str, Any]) -> str:
    lines = [
        f"CPU: {env['cpu']} ({', '.join(env['cpu_flags']) or 'no AVX flags'})",
        f"ISA path: {env['isa']} (available: {', '.join(env['available_isas'])}); threads: kernels "
        f"{env['kernel_threads']}, torch {env['torch_threads']}",
        f"model: {result['model']}  packed file {result['packed_file_mb']:.2f} MB, "
        f"float weights {result['float_weights_mb']:.2f} MB",
        "",
        f"{'input':>9}  {'engine':<62} {'median ms':>10} {'min ms':>9} {'x runtime':>10} {'weights MB':>11}",
    ]
    for entry in result["sizes"]:
        size = f"{entry['width']}x{entry['height']}"
        for row in entry["rows"]:
            lines.append(f"{size:>9}  {row['label']:<62} {row['median_ms']:>10.1f} {row['min_ms']:>9.1f} "
                         f"{row['vs_runtime']:>10.2f} {row['file_mb']:>11.2f}")
        lines.append(f"{'':>9}  runtime vs PyTorch: masks agree on {entry['mask_agreement'] * 100:.2f} % of "
                     f"pixels, max logit error {entry['max_rel_logit_err']:.1e} of the logit scale")
        if "runtime_profile_ms" in entry:
            total = entry["runtime_profile_total_ms"]
            parts = ", ".join(f"{op} {ms / total * 100:.0f}%" for op, ms in entry["runtime_profile_ms"].items()
                              if ms / total >= 0.01)
            lines.append(f"{'':>9}  runtime profile ({total:.0f} ms): {parts}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seg-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="320x240 only, 3 repeats, no reference models")
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    parser.add_argument("--repeats", type=int, help="timed runs per engine (default 10, 3 with --quick)")
    parser.add_argument("--sizes", nargs="+", type=parse_size, help="inputs as WIDTHxHEIGHT (default 320x240 512x512)")
    parser.add_argument("--no-reference", action="store_true", help="skip the full-precision reference models")
    parser.add_argument("--k", type=int, default=5, help="branches per group (default 5)")
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier (default 1.0)")
    parser.add_argument("--head", default="aspp", choices=("aspp", "fcn", "psp"))
    parser.add_argument("--output-stride", type=int, default=8, choices=(8, 16, 32))
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    sizes = args.sizes or [parse_size(s) for s in (QUICK_SIZES if args.quick else DEFAULT_SIZES)]
    repeats = args.repeats or (3 if args.quick else 10)
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    cfg = ModelConfig(arch="groupnet_resnet18", task="seg", num_classes=args.num_classes, k=args.k,
                      output_stride=args.output_stride, bpac=True, head=args.head, width=args.width)
    result = run_model_benchmark(cfg, sizes, repeats, args.threads,
                                 references=not (args.quick or args.no_reference))
    env = environment(args.threads)
    print(format_report(env, result))
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "model": result}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
