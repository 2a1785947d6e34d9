"""seg-bench: the backend benchmark, in two parts measured side by side on the same inputs and threads.

    seg-bench layers [--threads 1 2] [--repeats 30] [--isa avx512 ...] [--group all] [--json FILE]
    seg-bench model  [--threads 2] [--sizes 512x512 320x240] [--repeats 10] [--json FILE] ...
    seg-bench all    [--quick] [--json FILE]          (both parts with their defaults; also: no subcommand)
    seg-bench postprocess [--packed weights/person.gnpk] [--sizes ...] [--repeats 40] [--json FILE]
    seg-bench ops [--packed FILE ...] [--size 320x240] [--threads 1,2] [--repeats 7] [--json FILE]
    seg-bench as-avx2 [--keep-avx-vnni] -- CMD [ARGS...]   (CMD as on an AVX2-only CPU, every engine)

**layers** (``seg_bench.layers``): one binary 3x3 convolution at ResNet-18 and segmentation
shapes, float in to float out: our kernels (every ISA path) against PyTorch fp32 ``conv2d`` and
OpenVINO's ``BinaryConvolution``, at 1 and 2 threads.

**model**: whole networks, in one process, timed in blocks of consecutive runs per engine over
several rounds (medians):

- **runtime**: a Group-Net (default ResNet-18, K=5, BPAC, output stride 8, binary ASPP) exported
  to a packed file and run by ``seg_service.runtime`` (numpy + the XNOR-popcount kernels; no torch);
- **pytorch**: the very same network (same weights) in PyTorch eval mode, i.e. the float simulation
  the training code uses; the two engines' masks are compared, so they provably ran one network;
- **smp DeepLabV3-ResNet18** and **torchvision LRASPP-MobileNetV3** in fp32 (random weights);
- **shipped models**: packed files given with ``--packed`` (default: ``weights/person.gnpk`` and
  ``weights/camvid.gnpk`` where present; a note says when they are absent).

For every engine it also reports the model file size (the packed file, or the float state dict
saved as safetensors) and the **peak memory** of running it: each engine is loaded and run in its
own fresh subprocess (the runtime one never imports torch), which reads its peak resident set size
(``VmHWM``, reset after the imports) so that engines' peaks do not mix. A per-op profile of the
runtime (``seg_service.runtime.RunProfile``) says where the time goes.

**postprocess**: the cost of a packed model's stored post-processing (guided filter, decision
bias; docs/format.md): ``PackedModel.predict`` on a real photo with and without it, the two calls
interleaved so that load bursts hit both, medians and the median paired difference.

**ops** (``seg_bench.float_ops``): every float op of the packed runtime (stem conv, 1x1
projections and classifier, pooling, bilinear upsampling, the branch linear combinations), taken
from the shipped models' plans, against the same op in PyTorch (oneDNN) at the same shapes and
threads, alternating call blocks; and the share of each model's forward time in float ops.

The CPU model, the kernels' ISA path, thread counts, the load average (start and end) and the
round trip of a cache line between two CPUs before and after (``kernels.cpu_round_trip_ns``: on a
VM it says whether the host put them on one die, which decides what a second thread buys) are
printed; ``--json FILE`` writes everything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seg_service import kernels
from seg_service.runtime import RunProfile, load_model, set_num_threads
from seg_training.export import export_model
from seg_training.models import ModelConfig, create_model, model_name

from . import cpu_mask
from . import layers as bench_layers

DEFAULT_SIZES = ("512x512", "320x240")  # width x height
QUICK_SIZES = ("320x240",)
REFERENCE_ARCHS = {
    "smp_deeplabv3_resnet18": "smp DeepLabV3-ResNet18 fp32",
    "lraspp_mobilenet_v3_large": "torchvision LRASPP-MobileNetV3 fp32",
}
SHIPPED_MODELS = ("weights/person.gnpk", "weights/camvid.gnpk")
MODEL_TIMING_ROUNDS = 3  # repeats are split over this many rounds of per-engine blocks
PROFILE_TOP_OPS = 12

# Targets of issue 5 for the model part.
TARGET_SPEEDUP_VS_SMP = 3.0  # at 512x512, 2 threads
TARGET_FILE_RATIO = 8.0  # packed file vs the same network's float state dict


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    return bench_layers.cpu_model()


def cpu_flags(wanted: Sequence[str] = ("avx2", "avx512f", "avx512_vpopcntdq")) -> list[str]:
    return bench_layers.cpu_flags(wanted)


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


def environment(threads: int) -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cores": os.cpu_count(),
        "isa": kernels.isa(),
        "available_isas": kernels.available_isas(),
        # the binary kernels' popcount method and how it was chosen (fixed, calibrated or forced)
        "popcount": kernels.dispatch_info()["popcount"],
        "popcount_source": kernels.dispatch_info()["popcount_source"],
        # the integer stem's dot products (conv2d_u8): vnni, maddubs or scalar
        "u8_dot": kernels.dispatch_info()["u8_dot"],
        "threads": threads,
        "kernel_threads": kernels.get_num_threads(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "load_average_start": load_average(),
    }


# --------------------------------------------------------------------------------------------
# Peak memory: one fresh subprocess per engine
# --------------------------------------------------------------------------------------------


def measure_peak_memory(spec: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    """Peak memory of one engine, run in a fresh Python process (seg_bench.memory_probe).

    ``spec``: ``engine`` ("runtime" with ``path`` to a packed file, or "torch" with ``config`` for
    ``seg_training.models.create_model``), ``size`` [h, w], ``threads``, ``runs``. Returns
    ``base_rss_mb`` (resident after the imports, before the model), ``peak_rss_mb`` (peak resident
    set of the process, reset after the imports where Linux allows it), ``peak_over_base_mb``
    (model + activations + workspace), ``peak_reset`` and ``torch_imported``.
    """
    repo_root = str(Path(__file__).resolve().parent.parent)
    python_path = os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": python_path}
    done = subprocess.run(
        [sys.executable, "-m", "seg_bench.memory_probe", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=repo_root,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory probe for {spec['engine']} failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["peak_over_base_mb"] = result["peak_rss_mb"] - result["base_rss_mb"]
    return result


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


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


def state_dict_file_mb(model: nn.Module) -> float:
    """Size of the model's state dict saved as a safetensors file (how a float model ships)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "float.safetensors"
        save_file(tensors, str(path))
        return path.stat().st_size / 1e6


