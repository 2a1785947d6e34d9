"""What a run tells its user up front: where it writes, the settings it resolved (which of them are
defaults), and, on a slow machine, that the first steps are slow and what to do about it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .config import FREE_FORM, cpu_count, dump_yaml
from .runlog import format_duration

# The knobs that decide a run's cost, shown at the start (all defaults go to defaults.yaml).
SHOWN = {
    "model": ("arch", "k", "width", "output_stride", "bpac", "head", "head_channels", "decoder"),
    "data": ("crop_size", "base_size", "scale_range", "batch_size", "workers"),
    "train": ("epochs", "optimizer", "lr", "schedule", "time_budget_minutes", "init_from", "amp", "compile"),
}
# A CPU run slower than this (training images per second, measured over the first steps) is told
# about the CPU-sized starter config; my_data trains several images per second on 2 cores.
SLOW_IMAGES_PER_SECOND = 1.0
# Seconds without a finished step before a run says it is still in its first step.
FIRST_STEP_PATIENCE = 60.0
CPU_HINT = (
    "for a CPU, start from the CPU-sized config: --config my_data (half width, K = 2, crop 256), "
    "or lower data.crop_size, model.k and model.width"
)


def _flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted not in FREE_FORM and dotted != "model":
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def resolved_defaults(
    config: Mapping[str, Any], model_cfg: Mapping[str, Any], explicit: Iterable[str]
) -> dict[str, Any]:
    """Every setting the run uses that neither the config nor the command line set, with its value."""
    explicit = set(explicit)
    flat = _flatten({k: v for k, v in config.items() if k != "model"})
    flat.update({f"model.{k}": v for k, v in model_cfg.items() if k not in ("task", "num_classes")})
    return {k: v for k, v in flat.items() if k not in explicit and k not in ("task",)}


def describe_settings(
    config: Mapping[str, Any],
    model_cfg: Mapping[str, Any],
    explicit: Iterable[str] | None,
    out_dir: Path,
    device: str,
) -> str:
    """Lines printed at the start of a run: the run folder and the cost-deciding settings."""
    explicit = None if explicit is None else set(explicit)
    output = config["output"]
    lines = [
        f"run folder {out_dir}/ (output.dir {output['dir']} + output.name {output['name']}): config.yaml, "
        f"defaults.yaml, last.pt, best.pt, log.csv, summary.json"
    ]
    mark = "" if explicit is None else " (* = default: not set in the config or on the command line)"
    lines.append(f"settings{mark}:")
    for section, keys in SHOWN.items():
        values = model_cfg if section == "model" else config[section]
        parts = []
        for key in keys:
            if key not in values:
                continue
            star = "*" if explicit is not None and f"{section}.{key}" not in explicit else ""
            text = f"{key} {values[key]}{star}"
            if section == "data" and key == "workers" and star:
                text += f" (follows the {cpu_count()} CPUs)"
            parts.append(text)
        lines.append(f"  {section:<6}" + ", ".join(parts))
    lines.append(f"  device {device}, seed {config['seed']}")
    return "\n".join(lines)


def write_defaults(
    path: Path, config: Mapping[str, Any], model_cfg: Mapping[str, Any], explicit: Iterable[str] | None
) -> None:
    """defaults.yaml in the run folder: the defaults this run resolved (all settings when unknown)."""
    values = resolved_defaults(config, model_cfg, explicit or ())
    head = (
        "# Settings of this run that its config and command line left to the defaults\n"
        if explicit is not None
        else "# Settings of this run (resumed from a checkpoint's config)\n"
    )
    path.write_text(head + dump_yaml(values))


def slow_start_message(
    seconds: float, images: int, steps: int, iters: int, epochs_left: int, device: str
) -> str | None:
    """A note when a CPU run's first steps are very slow: the measured pace, the epoch and run time it
    implies, and the CPU-sized config; None when the pace is fine (or the run is not on a CPU)."""
    if device != "cpu" or steps < 1 or seconds <= 0:
        return None
    rate = images / seconds
    if rate >= SLOW_IMAGES_PER_SECOND:
        return None
    per_step = seconds / steps
    return (
        f"slow start: {rate:.2f} images/s ({per_step:.1f} s per step) on {cpu_count()} CPUs; one epoch of "
        f"{iters} steps takes about {format_duration(per_step * iters)}, the run about "
        f"{format_duration(per_step * iters * epochs_left)}; {CPU_HINT}"
    )


class SlowStartWatch:
    """Watches the first training steps of a run: says so when the first step takes longer than
    FIRST_STEP_PATIENCE seconds (from a timer thread, as the step may take minutes), and after a few
    steps reports a slow pace through slow_start_message. Once per run."""

    def __init__(
        self, log: Callable[[str], Any], iters: int, epochs_left: int, device: str, steps_to_measure: int = 3
    ) -> None:
        self.log, self.iters, self.epochs_left, self.device = log, iters, epochs_left, device
        self.steps_to_measure = max(1, min(steps_to_measure, iters))
        self.start = time.perf_counter()
        self.steps = self.images = 0
        self.done = False
        self.timer: threading.Timer | None = None
        if device == "cpu":
            self.timer = threading.Timer(FIRST_STEP_PATIENCE, self._still_first_step)
            self.timer.daemon = True
            self.timer.start()

    def _still_first_step(self) -> None:
        if self.steps == 0 and not self.done:
            self.log(
                f"the first training step is still running after {FIRST_STEP_PATIENCE:.0f} s on "
                f"{cpu_count()} CPUs: this network and crop size are heavy for this machine; {CPU_HINT}"
            )

    def step(self, images: int) -> None:
        if self.done:
            return
        self.steps += 1
        self.images += images
        if self.steps >= self.steps_to_measure:
            message = slow_start_message(
                time.perf_counter() - self.start,
                self.images,
                self.steps,
                self.iters,
                self.epochs_left,
                self.device,
            )
            if message:
                self.log(message)
            self.close()

    def close(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
