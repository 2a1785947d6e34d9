"""The training loop for classification and segmentation, in the shape of torchvision's references.

``train`` sets a run up (resume, data, model, DDP, optimizer) and then, per epoch: ``train_one_epoch``,
the time budget (time_budget.py), ``evaluate`` (evaluation.py) and one ``CheckpointState`` written as
last.pt (and best.pt). One loop serves both tasks: the differences (data sets, loss, metrics) are a
few branches on config["task"]. It runs the same in one process on a CPU and under torchrun with DDP.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..binary.layers import collapsed_channels
from ..data.errors import InputError
from . import distributed
from .checkpoint import CheckpointState, init_weights, load_checkpoint, rng_state, save_atomic, set_rng_state
from .config import dump_yaml, model_config_for, to_json
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, autocast, unwrap
from .evaluation import METRIC, METRIC_LABEL, evaluate, without_confusion
from .loaders import TrainLoader, build_datasets, device_batches, train_loader, val_loader
from .metrics import SegmentationLoss
from .optim import build_optimizer, build_scheduler, lr_factor_fn
from .progress import RunScope
from .run_info import SlowStartWatch, describe_settings, write_defaults
from .runlog import format_duration, format_seg_report, write_csv
from .time_budget import TimeBudget

if TYPE_CHECKING:
    from ..data.check import DataReport

Log = Callable[[str], Any]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def output_dir(config: dict[str, Any]) -> Path:
    return Path(config["output"]["dir"]) / str(config["output"]["name"] or config["task"])


# --------------------------------------------------------------------------- building blocks


@dataclass
class TrainingParts:
    """What one optimisation step touches."""

    model: nn.Module  # the network itself: checkpoints and evaluation use it
    ddp_model: nn.Module  # what the training forward pass runs: ``model``, its DDP wrapper, compiled or not
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp: bool  # autocast on CUDA
    grad_clip: float  # 0: none


@dataclass
class RunRecord:
    """Where the run stands: restored on resume, stored in every checkpoint."""

    epoch: int = 0  # completed epochs
    step: int = 0
    best: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def build_model(
    config: dict[str, Any], model_cfg: dict[str, Any], info: DistInfo, log: Log, init: bool
) -> tuple[nn.Module, nn.Module]:
    """(network on the run's device, the module to train: DDP-wrapped under torchrun, compiled with
    train.compile); ``init``: apply train.init_from (not on resume, where the checkpoint's weights
    follow)."""
    from ..models import create_model

    train_cfg = config["train"]
    model = create_model(model_cfg)
    if init and train_cfg["init_from"]:
        log(init_weights(model, train_cfg["init_from"], config["task"], train_cfg["init_scope"]))
    if info.distributed and train_cfg["sync_bn"]:
        if info.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:  # PyTorch's SyncBatchNorm runs on GPUs only
            log("train.sync_bn ignored: SyncBatchNorm needs CUDA; each CPU process keeps its own statistics")
    model.to(info.device)
    step_model: nn.Module = model
    if info.distributed:
        step_model = DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None
        )
    if train_cfg["compile"]:
        # Only the training step is compiled: checkpoints keep ``model``'s own parameter names and
        # validation (other image sizes) runs eagerly. Training batches have one shape (fixed crops,
        # drop_last), so static shapes: inductor's dynamic-shape path failed on this network.
        log("train.compile: compiling the training step (torch.compile, inductor) at the first batch")
        step_model = cast(nn.Module, torch.compile(step_model, dynamic=False))
    return model, step_model


def resolve_class_weights(
    config: dict[str, Any], train_set: Any, log: Log, checked: DataReport | None = None
) -> list[float] | None:
    """loss.class_weights as numbers: ``median_frequency`` comes from the training masks, taken from
    the start-of-run data check's report when there is one (else read once here); the same masks
    give the same weights, so a resumed run gets the same loss."""
    weights = config["loss"].get("class_weights")
    if weights != "median_frequency":
        return None if weights is None else [float(w) for w in weights]
    from ..data.check import check_pairs, median_frequency_weights

    classes = list(config["data"]["classes"])
    if checked is None:
        if not (hasattr(train_set, "pairs") and hasattr(train_set, "label_map")):
            raise InputError(
                "loss.class_weights median_frequency needs a training set of image/mask files; "
                "give the weights as a list instead"
            )
        checked = check_pairs(
            {"train": train_set.pairs},
            train_set.label_map,
            classes,
            int(config["data"]["ignore_index"]),
            None,
            bool(config["output"]["progress"]),
        )
    values = [round(float(w), 4) for w in median_frequency_weights(checked.splits["train"])]
    log("class weights (median frequency): " + ", ".join(f"{c} {w:.2f}" for c, w in zip(classes, values)))
    return values


def build_criterion(config: dict[str, Any], class_weights: list[float] | None = None) -> nn.Module:
    loss_cfg = config["loss"]
    if config["task"] == "seg":
        return SegmentationLoss(
            loss_cfg["ce"],
            loss_cfg["dice"],
            loss_cfg["lovasz"],
            int(config["data"].get("ignore_index", 255)),
            loss_cfg["label_smoothing"],
            class_weights,
            float(loss_cfg.get("distill") or 0.0),
            None if loss_cfg["ohem_thresh"] is None else float(loss_cfg["ohem_thresh"]),
            float(loss_cfg["ohem_min_kept"]),
        )
    return nn.CrossEntropyLoss(label_smoothing=float(loss_cfg["label_smoothing"]))


def precision_of(amp: bool) -> str:
    """How the forward pass computes (the run's first lines say it: train.amp is ignored on CPU)."""
    if not amp:
        return "float32"
    return "bfloat16 autocast" if torch.cuda.is_bf16_supported() else "float16 autocast"


def build_training_parts(
    config: dict[str, Any],
    model: nn.Module,
    ddp_model: nn.Module,
    iters: int,
    info: DistInfo,
    class_weights: list[float] | None = None,
) -> TrainingParts:
    train_cfg = config["train"]
    optimizer = build_optimizer(model, train_cfg)
    amp = bool(train_cfg["amp"]) and info.device.type == "cuda"
    fp16 = amp and not torch.cuda.is_bf16_supported()  # bfloat16 needs no loss scaling
    return TrainingParts(
        model,
        ddp_model,
        build_criterion(config, class_weights).to(info.device),
        optimizer,
        build_scheduler(optimizer, train_cfg, iters),
        torch.amp.GradScaler("cuda", enabled=fp16),
        amp,
        float(train_cfg["grad_clip"] or 0),
    )


def resume_from(parts: TrainingParts, state: CheckpointState, info: DistInfo) -> RunRecord:
    """Restore weights, optimizer, schedule, scaler and this rank's RNG streams from a checkpoint."""
    parts.model.load_state_dict(state.model)
    saved_groups = len(state.optimizer.get("param_groups", []))
    if saved_groups != len(parts.optimizer.param_groups):
        raise InputError(
            f"the checkpoint's optimizer has {saved_groups} parameter groups, this run's "
            f"{len(parts.optimizer.param_groups)}: a run started before binary weights had their own "
            "decay resumes with --train.binary_weight_decay set to its train.weight_decay"
        )
    parts.optimizer.load_state_dict(state.optimizer)
    parts.scheduler.load_state_dict(state.scheduler)
    if state.scaler:
        parts.scaler.load_state_dict(state.scaler)
    set_rng_state(state.rng[info.rank] if len(state.rng) == info.world_size else state.rng[0])
    return RunRecord(
        int(state.epoch), int(state.step), state.best_metric, state.best_epoch, list(state.history)
    )


def _resumed_state(config: dict[str, Any], resume: str | None) -> CheckpointState | None:
    """The checkpoint a resumed run continues ("last": the run folder's last.pt), checked for the task."""
    if resume is None:
        return None
    path = output_dir(config) / "last.pt" if resume == "last" else Path(resume)
    ckpt = load_checkpoint(path)
    if ckpt.get("task") != config["task"]:
        raise InputError(f"cannot resume a {ckpt.get('task')} checkpoint with train-{config['task']}")
    try:
        return CheckpointState.from_dict(ckpt)
    except InputError as exc:
        raise InputError(f"cannot resume from {path}: {exc}") from None


# --------------------------------------------------------------------------- one epoch


def train_one_epoch(
    parts: TrainingParts,
    data: TrainLoader,
    info: DistInfo,
    task: str,
    ignore_index: int,
    epoch: int,
    epochs: int,
    iters: int,
    step: int,
    bar: tqdm,
    watch: SlowStartWatch | None = None,
) -> dict[str, Any]:
    """``iters`` optimisation steps over ``data``; returns the epoch's log row (summed over processes).

    ``step``: steps done before this epoch; ``bar``: the epoch's progress bar, ``watch``: the run's
    slow-start note.
    """
    data.sampler.set_epoch(epoch)
    parts.ddp_model.train()
    sums = torch.zeros(4, dtype=torch.float64)  # loss sum, correct, counted (pixels/images), images
    epoch_start = time.perf_counter()
    for i, (images, targets, *teacher) in enumerate(device_batches(data.loader, info.device, iters, bar)):
        with autocast(info, parts.amp):
            logits = parts.ddp_model(images)
            loss = parts.criterion(logits.float(), targets, *teacher)  # teacher maps: loss.distill
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {float(loss)} at epoch {epoch + 1} step {i + 1}; lower train.lr"
            )
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(loss).backward()
        if parts.grad_clip:
            parts.scaler.unscale_(parts.optimizer)
            nn.utils.clip_grad_norm_(parts.model.parameters(), parts.grad_clip)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.scheduler.step()
        step += 1
        with torch.no_grad():
            pred = logits.argmax(1)
            if task == "seg":
                valid = targets != ignore_index
                correct, counted = int((pred[valid] == targets[valid]).sum()), int(valid.sum())
            else:
                correct, counted = int((pred == targets).sum()), len(targets)
        sums += torch.tensor([loss.item() * len(images), correct, counted, len(images)], dtype=torch.float64)
        elapsed = time.perf_counter() - epoch_start
        left = elapsed / (i + 1) * ((iters - i - 1) + (epochs - epoch - 1) * iters)
        loss_sum, right, total, seen = sums.tolist()
        bar.set_postfix_str(
            f"loss {loss_sum / seen:.4f} {'pix_acc' if task == 'seg' else 'acc'} "
            f"{100 * right / max(total, 1):.1f} {info.world_size * seen / elapsed:.1f} img/s "
            f"run left {format_duration(left)}"
        )
        if watch is not None:
            watch.step(info.world_size * len(images))
    bar.close()
    if watch is not None:
        watch.close()  # the first epoch of this process is the one watched
    seconds = time.perf_counter() - epoch_start
    loss_sum, right, total, seen = all_reduce_sum(sums.to(info.device), info).cpu().tolist()
    return {
        "epoch": epoch + 1,
        "step": step,
        "lr": parts.optimizer.param_groups[0]["lr"],
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": right / max(total, 1),
        "images": int(seen),
        "seconds": seconds,
        "img_per_s": seen / max(seconds, 1e-9),
    }


