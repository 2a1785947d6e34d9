"""The training loop for classification and segmentation, and checkpoint evaluation.

One loop serves both tasks; the differences (data sets, loss, metrics) are a few branches on
config["task"]. It runs the same in one process on a CPU and under torchrun with DDP.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import data as datasets
from ..data.errors import InputError
from . import distributed
from .checkpoint import FORMAT, VERSION, init_weights, load_checkpoint, rng_state, save_atomic, set_rng_state
from .config import dump_yaml, from_json, load_config, to_json
from .distributed import DistInfo, all_gather_objects, all_reduce_sum
from .metrics import SegmentationLoss, confusion_matrix, predict_probs, segmentation_scores, topk_correct
from .optim import build_optimizer, build_scheduler, lr_factor_fn
from .progress import RunScope, use_thread_lock
from .run_info import SlowStartWatch, describe_settings, write_defaults
from .runlog import format_duration, format_seg_report, write_csv

METRIC = {"seg": "miou", "cls": "top1"}
METRIC_LABEL = {"miou": "mIoU", "top1": "top-1"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def output_dir(config: dict[str, Any]) -> Path:
    return Path(config["output"]["dir"]) / str(config["output"]["name"] or config["task"])


# --------------------------------------------------------------------------- building blocks

def build_datasets(config: dict[str, Any]) -> tuple[Any, Any, list[str]]:
    data = config["data"]
    if config["task"] == "seg":
        train_set = datasets.build_seg_dataset(data, "train")
        val_set = datasets.build_seg_dataset(data, "val")
        return train_set, val_set, list(data["classes"])
    train_set = datasets.build_cls_dataset(data, "train")
    val_set = datasets.build_cls_dataset(data, "val", classes=train_set.classes)
    return train_set, val_set, train_set.classes


def fit_epochs_to_budget(seconds_left: float, epochs_done: int, epochs: int, epoch_seconds: float,
                         val_to_train: float, eval_every: int) -> int:
    """Total epochs that fit in ``seconds_left`` more, from the last epoch's training time.

    Validation is a forward pass over the val set every ``eval_every`` epochs; a forward pass costs
    about a third of a training step, so it adds ``val_to_train / 3 / eval_every`` per epoch.
    Never fewer than the epochs done, never more than asked for.
    """
    per_epoch = epoch_seconds * (1.0 + val_to_train / 3.0 / max(1, eval_every))
    fit = epochs_done + int(max(0.0, seconds_left) // max(per_epoch, 1e-9))
    return max(epochs_done, min(epochs, fit))


def model_config_for(config: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """The config's ``model`` section with task and num_classes filled in from the data."""
    from ..models import REFERENCE_MODELS, ModelConfig

    fields = dict(config["model"])
    given = fields.get("num_classes")
    if given is not None and int(given) != num_classes:
        raise InputError(f"model.num_classes is {given} but the data has {num_classes} classes")
    fields.update(task=config["task"], num_classes=num_classes)
    if fields.get("arch") in REFERENCE_MODELS:
        # A full-precision comparison network: only its name and class count define it.
        if config["task"] != "seg":
            raise InputError(f"model.arch {fields['arch']!r} is a segmentation network; use train-seg")
        return {"arch": fields["arch"], "task": "seg", "num_classes": num_classes}
    try:
        return ModelConfig.from_dict(fields).to_dict()
    except (TypeError, ValueError) as exc:
        raise InputError(str(exc)) from None


def make_loader(dataset: Any, sampler: Any, batch_size: int, workers: int, info: DistInfo,
                drop_last: bool, collate: Any = None) -> DataLoader:
    use_thread_lock()  # before workers are forked: tqdm's default lock is shared with them (progress.py)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        # Workers live across epochs: augmentation seeds come from the sampler, not worker state.
        persistent_workers=workers > 0,
        # Worker base seeds come from a private generator, not the global one: persistent workers
        # draw once per run instead of once per epoch, and a resumed run must consume the global
        # RNG (dropout) exactly as an uninterrupted one does.
        generator=torch.Generator().manual_seed(0),
        pin_memory=info.device.type == "cuda",
        drop_last=drop_last,
        worker_init_fn=datasets.seed_worker,
        collate_fn=collate,
    )


def autocast(info: DistInfo, enabled: bool):
    """bfloat16 autocast on CUDA when supported (no loss scaling needed), else float16; CPU: none."""
    if not enabled or info.device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


