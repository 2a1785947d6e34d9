"""Our packed models next to MediaPipe's selfie segmenters: accuracy on a config's validation images
through one metric, and latency side by side in one run.

    python -m seg_training.peers.compare accuracy --config person --split val_portraits.txt \\
        --packed weights/person.gnpk --mediapipe-python /path/to/mediapipe-env/bin/python
    python -m seg_training.peers.compare accuracy --config person --split val_ccp.txt \\
        --packed weights/person.gnpk --sheet worst.png      # and a picture of its worst images
    python -m seg_training.peers.compare speed --packed weights/person.gnpk \\
        --mediapipe-python /path/to/mediapipe-env/bin/python --size 320x240 --threads 2

MediaPipe runs in its own environment (``python -m venv mp && mp/bin/pip install mediapipe``): its
numpy and OpenCV builds clash with ours, so it is driven through ``mediapipe_runner.py`` in a
subprocess. Person IoU counts pixels over the whole set (intersection and union summed over images),
the ``train-seg eval`` convention; every image is scored at its own full size by every model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.errors import InputError

RUNNER = Path(__file__).with_name("mediapipe_runner.py")
MEDIAPIPE_MODELS = ("general", "landscape")


def _scores(cm: np.ndarray) -> dict[str, float]:
    """Person (class 1) IoU, precision, recall, the 2-class mIoU and ``false_alarm`` (the share of
    background pixels marked person: on a set with no person, e.g. person_mix's ``val_scenes.txt``,
    the one figure that means anything) of a 2x2 confusion matrix (rows: truth, columns: prediction)."""
    tp, fp, fn = float(cm[1, 1]), float(cm[0, 1]), float(cm[1, 0])
    tn = float(cm[0, 0])
    iou = tp / max(tp + fp + fn, 1.0)
    background = tn / max(tn + fp + fn, 1.0)
    return {
        "person_iou": iou,
        "precision": tp / max(tp + fp, 1.0),
        "recall": tp / max(tp + fn, 1.0),
        "miou": (iou + background) / 2,
        "false_alarm": fp / max(tn + fp, 1.0),
    }


def _confusion(pred: np.ndarray, truth: np.ndarray, ignore: int) -> np.ndarray:
    """Person (any non-zero prediction) against the rest, as a 2x2 confusion matrix."""
    from ..engine.metrics import confusion_matrix

    return confusion_matrix((pred > 0).astype(np.int64), truth, 2, ignore)


def _val_pairs(config_path: str, split: str | None, root: str | None) -> tuple[Any, int]:
    from .. import data as datasets
    from ..cli import find_config
    from ..engine.config import load_config

    overrides: list[tuple[str, Any]] = []
    if split:
        overrides.append(("data.val_split", split))
    if root:
        overrides.append(("data.root", root))
    config = load_config("seg", find_config(config_path), overrides)
    if len(config["data"]["classes"]) != 2:
        raise InputError("the comparison is for person/background configs (2 classes)")
    return datasets.build_seg_dataset(config["data"], "val"), int(config["data"]["ignore_index"])


def mediapipe_outputs(
    python: str, model: str, files: Sequence[str], workdir: Path, kind: str = "masks"
) -> list[Path]:
    """Run MediaPipe in its own environment (``python``) on each of ``files``; the PNG it wrote for
    each, in order, under ``workdir``: 0/1 masks, or with ``kind="probabilities"`` the person
    confidence as 0-254 (mediapipe_runner.py)."""
    listing = workdir / "files.txt"
    listing.write_text("\n".join(files))
    out = workdir / model
    command = [python, str(RUNNER), kind, "--model", model, "--list", str(listing), "--out", str(out)]
    run_subprocess(command)
    outputs = [out / f"{i}.png" for i in range(len(files))]
    missing = [i for i, path in enumerate(outputs) if not path.is_file()]
    if missing:
        raise RuntimeError(f"MediaPipe ({model}) wrote no {kind} for {files[missing[0]]}")
    return outputs


def mediapipe_masks(python: str, model: str, files: Sequence[str], workdir: Path) -> list[np.ndarray]:
    import cv2

    masks = [
        cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in mediapipe_outputs(python, model, files, workdir)
    ]
    unread = [i for i, mask in enumerate(masks) if mask is None]
    if unread:
        raise RuntimeError(f"MediaPipe ({model}) wrote no readable mask for {files[unread[0]]}")
    return [mask for mask in masks if mask is not None]


def run_subprocess(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
        raise InputError(f"{' '.join(command[:3])} failed: {lines[-1]}")
    return done.stdout


def mediapipe_timing(
    python: str, model: str, image: str, size: tuple[int, int], repeats: int
) -> dict[str, Any]:
    """``repeats`` timed ``process()`` calls of a MediaPipe selfie model on ``image`` resized to
    ``size`` (W, H), in ``python``'s environment: {"ms": [...], "file_bytes": .tflite size or None}."""
    command = [python, str(RUNNER), "time", "--model", model, "--image", image]
    return json.loads(run_subprocess(command + ["--size", f"{size[0]}x{size[1]}", "--repeats", str(repeats)]))


