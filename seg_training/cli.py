"""Console entry points: train-cls, train-seg (and train-seg eval), export-model; both trainers also
take ``recalibrate-bn`` (BatchNorm statistics re-estimated for a checkpoint's final weights), and
train-seg ``tune-postprocess`` (a packed model's guided filter and decision bias, fitted on training images)
and ``check-data`` (every image and mask read once; problems, label histogram, class balance).

Heavy modules (torch, albumentations, the config machinery) are imported inside the commands, after
argument parsing, so ``--help`` answers at once.

Any config key can be overridden: ``--set train.epochs=3`` or ``--train.epochs 3``; values are read
as YAML (3, 1e-4, [0.5, 2.0], null). Bad input ends with one line ``error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
EXIT_INPUT_ERROR = 2


def find_config(name: str | None) -> Path | None:
    """A config path, or the name of a shipped config
    (``smoke_seg`` -> seg_training/configs/smoke_seg.yaml)."""
    if name is None:
        return None
    path = Path(name)
    if path.exists():
        return path
    shipped = CONFIG_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if shipped.is_file():
        return shipped
    from .data.errors import InputError

    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise InputError(f"config file not found: {name} (shipped configs: {names})")


def parse_overrides(tokens: Sequence[str], sets: Sequence[str] | None) -> list[tuple[str, Any]]:
    """(dotted key, value) pairs from ``--set a.b=v`` options and leftover ``--a.b v`` / ``--a.b=v``
    tokens."""
    from .data.errors import InputError
    from .engine.config import parse_value

    pairs: list[tuple[str, Any]] = []
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set expects KEY=VALUE, got {item!r}")
        pairs.append((key.strip(), parse_value(value)))
    i = 0
    while i < len(tokens):
        token = tokens[i]
        key = token[2:].split("=", 1)[0] if token.startswith("--") else ""
        if "." not in key:
            raise InputError(f"unrecognised argument {token!r}; config overrides look like --train.epochs 3")
        if "=" in token:
            pairs.append((key, parse_value(token.split("=", 1)[1])))
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise InputError(f"override {token} needs a value")
            pairs.append((key, parse_value(tokens[i + 1])))
            i += 2
    return pairs


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file, or the name of a shipped config (e.g. smoke_seg)")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="shorthand for --set device=...")
    parser.add_argument("--seed", type=int, help="shorthand for --set seed=...")


def _train_parser(task: str) -> argparse.ArgumentParser:
    what = "segmentation network" if task == "seg" else "classification network (encoder pretraining)"
    parser = argparse.ArgumentParser(
        prog=f"train-{task}",
        allow_abbrev=False,
        description=f"Train a Group-Net {what} from a YAML config. Runs on one CPU or GPU, or under "
        f"torchrun (DDP) on many. Any config key can be overridden with --set key=value or --key value, "
        f"e.g. --train.epochs 3 --data.root /data/VOC2012.",
        epilog=(
            "Check a data set first: train-seg check-data --config c. "
            "Evaluate a checkpoint: train-seg eval --checkpoint runs/x/best.pt. Fit a packed model's "
            "post-processing: train-seg tune-postprocess --packed m.gnpk --config c --out m2.gnpk. "
            "Your own data: start from --config my_data (docs/training.md). "
            if task == "seg"
            else ""
        )
        + f"Re-estimate BatchNorm statistics: train-{task} recalibrate-bn --checkpoint runs/x/best.pt "
        "--out y.pt. " + f"Shipped configs: {', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.yaml')))}.",
    )
    _common_args(parser)
    parser.add_argument(
        "--resume",
        nargs="?",
        const="last",
        metavar="CHECKPOINT",
        help="continue a run: from CHECKPOINT, or from the run's last.pt when no path is given; "
        "without --config the checkpoint's own config is used. A run whose time budget fitted its "
        "epoch count keeps that count unless --train.epochs is given",
    )
    return parser


def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train-seg eval",
        allow_abbrev=False,
        description="Evaluate a segmentation checkpoint on its validation split: mIoU, per-class IoU, "
        "pixel accuracy and the confusion matrix. Uses the checkpoint's config unless --config is given; "
        "e.g. --eval.scales '[0.75, 1.0, 1.25]' --eval.flip true for multi-scale + flip testing. "
        "With --packed, scores an exported .gnpk through the torch-free runtime instead, at full image size "
        "(as seg-service runs it); --config then names the data, and --eval.flip true adds the runtime's "
        "mirrored second pass (seg-service's flip=true).",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="checkpoint file (best.pt or last.pt)")
    what.add_argument("--packed", metavar="GNPK", help="packed model file (export-model's output)")
    parser.add_argument("--threads", type=int, help="runtime threads for --packed (default: all cores)")
    parser.add_argument("--output", help="also write the scores as JSON to this file")
    parser.add_argument(
        "--worst",
        type=int,
        default=0,
        metavar="N",
        help="with --packed: list the N images with the lowest mIoU of their own "
        "(default 0; 10 with --overlays)",
    )
    parser.add_argument(
        "--overlays",
        metavar="DIR",
        help="with --packed: write a sheet per listed worst image to DIR: prediction | truth | errors in red",
    )
    _common_args(parser)
    return parser


def _recalibrate_parser(task: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"train-{task} recalibrate-bn",
        allow_abbrev=False,
        description="Re-estimate a checkpoint's BatchNorm running statistics for its final weights: a plain "
        "average over training batches (augmented as in training) replaces the exponential average kept "
        "during training, which lags a binary network's weights. Validates before and after and writes a "
        "new checkpoint that export-model, eval and --train.init_from read.",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint to start from (best.pt or last.pt)")
    parser.add_argument("--out", required=True, help="checkpoint to write (never the input)")
    parser.add_argument("--batches", type=int, help="training batches to average over (default: one epoch)")
    _common_args(parser)
    return parser


def _recalibrate(task: str, argv: Sequence[str]) -> int:
    args, rest = _recalibrate_parser(task).parse_known_args(argv)
    from .engine.bn_recalibration import recalibrate_checkpoint

    recalibrate_checkpoint(
        args.checkpoint, args.out, args.batches, find_config(args.config), _overrides(args, rest)
    )
    return 0


def _check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train-seg check-data",
        allow_abbrev=False,
        description="Read every image and mask of a config's training and validation splits once, in "
        "parallel, and report every problem with its file (missing or unreadable mask or image, RGB mask, "
        "image/mask size mismatch, labels outside the class list), the label histogram per class and the "
        "class balance. Exit status 2 when there are problems. Training runs the same check first unless "
        "--data.check false.",
    )
    parser.add_argument("--split", choices=("train", "val", "both"), default="both", help="splits to read")
    parser.add_argument("--workers", type=int, help="reading threads (default: the CPU count)")
    parser.add_argument("--output", help="also write the report as JSON to this file")
    _common_args(parser)
    return parser


def _check_data(argv: Sequence[str]) -> int:
    args, rest = _check_parser().parse_known_args(argv)
    from .data.check import run_check_data
    from .data.errors import InputError
    from .engine.config import load_config

    if args.config is None:
        raise InputError("--config is required (e.g. --config my_data --data.root PATH)")
    config = load_config("seg", find_config(args.config), _overrides(args, rest))
    splits = ("train", "val") if args.split == "both" else (args.split,)
    return run_check_data(config, splits, args.workers, args.output)


def _tune_parser() -> argparse.ArgumentParser:
    from .export_cli import parse_test_time

    parser = argparse.ArgumentParser(
        prog="train-seg tune-postprocess",
        allow_abbrev=False,
        description="Fit a packed model's post-processing on the config's training images: an edge-aware "
        "guided filter on the logits (radius, eps, clip from a small grid; two-class models unless "
        "--filter) and a decision bias (on the foreground for two-class models, one per class for "
        "more), chosen by mIoU through the packed "
        "runtime. Writes a copy of the model with the best "
        "one stored in it (graph and weights unchanged); the validation images are not used, so "
        "'train-seg eval --packed' on the result stays an honest score. --split val fits on images the "
        "network never trained on instead (biases fitted on training images under-rate the classes a "
        "network is unsure of on new images); add --folds 2 for the honest held-out figure then.",
    )
    parser.add_argument(
        "--packed", required=True, metavar="GNPK", help="packed model file (export-model's output)"
    )
    parser.add_argument(
        "--out", required=True, metavar="GNPK", help="packed model to write (never the input)"
    )
    parser.add_argument("--threads", type=int, help="runtime threads (default: all cores)")
    parser.add_argument("--limit", type=int, help="use only the first N images of the split (default: all)")
    parser.add_argument(
        "--split",
        help="the split to fit on: 'train' or 'val' (the config's data.train_split / data.val_split) or a "
        "split name or list file of the config's layout (default: the training split)",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        help="also estimate the held-out score: the images in K contiguous blocks, each scored with the "
        "post-processing fitted on the others (report key held_out); needed for an honest figure when "
        "--split is the split you evaluate on (default 0: no estimate)",
    )
    parser.add_argument("--report", help="also write every candidate's scores as JSON to this file")
    parser.add_argument(
        "--test-time",
        action="append",
        type=parse_test_time,
        metavar="SPEC",
        help="also choose the stored test-time augmentation: a candidate, as export-model's --test-time "
        "(a JSON object like '{\"flip\": true, \"scales\": [1.0, 1.5]}', or 'none' for one pass); "
        "repeat it for more. The post-processing is fitted for each candidate's passes and the file "
        "written stores the candidate with the best held-out mIoU (with --folds), else the best fitted "
        "mIoU; a table gives each candidate's score and pixel cost (default: keep the file's passes)",
    )
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument(
        "--no-filter",
        dest="filters",
        action="store_false",
        default=None,
        help="skip the guided-filter grid: fit the bias only (the default for models of more than two "
        "classes, where no filter paid on camvid and its 18 candidates made the run 1.5 times as long)",
    )
    grid.add_argument(
        "--filter",
        dest="filters",
        action="store_true",
        help="try the guided-filter grid whatever the number of classes (default: two-class models only)",
    )
    _common_args(parser)
    return parser


def _tune(argv: Sequence[str]) -> int:
    args, rest = _tune_parser().parse_known_args(argv)
    from .engine.postprocess_tuning import choose_test_time, tune_postprocess

    config, overrides = find_config(args.config), _overrides(args, rest)
    fit = dict(
        threads=args.threads, limit=args.limit, filters=args.filters, split=args.split, folds=args.folds
    )
    if args.test_time:
        choose_test_time(args.packed, config, overrides, args.out, args.test_time, report=args.report, **fit)
    else:
        tune_postprocess(args.packed, config, overrides, args.out, report=args.report, **fit)
    return 0


def _overrides(args: argparse.Namespace, rest: Sequence[str]) -> list[tuple[str, Any]]:
    pairs = parse_overrides(rest, args.set)
    if args.device is not None:
        pairs.append(("device", args.device))
    if args.seed is not None:
        pairs.append(("seed", args.seed))
    return pairs


def _train(task: str, argv: Sequence[str]) -> int:
    args, rest = _train_parser(task).parse_known_args(argv)  # before the heavy imports: --help is instant
    from .data.errors import InputError
    from .engine.checkpoint import load_checkpoint
    from .engine.config import explicit_keys, from_json, load_config
    from .engine.trainer import train

    overrides = _overrides(args, rest)
    config_path = find_config(args.config)
    if config_path is None:
        if args.resume in (None, "last"):
            raise InputError("--config is required (or --resume CHECKPOINT to continue a run)")
        config = load_config(
            task, None, overrides, base_config=from_json(load_checkpoint(args.resume)["config"])
        )
        explicit = None  # the checkpoint's config: which keys its author set is not known
    else:
        config = load_config(task, config_path, overrides)
        explicit = explicit_keys(config_path, overrides)
    # On resume, a time-budgeted run keeps the epoch count its budget fitted unless the command
    # line names one (extending or shortening a run is what --train.epochs then asks for).
    epochs_on_command_line = any(key == "train.epochs" for key, _ in overrides)
    train(config, resume=args.resume, explicit=explicit, epochs_on_command_line=epochs_on_command_line)
    return 0


def _evaluate(argv: Sequence[str]) -> int:
    args, rest = _eval_parser().parse_known_args(argv)
    from .data.errors import InputError
    from .engine.evaluation import evaluate_checkpoint

    if args.worst < 0:
        raise InputError(f"--worst must be >= 0, got {args.worst}")
    if args.packed:
        from .engine.packed_eval import evaluate_packed

        evaluate_packed(
            args.packed,
            find_config(args.config),
            _overrides(args, rest),
            args.output,
            args.threads,
            worst=args.worst or (10 if args.overlays else 0),
            overlays=args.overlays,
        )
        return 0
    if args.worst or args.overlays:
        raise InputError("--worst and --overlays score the packed runtime's masks: use them with --packed")
    evaluate_checkpoint(args.checkpoint, find_config(args.config), _overrides(args, rest), args.output)
    return 0


def _run(entry: Callable[[], int]) -> int:
    """Run an entry point; bad input becomes ``error: <one line>`` and exit status 2."""
    try:
        return entry()
    except Exception as exc:
        # Imported here, not above: seg_training.data pulls in torch, which --help must not wait for.
        from .data.errors import InputError, one_line

        if not isinstance(exc, InputError):
            raise
        _close_progress_bars()
        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
        print(f"{prefix}error: {one_line(exc)}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130


def _close_progress_bars() -> None:
    """Close any open tqdm bar, so an error message starts on a line of its own."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # a bar half torn down by the error must not hide the message
            pass


