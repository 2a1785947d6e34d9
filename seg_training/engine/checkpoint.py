"""Training checkpoints: atomic writes, safe loading, the state object, RNG state, weight initialisation.

A checkpoint is a dict of tensors and plain Python values only (the run config travels as a JSON
string), so it loads with ``torch.load(weights_only=True)``, which never unpickles arbitrary objects.

The file layout of a training run's checkpoint is :class:`CheckpointState` (``to_dict``): format,
version, task, model (state dict), model_config (ModelConfig fields), config (JSON), classes,
palette, mean, std, epoch (completed epochs), epochs, budget_applied, step, metric_name, metrics,
best_metric, best_epoch, history, optimizer, scheduler, scaler, rng, elapsed (and bn_recalibration
after ``train-seg recalibrate-bn``). Other writers (packed_init's encoder checkpoints) share the
format marker and the model/model_config keys only.

One reading contract: :func:`load_checkpoint` returns the validated dict; :func:`model_from_checkpoint`
rebuilds the network from it.
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.errors import InputError

FORMAT = "groupnet-training-checkpoint"
VERSION = 1


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over ``path``:
    a reader (or a run killed mid-write) sees the old file or the new one, never half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training checkpoint, loaded without unpickling code; InputError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a usable checkpoint"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{path} is not a training checkpoint of this project (no '{FORMAT}' marker)")
    if int(ckpt.get("version", 0)) > VERSION:
        raise InputError(f"checkpoint {path} has version {ckpt['version']}; this code reads up to {VERSION}")
    return ckpt


def model_from_checkpoint(
    ckpt: dict[str, Any], source: str | Path, task: str | None = None, needed_by: str = "this"
) -> nn.Module:
    """The network a checkpoint describes (its model_config) with its weights, in eval mode.

    ``task``: the task the caller (``needed_by``, for the message) needs, "seg" or "cls"; None: any.
    A DDP "module." prefix is dropped. InputError naming ``source`` when the task, config or state
    dict does not fit.
    """
    from ..models import create_model

    if task is not None and ckpt.get("task", task) != task:
        raise InputError(f"{source} is a {ckpt.get('task')} checkpoint; {needed_by} needs a {task} one")
    state, config = ckpt.get("model"), ckpt.get("model_config")
    if not isinstance(state, dict) or not isinstance(config, dict):
        raise InputError(f"{source}: checkpoint lacks the model state dict or the model config")
    try:
        model = create_model({**config, "task": task} if task is not None else config)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source}: bad model config in checkpoint: {exc}") from None
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = str(exc).strip().splitlines()[-1].strip()
        raise InputError(f"{source}: state dict does not match the model config ({detail})") from None
    if missing or unexpected:
        raise InputError(
            f"{source}: state dict does not match the model config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model.eval()


@dataclass(kw_only=True)
class CheckpointState:
    """A training run's checkpoint: what ``last.pt`` / ``best.pt`` hold, and what a resume restores.

    ``to_dict`` is the file layout (plain data and tensors only, see the module docstring);
    ``from_dict`` reads it back, with the defaults of checkpoints written before a field existed.
    """

    task: str
    model: dict[str, torch.Tensor]
    model_config: dict[str, Any]
    config: str  # the run config as JSON (config.to_json)
    classes: list[str]
    palette: Any
    mean: list[float]
    std: list[float]
    epoch: int  # completed epochs
    epochs: int  # planned epochs (after a time budget: the fitted count)
    budget_applied: bool
    step: int
    metric_name: str
    metrics: dict[str, Any]
    best_metric: float | None
    best_epoch: int | None
    history: list[dict[str, Any]]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    rng: list[dict[str, Any]]  # one rng_state() per rank
    elapsed: float  # wall seconds of the whole run so far, across resumes
    bn_recalibration: str | None = None  # JSON record of train-seg recalibrate-bn, when it wrote the file

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "version": VERSION}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name != "bn_recalibration" or value is not None:
                out[field.name] = value
        return out

    @classmethod
    def from_dict(cls, ckpt: dict[str, Any]) -> CheckpointState:
        defaults = {
            "epochs": ckpt.get("epoch", 0),
            "budget_applied": False,
            "scaler": {},
            "elapsed": 0.0,
            "best_metric": None,
            "best_epoch": None,
            "history": [],
            "metrics": {},
            "palette": None,
        }
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(ckpt) - set(defaults) - {"bn_recalibration"})
        if missing:
            raise InputError(f"not a training run's checkpoint: no {', '.join(missing)}")
        return cls(**{**defaults, **{k: v for k, v in ckpt.items() if k in names}})


# --------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """Every random number generator the loop touches, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(py_state), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --------------------------------------------------------------------------- weight initialisation


def init_weights(model: nn.Module, path: str | Path, task: str, scope: str = "auto") -> str:
    """Load weights from a checkpoint (two-stage recipe, or classification -> segmentation).

    scope "all": every key must match (stage 1 -> stage 2 of the same task).
    scope "encoder": only "encoder.*" keys, all of the model's encoder keys required.
    scope "encoder_head": "encoder.*" and "head.*" keys, all of them required: a new or resized
    decoder on a trained encoder and context head (the decoder starts from scratch).
    scope "extend": every weight of the checkpoint loads into the same weight of the model; the
    model's weights the checkpoint lacks (a stage added since, such as model.stem_skip_channels)
    keep their initialisation. The encoder's and head's weights are all required.
    scope "auto": "all" when the checkpoint's task equals ``task``, else "encoder".
    Returns a one-line description of what was loaded.
    """
    ckpt = load_checkpoint(path)
    state = ckpt["model"]
    if scope == "auto":
        scope = "all" if ckpt.get("task") == task else "encoder"
    own = model.state_dict()
    if scope == "extend":
        unknown = [k for k in state if k not in own]
        if unknown:
            raise InputError(
                f"checkpoint {path} has {len(unknown)} weight(s) the model lacks (first: {unknown[0]}); "
                "scope 'extend' only adds to a network"
            )
        wanted = [k for k in own if k in state or k.startswith(("encoder.", "head."))]
    elif scope in ("encoder", "encoder_head"):
        prefixes = ("encoder.",) if scope == "encoder" else ("encoder.", "head.")
        state = {k: v for k, v in state.items() if k.startswith(prefixes)}
        wanted = [k for k in own if k.startswith(prefixes)]
    else:
        wanted = list(own)
    missing = [k for k in wanted if k not in state]
    if missing:
        raise InputError(
            f"checkpoint {path} lacks {len(missing)} weight(s) the model needs (first: {missing[0]}); "
            "was it trained with the same model settings?"
        )
    for key in wanted:
        if state[key].shape != own[key].shape:
            raise InputError(
                f"checkpoint {path}: {key} has shape {tuple(state[key].shape)}, the model expects "
                f"{tuple(own[key].shape)}; check model.arch, model.k and model.width"
            )
    model.load_state_dict({k: state[k] for k in wanted}, strict=(scope == "all"))
    fresh = len(own) - len(wanted)
    note = f"; {fresh} start fresh" if scope == "extend" else ""
    return f"initialised {len(wanted)} tensors ({scope}) from {path} (epoch {ckpt.get('epoch')}){note}"