# --------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_seg(model: nn.Module, loader: DataLoader, classes: list[str], ignore_index: int, info: DistInfo,
                 scales: list[float] = (1.0,), flip: bool = False, max_batches: int | None = None,
                 amp: bool = False, progress: bool = False) -> dict[str, Any]:
    """Confusion matrix over the loader (summed over processes) -> mIoU, per-class IoU, pixel accuracy."""
    model.eval()
    n = len(classes)
    confusion = torch.zeros(n, n, dtype=torch.int64, device=info.device)
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    # A context: the bar is closed (its line cleared) before an error from the loader is printed.
    with tqdm(total=total, desc="eval", leave=False, disable=not (progress and info.is_main), file=sys.stderr) as bar:
        for i, (images, masks) in enumerate(loader):
            if i >= total:
                break
            images = images.to(info.device, non_blocking=True)
            masks = masks.to(info.device, non_blocking=True)
            with autocast(info, amp):
                probs = predict_probs(model, images, list(scales), flip)
            confusion += confusion_matrix(probs.argmax(1), masks, n, ignore_index)
            bar.update()
    return segmentation_scores(all_reduce_sum(confusion, info), classes)


@torch.no_grad()
def evaluate_cls(model: nn.Module, loader: DataLoader, info: DistInfo, max_batches: int | None = None,
                 amp: bool = False, progress: bool = False) -> dict[str, Any]:
    """Top-1 / top-5 accuracy and mean cross-entropy, summed over processes."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=info.device)  # top1, top5, loss sum, count
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    with tqdm(total=total, desc="eval", leave=False, disable=not (progress and info.is_main), file=sys.stderr) as bar:
        for i, (images, targets) in enumerate(loader):
            if i >= total:
                break
            images, targets = images.to(info.device), targets.to(info.device)
            with autocast(info, amp):
                logits = model(images).float()
            top1, top5 = topk_correct(logits, targets, (1, 5))
            loss = nn.functional.cross_entropy(logits, targets, reduction="sum")
            sums += torch.tensor([top1, top5, float(loss), len(targets)], dtype=torch.float64, device=info.device)
            bar.update()
    top1, top5, loss, count = all_reduce_sum(sums, info).tolist()
    count = max(count, 1.0)
    return {"top1": top1 / count, "top5": top5 / count, "val_loss": loss / count}


# --------------------------------------------------------------------------- training

def train(config: dict[str, Any], resume: str | None = None, explicit: set[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the training described by ``config``; returns the summary (rank 0's view).

    resume: None, "last" (output_dir/last.pt) or a checkpoint path.
    explicit: the dotted keys the config file and command line set (config.explicit_keys); the
    others are reported as defaults at the start and in defaults.yaml.
    """
    info = distributed.setup(config["device"])
    try:
        # Leaving the scope, however the run ends, closes its bars and stops its loaders' workers
        # before anything (an error line) is printed (progress.py: why a run could hang otherwise).
        with RunScope() as scope:
            return _train(config, info, resume, explicit, scope)
    finally:
        distributed.cleanup()