def _packed_label(path: Path) -> str:
    return f"shipped {path.name} (packed runtime)"


# --------------------------------------------------------------------------------------------
# The model benchmark
# --------------------------------------------------------------------------------------------


def run_model_benchmark(
    cfg: ModelConfig,
    sizes: Sequence[tuple[int, int]],
    repeats: int,
    threads: int,
    references: bool = True,
    profile: bool = True,
    memory: bool = True,
    packed_files: Sequence[str | Path] = (),
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    mediapipe_python: str | None = None,
) -> dict[str, Any]:
    """Latency, file size and peak memory of every engine at every size (see the module docstring).

    ``packed_files``: extra packed models (the shipped defaults) timed on the runtime; missing files
    are listed under ``notes`` and skipped. ``mediapipe_python``: the Python of an environment with
    ``mediapipe`` installed; MediaPipe's two selfie segmenters are then timed at each size in a
    subprocess of it (after our engines, in the same run) and added as rows, without peak memory.
    """
    log = log or (lambda message: None)
    torch.set_num_threads(threads)
    set_num_threads(threads)
    torch.manual_seed(seed)
    model = calibrate_batchnorm(create_model(cfg))
    name = model_name(cfg)
    tmp = tempfile.TemporaryDirectory()
    try:
        packed_path = Path(tmp.name) / f"{name}.gnpk"
        export_model(model, packed_path)
        runtime = load_model(packed_path)
        refs: dict[str, nn.Module] = {}
        notes: list[str] = []
        if references:
            for arch in REFERENCE_ARCHS:
                try:
                    refs[arch] = create_model(arch=arch, num_classes=cfg.num_classes).eval()
                except ImportError as exc:  # a bench extra is missing: report, keep going
                    notes.append(f"skipped {arch}: {exc}")
        shipped = {}
        for path in map(Path, packed_files):
            if path.is_file():
                shipped[f"packed:{path.name}"] = (path, load_model(path))
            else:
                notes.append(f"no shipped model at {path}: row skipped")

        labels = {
            "runtime": f"{name} packed runtime",
            "pytorch": f"{name} PyTorch (float simulation)",
            **REFERENCE_ARCHS,
            **{key: _packed_label(path) for key, (path, _) in shipped.items()},
        }
        file_mb = {
            "runtime": runtime.file_size / 1e6,
            "pytorch": state_dict_file_mb(model),
            **{arch: state_dict_file_mb(ref) for arch, ref in refs.items()},
            **{key: m.file_size / 1e6 for key, (_, m) in shipped.items()},
        }
        result: dict[str, Any] = {
            "model": name,
            "config": cfg.to_dict(),
            "packed_file_mb": file_mb["runtime"],
            "float_weights_mb": float_megabytes(model),
            "float_file_mb": file_mb["pytorch"],
            "labels": labels,
            "file_mb": file_mb,
            "notes": notes,
            "sizes": [],
        }
        rng = np.random.default_rng(seed)
        for h, w in sizes:
            log(f"model: timing {w}x{h}")
            x = rng.standard_normal((h, w, 3)).astype(np.float32)
            xt = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()

            def torch_call(m: nn.Module = model, xt: torch.Tensor = xt) -> torch.Tensor:
                with torch.inference_mode():
                    return m(xt)

            calls: dict[str, Callable[[], object]] = {
                "runtime": partial(runtime.forward, x),
                "pytorch": torch_call,
            }
            for arch, ref in refs.items():
                calls[arch] = partial(torch_call, ref)
            for key, (_, packed_model) in shipped.items():
                calls[key] = partial(packed_model.forward, x)
            samples = bench_layers.time_in_blocks(
                calls,
                repeats,
                warmup=1,
                rounds=MODEL_TIMING_ROUNDS,
                settle=bench_layers.SETTLE_SECONDS if threads > 1 else 0.0,
            )

            ours, theirs = runtime.forward(x), torch_call()[0].permute(1, 2, 0).numpy()
            agreement = float((ours.argmax(axis=2) == theirs.argmax(axis=2)).mean())
            rel_err = float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-12))
            base = statistics.median(samples["runtime"])
            rows: list[dict[str, Any]] = []
            for engine, times in samples.items():
                med = statistics.median(times)
                rows.append(
                    {
                        "engine": engine,
                        "label": labels[engine],
                        "median_ms": med * 1e3,
                        "min_ms": min(times) * 1e3,
                        "repeats": len(times),
                        "vs_runtime": med / base,
                        "file_mb": file_mb[engine],
                    }
                )
            entry: dict[str, Any] = {
                "height": h,
                "width": w,
                "rows": rows,
                "mask_agreement": agreement,
                "max_rel_logit_err": rel_err,
            }
            if profile:
                entry.update(profile_runtime(runtime, x))
            if memory:
                for row in rows:
                    log(f"model: peak memory of {row['engine']} at {w}x{h}")
                    row["memory"] = measure_peak_memory(
                        _probe_spec(row["engine"], cfg, packed_path, shipped, (h, w), threads)
                    )
            if mediapipe_python:
                log(f"model: timing MediaPipe at {w}x{h}")
                rows += mediapipe_rows(mediapipe_python, x, repeats, base, Path(tmp.name))
            result["sizes"].append(entry)
        return result
    finally:
        tmp.cleanup()


