"""Data sets and DataLoaders of a run config, and the one loop over a loader that every pass uses.

Training, validation and BatchNorm re-estimation read batches the same way: ``build_loaders`` makes
the train and val loaders (samplers sharded over processes), ``device_batches`` walks one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from .. import data as datasets
from .distributed import DistInfo
from .progress import use_thread_lock


def build_datasets(config: dict[str, Any]) -> tuple[Any, Any, list[str]]:
    """(train set, val set, class names) of a run config."""
    data = config["data"]
    train_set: Any
    val_set: Any
    if config["task"] == "seg":
        train_set = datasets.build_seg_dataset(data, "train")
        val_set = datasets.build_seg_dataset(data, "val")
        return train_set, val_set, list(data["classes"])
    train_set = datasets.build_cls_dataset(data, "train")
    val_set = datasets.build_cls_dataset(data, "val", classes=train_set.classes)
    return train_set, val_set, train_set.classes


def collate_for(config: dict[str, Any]) -> Callable[[list[Any]], Any] | None:
    """Segmentation batches pad their images and masks (masks with the ignore index); cls: default."""
    if config["task"] != "seg":
        return None
    ignore = int(config["data"].get("ignore_index", 255))
    return lambda batch: datasets.pad_collate(batch, ignore)


def make_loader(
    dataset: Any,
    sampler: Any,
    batch_size: int,
    workers: int,
    info: DistInfo,
    drop_last: bool,
    collate: Any = None,
) -> DataLoader:
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


def val_loader(config: dict[str, Any], val_set: Any, info: DistInfo) -> DataLoader:
    """The validation loader: this process's shard, in order, every image once."""
    data_cfg = config["data"]
    return make_loader(
        val_set,
        datasets.ShardSampler(val_set, info.world_size, info.rank),
        int(data_cfg["val_batch_size"]),
        int(data_cfg["workers"]),
        info,
        drop_last=False,
        collate=collate_for(config),
    )


@dataclass
class TrainLoader:
    loader: DataLoader
    sampler: datasets.SeededSampler  # set_epoch(epoch) before each epoch: the epoch's shuffle


def train_loader(config: dict[str, Any], train_set: Any, info: DistInfo) -> TrainLoader:
    """The training loader: shuffled per epoch from the run's seed, sharded over processes, full batches."""
    data_cfg = config["data"]
    sampler = datasets.SeededSampler(
        train_set, info.world_size, info.rank, shuffle=True, seed=int(config["seed"])
    )
    loader = make_loader(
        train_set,
        sampler,
        int(data_cfg["batch_size"]),
        int(data_cfg["workers"]),
        info,
        drop_last=True,
        collate=collate_for(config),
    )
    return TrainLoader(loader, sampler)


def device_batches(
    loader: DataLoader, device: torch.device, limit: int | None = None, bar: Any = None
) -> Iterator[tuple[torch.Tensor, ...]]:
    """(inputs, targets[, teacher maps]) of the first ``limit`` batches (None: all), on ``device``.

    ``bar`` (a tqdm bar) advances once the caller is done with a batch. The batch after the last one
    is still fetched, as the loops this replaced did, so a run consumes its data (and any RNG the
    data sets touch) exactly as before: checkpoints of earlier runs resume bit for bit.
    """
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        yield tuple(t.to(device, non_blocking=True) for t in batch)
        if bar is not None:
            bar.update()
