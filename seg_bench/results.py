"""Figures and tables for docs/results.md and the model cards (weights/README.md).

Everything is measured here, in one run, from files in the repository and the real data:

- accuracy of the shipped packed models through the torch-free runtime, on the full-size validation
  images (``train-seg eval --packed`` does the same for one model);
- latency of every table row on this machine, side by side in one run (median of repeats, same
  thread count): packed rows through ``seg_service.runtime``, full-precision rows through PyTorch;
- training curves from the runs' ``log.csv`` files, per-class IoU, validation examples, and the
  accuracy-against-latency chart.

    python -m seg_bench.results --data ../shared/data --ablation-gnpk DIR --threads 2 [--rounds 3]

Writes ``docs/img/*.png`` and ``docs/results/results.json`` and prints the Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "docs" / "results" / "runs"
SIZES = ((320, 240), (512, 512))  # width x height

# Ablation rows: (run folder, label, engine). Binary rows run packed; full-precision rows in PyTorch.
ABLATION_ROWS = [
    ("full_precision", "full precision ResNet-18 (same code, width, head)", "torch"),
    ("binary_k1", "binary, K = 1 (plain binary ResNet-18)", "packed"),
    ("layerwise_k4", "layer-wise decomposition, K = 4", "packed"),
    ("groupnet_k4_nogates", "Group-Net K = 4, no soft gates", "packed"),
    ("groupnet_k4_bpac", "Group-Net K = 4, soft gates, BPAC", "packed"),
    ("groupnet_k4_single_rate", "Group-Net K = 4, soft gates, one dilation rate", "packed"),
    ("smp_deeplabv3_resnet18", "smp DeepLabV3-ResNet18 fp32", "torch"),
    ("lraspp_mobilenet_v3_large", "torchvision LRASPP-MobileNetV3 fp32", "torch"),
]
SHIPPED = [("person", "ccp_person_w05k4"), ("camvid", "camvid_w05k4")]


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def median_ms_interleaved(fns: list[Callable[[], Any]], repeats: int, warmup: int = 2) -> list[float]:
    """Median milliseconds of each function, the functions called in turn within every repeat."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, samples in zip(fns, times):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return [1000 * statistics.median(samples) for samples in times]


def test_image(width: int, height: int) -> np.ndarray:
    """A real photo (from tests/data) resized to width x height, so timings see real activations."""
    import cv2

    bgr = cv2.imread(str(REPO / "tests/data/ccp/images/0001.jpg"), cv2.IMREAD_COLOR)
    assert bgr is not None, "tests/data/ccp/images/0001.jpg is missing"
    return np.ascontiguousarray(cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)[:, :, ::-1])