def mediapipe_rows(
    python: str, x: np.ndarray, repeats: int, runtime_seconds: float, workdir: Path
) -> list[dict[str, Any]]:
    """Rows of MediaPipe's selfie segmenters on a frame of ``x``'s size, timed by
    ``seg_training.peers.mediapipe_runner`` in ``python``'s environment (MediaPipe pins its own numpy)."""
    import cv2

    from seg_training.peers.compare import MEDIAPIPE_MODELS, mediapipe_timing

    h, w = x.shape[:2]
    frame = workdir / f"frame_{w}x{h}.png"
    pixels = np.clip(x * 40.0 + 128.0, 0, 255).astype(np.uint8)  # the timed input, as an image
    cv2.imwrite(str(frame), pixels)
    rows = []
    for model in MEDIAPIPE_MODELS:
        out = mediapipe_timing(python, model, str(frame), (w, h), repeats)
        ms = out["ms"]
        rows.append(
            {
                "engine": f"mediapipe_{model}",
                "label": f"MediaPipe selfie {model}, whole process() call (TFLite)",
                "median_ms": statistics.median(ms),
                "min_ms": min(ms),
                "repeats": len(ms),
                "vs_runtime": statistics.median(ms) / 1e3 / runtime_seconds,
                "file_mb": (out.get("file_bytes") or 0) / 1e6,
            }
        )
    return rows


