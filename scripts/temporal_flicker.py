"""Flicker of a model's masks over a video, with and without the stream smoother, and its costs.

Measures, for a packed model and a clip (a video file, a folder of consecutive frames, or a still
photo played as a static webcam: --still-webcam, each frame with fresh sensor noise and JPEG coding):
- flip rate: the mean, over consecutive frame pairs, of the fraction of pixels whose label changes
  (and, with --foreground, of pixels whose alpha matte crosses one half), plain and smoothed;
- with --masks (CamVid-style 8-bit labels named like the frames, 11 = void): mIoU of the plain and
  the smoothed masks over the clip, i.e. the accuracy smoothing costs or gains on real video;
- still images: each image of --stills sent as a stream of --repeat identical frames through the
  smoothed stream path, compared with predict() (the REST answer): pixels that differ;
- time per frame (median over the clip) of predict(), the stream path with and without smoothing,
  and the alpha matte; and the fastest of --repeats runs of each added step on one frame (the
  smoother's update, the matte from the scores), which a busy machine disturbs least.

    python scripts/temporal_flicker.py --model weights/camvid.gnpk \
        --video tests/data/video/camvid_0016E5.mp4 --stills tests/data/camvid/images
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from seg_service.api.streams import StreamState, frame_mask
from seg_service.runtime import load_model
from seg_service.runtime.softmask import resolve_foreground, soft_mask
from seg_service.runtime.temporal import TemporalSmoother


def still_webcam(photo: Path, frames: int, noise: float, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """A still photo as a static webcam sees it: per frame, Gaussian sensor noise of `noise` grey
    levels and JPEG coding at quality 80 (what the browser sends)."""
    rng = np.random.default_rng(seed)
    bgr = cv2.imread(str(photo)).astype(np.float32)
    clip = []
    for i in range(frames):
        noisy = np.clip(bgr + rng.normal(0, noise, bgr.shape), 0, 255).astype(np.uint8)
        coded = cv2.imdecode(cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 80])[1], cv2.IMREAD_COLOR)
        clip.append((f"{i:05d}", np.ascontiguousarray(coded[:, :, ::-1])))
    return clip


def read_clip(
    video: Path | None, frames_dir: Path | None, prefix: str, limit: int | None
) -> list[tuple[str, np.ndarray]]:
    """[(name, RGB u8)] in order."""
    clip: list[tuple[str, np.ndarray]] = []
    if video is not None:
        cap = cv2.VideoCapture(str(video))
        while limit is None or len(clip) < limit:
            ok, bgr = cap.read()
            if not ok:
                break
            clip.append((f"{len(clip):05d}", np.ascontiguousarray(bgr[:, :, ::-1])))
        cap.release()
        return clip
    assert frames_dir is not None
    for path in sorted(frames_dir.glob(f"{prefix}*.jpg"))[:limit]:
        clip.append((path.stem, np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])))
    return clip


def flip_rate(masks: list[np.ndarray]) -> float:
    return float(np.mean([(a != b).mean() for a, b in zip(masks, masks[1:])])) if len(masks) > 1 else 0.0


def miou(masks: list[np.ndarray], truths: list[np.ndarray], classes: int, void: int = 11) -> float:
    inter = np.zeros(classes)
    union = np.zeros(classes)
    for mask, truth in zip(masks, truths):
        valid = truth != void
        for c in range(classes):
            p, t = (mask == c) & valid, (truth == c) & valid
            inter[c] += (p & t).sum()
            union[c] += (p | t).sum()
    present = union > 0
    return float((inter[present] / union[present]).mean())


def timed(fn, repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--video", type=Path, help="a video file")
    parser.add_argument("--frames", type=Path, help="a folder of consecutive frames (*.jpg, sorted by name)")
    parser.add_argument("--prefix", default="", help="with --frames: only files starting with this")
    parser.add_argument("--masks", type=Path, help="with --frames: label masks <name>.png for mIoU")
    parser.add_argument("--limit", type=int, help="at most this many frames")
    parser.add_argument(
        "--still-webcam", type=Path, metavar="PHOTO", help="a photo played as a static webcam"
    )
    parser.add_argument("--noise", type=float, default=4.0, help="--still-webcam: sensor noise, grey levels")
    parser.add_argument("--foreground", help="comma-separated classes for the alpha matte's flip rate")
    parser.add_argument(
        "--stills", type=Path, help="folder of still images (*.jpg) for the unchanged-result check"
    )
    parser.add_argument("--repeat", type=int, default=5, help="identical frames per still")
    parser.add_argument("--repeats", type=int, default=20, help="runs per step for the fastest-run timings")
    args = parser.parse_args()

    model = load_model(args.model)
    clip = (
        still_webcam(args.still_webcam, args.limit or 30, args.noise)
        if args.still_webcam
        else read_clip(args.video, args.frames, args.prefix, args.limit)
    )
    if len(clip) < 2:
        raise SystemExit("need at least two frames")
    names = args.foreground.split(",") if args.foreground else None
    soft = names is not None or "person" in model.classes or len(model.classes) == 2
    print(
        f"model {model.name} ({model.num_classes} classes), {len(clip)} frames of {clip[0][1].shape[1]}x"
        f"{clip[0][1].shape[0]}"
    )

    plain_labels, smooth_labels, plain_alpha, smooth_alpha = [], [], [], []
    smoothed_stream, smoothed_alpha_stream = StreamState(True), StreamState(True)
    times: dict[str, list[float]] = {
        "predict": [],
        "stream, smoothing off": [],
        "stream, smoothing on": [],
        "alpha, smoothing off": [],
        "alpha, smoothing on": [],
    }
    off_stream = StreamState(False)
    for _, rgb in clip:
        start = time.perf_counter()
        plain = model.predict(rgb)
        times["predict"].append((time.perf_counter() - start) * 1e3)
        plain_labels.append(plain)
        mask, ms = frame_mask(model, rgb, False, True, "labels", None, off_stream)
        times["stream, smoothing off"].append(ms)
        assert np.array_equal(mask, plain)
        mask, ms = frame_mask(model, rgb, False, True, "labels", None, smoothed_stream)
        times["stream, smoothing on"].append(ms)
        smooth_labels.append(mask)
        if soft:
            alpha, ms = frame_mask(model, rgb, False, True, "alpha", names, off_stream)
            times["alpha, smoothing off"].append(ms)
            plain_alpha.append(alpha >= 128)
            alpha, ms = frame_mask(model, rgb, False, True, "alpha", names, smoothed_alpha_stream)
            times["alpha, smoothing on"].append(ms)
            smooth_alpha.append(alpha >= 128)

    print(
        f"label flip rate (mean fraction of pixels changing class between consecutive frames): "
        f"plain {100 * flip_rate(plain_labels):.2f} %, smoothed {100 * flip_rate(smooth_labels):.2f} %"
    )
    if soft:
        fg = [model.classes[i] for i in resolve_foreground(model.classes, names)]
        print(
            f"alpha flip rate (matte crossing 1/2), foreground {'+'.join(fg)}: plain "
            f"{100 * flip_rate(plain_alpha):.2f} %, smoothed {100 * flip_rate(smooth_alpha):.2f} %; "
            f"foreground covers {100 * np.mean(plain_alpha):.1f} % of the pixels"
        )
    if args.masks:
        truths = [cv2.imread(str(args.masks / f"{name}.png"), cv2.IMREAD_UNCHANGED) for name, _ in clip]
        print(
            f"mIoU over the clip: plain {100 * miou(plain_labels, truths, model.num_classes):.2f}, "
            f"smoothed {100 * miou(smooth_labels, truths, model.num_classes):.2f}"
        )
    print("median ms per frame: " + ", ".join(f"{k} {np.median(v):.1f}" for k, v in times.items() if v))
    rgb = clip[len(clip) // 2][1]
    scores, image = model.processed_scores(rgb)
    smoother = TemporalSmoother()
    smoother.update(scores, image)
    indices = resolve_foreground(model.classes, names) if soft else []

    def fastest(fn) -> float:
        return min(timed(fn) for _ in range(args.repeats))

    steps = {
        "predict()": lambda: model.predict(rgb),
        "processed_scores()": lambda: model.processed_scores(rgb),
        "smoother update": lambda: smoother.update(scores, image),
    }
    if soft:
        steps["alpha matte + upsampling"] = lambda: soft_mask(scores, indices, "alpha", rgb.shape[:2])
    print(
        f"fastest of {args.repeats} runs, ms (scores {scores.shape[1]}x{scores.shape[0]}): "
        + ", ".join(f"{name} {fastest(fn):.2f}" for name, fn in steps.items())
    )

    if args.stills:
        changed = total = 0
        paths = sorted(args.stills.glob("*.jpg"))
        for path in paths:
            rgb = np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])
            expected = model.predict(rgb)
            stream = StreamState(True)
            for _ in range(args.repeat):
                mask, _ = frame_mask(model, rgb, False, True, "labels", None, stream)
                changed += int((mask != expected).sum())
                total += mask.size
        print(
            f"still images ({len(paths)} x {args.repeat} identical frames, smoothing on) vs predict(): "
            f"{changed} of {total} pixels differ"
        )


if __name__ == "__main__":
    main()
