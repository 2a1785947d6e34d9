"""Run configuration: YAML files with sections, defaults, `base:` inheritance and dotted overrides.

A config is a plain nested dict. Every key must exist in the task's defaults (or be a ModelConfig
field under ``model``), so a misspelt key is an error with a did-you-mean, not a silently ignored
setting. Overrides come from the command line as ``--set train.epochs=3`` or ``--train.epochs 3``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..data.errors import InputError
from ..data.names import parse_class_list
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD


class ConfigError(InputError):
    """A config file or override that cannot be used."""


# Values of these keys are free-form (not checked key by key).
FREE_FORM = {"data.remap", "model.extra"}
# Data paths in a config file are relative to the repository that holds the config (see resolve_paths).
DATA_PATH_KEYS = ("data.root",)
# The shipped configs: `--config NAME` and `base: NAME` both find seg_training/configs/NAME.yaml.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

_COMMON: dict[str, Any] = {
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda
    "output": {
        "dir": "runs",  # relative to the working directory
        "name": None,  # default: the config file's stem
        "progress": True,  # tqdm bars (rank 0 only)
    },
}

SEG_DEFAULTS: dict[str, Any] = {
    **_COMMON,
    "task": "seg",
    "model": {},
    "data": {
        "layout": "folder",  # folder | camvid | voc
        "root": None,
        "image_dir": None,  # default per layout: images (folder, camvid), JPEGImages (voc)
        "mask_dir": None,  # default per layout: masks (folder, camvid), SegmentationClass (voc)
        "train_split": "train",  # voc: list name or .txt; camvid: sub-folder; folder: name range / list / all
        "val_split": "val",
        # Class names (sets model.num_classes): a YAML list, a comma list "a,b,c" or a file with one
        # name per line (relative to the config's repository, the working directory or data.root).
        "classes": None,
        "palette": None,  # optional [[r, g, b], ...], one per class, stored in checkpoints for export
        "ignore_index": 255,
        "void_labels": [],  # stored values that mean "unlabelled" (CamVid 11) -> ignore_index
        "remap": None,  # see seg_training.data.labels.build_label_map
        "crop_size": 512,
        "base_size": None,  # short side before scale jitter; null jitters the original size
        "scale_range": [0.5, 2.0],
        "hflip": True,
        # basic (scale, crop, flip) | strong (+ rotation, colour, blur, noise, JPEG) | strong_colour
        # (strong, with grey images and large hue turns more often: data/transforms.py)
        "augment": "basic",
        "copy_paste": 0.0,  # probability of pasting objects of class 1 from other training images
        # classes (names or indices) whose objects are pasted from other training frames at their own
        # place, for fixed-camera data (CamVid: pole, signsymbol, bicyclist), with this probability
        "paste_in_place": [],
        "paste_in_place_p": 0.5,
        # folder (under root, or a path) of a teacher's probability maps for loss.distill
        # (python -m seg_training.data.teacher_maps); null: none
        "teacher_dir": None,
        # probability of a low-resolution image (detail of 1/4 to 3/5 of the crop, upscaled back):
        # small, soft and upscaled photos (data/transforms.py)
        "low_resolution": 0.0,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "batch_size": 8,  # per process
        "val_batch_size": 1,  # per process; images of different sizes are padded with ignore
        "workers": None,  # data loading processes; null follows the CPU count (auto_workers)
        "check": True,  # read every image and mask once before training (train-seg check-data)
    },
    "train": {
        "epochs": 50,
        "steps_per_epoch": None,  # cap on optimizer steps per epoch (smoke runs)
        "optimizer": "adam",  # adam | sgd
        "lr": 1.0e-4,  # encoder (backbone) learning rate
        "head_lr_mult": 10.0,  # head learning rate = lr * head_lr_mult
        "momentum": 0.9,
        "weight_decay": 1.0e-4,
        # weight decay of the latent weights of binary convs (docs/training.md): 0, because decay
        # drags them to zero, where the BatchNorm epsilon stops normalising and the conv goes dead
        "binary_weight_decay": 0.0,
        "schedule": "poly",  # poly | step | constant
        "milestones": [],  # epochs, for the step schedule
        "gamma": 0.1,
        "poly_power": 0.9,
        "warmup_epochs": 0.0,
        "grad_clip": None,  # max gradient norm
        "amp": True,  # bfloat16/float16 autocast, CUDA only (ignored on CPU)
        "sync_bn": False,  # SyncBatchNorm under torchrun
        # torch.compile the training step's forward and backward (inductor; needs a C++ compiler):
        # on a 2-core CPU 8 % (2 threads) to 24 % (1 thread) faster person steps after minutes of
        # compiling (the time budget times the second epoch, so the compile does not shorten the
        # run); validation and export run the eager model. docs/training.md
        "compile": False,
        "init_from": None,  # checkpoint to initialise weights from (stage 1, or a classification run)
        # auto | all | encoder | encoder_head: auto = all keys, or encoder.* when tasks differ
        "init_scope": "auto",
        # Wall-clock budget: after the second epoch the run shortens train.epochs (and its schedule)
        # to what fits, so a poly schedule still ends at zero; null trains train.epochs.
        "time_budget_minutes": None,
    },
    # class_weights (cross-entropy only): null, "median_frequency" (SegNet's, from the training
    # masks) or one number per class
    # distill: weight of a distillation term against data.teacher_dir's soft targets (metrics.py)
    # ohem_thresh: null, or online hard example mining for the cross-entropy: only pixels whose
    # probability of their own class is at most this count, and at least ohem_min_kept of the
    # labelled pixels (a fraction, least certain first)
    "loss": {
        "ce": 1.0,
        "dice": 0.0,
        "lovasz": 0.0,
        "label_smoothing": 0.0,
        "class_weights": None,
        "distill": 0.0,
        "ohem_thresh": None,
        "ohem_min_kept": 0.0625,
    },
    "eval": {
        "every": 1,  # epochs between validations
        "max_batches": None,  # cap on validation batches (smoke runs)
        # multi-scale testing and horizontally flipped inputs; None: [1.0] / false for checkpoints,
        # a packed file's own test_time (docs/format.md) for train-seg eval --packed
        "scales": None,
        "flip": None,
    },
}

CLS_DEFAULTS: dict[str, Any] = {
    **_COMMON,
    "task": "cls",
    "model": {},
    "data": {
        "layout": "imagefolder",
        "root": None,
        "train_dir": "train",
        "val_dir": "val",
        "crop_size": 224,
        "resize": 256,  # validation: short side to resize, then centre crop_size
        "scale": [0.08, 1.0],  # random resized crop area range
        "hflip": True,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "batch_size": 256,
        "val_batch_size": 256,
        "workers": None,  # null follows the CPU count (auto_workers)
    },
    "train": {
        **{k: v for k, v in SEG_DEFAULTS["train"].items()},
        "epochs": 40,
        "optimizer": "sgd",
        "lr": 0.05,
        "head_lr_mult": 1.0,
        "schedule": "step",
        "milestones": [25, 35],
    },
    "loss": {"label_smoothing": 0.0},
    "eval": {"every": 1, "max_batches": None},
}

DEFAULTS = {"seg": SEG_DEFAULTS, "cls": CLS_DEFAULTS}


# --------------------------------------------------------------------------- YAML reading


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-4 as a float (YAML 1.1 wants 1.0e-4)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
        r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A command-line override value, read as YAML: 3 -> int, 1e-4 -> float, [1, 2] -> list, null -> None."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"invalid YAML in {path}{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def repo_root_of(path: Path) -> Path:
    """The nearest folder above ``path`` with a pyproject.toml (the repository), else its folder."""
    for parent in path.resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return path.resolve().parent


def base_config_path(base: str, including: Path) -> Path:
    """``base:`` of the config ``including``: a path relative to that file, or a shipped config's name."""
    local = including.parent / base
    if local.is_file():
        return local
    shipped = CONFIG_DIR / (base if base.endswith(".yaml") else f"{base}.yaml")
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(
        f"base config {base!r} of {including} not found: neither {local} nor a shipped config ({names})"
    )