def _probe_spec(
    engine: str,
    cfg: ModelConfig,
    packed_path: Path,
    shipped: dict[str, tuple[Path, Any]],
    size: tuple[int, int],
    threads: int,
) -> dict[str, Any]:
    base = {"size": list(size), "threads": threads, "runs": 2}
    if engine == "runtime":
        return {**base, "engine": "runtime", "path": str(packed_path)}
    if engine in shipped:
        return {**base, "engine": "runtime", "path": str(shipped[engine][0].resolve())}
    config = cfg.to_dict() if engine == "pytorch" else {"arch": engine, "num_classes": cfg.num_classes}
    return {**base, "engine": "torch", "config": config}


def profile_runtime(runtime: Any, x: np.ndarray, runs: int = 3) -> dict[str, Any]:
    """Per-op profile of the runtime on ``x``: the least disturbed (fastest) of ``runs`` runs."""
    best: RunProfile | None = None
    for _ in range(runs):
        prof = RunProfile()
        runtime.forward(x, profile=prof)
        if best is None or prof.total_seconds < best.total_seconds:
            best = prof
    assert best is not None
    return {
        "runtime_profile_total_ms": best.total_seconds * 1e3,
        "runtime_profile_ms": {kind: s * 1e3 for kind, s in best.by_kind().items()},
        "runtime_profile_top_ops": [
            {
                "index": t.index,
                "op": t.kind,
                "out": t.out,
                "detail": t.detail,
                "ms": t.seconds * 1e3,
                "gmacs_per_s": t.gmacs_per_s,
            }
            for t in sorted(best.ops, key=lambda t: -t.seconds)[:PROFILE_TOP_OPS]
        ],
        "runtime_profile_text": best.format(top=PROFILE_TOP_OPS),
    }


def summarize_model_targets(result: dict[str, Any], threads: int) -> list[str]:
    """The model part's targets: met or missed, with the figures."""
    lines = []
    ratio = result["float_file_mb"] / result["packed_file_mb"]
    verdict = "met" if ratio >= TARGET_FILE_RATIO else "MISSED"
    lines.append(
        f"packed file {result['packed_file_mb']:.2f} MB vs float state dict "
        f"{result['float_file_mb']:.2f} MB: {ratio:.1f}x smaller (goal >= {TARGET_FILE_RATIO:g}x): {verdict}"
    )
    for entry in result["sizes"]:
        rows = {r["engine"]: r for r in entry["rows"]}
        if "smp_deeplabv3_resnet18" not in rows:
            continue
        speedup = rows["smp_deeplabv3_resnet18"]["median_ms"] / rows["runtime"]["median_ms"]
        size = f"{entry['width']}x{entry['height']}"
        if (entry["height"], entry["width"]) == (512, 512) and threads == 2:
            verdict = "met" if speedup >= TARGET_SPEEDUP_VS_SMP else "MISSED"
            lines.append(
                f"{size}, 2 threads: runtime {speedup:.2f}x faster than smp DeepLabV3-r18 fp32 "
                f"(goal >= {TARGET_SPEEDUP_VS_SMP:g}x): {verdict}"
            )
        else:
            lines.append(
                f"{size}, {threads} thread(s): runtime {speedup:.2f}x faster than smp DeepLabV3-r18 fp32"
            )
    return lines