def _train(config: dict[str, Any], info: DistInfo, resume: str | None, explicit: set[str] | None,
           scope: RunScope) -> dict[str, Any]:
    task, train_cfg, data_cfg = config["task"], config["train"], config["data"]
    out_dir = output_dir(config)
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(out_dir / "last.pt" if resume == "last" else resume)
        if ckpt.get("task") != task:
            raise InputError(f"cannot resume a {ckpt.get('task')} checkpoint with train-{task}")
        if ckpt.get("budget_applied"):  # the time budget already fixed the epoch count: keep it
            train_cfg["epochs"] = int(ckpt["epochs"])
    progress = bool(config["output"]["progress"]) and info.is_main
    log = tqdm.write if info.is_main else (lambda *_a, **_k: None)

    seed = int(config["seed"])
    seed_everything(seed)
    train_set, val_set, classes = build_datasets(config)
    if task == "seg" and data_cfg.get("check", True):
        from ..data.check import check_before_training

        failure = check_before_training(config, train_set, val_set, progress, log) if info.is_main else None
        failure = all_gather_objects(failure, info)[0]  # rank 0 read the files; every rank stops
        if failure:
            raise InputError(failure)
    model_cfg = model_config_for(config, len(classes))
    from ..models import create_model

    model = create_model(model_cfg)
    if ckpt is None and train_cfg["init_from"]:
        log(init_weights(model, train_cfg["init_from"], task, train_cfg["init_scope"]))
    if info.distributed and train_cfg["sync_bn"]:
        if info.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:  # PyTorch's SyncBatchNorm runs on GPUs only
            log("train.sync_bn ignored: SyncBatchNorm needs CUDA; each CPU process keeps its own statistics")
    model.to(info.device)
    ddp_model: nn.Module = model
    if info.distributed:
        ddp_model = DistributedDataParallel(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    # Per-rank stream for dropout etc.; model initialisation above used the shared seed.
    torch.manual_seed(seed + info.rank)

    batch_size = int(data_cfg["batch_size"])
    per_rank = math.ceil(len(train_set) / info.world_size)
    if per_rank < batch_size:
        raise InputError(
            f"training set has {len(train_set)} images ({per_rank} per process), fewer than "
            f"data.batch_size {batch_size}"
        )
    sampler = datasets.SeededSampler(train_set, info.world_size, info.rank, shuffle=True, seed=seed)
    ignore = int(data_cfg.get("ignore_index", 255))
    collate = (lambda b: datasets.pad_collate(b, ignore)) if task == "seg" else None
    workers = int(data_cfg["workers"])
    train_loader = scope.loader(make_loader(train_set, sampler, batch_size, workers, info, drop_last=True,
                                            collate=collate))
    val_loader = scope.loader(make_loader(val_set, datasets.ShardSampler(val_set, info.world_size, info.rank),
                                          int(data_cfg["val_batch_size"]), workers, info, drop_last=False,
                                          collate=collate))
    iters = len(train_loader)
    if train_cfg["steps_per_epoch"]:
        iters = min(iters, int(train_cfg["steps_per_epoch"]))

    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg, iters)
    use_amp = bool(train_cfg["amp"]) and info.device.type == "cuda"
    fp16 = use_amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    loss_cfg = config["loss"]
    if task == "seg":
        criterion: nn.Module = SegmentationLoss(loss_cfg["ce"], loss_cfg["dice"], loss_cfg["lovasz"], ignore,
                                                loss_cfg["label_smoothing"])
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=float(loss_cfg["label_smoothing"]))

    epochs = int(train_cfg["epochs"])
    budget_seconds = 60.0 * float(train_cfg["time_budget_minutes"] or 0)
    budget_applied = ckpt is not None and bool(ckpt.get("budget_applied"))
    metric_name = METRIC[task]
    start_epoch, step, best, best_epoch = 0, 0, None, None
    elapsed_before = 0.0  # wall time of the run before a resume: "finished in" counts the whole run
    history: list[dict[str, Any]] = []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        best, best_epoch = ckpt.get("best_metric"), ckpt.get("best_epoch")
        history = list(ckpt.get("history", []))
        elapsed_before = float(ckpt.get("elapsed", 0.0))
        states = ckpt["rng"]
        set_rng_state(states[info.rank] if len(states) == info.world_size else states[0])
        log(f"resumed from epoch {start_epoch} ({step} steps)")

    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(dump_yaml(config))
        write_defaults(out_dir / "defaults.yaml", config, model_cfg, explicit)
    log(describe_settings(config, model_cfg, explicit, out_dir, info.device.type))
    log(f"{task}: {len(train_set)} train / {len(val_set)} val images, {len(classes)} classes, "
        f"world size {info.world_size} on {info.device.type}, {iters} steps/epoch -> {out_dir}")

    run_start = time.perf_counter()
    steps_this_rank = 0
    seconds_per_iter = None
    save_seconds = 0.0  # the last checkpoint write: an epoch costs its training time plus this
    last_scores: dict[str, Any] = {}
    epoch = start_epoch
    watch = SlowStartWatch(log, iters, epochs - start_epoch, info.device.type) if info.is_main else None
    while epoch < epochs:  # not range(): a time budget may lower `epochs` during the run
        sampler.set_epoch(epoch)
        ddp_model.train()
        sums = torch.zeros(4, dtype=torch.float64)  # loss sum, correct, counted (pixels/images), images
        epoch_start = time.perf_counter()
        bar = scope.bar(total=iters, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, file=sys.stderr,
                        dynamic_ncols=True)
        for i, (images, targets) in enumerate(train_loader):
            if i >= iters:
                break
            images = images.to(info.device, non_blocking=True)
            targets = targets.to(info.device, non_blocking=True)
            with autocast(info, use_amp):
                logits = ddp_model(images)
                loss = criterion(logits.float(), targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {float(loss)} at epoch {epoch + 1} step {i + 1}; lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if train_cfg["grad_clip"]:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), float(train_cfg["grad_clip"]))
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            steps_this_rank += 1
            with torch.no_grad():
                pred = logits.argmax(1)
                if task == "seg":
                    valid = targets != ignore
                    correct, counted = int((pred[valid] == targets[valid]).sum()), int(valid.sum())
                else:
                    correct, counted = int((pred == targets).sum()), len(targets)
            sums += torch.tensor([loss.item() * len(images), correct, counted, len(images)], dtype=torch.float64)
            elapsed = time.perf_counter() - epoch_start
            seconds_per_iter = elapsed / (i + 1)
            left = seconds_per_iter * ((iters - i - 1) + (epochs - epoch - 1) * iters)
            bar.set_postfix_str(
                f"loss {sums[0] / sums[3]:.4f} {'pix_acc' if task == 'seg' else 'acc'} "
                f"{100 * sums[1] / max(sums[2], 1):.1f} {info.world_size * sums[3] / elapsed:.1f} img/s "
                f"run left {format_duration(left)}"
            )
            bar.update()
            if watch is not None:
                watch.step(info.world_size * len(images))
        bar.close()
        if watch is not None:
            watch.close()  # the first epoch of this process is the one watched
        train_seconds = time.perf_counter() - epoch_start
        sums = all_reduce_sum(sums.to(info.device), info).cpu()
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": float(sums[0] / max(sums[3], 1)),
            "train_acc": float(sums[1] / max(sums[2], 1)),
            "images": int(sums[3]),
            "seconds": train_seconds,
            "img_per_s": float(sums[3]) / max(train_seconds, 1e-9),
        }

        budget_note = ""
        if budget_seconds and not budget_applied and (epoch + 1 - start_epoch >= 2 or epoch + 1 == epochs):
            fitted = fit_epochs_to_budget(budget_seconds - elapsed_before - (time.perf_counter() - run_start),
                                          epoch + 1,
                                          epochs, train_seconds + save_seconds, len(val_set) / len(train_set),
                                          int(config["eval"]["every"]))
            epochs = all_gather_objects(fitted, info)[0]  # rank 0 decides, so every rank stops together
            budget_applied = True
            if epochs != int(train_cfg["epochs"]):
                # Logged after this epoch's line, so it reads as what it is: decided after epoch 2.
                budget_note = (f"time budget {budget_seconds / 60:g} min: {epochs} epochs instead of "
                               f"{train_cfg['epochs']} (timed on epoch {epoch + 1})")
                train_cfg["epochs"] = epochs
                factor = lr_factor_fn(train_cfg, iters)
                scheduler.lr_lambdas = [factor] * len(scheduler.lr_lambdas)
                if info.is_main:
                    (out_dir / "config.yaml").write_text(dump_yaml(config))

        is_last = epoch + 1 == epochs
        improved = False
        if is_last or (epoch + 1) % int(config["eval"]["every"]) == 0:
            eval_cfg = config["eval"]
            if task == "seg":
                last_scores = evaluate_seg(model, val_loader, classes, ignore, info, eval_cfg["scales"],
                                           eval_cfg["flip"], eval_cfg["max_batches"], use_amp, progress)
                row.update(miou=last_scores["miou"], pixel_acc=last_scores["pixel_acc"],
                           mean_acc=last_scores["mean_acc"])
            else:
                last_scores = evaluate_cls(model, val_loader, info, eval_cfg["max_batches"], use_amp, progress)
                row.update(last_scores)
            value = last_scores[metric_name]
            if best is None or value > best:
                best, best_epoch, improved = value, epoch + 1, True
        history.append(row)

        rng = all_gather_objects(rng_state(), info)  # collective: every rank takes part
        if info.is_main:
            state = {
                "format": FORMAT,
                "version": VERSION,
                "task": task,
                "model": model_state(model),
                "model_config": model_cfg,
                "config": to_json(config),
                "classes": list(classes),
                "palette": config["data"].get("palette"),
                "mean": list(data_cfg["mean"]),
                "std": list(data_cfg["std"]),
                "epoch": epoch + 1,
                "epochs": epochs,
                "budget_applied": budget_applied,
                "step": step,
                "metric_name": metric_name,
                "metrics": {k: v for k, v in last_scores.items() if k != "confusion"} if last_scores else {},
                "best_metric": best,
                "best_epoch": best_epoch,
                "history": history,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng,
                "elapsed": elapsed_before + time.perf_counter() - run_start,
            }
            save_started = time.perf_counter()
            save_atomic(state, out_dir / "last.pt")
            if improved:
                tmp = out_dir / ".best.pt.tmp"
                shutil.copyfile(out_dir / "last.pt", tmp)
                tmp.replace(out_dir / "best.pt")
            write_csv(out_dir / "log.csv", history)
            save_seconds = time.perf_counter() - save_started
        shown = f"  val {METRIC_LABEL[metric_name]} {100 * row[metric_name]:.2f}" if metric_name in row else ""
        log(f"epoch {epoch + 1}/{epochs}  loss {row['train_loss']:.4f}{shown}  {row['img_per_s']:.1f} img/s")
        if budget_note:
            log(budget_note)
        epoch += 1

    steps_per_rank = all_gather_objects(steps_this_rank, info)
    summary = {
        "task": task,
        "output_dir": str(out_dir),
        "epochs": epochs,
        "steps": step,
        "steps_per_rank": steps_per_rank,
        "world_size": info.world_size,
        "device": info.device.type,
        "seconds": elapsed_before + time.perf_counter() - run_start,
        "metric": metric_name,
        "best_metric": best,
        "best_epoch": best_epoch,
        "final": {k: v for k, v in last_scores.items() if k != "confusion"},
        "train_images": len(train_set),
        "val_images": len(val_set),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if info.is_main:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(format_summary(summary, model_cfg, history, last_scores if task == "seg" else None), flush=True)
    return summary


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with SyncBatchNorm and DDP unwrapped (SyncBN keeps BatchNorm's key names)."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def format_summary(summary: dict[str, Any], model_cfg: dict[str, Any], history: list[dict[str, Any]],
                   seg_scores: dict[str, Any] | None) -> str:
    from ..models import REFERENCE_MODELS, ModelConfig, model_name

    name = (model_cfg["arch"] if model_cfg["arch"] in REFERENCE_MODELS
            else model_name(ModelConfig.from_dict(model_cfg)))
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
        f"best    {METRIC_LABEL[metric]} {100 * best:.2f} at epoch {summary['best_epoch']} -> {out / 'best.pt'}"
        if best is not None else "best    (no validation run)",
        f"last    {out / 'last.pt'}",
        f"log     {out / 'log.csv'}",
    ]
    final = summary["final"]
    if summary["task"] == "cls" and final:
        lines.append(f"final   top-1 {100 * final['top1']:.2f}  top-5 {100 * final['top5']:.2f}  "
                     f"loss {final['val_loss']:.4f}")
    if seg_scores:
        lines.append("final validation:")
        lines.append(format_seg_report(seg_scores, show_confusion=False))
    return "\n".join(lines)