def train_cls_main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "recalibrate-bn":
        return _run(lambda: _recalibrate("cls", argv[1:]))
    return _run(lambda: _train("cls", argv))


def train_seg_main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "eval":
        return _run(lambda: _evaluate(args[1:]))
    if args and args[0] == "recalibrate-bn":
        return _run(lambda: _recalibrate("seg", args[1:]))
    if args and args[0] == "tune-postprocess":
        return _run(lambda: _tune(args[1:]))
    if args and args[0] == "check-data":
        return _run(lambda: _check_data(args[1:]))
    if args and args[0] == "train":
        args = args[1:]
    return _run(lambda: _train("seg", args))


def export_main(argv: Sequence[str] | None = None) -> int | None:
    """export-model: implemented in seg_training.export, imported after the arguments parse (--help is
    instant)."""
    from .export_cli import build_parser

    argv = list(sys.argv[1:] if argv is None else argv)
    build_parser().parse_args(argv)  # --help and usage errors without loading PyTorch
    from .export import main

    return main(argv)


COMMANDS = {"train-cls": train_cls_main, "train-seg": train_seg_main, "export-model": export_main}


def main(argv: Sequence[str] | None = None) -> int | None:
    """``python -m seg_training.cli <train-cls|train-seg|export-model> ...`` (handy under torchrun)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m seg_training.cli {{{','.join(COMMANDS)}}} [args...]", file=sys.stderr)
        return EXIT_INPUT_ERROR
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