def format_report(env: dict[str, Any], result: dict[str, Any]) -> str:
    lines = [
        f"CPU: {env['cpu']} ({', '.join(env['cpu_flags']) or 'no AVX flags'}; "
        f"{env['logical_cores']} logical cores)",
        f"ISA path: {env['isa']} (available: {', '.join(env['available_isas'])}), popcount "
        f"{env['popcount']} ({env['popcount_source']}), integer stem {env.get('u8_dot', '-')}; "
        f"threads: kernels {env['kernel_threads']}, torch {env['torch_threads']}",
        "load average (1, 5, 15 min) at start: " + ", ".join(f"{v:.2f}" for v in env["load_average_start"]),
        *([kernels.cpu_round_trip_note(*env["cpu_round_trip_ns"])] if "cpu_round_trip_ns" in env else []),
        f"model: {result['model']}  packed file {result['packed_file_mb']:.2f} MB, "
        f"float state dict {result['float_file_mb']:.2f} MB",
        *(f"note: {n}" for n in result["notes"]),
        "",
        f"| {'input':<7} | {'engine':<58} | {'median ms':>9} | {'min ms':>8} | {'x runtime':>9} "
        f"| {'file MB':>8} | {'peak RSS MB':>11} | {'peak-base MB':>12} |",
        f"|:{'-' * 8}|:{'-' * 59}|{'-' * 10}:|{'-' * 9}:|{'-' * 10}:|{'-' * 9}:|{'-' * 12}:|{'-' * 13}:|",
    ]
    for entry in result["sizes"]:
        size = f"{entry['width']}x{entry['height']}"
        for row in entry["rows"]:
            mem = row.get("memory")
            peak = f"{mem['peak_rss_mb']:.0f}" if mem else "-"
            over = f"{mem['peak_over_base_mb']:.0f}" if mem else "-"
            lines.append(
                f"| {size:<7} | {row['label']:<58} | {row['median_ms']:>9.1f} "
                f"| {row['min_ms']:>8.1f} | {row['vs_runtime']:>9.2f} | {row['file_mb']:>8.2f} "
                f"| {peak:>11} | {over:>12} |"
            )
    for entry in result["sizes"]:
        size = f"{entry['width']}x{entry['height']}"
        lines.append("")
        lines.append(
            f"{size}: runtime vs PyTorch: masks agree on {entry['mask_agreement'] * 100:.2f} % of "
            f"pixels, max logit error {entry['max_rel_logit_err']:.1e} of the logit scale"
        )
        if "runtime_profile_text" in entry:
            lines.append(f"{size}: runtime {entry['runtime_profile_text']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    parser.add_argument("--repeats", type=int, help="timed runs per engine (default 10, 3 with --quick)")
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        help="inputs as WIDTHxHEIGHT (default 512x512 320x240; 320x240 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="320x240 only, 3 repeats, no reference models, no memory probes (a set-up check)",
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the full-precision reference models"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-profile", action="store_true", help="skip the runtime's per-op profile")
    parser.add_argument(
        "--packed",
        nargs="*",
        metavar="FILE",
        help="shipped packed models to time as extra rows (default: "
        f"{' '.join(SHIPPED_MODELS)} where present; --packed with no file: none)",
    )
    parser.add_argument("--k", type=int, default=5, help="branches per group (default 5)")
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier (default 1.0)")
    parser.add_argument("--head", default="aspp", choices=("aspp", "fcn", "psp"))
    parser.add_argument("--output-stride", type=int, default=8, choices=(8, 16, 32))
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--verbose", action="store_true", help="print progress")
    parser.add_argument(
        "--mediapipe-python",
        metavar="PYTHON",
        default=os.environ.get("MEDIAPIPE_PYTHON"),
        help="Python of an environment with mediapipe installed (python -m venv mp && mp/bin/pip "
        "install mediapipe==0.10.21): adds MediaPipe's two selfie segmenters as rows, timed in a "
        "subprocess of it (default: $MEDIAPIPE_PYTHON; none when unset)",
    )