# --------------------------------------------------------------------------- checkpoint evaluation

def evaluate_checkpoint(checkpoint: str | Path, config_path: str | Path | None = None,
                        overrides: list[tuple[str, Any]] = (), output: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a segmentation checkpoint on the validation split of its config (or ``config_path``)."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("task") != "seg":
        raise InputError(f"{checkpoint} is a {ckpt.get('task')} checkpoint; train-seg eval needs a seg one")
    config = load_config("seg", config_path, overrides, base_config=from_json(ckpt["config"]))
    info = distributed.setup(config["device"])
    try:
        from ..models import create_model

        classes = list(ckpt["classes"])
        if len(config["data"]["classes"]) != len(classes):
            raise InputError(f"config has {len(config['data']['classes'])} classes, checkpoint {checkpoint} "
                             f"has {len(classes)}")
        model = create_model(ckpt["model_config"])
        model.load_state_dict(ckpt["model"])
        model.to(info.device)
        val_set = datasets.build_seg_dataset(config["data"], "val")
        ignore = int(config["data"]["ignore_index"])
        loader = make_loader(val_set, datasets.ShardSampler(val_set, info.world_size, info.rank),
                             int(config["data"]["val_batch_size"]), int(config["data"]["workers"]), info,
                             drop_last=False, collate=lambda b: datasets.pad_collate(b, ignore))
        eval_cfg = config["eval"]
        scores = evaluate_seg(model, loader, classes, ignore, info, eval_cfg["scales"], eval_cfg["flip"],
                              eval_cfg["max_batches"], bool(config["train"]["amp"]),
                              bool(config["output"]["progress"]))
        if info.is_main:
            print(f"{checkpoint}: epoch {ckpt['epoch']}, {len(val_set)} val images, scales "
                  f"{eval_cfg['scales']}{' + flip' if eval_cfg['flip'] else ''}")
            print(format_seg_report(scores))
            if output is not None:
                Path(output).write_text(json.dumps(scores, indent=2))
        return scores
    finally:
        distributed.cleanup()