def image_iou(cm: np.ndarray) -> float | None:
    """Person IoU of one image's 2x2 confusion matrix; None when its truth holds no person pixel
    (a people-free image has no IoU: its errors show in ``false_alarm``)."""
    tp, fp, fn = float(cm[1, 1]), float(cm[0, 1]), float(cm[1, 0])
    return tp / (tp + fp + fn) if tp + fn > 0 else None


def _per_image_scores(ious: list[float | None]) -> dict[str, Any]:
    """The issue's view of a set, next to the pooled IoU: the median image and how many images fail
    (person IoU under 0.5), over the images whose truth holds a person."""
    scored = [v for v in ious if v is not None]
    return {
        "image_iou": ious,
        "median_image_iou": statistics.median(scored) if scored else None,
        "images_under_half": sum(v < 0.5 for v in scored),
        "images_with_person": len(scored),
    }


class MediaPipeTimer:
    """MediaPipe's selfie models kept loaded and warm in one ``mediapipe_runner.py serve`` process
    of ``python``'s environment, timed on ``image`` resized to ``size`` (W, H) when asked, so that
    their rounds interleave with ours seconds apart, each engine warm as in steady use."""

    def __init__(self, python: str, image: str, size: tuple[int, int]) -> None:
        command = [python, str(RUNNER), "serve", "--image", image, "--size", f"{size[0]}x{size[1]}"]
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        except OSError as exc:
            raise InputError(f"cannot run {python}: {exc.strerror}") from exc

    def time(self, model: str, repeats: int, pace_ms: float = 0.0) -> list[float]:
        """ms of each of ``repeats`` ``process()`` calls of ``model`` (general | landscape), each
        after a pause of ``pace_ms`` (not timed)."""
        assert self._process.stdin is not None and self._process.stdout is not None
        request = {"model": model, "repeats": repeats, "pace_ms": pace_ms}
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
        except BrokenPipeError:
            pass  # it has exited: its error is read below
        line = self._process.stdout.readline()
        if not line:
            self._process.wait()
            lines = (self._process.stderr.read() if self._process.stderr else "").strip().splitlines()
            raise InputError(f"MediaPipe ({RUNNER.name} serve) stopped: {(lines or ['(no output)'])[-1]}")
        return list(json.loads(line)["ms"])

    def close(self) -> None:
        if self._process.stdin:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> MediaPipeTimer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def accuracy(
    config: str,
    split: str | None,
    root: str | None,
    packed: Sequence[str],
    python: str | None,
    threads: int,
    sheet: str | None = None,
    worst: int = 12,
    recolour: str | None = None,
    shrink: int | None = None,
    frame: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """One row per model: the pooled scores of ``_scores``, the per-image ones of
    ``_per_image_scores`` (``image_iou`` in the order of ``names``) and ``names``. With ``sheet``,
    also writes there a picture of the ``worst`` images of the first model (``failure_sheet``).
    ``recolour`` (``recolour_image``) and ``shrink`` (``shrink_image``): every model sees the images
    so changed. ``frame`` (W, H): every model sees each photo resized to a camera frame of that
    size (``frame_image``) and its mask is scored after a nearest-neighbour resize back to the
    photo's size."""
    from seg_service.runtime import load_model, set_num_threads

    set_num_threads(threads)
    val_set, ignore = _val_pairs(config, split, root)
    truths = [val_set.load(i)[1] for i in range(len(val_set))]

    def shown(i: int) -> np.ndarray:  # the photo as changed, at its own size (the sheet's)
        rgb = val_set.load(i)[0]
        rgb = recolour_image(rgb, recolour) if recolour else rgb
        return shrink_image(rgb, shrink) if shrink else rgb

    def image(i: int) -> np.ndarray:  # what the models see
        return frame_image(shown(i), frame) if frame else shown(i)

    names = [Path(path).stem for path, _ in val_set.pairs]
    rows: list[dict[str, Any]] = []
    masks: list[Callable[[int], np.ndarray]] = []  # per model: image index -> its mask, for the sheet
    for path in packed:
        model = load_model(path)
        predictor = _predictor(model, image, truths)
        rows.append(_row(Path(path).name, (predictor(i) for i in range(len(truths))), truths, ignore))
        masks.append(predictor)  # again, for the sheet's few images only
    if python:
        with tempfile.TemporaryDirectory() as tmp:
            files = [str(path) for path, _ in val_set.pairs]
            if recolour or shrink or frame:  # MediaPipe reads files: the changed images, written losslessly
                import cv2

                files = [f"{tmp}/{i}.png" for i in range(len(truths))]
                for i, file in enumerate(files):
                    cv2.imwrite(file, np.ascontiguousarray(image(i)[:, :, ::-1]))
            for name in MEDIAPIPE_MODELS:
                masks_found = mediapipe_masks(python, name, files, Path(tmp))
                found = [_at_size(m, t.shape[:2]) for m, t in zip(masks_found, truths, strict=True)]
                rows.append(_row(f"mediapipe selfie {name}", found, truths, ignore))
                masks.append(found.__getitem__)
    for row in rows:
        row["images"] = len(truths)
        row["names"] = names
    if sheet and rows:
        picture = failure_sheet(shown, truths, masks, rows, ignore, worst)
        import cv2

        if not cv2.imwrite(sheet, np.ascontiguousarray(picture[:, :, ::-1])):
            raise InputError(f"cannot write the sheet to {sheet}")
    return rows


def _row(
    label: str, preds: Iterable[np.ndarray], truths: Sequence[np.ndarray], ignore: int
) -> dict[str, Any]:
    """A model's row: pooled and per-image scores of its masks (``preds``, in the order of ``truths``)."""
    cm = np.zeros((2, 2), np.int64)
    ious = []
    for pred, truth in zip(preds, truths, strict=True):
        one = _confusion(pred, truth, ignore)
        cm += one
        ious.append(image_iou(one))
    return {"model": label, **_scores(cm), **_per_image_scores(ious)}


def _predictor(
    model: Any, image: Callable[[int], np.ndarray], truths: Sequence[np.ndarray]
) -> Callable[[int], np.ndarray]:
    return lambda i: _at_size(model.predict(image(i)), truths[i].shape[:2])


def _at_size(mask: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """A mask at the truth's size: itself, or resized by nearest neighbour (``--frame``)."""
    if mask.shape[:2] == tuple(size):
        return mask
    from seg_service.runtime import resize_nearest

    return resize_nearest(mask, int(size[0]), int(size[1]))


def frame_image(rgb: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
    """The photo as a camera of ``frame`` (W, H) would deliver it: resized (area averaging, or
    bilinear when enlarging) to W x H, or to H x W for a portrait photo, its aspect ratio not kept,
    as a webcam-sized input reaches a model."""
    import cv2

    w, h = frame
    h_in, w_in = rgb.shape[:2]
    if h_in > w_in:
        w, h = h, w
    if (h, w) == (h_in, w_in):
        return rgb
    shrinking = h * w < h_in * w_in
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def recolour_image(rgb: np.ndarray, how: str) -> np.ndarray:
    """The same photo without its colours as a cue: ``grey`` (OpenCV's luma, in all three
    channels) or ``hue:DEG`` (every hue turned DEG degrees, saturation and value kept). A model
    that finds people by their shape scores about the same on both; one that leans on skin and
    clothing colours does not."""
    import cv2

    if how == "grey":
        return np.ascontiguousarray(np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2))
    degrees = parse_recolour(how)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + round(degrees / 2)) % 180).astype(np.uint8)  # 0-180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def shrink_image(rgb: np.ndarray, side: int) -> np.ndarray:
    """The same photo with the detail of one whose long side is ``side`` pixels: shrunk (area
    averaging) and enlarged back to its size (bicubic), as a small or soft photo reaches a model
    that upscales it. Images already that small are returned as they are."""
    import cv2

    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale >= 1.0:
        return rgb
    small_size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(rgb, small_size, interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def parse_recolour(how: str) -> float:
    """The hue turn of ``hue:DEG`` (0 for ``grey``); anything else is an InputError."""
    if how == "grey":
        return 0.0
    kind, _, value = how.partition(":")
    try:
        degrees = float(value)
    except ValueError:
        degrees = float("nan")
    if kind != "hue" or not np.isfinite(degrees):
        raise InputError(f"--recolour {how}: use 'grey' or 'hue:DEG' (e.g. hue:60)")
    return degrees


def failure_sheet(
    image: Callable[[int], np.ndarray],
    truths: Sequence[np.ndarray],
    masks: Sequence[Callable[[int], np.ndarray]],
    rows: Sequence[dict[str, Any]],
    ignore: int,
    worst: int,
    tile: int = 200,
) -> np.ndarray:
    """An RGB picture, one line per image: the ``worst`` images of the first model (lowest person
    IoU first), each as its truth (green; ignored pixels grey) and then every model's mask (red;
    ``masks[m](i)``: model m's mask of image i, non-zero = person),
    each tile captioned with the model's name and its IoU on that image. Where the first model
    fails, and whether the others fail there too, at a glance."""
    import cv2

    first = rows[0]["image_iou"]
    ranked = sorted((i for i, v in enumerate(first) if v is not None), key=lambda i: first[i])[:worst]

    def fit(rgb: np.ndarray, caption: str) -> np.ndarray:
        h, w = rgb.shape[:2]
        scale = tile / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        box = np.full((tile + 18, tile, 3), 40, np.uint8)
        box[18 : 18 + small.shape[0], : small.shape[1]] = small
        white = (255, 255, 255)
        cv2.putText(box, caption, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.36, white, 1, cv2.LINE_AA)
        return box

    def tint(rgb: np.ndarray, where: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
        out = rgb.copy()
        out[where] = (0.45 * out[where] + 0.55 * np.array(colour)).astype(np.uint8)
        return out

    lines = []
    for i in ranked:
        rgb, truth = image(i), truths[i]
        shown = tint(tint(rgb, truth == 1, (0, 200, 0)), truth == ignore, (128, 128, 128))
        tiles = [fit(shown, "truth")]
        for row, mask in zip(rows, masks, strict=True):
            caption = f"{row['model'][:26]} {row['image_iou'][i]:.2f}"  # the name cut, not the IoU
            tiles.append(fit(tint(rgb, mask(i) > 0, (220, 20, 20)), caption))
        lines.append(np.hstack(tiles))
    if not lines:
        return np.full((tile + 18, tile, 3), 40, np.uint8)
    return np.vstack(lines)


def speed(
    packed: Sequence[str],
    python: str | None,
    image: str,
    size: tuple[int, int],
    rounds: int,
    repeats: int,
    threads: int,
    pace_ms: float = 0.0,
) -> list[dict[str, Any]]:
    """Median ms per call, rounds interleaved so every engine sees the same machine load.

    ``pace_ms`` > 0 pauses that long before every timed call, as frames come from a camera (33 ms
    at 30 fps): between frames the engines' helper threads fall asleep and the cores' caches and
    clocks go cold, which back-to-back calls never show."""
    import time

    import cv2

    from seg_service.runtime import load_model, set_num_threads

    set_num_threads(threads)
    bgr = cv2.imread(image, cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"cannot read image {image}")
    frame = np.ascontiguousarray(cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)[:, :, ::-1])
    models = {Path(p).name: load_model(p) for p in packed}
    times: dict[str, list[float]] = {name: [] for name in models}
    if python:
        times.update({f"mediapipe selfie {m}": [] for m in MEDIAPIPE_MODELS})
    for model in models.values():
        model.predict(frame)  # warm-up
    with contextlib.ExitStack() as stack:
        peer = stack.enter_context(MediaPipeTimer(python, image, size)) if python else None
        for _ in range(rounds):
            for name, model in models.items():
                for _ in range(repeats):
                    if pace_ms > 0:
                        time.sleep(pace_ms / 1000.0)
                    start = time.perf_counter()
                    model.predict(frame)
                    times[name].append(1000.0 * (time.perf_counter() - start))
            if peer:
                for m in MEDIAPIPE_MODELS:
                    times[f"mediapipe selfie {m}"] += peer.time(m, repeats, pace_ms)
    rows = [
        {
            "model": name,
            "median_ms": statistics.median(ms),
            "calls": len(ms),
            "round_medians": [statistics.median(ms[r * repeats : (r + 1) * repeats]) for r in range(rounds)],
        }
        for name, ms in times.items()
    ]
    add_peer_ratios(rows, f"mediapipe selfie {MEDIAPIPE_MODELS[0]}")
    return rows


def add_peer_ratios(rows: list[dict[str, Any]], peer: str) -> None:
    """Adds to every other row ``ratio_to_peer``: the median over rounds of its round median divided
    by ``peer``'s in the same round (both timed minutes apart under the same load, which on a
    shared machine moves more than either engine does), with ``peer`` and the rounds' min and max.
    Nothing when no row is ``peer``."""
    reference = next((r for r in rows if r["model"] == peer), None)
    if reference is None:
        return
    for row in rows:
        if row is reference:
            continue
        ratios = [
            mine / theirs
            for mine, theirs in zip(row["round_medians"], reference["round_medians"], strict=True)
        ]
        row["ratio_to_peer"] = {
            "peer": peer,
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
        }


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _size_wxh(text: str) -> tuple[int, int]:
    """``WxH`` (two positive integers) as (W, H)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"use WxH with two positive integers (e.g. 320x240), got {text!r}")
    return int(parts[0]), int(parts[1])


def _check_picture_path(path: str) -> None:
    """Before the long part: a sheet path OpenCV can write (its suffix) into a folder that exists."""
    target = Path(path)
    if target.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise InputError(f"--sheet {path}: the picture must be a .png or .jpg file")
    if not target.resolve().parent.is_dir():
        raise InputError(f"--sheet {path}: the folder {target.resolve().parent} does not exist")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seg_training.peers.compare", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for p in (
        (acc := sub.add_parser("accuracy", help="person IoU of each model on a config's val images")),
        (spd := sub.add_parser("speed", help="predict latency of each model, side by side")),
    ):
        p.add_argument("--packed", action="append", default=[], help="a .gnpk model (repeatable)")
        p.add_argument("--mediapipe-python", help="python of an environment with mediapipe installed")
        p.add_argument("--threads", type=int, default=2, help="threads for our runtime (default 2)")
        p.add_argument("--json", help="also write the rows to this JSON file")
    acc.add_argument("--config", required=True, help="a person/background training config (its val split)")
    acc.add_argument("--split", help="override data.val_split (e.g. val_portraits.txt)")
    acc.add_argument("--data-root", help="override data.root")
    acc.add_argument(
        "--sheet",
        help="also write a picture (.png or .jpg) of the first model's worst images: truth, then "
        "every model's mask, with its IoU on each",
    )
    acc.add_argument("--worst", type=_positive_int, default=12, help="images on the sheet (default 12)")
    acc.add_argument(
        "--recolour",
        help="score every model on the images turned grey ('grey') or with every hue turned DEG "
        "degrees ('hue:DEG'): how much each leans on colour",
    )
    acc.add_argument(
        "--shrink",
        type=_positive_int,
        metavar="SIDE",
        help="score every model on the images shrunk to a long side of SIDE pixels and enlarged "
        "back: how much each leans on fine detail (small, soft or upscaled photos)",
    )
    acc.add_argument(
        "--frame",
        type=_size_wxh,
        metavar="WxH",
        help="score every model on each photo resized to a camera frame of this size (e.g. "
        "320x240; H x W for portrait photos, aspect not kept), its mask resized back: how each "
        "does at webcam sizes",
    )
    spd.add_argument(
        "--image",
        default=str(Path(__file__).resolve().parents[2] / "tests/data/ccp/images/0003.jpg"),
        help="the photo to time on (resized to --size)",
    )
    spd.add_argument("--size", type=_size_wxh, default="320x240", help="frame size WxH (default 320x240)")
    spd.add_argument("--rounds", type=int, default=5)
    spd.add_argument("--repeats", type=int, default=20)
    spd.add_argument(
        "--pace-ms",
        type=_non_negative_float,
        default=0.0,
        metavar="MS",
        help="pause this long before every timed call, as a camera paces frames (33 at 30 fps): "
        "threads and caches go cold between frames, which back-to-back calls (the default, 0) hide",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "accuracy":
            if args.sheet:
                _check_picture_path(args.sheet)
            if args.recolour:
                parse_recolour(args.recolour)
            rows = accuracy(
                args.config,
                args.split,
                args.data_root,
                args.packed,
                args.mediapipe_python,
                args.threads,
                args.sheet,
                args.worst,
                args.recolour,
                args.shrink,
                args.frame,
            )
            print(
                f"{'model':<34} {'person IoU':>10} {'precision':>9} {'recall':>7} {'mIoU':>6} "
                f"{'false alarm':>11} {'median image':>12} {'under 0.5':>9}  images"
            )
            for r in rows:
                median = r["median_image_iou"]
                print(
                    f"{r['model']:<34} {100 * r['person_iou']:10.1f} {100 * r['precision']:9.1f} "
                    f"{100 * r['recall']:7.1f} {100 * r['miou']:6.1f} {100 * r['false_alarm']:11.1f} "
                    f"{'-' if median is None else f'{100 * median:.1f}':>12} "
                    f"{r['images_under_half']:>9}  {r['images']}"
                )
            print(
                "median image / under 0.5: person IoU of the median image and the count of images under "
                "0.5, over the images with a person"
            )
            if args.sheet:
                print(f"worst images of {rows[0]['model']}: {args.sheet}")
        else:
            from seg_service import kernels

            hand_off_before = kernels.cpu_round_trip_ns()
            rows = speed(
                args.packed,
                args.mediapipe_python,
                args.image,
                args.size,
                args.rounds,
                args.repeats,
                args.threads,
                args.pace_ms,
            )
            paced = f", one call every {args.pace_ms:g} ms + its own time" if args.pace_ms else ""
            print(
                f"{'model':<34} {'median ms':>9}  per-round medians   "
                f"({args.size[0]}x{args.size[1]}, {args.threads} threads{paced})"
            )
            for r in rows:
                print(
                    f"{r['model']:<34} {r['median_ms']:9.2f}  "
                    + " ".join(f"{m:.1f}" for m in r["round_medians"])
                )
            info = kernels.dispatch_info()
            print(
                f"our kernels: {info['isa']} path (this CPU as seen by CPUID: "
                f"{', '.join(info['available_isas'])}), popcount {info['popcount']}, "
                f"integer stem {info['u8_dot']}"
            )
            print(kernels.cpu_round_trip_note(hand_off_before, kernels.cpu_round_trip_ns()))
            for r in rows:
                if "ratio_to_peer" in r:
                    q = r["ratio_to_peer"]
                    print(
                        f"{r['model']} / {q['peer']}: {q['median']:.2f} (median of the rounds' ratios; "
                        f"{q['min']:.2f}-{q['max']:.2f})"
                    )
    except (InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