def _model_part(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    sizes = args.sizes or [parse_size(s) for s in (QUICK_SIZES if args.quick else DEFAULT_SIZES)]
    repeats = args.repeats or (3 if args.quick else 10)
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    repo_root = Path(__file__).resolve().parent.parent
    packed = args.packed if args.packed is not None else [str(repo_root / p) for p in SHIPPED_MODELS]
    cfg = ModelConfig(
        arch="groupnet_resnet18",
        task="seg",
        num_classes=args.num_classes,
        k=args.k,
        output_stride=args.output_stride,
        bpac=True,
        head=args.head,
        width=args.width,
    )
    log = (lambda message: print(message, file=sys.stderr, flush=True)) if args.verbose else None
    load_start = load_average()
    hand_off_start = kernels.cpu_round_trip_ns()
    result = run_model_benchmark(
        cfg,
        sizes,
        repeats,
        args.threads,
        references=not (args.quick or args.no_reference),
        profile=not args.no_profile,
        memory=not (args.quick or args.no_memory),
        packed_files=packed,
        log=log,
        mediapipe_python=args.mediapipe_python,
    )
    env = environment(args.threads)
    env["load_average_start"] = load_start
    env["load_average_end"] = load_average()
    # the host's placement of the CPUs, which decides what a second thread buys (kernels.cpu_round_trip_note)
    env["cpu_round_trip_ns"] = [hand_off_start, kernels.cpu_round_trip_ns()]
    result["targets"] = summarize_model_targets(result, args.threads)
    print(format_report(env, result))
    print()
    print("\n".join(result["targets"]))
    print("load average (1, 5, 15 min) at end: " + ", ".join(f"{v:.2f}" for v in env["load_average_end"]))
    return {"environment": env, "repeats": repeats, "model": result}


def run_postprocess_benchmark(
    path: str | Path, sizes: Sequence[tuple[int, int]], repeats: int, threads: int
) -> dict[str, Any]:
    """predict() with and without the model's stored post-processing, interleaved call by call."""
    from .results import test_image

    set_num_threads(threads)
    model = load_model(path)
    if not model.postprocess:
        raise ValueError(f"{path} stores no post-processing (see train-seg tune-postprocess)")
    rows = []
    for h, w in sizes:
        image = test_image(w, h)
        for _ in range(3):  # warm-up: first calls allocate and fault in the weights
            model.predict(image)
            model.predict(image, refine=False)
        refined, plain = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            model.predict(image)
            middle = time.perf_counter()
            model.predict(image, refine=False)
            refined.append(middle - start)
            plain.append(time.perf_counter() - middle)
        rows.append(
            {
                "size": f"{w}x{h}",
                "refined_ms": 1e3 * statistics.median(refined),
                "plain_ms": 1e3 * statistics.median(plain),
                "paired_difference_ms": 1e3 * statistics.median(a - b for a, b in zip(refined, plain)),
            }
        )
    return {
        "model": str(path),
        "postprocess": model.postprocess,
        "threads": threads,
        "repeats": repeats,
        "rows": rows,
    }


def _postprocess_part(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be >= 1")
    sizes = args.sizes or [parse_size(s) for s in ("320x240", "338x512", "512x512")]
    load_start = load_average()
    hand_off_start = kernels.cpu_round_trip_ns()
    try:
        result = run_postprocess_benchmark(args.packed, sizes, args.repeats, args.threads)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    env = environment(args.threads)
    env["load_average_start"], env["load_average_end"] = load_start, load_average()
    env["cpu_round_trip_ns"] = [hand_off_start, kernels.cpu_round_trip_ns()]
    print(f"post-processing cost of {result['model']}: {json.dumps(result['postprocess'])}")
    print(
        f"PackedModel.predict on a photo, {args.threads} thread(s), "
        f"{args.repeats} interleaved pairs, medians; "
        f"CPU {env['cpu']}, ISA {env['isa']}, popcount {env['popcount']}"
    )
    print("| size | with it ms | without ms | ratio | paired difference ms |")
    print("|---|---:|---:|---:|---:|")
    for row in result["rows"]:
        print(
            f"| {row['size']} | {row['refined_ms']:.1f} | {row['plain_ms']:.1f} | "
            f"{row['refined_ms'] / row['plain_ms']:.2f} | {row['paired_difference_ms']:.1f} |"
        )
    print(
        "load average (1, 5, 15 min) at start / end: "
        + ", ".join(f"{v:.2f}" for v in load_start)
        + " / "
        + ", ".join(f"{v:.2f}" for v in env["load_average_end"])
    )
    print(kernels.cpu_round_trip_note(*env["cpu_round_trip_ns"]))
    return {"environment": env, "postprocess": result}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seg-bench",
        description="Backend benchmark: binary conv layers (ours vs PyTorch fp32 vs OpenVINO) and whole\n"
        "networks (packed runtime vs PyTorch and fp32 segmentation models: latency, file size,\n"
        "peak memory, per-op profile). Every figure of a part is measured side by side in one run.",
        epilog="examples:\n"
        "  seg-bench layers --threads 1 2 --json layers.json   # binary conv layers only\n"
        "  seg-bench model --sizes 512x512 --json model.json   # whole networks only\n"
        "  seg-bench all --json bench.json                      # both (also: plain seg-bench)\n"
        "  seg-bench ops --threads 1,2 --json ops.json          # runtime float ops vs PyTorch oneDNN\n"
        "  seg-bench as-avx2 -- seg-bench model                 # every engine as on an AVX2-only CPU\n"
        "Each subcommand has its own --help; every one takes --json FILE. See docs/benchmarks.md\n"
        "for what each column means.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import float_ops  # imported here: float_ops imports this module

    sub = parser.add_subparsers(dest="part", metavar="{layers,model,all,postprocess,ops,as-avx2}")
    layers = sub.add_parser(
        "layers",
        help="one binary 3x3 conv at ResNet-18 and segmentation shapes",
        description=bench_layers.__doc__.split("\n\n")[0],
    )
    bench_layers.add_arguments(layers)
    layers.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    model = sub.add_parser(
        "model",
        help="whole networks: latency, file size, peak memory, runtime profile",
        description="Whole-network benchmark at each input size (see seg-bench --help).",
    )
    _add_model_arguments(model)
    model.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    both = sub.add_parser(
        "all",
        help="both parts with their default settings",
        description="Runs `seg-bench layers` then `seg-bench model`, with their defaults.",
    )
    both.add_argument(
        "--quick", action="store_true", help="a quick set-up check of both parts, not for figures"
    )
    both.add_argument("--json", metavar="FILE", help="also write both parts' results as one JSON file")
    both.add_argument("--verbose", action="store_true", help="print progress")
    post = sub.add_parser(
        "postprocess",
        help="the cost of a packed model's stored post-processing",
        description="predict() with and without a packed model's stored post-processing "
        "(guided filter, decision bias), interleaved call by call on a real photo.",
    )
    post.add_argument(
        "--packed",
        default=str(Path(__file__).resolve().parent.parent / "weights" / "person.gnpk"),
        help="packed model with a postprocess (default: the shipped person model)",
    )
    post.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        metavar="WxH",
        help="image sizes (default: 320x240 338x512 512x512; 338x512 is the CCP photo size)",
    )
    post.add_argument("--repeats", type=int, default=40, help="interleaved pairs per size (default 40)")
    post.add_argument("--threads", type=int, default=2)
    post.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ops = sub.add_parser(
        "ops",
        help="every float op of the runtime vs the same op in PyTorch (oneDNN); float-op share",
        description=float_ops.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    float_ops.add_arguments(ops)
    as_avx2 = sub.add_parser(
        "as-avx2",
        help="run a command with AVX-512 hidden from every engine (an AVX2-only CPU's code paths)",
        description=cpu_mask.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cpu_mask.add_arguments(as_avx2)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in ("layers", "model", "all", "postprocess", "ops", "as-avx2", "-h", "--help"):
        argv = ["all", *argv]
    args = parser.parse_args(argv)
    if args.part == "as-avx2":
        try:
            return cpu_mask.run_from_args(args)
        except cpu_mask.CpuMaskError as error:
            parser.error(str(error))
    command = " ".join(["seg-bench", *argv])
    output: dict[str, Any] = {"command": command}
    if args.part in ("layers", "all"):
        layer_args = (
            args
            if args.part == "layers"
            else parser.parse_args(
                ["layers", *(["--quick"] if args.quick else []), *(["--verbose"] if args.verbose else [])]
            )
        )
        try:
            output["layers"] = bench_layers.run_from_args(layer_args, command)
        except ValueError as error:
            parser.error(str(error))
        print()
    if args.part == "postprocess":
        output.update(_postprocess_part(args, parser))
    if args.part == "ops":
        from . import float_ops

        try:
            output["ops"] = float_ops.run_from_args(args, command)
        except ValueError as error:
            parser.error(str(error))
    if args.part in ("model", "all"):
        model_args = (
            args
            if args.part == "model"
            else parser.parse_args(
                ["model", *(["--quick"] if args.quick else []), *(["--verbose"] if args.verbose else [])]
            )
        )
        model_result = _model_part(model_args, parser)
        output.update(model_result)
    if args.json:
        Path(args.json).write_text(json.dumps(output, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
