"""MediaPipe selfie segmentation, run in MediaPipe's own environment (imports nothing of ours).

    python mediapipe_runner.py masks --model general|landscape --list FILES.txt --out DIR
        writes DIR/<i>.png: 0/1 person mask (confidence >= 0.5) of the i-th listed image, at its size
    python mediapipe_runner.py probabilities --model general|landscape --list FILES.txt --out DIR
        writes DIR/<i>.png: the person confidence as 0-254 (255 is left free for "no value"), the
        mean of the image's pass and its mirror's, at the image's size (distillation targets)
    python mediapipe_runner.py time --model general|landscape --image F --size 320x240 --repeats N
        prints {"ms": [...], "file_bytes": N}: the time of each process() call on that frame and the
        size of the model's .tflite file
    python mediapipe_runner.py serve --image F --size 320x240
        keeps both models loaded and warm; each stdin line {"model": "general", "repeats": N} is
        answered by one stdout line {"ms": [...]}: rounds interleaved with another engine's, each
        engine warm as in steady use (a new process per round would time a cold one, minutes apart)

Requires ``pip install mediapipe`` (0.10.21 ships both selfie models as .tflite in the wheel).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

MODELS = {"general": 0, "landscape": 1}
# The .tflite file behind each model_selection, in the wheel's modules/selfie_segmentation folder
TFLITE_FILES = {"general": "selfie_segmentation.tflite", "landscape": "selfie_segmentation_landscape.tflite"}


def _segmenter(model: str):
    import mediapipe as mp

    return mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=MODELS[model])


def _read_rgb(path: str):
    import cv2

    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"error: cannot read image {path}")
    return bgr[:, :, ::-1].copy()


def model_file_bytes(model: str) -> int | None:
    import mediapipe as mp

    path = Path(mp.__file__).parent / "modules" / "selfie_segmentation" / TFLITE_FILES[model]
    return path.stat().st_size if path.is_file() else None


def masks(model: str, files: list[str], out: Path) -> None:
    import cv2
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    with _segmenter(model) as seg:
        for i, path in enumerate(files):
            confidence = seg.process(_read_rgb(path)).segmentation_mask
            cv2.imwrite(str(out / f"{i}.png"), (confidence >= 0.5).astype(np.uint8))


def probabilities(model: str, files: list[str], out: Path) -> None:
    import cv2
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    with _segmenter(model) as seg:
        for i, path in enumerate(files):
            rgb = _read_rgb(path)
            plain = seg.process(rgb).segmentation_mask
            mirrored = seg.process(np.ascontiguousarray(rgb[:, ::-1])).segmentation_mask[:, ::-1]
            confidence = np.clip(0.5 * (plain + mirrored), 0.0, 1.0)
            cv2.imwrite(str(out / f"{i}.png"), np.round(confidence * 254.0).astype(np.uint8))


def _frame(image: str, size: tuple[int, int]):
    import cv2

    return cv2.resize(_read_rgb(image), size, interpolation=cv2.INTER_AREA)


def _timed_calls(seg, frame, repeats: int, pace_ms: float = 0.0) -> list[float]:
    ms = []
    for _ in range(repeats):
        if pace_ms > 0:  # frames paced as a camera delivers them; the pause is not timed
            time.sleep(pace_ms / 1000.0)
        start = time.perf_counter()
        seg.process(frame)
        ms.append(1000.0 * (time.perf_counter() - start))
    return ms


def timing(model: str, image: str, size: tuple[int, int], repeats: int) -> list[float]:
    frame = _frame(image, size)
    with _segmenter(model) as seg:
        seg.process(frame)  # warm-up: graph start and first inference
        return _timed_calls(seg, frame, repeats)


def serve(image: str, size: tuple[int, int]) -> None:
    frame = _frame(image, size)
    segmenters = {}
    try:
        for line in sys.stdin:
            request = json.loads(line)
            model = request["model"]
            if model not in segmenters:
                segmenters[model] = _segmenter(model)
                segmenters[model].process(frame)  # warm-up: graph start and first inference
            ms = _timed_calls(
                segmenters[model], frame, int(request["repeats"]), float(request.get("pace_ms", 0))
            )
            print(json.dumps({"ms": ms}), flush=True)
    finally:
        for seg in segmenters.values():
            seg.close()


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("masks")
    m.add_argument("--model", choices=list(MODELS), required=True)
    m.add_argument("--list", required=True)
    m.add_argument("--out", required=True, type=Path)
    pr = sub.add_parser("probabilities")
    pr.add_argument("--model", choices=list(MODELS), required=True)
    pr.add_argument("--list", required=True)
    pr.add_argument("--out", required=True, type=Path)
    t = sub.add_parser("time")
    t.add_argument("--model", choices=list(MODELS), required=True)
    t.add_argument("--image", required=True)
    t.add_argument("--size", type=_size, default="320x240")
    t.add_argument("--repeats", type=int, default=20)
    s = sub.add_parser("serve")
    s.add_argument("--image", required=True)
    s.add_argument("--size", type=_size, default="320x240")
    args = parser.parse_args()
    if args.command == "masks":
        masks(args.model, Path(args.list).read_text().splitlines(), args.out)
    elif args.command == "probabilities":
        probabilities(args.model, Path(args.list).read_text().splitlines(), args.out)
    elif args.command == "serve":
        serve(args.image, args.size)
    else:
        ms = timing(args.model, args.image, args.size, args.repeats)
        json.dump({"ms": ms, "file_bytes": model_file_bytes(args.model)}, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