def _load_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {path} includes itself through 'base'")
    data = _read_yaml(path)
    base = data.pop("base", None)
    # Data paths are made absolute per file, so a base config's paths keep their meaning.
    resolve_paths(data, repo_root_of(path))
    _resolve_class_file(data, repo_root_of(path))
    if base is None:
        return data
    merged = _load_with_bases(base_config_path(str(base), path), (*seen, path))
    return deep_merge(merged, data)


def _resolve_class_file(data: dict[str, Any], base_dir: Path) -> None:
    """A class-list file named in a config file is relative to its repository, like data.root (when
    it exists there; else parse_class_list looks in the working directory and data.root)."""
    value = (data.get("data") or {}).get("classes")
    if isinstance(value, str) and "," not in value and (base_dir / value).is_file():
        data["data"]["classes"] = str((base_dir / value).resolve())


# --------------------------------------------------------------------------- merging and checking


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key not in ("remap", "extra"):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def model_fields() -> dict[str, Any]:
    from ..models import ModelConfig

    return {f.name: f for f in dataclasses.fields(ModelConfig)}


def _did_you_mean(key: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_keys(config: Mapping[str, Any], defaults: Mapping[str, Any], where: str, prefix: str = "") -> None:
    """ConfigError for the first key of ``config`` that has no default (unknown or misspelt)."""
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if dotted == "model":
            known = model_fields()
            for mkey in value or {}:
                if mkey not in known:
                    raise ConfigError(
                        f"unknown config key 'model.{mkey}' in {where}"
                        f"{_did_you_mean(f'model.{mkey}', [f'model.{k}' for k in known])}"
                    )
            continue
        if key not in defaults:
            siblings = [f"{prefix}{k}" for k in defaults]
            raise ConfigError(f"unknown config key {dotted!r} in {where}{_did_you_mean(dotted, siblings)}")
        if dotted in FREE_FORM:
            continue
        if isinstance(defaults[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {dotted!r} in {where} must be a section (mapping)")
            check_keys(value, defaults[key], where, prefix=f"{dotted}.")
        elif isinstance(defaults[key], (int, float)) and not isinstance(defaults[key], bool):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"config key {dotted!r} in {where} must be a number, got {value!r}")


def apply_override(config: dict[str, Any], dotted: str, value: Any) -> None:
    """Set config[a][b][c] = value for "a.b.c"; creates nothing that check_keys would reject later."""
    parts = dotted.split(".")
    node = config
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def resolve_paths(config: dict[str, Any], base_dir: Path) -> None:
    """Make relative data paths absolute against ``base_dir``."""
    for dotted in DATA_PATH_KEYS:
        section, key = dotted.split(".")
        value = (config.get(section) or {}).get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            config[section][key] = str((base_dir / value).resolve())
        elif isinstance(value, str):
            config[section][key] = str(Path(value).expanduser())


def load_config(
    task: str,
    path: str | Path | None = None,
    overrides: Iterable[tuple[str, Any]] = (),
    base_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Defaults <- ``base_config`` (e.g. a checkpoint's) <- YAML file <- overrides, checked.

    Relative data paths in a YAML file resolve against its repository root; relative paths given
    as overrides resolve against the working directory.
    """
    defaults = DEFAULTS[task]
    config = copy.deepcopy(defaults)
    if base_config is not None:
        config = deep_merge(config, base_config)
    if path is not None:
        path = Path(path)
        data = _load_with_bases(path)
        file_task = data.get("task", task)
        if file_task != task:
            raise ConfigError(f"config {path} is for task {file_task!r}; use train-{file_task} for it")
        check_keys(data, defaults, str(path))
        config = deep_merge(config, data)
        if not config["output"].get("name"):
            config["output"]["name"] = path.stem
    override_dict: dict[str, Any] = {}
    for dotted, value in overrides:
        apply_override(override_dict, dotted, value)
    check_keys(override_dict, defaults, "command-line overrides")
    resolve_paths(override_dict, Path.cwd())
    config = deep_merge(config, override_dict)
    config["task"] = task
    _check_values(config)
    if config["data"].get("workers") is None:
        config["data"]["workers"] = auto_workers()
    return config


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's share), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_workers() -> int:
    """DataLoader workers when the config leaves ``data.workers`` open: one CPU for the training
    process, the rest (at most 8) decode and augment; 0 (in-process loading) on one CPU."""
    return max(0, min(8, cpu_count() - 1))


def explicit_keys(path: str | Path | None, overrides: Iterable[tuple[str, Any]] = ()) -> set[str]:
    """Dotted keys set by a config file (with its bases) or on the command line; the others are defaults."""
    keys: set[str] = set()

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, Mapping) and dotted not in FREE_FORM:
                walk(value, f"{dotted}.")
            else:
                keys.add(dotted)

    if path is not None:
        walk(_load_with_bases(Path(path)), "")
    keys.update(dotted for dotted, _ in overrides)
    return keys


def _check_values(config: dict[str, Any]) -> None:
    data, train = config["data"], config["train"]
    if data.get("root") is None:
        raise ConfigError("data.root is not set; pass --data.root PATH")
    if config["task"] == "seg":
        if not data.get("classes"):
            raise ConfigError(
                'data.classes (the class names) is not set; pass --data.classes "a,b,c" '
                "or a file with one name per line"
            )
        root = Path(data["root"])
        data["classes"] = parse_class_list(data["classes"], "data.classes", [root])
        palette = data.get("palette")
        if palette is not None and len(palette) != len(data["classes"]):
            raise ConfigError(
                f"data.palette has {len(palette)} colours for {len(data['classes'])} classes "
                f"({', '.join(data['classes'])})"
            )
        if not 0 <= int(data["ignore_index"]) <= 255:
            raise ConfigError(f"data.ignore_index must be in 0..255, got {data['ignore_index']}")
        if data["ignore_index"] < len(data["classes"]):
            raise ConfigError(f"data.ignore_index {data['ignore_index']} collides with a class index")
        weights = config["loss"].get("class_weights")
        if weights is not None and weights != "median_frequency":
            if not (
                isinstance(weights, list)
                and len(weights) == len(data["classes"])
                and all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights)
            ):
                raise ConfigError(
                    f"loss.class_weights must be null, median_frequency or {len(data['classes'])} "
                    f"non-negative numbers (one per class), got {weights!r}"
                )
        distill = config["loss"].get("distill") or 0.0
        if not isinstance(distill, (int, float)) or isinstance(distill, bool) or distill < 0:
            raise ConfigError(f"loss.distill must be a number >= 0, got {distill!r}")
        if distill > 0 and not data.get("teacher_dir"):
            raise ConfigError(
                "loss.distill needs data.teacher_dir, a folder of teacher maps "
                "(python -m seg_training.data.teacher_maps)"
            )
        ohem = config["loss"]["ohem_thresh"]
        if ohem is not None and (
            not isinstance(ohem, (int, float)) or isinstance(ohem, bool) or not 0 < ohem <= 1
        ):
            raise ConfigError(f"loss.ohem_thresh must be null or a number in (0, 1], got {ohem!r}")
        kept = config["loss"]["ohem_min_kept"]
        if not isinstance(kept, (int, float)) or isinstance(kept, bool) or not 0 <= kept <= 1:
            raise ConfigError(f"loss.ohem_min_kept must be a fraction in [0, 1], got {kept!r}")
        if distill > 0 and len(data["classes"]) != 2:
            raise ConfigError(
                f"loss.distill needs two classes (its teacher maps give the probability of class 1), "
                f"got {len(data['classes'])}"
            )
    choices = {
        "train.optimizer": ("adam", "sgd", "adamw"),
        "train.schedule": ("poly", "step", "constant"),
        "train.init_scope": ("auto", "all", "encoder", "encoder_head", "extend"),
        "device": ("auto", "cpu", "cuda"),
    }
    for dotted, allowed in choices.items():
        node: Any = config
        for part in dotted.split("."):
            node = node[part]
        if node not in allowed:
            raise ConfigError(f"{dotted} must be one of {list(allowed)}, got {node!r}")
    if int(train["epochs"]) < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {train['epochs']}")


def to_json(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


def from_json(text: str) -> dict[str, Any]:
    return json.loads(text)


def dump_yaml(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False)


def model_config_for(config: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
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