# --------------------------------------------------------------------------- the run


def train(
    config: dict[str, Any],
    resume: str | None = None,
    explicit: set[str] | None = None,
    epochs_on_command_line: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the training described by ``config``; returns the summary (rank 0's view).

    resume: None, "last" (output_dir/last.pt) or a checkpoint path.
    explicit: the dotted keys the config file and command line set (config.explicit_keys); the
    others are reported as defaults at the start and in defaults.yaml.
    epochs_on_command_line: ``train.epochs`` was given on the command line; a resumed run whose
    time budget fitted its epoch count then takes this count instead (and the schedule with it).
    """
    info = distributed.setup(config["device"])
    try:
        # Leaving the scope, however the run ends, closes its bars and stops its loaders' workers
        # before anything (an error line) is printed (progress.py: why a run could hang otherwise).
        with RunScope() as scope:
            return _train(config, info, resume, explicit, scope, epochs_on_command_line)
    finally:
        distributed.cleanup()


def _train(
    config: dict[str, Any],
    info: DistInfo,
    resume: str | None,
    explicit: set[str] | None,
    scope: RunScope,
    epochs_on_command_line: bool = False,
) -> dict[str, Any]:
    task, train_cfg, data_cfg = config["task"], config["train"], config["data"]
    out_dir = output_dir(config)
    progress = bool(config["output"]["progress"]) and info.is_main
    log: Log = tqdm.write if info.is_main else (lambda *_a, **_k: None)
    resumed = _resumed_state(config, resume)
    if resumed is not None and resumed.budget_applied:  # the time budget already fixed the epoch count
        if not epochs_on_command_line:
            train_cfg["epochs"] = int(resumed.epochs)
        elif int(train_cfg["epochs"]) != int(resumed.epochs):
            log(
                f"--train.epochs {train_cfg['epochs']} replaces the {resumed.epochs} epochs the time "
                "budget fitted; the schedule follows the new count"
            )

    seed = int(config["seed"])
    seed_everything(seed)
    train_set, val_set, classes = build_datasets(config)
    checked: DataReport | None = None
    if task == "seg" and data_cfg.get("check", True):
        from ..data.check import check_before_training

        checked, failure = (
            check_before_training(config, train_set, val_set, progress, log) if info.is_main else (None, None)
        )
        failure = all_gather_objects(failure, info)[0]  # rank 0 read the files; every rank stops
        if failure:
            raise InputError(failure)
    model_cfg = model_config_for(config, len(classes))
    model, ddp_model = build_model(config, model_cfg, info, log, init=resumed is None)
    # Per-rank stream for dropout etc.; model initialisation above used the shared seed.
    torch.manual_seed(seed + info.rank)

    batch_size = int(data_cfg["batch_size"])
    per_rank = math.ceil(len(train_set) / info.world_size)
    if per_rank < batch_size:
        raise InputError(
            f"training set has {len(train_set)} images ({per_rank} per process), fewer than "
            f"data.batch_size {batch_size}"
        )
    train_data = train_loader(config, train_set, info)
    scope.loader(train_data.loader)
    val_data = scope.loader(val_loader(config, val_set, info))
    iters = len(train_data.loader)
    if train_cfg["steps_per_epoch"]:
        iters = min(iters, int(train_cfg["steps_per_epoch"]))
    # rank 0 computes them (from its data check's report), every rank uses its numbers
    class_weights = (
        resolve_class_weights(config, train_set, log, checked) if task == "seg" and info.is_main else None
    )
    class_weights = all_gather_objects(class_weights, info)[0]
    parts = build_training_parts(config, model, ddp_model, iters, info, class_weights)
    record = RunRecord()
    if resumed is not None:
        record = resume_from(parts, resumed, info)
        log(f"resumed from epoch {record.epoch} ({record.step} steps)")

    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(dump_yaml(config))
        write_defaults(out_dir / "defaults.yaml", config, model_cfg, explicit)
    log(describe_settings(config, model_cfg, explicit, out_dir, info.device.type))
    log(
        f"{task}: {len(train_set)} train / {len(val_set)} val images, {len(classes)} classes, "
        f"world size {info.world_size} on {info.device.type} ({precision_of(parts.amp)}), "
        f"{iters} steps/epoch -> {out_dir}"
    )

    epochs = int(train_cfg["epochs"])
    metric_name = METRIC[task]
    ignore = int(data_cfg.get("ignore_index", 255))
    start_epoch = record.epoch
    budget = TimeBudget(
        train_cfg["time_budget_minutes"],
        resumed.elapsed if resumed else 0.0,
        bool(resumed and resumed.budget_applied),
        start_epoch,
    )
    save_seconds = 0.0  # the last checkpoint write: an epoch costs its training time plus this
    last_scores: dict[str, Any] = {}
    # The slow-start note judges the first steps' pace; with train.compile they are the compile.
    watched = info.is_main and not train_cfg["compile"]
    watch = SlowStartWatch(log, iters, epochs - start_epoch, info.device.type) if watched else None
    while record.epoch < epochs:  # not range(): the time budget may lower `epochs` during the run
        epoch = record.epoch
        bar = scope.bar(
            total=iters,
            desc=f"epoch {epoch + 1}/{epochs}",
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        row = train_one_epoch(
            parts, train_data, info, task, ignore, epoch, epochs, iters, record.step, bar, watch
        )
        record.step = row["step"]

        budget_note = ""
        if budget.due(epoch + 1, epochs):
            fitted = budget.fit(
                epoch + 1,
                epochs,
                row["seconds"] + save_seconds,
                len(val_set) / len(train_set),
                int(config["eval"]["every"]),
            )
            epochs = all_gather_objects(fitted, info)[0]  # rank 0 decides, so every rank stops together
            if epochs != int(train_cfg["epochs"]):
                # Logged after this epoch's line, so it reads as what it is: decided after epoch 2.
                budget_note = (
                    f"time budget {budget.seconds / 60:g} min: {epochs} epochs instead of "
                    f"{train_cfg['epochs']} (timed on epoch {epoch + 1})"
                )
                train_cfg["epochs"] = epochs
                factor = lr_factor_fn(train_cfg, iters)
                parts.scheduler.lr_lambdas = [factor] * len(parts.scheduler.lr_lambdas)
                if info.is_main:
                    (out_dir / "config.yaml").write_text(dump_yaml(config))

        improved = False
        if epoch + 1 == epochs or (epoch + 1) % int(config["eval"]["every"]) == 0:
            last_scores = evaluate(model, val_data, config, classes, info, parts.amp, progress)
            if task == "seg":
                row.update(
                    miou=last_scores["miou"],
                    pixel_acc=last_scores["pixel_acc"],
                    mean_acc=last_scores["mean_acc"],
                )
            else:
                row.update(last_scores)
            value = last_scores[metric_name]
            if record.best is None or value > record.best:
                record.best, record.best_epoch, improved = value, epoch + 1, True
        record.history.append(row)
        record.epoch = epoch + 1

        rng = all_gather_objects(rng_state(), info)  # collective: every rank takes part
        if info.is_main:
            state = CheckpointState(
                task=task,
                model=model_state(model),
                model_config=model_cfg,
                config=to_json(config),
                classes=list(classes),
                palette=data_cfg.get("palette"),
                mean=list(data_cfg["mean"]),
                std=list(data_cfg["std"]),
                epoch=record.epoch,
                epochs=epochs,
                budget_applied=budget.applied,
                step=record.step,
                metric_name=metric_name,
                metrics=without_confusion(last_scores),
                best_metric=record.best,
                best_epoch=record.best_epoch,
                history=record.history,
                optimizer=parts.optimizer.state_dict(),
                scheduler=parts.scheduler.state_dict(),
                scaler=parts.scaler.state_dict(),
                rng=rng,
                elapsed=budget.elapsed(),
            )
            save_started = time.perf_counter()
            save_run_files(state, out_dir, improved)
            save_seconds = time.perf_counter() - save_started
        shown = (
            f"  val {METRIC_LABEL[metric_name]} {100 * row[metric_name]:.2f}" if metric_name in row else ""
        )
        log(f"epoch {epoch + 1}/{epochs}  loss {row['train_loss']:.4f}{shown}  {row['img_per_s']:.1f} img/s")
        collapsed, channels = collapsed_channels(model)
        if collapsed:
            log(
                f"warning: {collapsed} of {channels} binary conv output channels have collapsed latent "
                "weights (mean |w| < 1e-6): they are silent; see docs/training.md, train.binary_weight_decay"
            )
        if budget_note:
            log(budget_note)

    summary = {
        "task": task,
        "output_dir": str(out_dir),
        "epochs": epochs,
        "steps": record.step,
        "steps_per_rank": all_gather_objects(record.step - (resumed.step if resumed else 0), info),
        "world_size": info.world_size,
        "device": info.device.type,
        "seconds": budget.elapsed(),
        "metric": metric_name,
        "best_metric": record.best,
        "best_epoch": record.best_epoch,
        "final": without_confusion(last_scores),
        "train_images": len(train_set),
        "val_images": len(val_set),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if info.is_main:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(
            format_summary(summary, model_cfg, record.history, last_scores if task == "seg" else None),
            flush=True,
        )
    return summary


def save_run_files(state: CheckpointState, out_dir: Path, improved: bool) -> None:
    """last.pt (atomic), best.pt when the score improved (a copy of it, swapped in atomically), log.csv."""
    save_atomic(state.to_dict(), out_dir / "last.pt")
    if improved:
        tmp = out_dir / ".best.pt.tmp"
        shutil.copyfile(out_dir / "last.pt", tmp)
        tmp.replace(out_dir / "best.pt")
    write_csv(out_dir / "log.csv", state.history)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with SyncBatchNorm and DDP unwrapped (SyncBN keeps BatchNorm's key names)."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def format_summary(
    summary: dict[str, Any],
    model_cfg: dict[str, Any],
    history: list[dict[str, Any]],
    seg_scores: dict[str, Any] | None,
) -> str:
    from ..models import REFERENCE_MODELS, ModelConfig, model_name

    name = (
        model_cfg["arch"]
        if model_cfg["arch"] in REFERENCE_MODELS
        else model_name(ModelConfig.from_dict(model_cfg))
    )
    out = Path(summary["output_dir"])
    metric = summary["metric"]
    images = sum(r["images"] for r in history)
    seconds = sum(r["seconds"] for r in history)
    best = summary["best_metric"]
    lines = [
        "",
        f"== {summary['task']} run finished in {format_duration(summary['seconds'])} ==",
        f"model   {name}  ({summary['parameters'] / 1e6:.2f} M parameters)",
        f"data    {summary['train_images']} train / {summary['val_images']} val images, "
        f"{model_cfg['num_classes']} classes",
        f"run     {summary['epochs']} epochs, {summary['steps']} steps, world size {summary['world_size']} "
        f"on {summary['device']}, {images / max(seconds, 1e-9):.1f} img/s in training",
        f"best    {METRIC_LABEL[metric]} {100 * best:.2f} at epoch {summary['best_epoch']} "
        f"-> {out / 'best.pt'}"
        if best is not None
        else "best    (no validation run)",
        f"last    {out / 'last.pt'}",
    ]
    if best is not None and summary["best_epoch"] != summary["epochs"]:
        # A small validation split can crown a mid-schedule checkpoint by noise (docs/training.md).
        lines.append(
            f"note    best.pt is epoch {summary['best_epoch']} of {summary['epochs']}: on a validation "
            f"split of {summary['val_images']} images that can be noise; score best.pt and last.pt "
            "on a larger held-out set before exporting one"
        )
    lines.append(f"log     {out / 'log.csv'}")
    final = summary["final"]
    if summary["task"] == "cls" and final:
        lines.append(
            f"final   top-1 {100 * final['top1']:.2f}  top-5 {100 * final['top5']:.2f}  "
            f"loss {final['val_loss']:.4f}"
        )
    if seg_scores:
        lines.append("final validation:")
        lines.append(format_seg_report(seg_scores, show_confusion=False))
    return "\n".join(lines)