def packed_latency(path: Path, repeats: int, raw: bool = False) -> dict[str, float]:
    """``predict`` on an RGB photo of each size (the file's input rules included), or with ``raw``
    the network alone at that size padded to a multiple of 32, as the PyTorch rows are timed."""
    from seg_service.runtime import load_model

    model = load_model(path)
    out = {}
    for w, h in SIZES:
        image = test_image(w, h)
        if raw:
            x = np.zeros((-(-h // 32) * 32, -(-w // 32) * 32, 3), np.float32)
            x[:h, :w] = (image / 255.0 - np.float32(model.input_spec["mean"])) / np.float32(
                model.input_spec["std"]
            )
            out[f"{w}x{h}"] = median_ms(partial(model.forward, x), repeats)
        elif model.postprocess:
            # with and without the stored post-processing, call by call, so load bursts hit both
            both = median_ms_interleaved(
                [partial(model.predict, image), partial(model.predict, image, refine=False)], repeats
            )
            out[f"{w}x{h}"], out[f"{w}x{h} refine=false"] = both
        else:
            out[f"{w}x{h}"] = median_ms(partial(model.predict, image), repeats)
    return out


def torch_model(config_path: Path, num_classes: int):
    """The PyTorch network of a run's config in eval mode (random weights: time and size do not
    depend on them)."""
    from seg_training.engine.config import load_config, model_config_for
    from seg_training.models import create_model

    return create_model(model_config_for(load_config("seg", config_path, []), num_classes)).eval()


def torch_latency(config_path: Path, num_classes: int, repeats: int) -> dict[str, float]:
    """PyTorch fp32 eval latency of a run's network at each size."""
    import torch

    model = torch_model(config_path, num_classes)
    out = {}
    with torch.inference_mode():
        for w, h in SIZES:
            # Inputs padded to a multiple of 32, as the packed runtime pads (smp requires it).
            x = torch.randn(1, 3, -(-h // 32) * 32, -(-w // 32) * 32)
            out[f"{w}x{h}"] = median_ms(partial(model, x), repeats)
    return out


def isolated_latency(
    kind: str, target: Path, repeats: int, threads: int, raw: bool = False
) -> dict[str, float]:
    """Latency measured in a fresh process (seg_bench.latency_probe): the kernels' thread pool and
    PyTorch's OpenMP pool both spin after their work, so timing them in one process makes each slow
    the other down."""
    import subprocess

    command = [
        sys.executable,
        "-m",
        "seg_bench.latency_probe",
        kind,
        str(target),
        "--repeats",
        str(repeats),
        "--threads",
        str(threads),
        *(["--raw"] if raw else []),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def read_run(folder: Path) -> dict[str, Any]:
    import csv

    summary = json.loads((folder / "summary.json").read_text())
    rows = list(csv.DictReader((folder / "log.csv").open()))
    return {"summary": summary, "history": rows}


# --------------------------------------------------------------------------------------------- figures


def plot_curves(
    runs: dict[str, list[dict[str, str]]], metric: str, title: str, out: Path, chained: bool = True
) -> None:
    """Loss and validation curves; ``chained``: each run continues the previous one (epochs add up),
    else the runs are alternatives drawn over the same epochs."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.6))
    offset = 0
    for label, rows in runs.items():
        epochs = [offset + int(r["epoch"]) for r in rows]
        ax_loss.plot(epochs, [float(r["train_loss"]) for r in rows], label=label)
        scored = [(offset + int(r["epoch"]), 100 * float(r[metric])) for r in rows if r.get(metric)]
        if scored:
            ax_metric.plot(*zip(*scored, strict=True), marker="o", label=label)
        offset = epochs[-1] if chained else 0
    ax_loss.set(xlabel="epoch", ylabel="training loss", title=f"{title}: loss")
    ax_metric.set(
        xlabel="epoch",
        ylabel={"miou": "val mIoU (%)", "top1": "val top-1 (%)"}[metric],
        title=f"{title}: validation",
    )
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_per_class(scores: dict[str, dict[str, Any]], out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1,
        len(scores),
        figsize=(4 + 3.5 * len(scores), 3.6),
        gridspec_kw={"width_ratios": [max(2, len(s["iou"])) for s in scores.values()]},
    )
    for ax, (name, s) in zip(np.atleast_1d(axes), scores.items(), strict=True):
        classes = list(s["iou"])
        values = [100 * (s["iou"][c] if s["iou"][c] == s["iou"][c] else 0.0) for c in classes]
        ax.bar(classes, values, color="tab:blue")
        ax.set(ylim=(0, 100), ylabel="IoU (%)", title=f"{name}: per-class IoU, mIoU {100 * s['miou']:.1f}")
        ax.tick_params(axis="x", rotation=45)
        for i, v in enumerate(values):
            ax.text(i, v + 1, f"{v:.0f}", ha="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_examples(model_path: Path, pairs: list[tuple[np.ndarray, np.ndarray]], out: Path) -> None:
    import matplotlib.pyplot as plt

    from seg_service.runtime import load_model

    model = load_model(model_path)
    fig, axes = plt.subplots(len(pairs), 3, figsize=(9, 3 * len(pairs)))
    for row, (rgb, truth) in zip(np.atleast_2d(axes), pairs, strict=True):
        pred = model.predict(rgb)
        palette = model.palette
        truth_rgb = np.where((truth == 255)[..., None], 0, palette[np.minimum(truth, len(palette) - 1)])
        # two classes: the mask over the photo shows its edges; more: solid colours, as the labels
        shown = (0.5 * rgb + 0.5 * palette[pred]).astype(np.uint8) if len(palette) == 2 else palette[pred]
        for ax, img, title in zip(
            row,
            (rgb, truth_rgb, shown),
            ("image", "ground truth", "prediction (packed runtime)"),
            strict=True,
        ):
            ax.imshow(img)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# Validation pictures of the shipped models: (model, [(config, data folder, overrides, indices)]).
Examples = list[tuple[str, list[tuple[str, str, list[tuple[str, Any]], tuple[int, ...]]]]]
EXAMPLES: Examples = [
    (
        "person",
        [
            ("ccp_person_w05k4", "ccp", [], (3, 41)),
            # the portraits' own test list (../shared/data/portraits/val.txt), labels 0/1 as stored
            ("person", "portraits", [("data.layout", "folder"), ("data.val_split", "val.txt")], (10, 120)),
        ],
    ),
    ("camvid", [("camvid_w05k4", "camvid", [], (5, 50, 90))]),
]


def plot_shipped_examples(
    data: Path,
    weights: Path,
    out: Path,
    examples: Examples = EXAMPLES,
) -> list[Path]:
    """<out>/examples_<model>.png: validation images, their labels and the shipped file's
    prediction at its default settings (stored post-processing and passes included)."""
    from seg_training.data import build_seg_dataset
    from seg_training.engine.config import load_config

    configs = REPO / "seg_training" / "configs"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, sources in examples:
        pairs = []
        for config, folder, overrides, picks in sources:
            cfg = load_config(
                "seg", configs / f"{config}.yaml", [("data.root", str(data / folder)), *overrides]
            )
            val = build_seg_dataset(cfg["data"], "val")
            pairs += [val.load(i) for i in picks]
        path = out / f"examples_{name}.png"
        plot_examples(weights / f"{name}.gnpk", pairs, path)
        written.append(path)
    return written


def plot_tradeoff(rows: list[dict[str, Any]], size: str, out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for r in rows:
        colour = "tab:red" if r["engine"] == "torch" else "tab:blue"
        ax.scatter(r["latency_ms"][size], 100 * r["metric"], color=colour, s=30 + r["size_mb"] * 4)
        ax.annotate(
            r["key"],
            (r["latency_ms"][size], 100 * r["metric"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set(
        xlabel=f"CPU latency at {size} (ms, 2 threads, log scale)",
        ylabel="val mIoU (%)",
        title="Accuracy against CPU latency (blue: packed binary runtime, red: PyTorch fp32; "
        "marker area ~ file size)",
    )
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seg_bench.results", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default=str(REPO.parent / "shared" / "data"), help="folder with ccp/ and camvid/"
    )
    parser.add_argument(
        "--weights", default=str(REPO / "weights"), help="folder with the shipped .gnpk files"
    )
    parser.add_argument(
        "--ablation-gnpk",
        help="folder with the ablation runs' exported .gnpk files "
        "(<row>.gnpk); binary rows without one are timed from a random-weight export",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per row and round (median)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="every row is timed once per round, in its own process, rounds one after another; "
        "a row's latency is the median over rounds, so a burst of outside load lands on "
        "one round of every row rather than on every round of one row (default 3)",
    )
    parser.add_argument(
        "--out", default=str(REPO / "docs"), help="writes <out>/img/*.png and <out>/results/results.json"
    )
    parser.add_argument(
        "--pictures",
        action="store_true",
        help="only redraw the shipped models' validation pictures (<out>/img/examples_*.png): "
        "no accuracy runs, no timing",
    )
    args = parser.parse_args(argv)
    data, weights, out = Path(args.data), Path(args.weights), Path(args.out)
    if args.pictures:
        for path in plot_shipped_examples(data, weights, out / "img"):
            print(path)
        return 0

    import torch

    from seg_service.runtime import set_num_threads
    from seg_training.engine.packed_eval import evaluate_packed

    torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / "results").mkdir(parents=True, exist_ok=True)
    configs = REPO / "seg_training" / "configs"
    results: dict[str, Any] = {
        "threads": args.threads,
        "rounds": args.rounds,
        "cpu": _cpu(),
        "shipped": {},
        "ablation": [],
    }
    # (row, (kind, target, raw)): every row's latency is measured at the end, in rounds.
    latency_jobs: list[tuple[dict[str, Any], tuple[str, Path, bool]]] = []

    # Shipped models: accuracy through the packed runtime on the real, full-size validation images.
    scores = {}
    for name, config in SHIPPED:
        path = weights / f"{name}.gnpk"
        s = evaluate_packed(
            path,
            configs / f"{config}.yaml",
            [("data.root", str(data / config.split("_")[0]))],
            progress=False,
        )
        scores[name] = s
        results["shipped"][name] = {
            "miou": s["miou"],
            "iou": s["iou"],
            "pixel_acc": s["pixel_acc"],
            "file_mb": path.stat().st_size / 1e6,
        }
        latency_jobs.append((results["shipped"][name], ("packed", path, False)))
    plot_per_class(scores, out / "img" / "per_class_iou.png")

    # Training curves.
    plot_curves(
        {
            "GPU run (camvid's encoder)": read_run(RUNS / "imagenette_w05k4")["history"],
            "CPU run (person's encoder)": read_run(RUNS / "imagenette_w05k4_cpu")["history"],
        },
        "top1",
        "encoder pretraining (Imagenette 64 px)",
        out / "img" / "curves_pretrain.png",
        chained=False,
    )
    plot_curves(
        {
            "ccp_person_w05k4": read_run(RUNS / "ccp_person_w05k4")["history"],
            "continued": read_run(RUNS / "ccp_person_w05k4_continued")["history"],
        },
        "miou",
        "person",
        out / "img" / "curves_person.png",
    )
    plot_curves(
        {"camvid_w05k4": read_run(RUNS / "camvid_w05k4")["history"]},
        "miou",
        "camvid",
        out / "img" / "curves_camvid.png",
    )

    plot_shipped_examples(data, weights, out / "img")

    # Ablation and the full-precision alternatives: accuracy from the runs, latency measured here.
    abl_gnpk = Path(args.ablation_gnpk) if args.ablation_gnpk else None
    rows = []
    for key, label, engine in ABLATION_ROWS:
        run = read_run(RUNS / "ablation" / key)
        summary = run["summary"]
        row: dict[str, Any] = {
            "key": key,
            "label": label,
            "engine": engine,
            "epochs": summary["epochs"],
            "metric": summary["best_metric"],
            "train_seconds": summary["seconds"],
            "parameters": summary["parameters"],
        }
        if engine == "packed":
            given = abl_gnpk / f"{key}.gnpk" if abl_gnpk else None
            path = (
                given
                if given is not None and given.is_file()
                else _random_export(RUNS / "ablation" / key / "config.yaml", out / "results" / f"{key}.gnpk")
            )
            latency_jobs.append((row, ("packed", path, True)))
            row["size_mb"] = path.stat().st_size / 1e6
            if abl_gnpk and (abl_gnpk / f"{key}.gnpk").is_file():
                s = evaluate_packed(
                    path,
                    configs / "ablation" / f"{key}.yaml",
                    [("data.root", str(data / "ccp"))],
                    progress=False,
                )
                row["packed_full_size"] = {"miou": s["miou"], "iou": s["iou"]}
        else:
            config_path = configs / "ablation" / f"{key}.yaml"
            latency_jobs.append((row, ("torch", config_path, False)))
            row["size_mb"] = 4 * sum(p.numel() for p in torch_model(config_path, 2).parameters()) / 1e6
        rows.append(row)
    results["ablation"] = rows

    rounds: list[list[dict[str, float]]] = [[] for _ in latency_jobs]
    for round_index in range(max(1, args.rounds)):
        for samples, (_row, (kind, target, raw)) in zip(rounds, latency_jobs, strict=True):
            samples.append(isolated_latency(kind, target, args.repeats, args.threads, raw=raw))
        print(f"latency round {round_index + 1}/{max(1, args.rounds)} done", file=sys.stderr)
    for samples, (row, _) in zip(rounds, latency_jobs, strict=True):
        row["latency_ms"] = {size: statistics.median(s[size] for s in samples) for size in samples[0]}
        row["latency_rounds_ms"] = samples
        print(f"{row.get('key', 'shipped')}: {row['latency_ms']}", file=sys.stderr)
    plot_tradeoff(rows, "512x512", out / "img" / "accuracy_vs_latency.png")

    (out / "results" / "results.json").write_text(json.dumps(results, indent=2, default=float))
    shipped, ablation = markdown_tables(results)
    doc = out / "results.md"
    if doc.is_file():  # refresh the tables between their markers, keep the prose
        doc.write_text(
            replace_marked(replace_marked(doc.read_text(), "shipped", shipped), "ablation", ablation)
        )
    print(shipped + "\n\n" + ablation)
    return 0


def replace_marked(text: str, name: str, table: str) -> str:
    """Swap what lies between <!-- results:NAME --> and <!-- /results:NAME --> for ``table``."""
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    if start not in text or end not in text:
        return text
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{table}\n{end}{rest.split(end, 1)[1]}"


def _random_export(config_path: Path, out: Path) -> Path:
    """Export the row's network with random weights: its packed latency and size equal the trained one's."""
    import torch

    from seg_training.engine.config import load_config, model_config_for
    from seg_training.export import export_model
    from seg_training.models import create_model

    torch.manual_seed(0)
    config = load_config("seg", config_path, [])
    model = create_model(model_config_for(config, 2)).eval()
    export_model(model, out, classes=["background", "person"])
    return out


def markdown_tables(results: dict[str, Any]) -> tuple[str, str]:
    """(shipped models table, ablation table) in Markdown."""
    lines = [
        "| model | val mIoU | per-class IoU | 320x240 ms | 512x512 ms | file MB |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, r in results["shipped"].items():
        ious = ", ".join(f"{c} {100 * v:.1f}" for c, v in r["iou"].items())
        ms = r["latency_ms"]
        times = [
            f"{ms[size]:.1f}"
            + (f" ({ms[size + ' refine=false']:.1f} without refine)" if size + " refine=false" in ms else "")
            for size in ("320x240", "512x512")
        ]
        lines.append(
            f"| {name} | {100 * r['miou']:.2f} | {ious} | {times[0]} | {times[1]} | {r['file_mb']:.2f} |"
        )
    shipped = "\n".join(lines)
    lines = [
        "| row | engine | epochs | val mIoU | packed, full size: mIoU / person IoU | "
        "320x240 ms | 512x512 ms | size MB |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in results["ablation"]:
        packed = r.get("packed_full_size")
        packed_txt = f"{100 * packed['miou']:.1f} / {100 * packed['iou']['person']:.1f}" if packed else "-"
        lines.append(
            f"| {r['label']} | {r['engine']} | {r['epochs']} | {100 * r['metric']:.2f} | "
            f"{packed_txt} | {r['latency_ms']['320x240']:.1f} | {r['latency_ms']['512x512']:.1f} | "
            f"{r['size_mb']:.2f} |"
        )
    return shipped, "\n".join(lines)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
