"""seg-client's background effects: blur and replacement from the server's alpha mattes, in a real
client process against a real server on the real video, plus the pieces they are made of.

The server runs the shipped models (weights/): the street model is sure of the video's cyclists and
pedestrians, so its mattes have fully kept (255) and fully dropped (0) parts to check."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from client_harness import API_KEY, VIDEO, run_client

from seg_client.app import step_blur
from seg_client.cli import build_parser
from seg_client.overlay import Background, ClassInfo, compose, mask_format_for
from seg_client.transport import inference_options, ws_url

ROOT = Path(__file__).resolve().parents[2]
KEEP = ["--model", "camvid", "--foreground", "pedestrian,bicyclist"]
JPEG_QUALITY = 80  # the client's default: the server gets the very same bytes from the test
HUD_ROWS = 60  # the status text's rows; compared below them
BACKGROUND_IMAGE = (
    ROOT / "tests" / "data" / "imagenette" / "val" / "n03888257" / "ILSVRC2012_val_00001440.jpg"
)


@pytest.fixture(scope="module")
def packed_model_dir() -> Path:
    """The model folder of this module's `server` (tests/client/conftest.py): the shipped models."""
    return ROOT / "weights"


def read_video(path: Path, limit: int | None = None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while limit is None or len(frames) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def server_mattes(url: str, frames: list[np.ndarray]) -> list[np.ndarray]:
    """The alpha mattes the server computes for these frames one by one (POST /segment?format=alpha),
    in the one pass that stream frames run (camvid's stored test-time augmentation is for stills)."""
    mattes = []
    with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=60) as http:
        for frame in frames:
            jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
            params = {
                "format": "alpha",
                "model": "camvid",
                "foreground": "pedestrian,bicyclist",
                "flip": "false",
                "scales": "1",
            }
            r = http.post("/segment", params=params, files={"file": ("f.jpg", jpeg, "image/jpeg")})
            r.raise_for_status()
            mattes.append(cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED))
    return mattes


def render(server_url: str, tmp_path: Path, name: str, *args: str) -> tuple[list[np.ndarray], dict]:
    out, stats = tmp_path / f"{name}.mp4", tmp_path / f"{name}.json"
    result = run_client(
        "--video",
        VIDEO,
        "--headless",
        "--out",
        out,
        "--stats-json",
        stats,
        "--server",
        server_url,
        "--api-key",
        API_KEY,
        "--max-frames",
        "12",
        "--fps",
        "3",
        "--no-smooth",
        *KEEP,
        *args,
    )
    assert result.returncode == 0, result.stderr
    return read_video(out), json.loads(stats.read_text())


def compared_frames(outputs: list[np.ndarray], stats: dict) -> list[tuple[int, int]]:
    """(output index, index of the input frame whose matte it was drawn with). The video is paced at
    3 fps, so even a busy server answers several of the 12 frames."""
    pairs = [(i, i - age) for i, age in enumerate(stats["mask_age"]) if age is not None]
    assert len(outputs) == 12 and len(pairs) >= 2, stats["mask_age"]
    return pairs


@pytest.mark.parametrize("background", ["#20c040", "image"])
def test_replace_view_writes_frame_over_the_background_by_the_matte(server, tmp_path, background):
    spec = str(BACKGROUND_IMAGE) if background == "image" else background
    outputs, stats = render(server.url, tmp_path, "replace", "--view", "replace", "--background", spec)
    inputs = read_video(VIDEO, 12)
    mattes = server_mattes(server.url, inputs)
    h, w = inputs[0].shape[:2]
    if background == "image":  # scaled to cover the frame, centred: computed here independently
        picture = cv2.imread(spec).astype(np.float32)
        scale = max(w / picture.shape[1], h / picture.shape[0])
        sw, sh = max(w, round(picture.shape[1] * scale)), max(h, round(picture.shape[0] * scale))
        scaled = cv2.resize(picture, (sw, sh), interpolation=cv2.INTER_LINEAR)
        back = scaled[(sh - h) // 2 : (sh - h) // 2 + h, (sw - w) // 2 : (sw - w) // 2 + w]
    else:
        back = np.broadcast_to(np.array([0x40, 0xC0, 0x20], np.float32), (h, w, 3))  # BGR
    kept = dropped = 0
    for i, source in compared_frames(outputs, stats):
        a = mattes[source][:, :, None].astype(np.float32) / 255
        expected = a * inputs[i] + (1 - a) * back
        got = outputs[i].astype(np.float32)
        error = np.abs(got - expected)[HUD_ROWS:].mean()
        wrong = np.abs(got - ((1 - a) * inputs[i] + a * back))[HUD_ROWS:].mean()  # the matte inverted
        assert error < 6 and wrong > 3 * error, (i, error, wrong)
        kept += int((mattes[source][HUD_ROWS:] == 255).sum())
        dropped += int((mattes[source][HUD_ROWS:] == 0).sum())
    assert kept > 500 and dropped > 500  # both parts of the picture were checked


def test_blur_view_blurs_only_what_the_matte_drops(server, tmp_path):
    sigma = 6
    outputs, stats = render(server.url, tmp_path, "blur", "--view", "blur", "--blur", str(sigma))
    inputs = read_video(VIDEO, 12)
    mattes = server_mattes(server.url, inputs)
    for i, source in compared_frames(outputs, stats):
        frame = inputs[i].astype(np.float32)
        a = mattes[source][:, :, None].astype(np.float32) / 255
        blurred = cv2.GaussianBlur(inputs[i], (0, 0), sigma).astype(np.float32)
        expected = a * frame + (1 - a) * blurred
        got = outputs[i].astype(np.float32)
        drop = (mattes[source] == 0)[HUD_ROWS:]
        if drop.sum() > 2000:  # the blurred part is the blur, not the sharp frame
            to_blur, to_frame = np.abs(got - blurred)[HUD_ROWS:][drop], np.abs(got - frame)[HUD_ROWS:][drop]
            assert to_blur.mean() < 0.5 * to_frame.mean(), i
        assert np.abs(got - expected)[HUD_ROWS:].mean() < 6, i


def test_effect_options_and_pieces():
    # The views ask the server for the mask they draw; the options go into the WebSocket URL.
    assert [mask_format_for(v) for v in ("blur", "replace", "overlay")] == ["alpha", "alpha", "png"]
    options = inference_options(smooth=False, mask_format="alpha", foreground=["pedestrian", "bicyclist"])
    assert options == {"smooth": "false", "format": "alpha", "foreground": "pedestrian,bicyclist"}
    assert inference_options() == {}  # smoothing on, label masks: the server's defaults
    assert "format=alpha" in ws_url("http://h:1", "street", options)
    args = build_parser().parse_args(
        [
            "--view",
            "replace",
            "--background",
            "#102030",
            "--blur",
            "3",
            "--no-smooth",
            "--foreground",
            "car,pedestrian",
        ]
    )
    assert (args.view, args.blur, args.smooth, args.foreground) == ("replace", 3.0, False, "car,pedestrian")
    assert args.background.canvas((2, 3))[0, 0].tolist() == [0x30, 0x20, 0x10]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--background", "no-such-file.png"])
    assert step_blur(8.0, 1) == 12.0 and step_blur(8.0, -1) == 4.0 and step_blur(2.0, -1) == 2.0
    # A label mask cannot be drawn as a matte (right after a view switch): the frame as it is.
    frame = np.full((4, 6, 3), 90, np.uint8)
    labels = np.ones((4, 6), np.uint8)
    assert np.array_equal(compose("blur", frame, labels, ClassInfo.unknown(), mask_format="png"), frame)
    replaced = compose(
        "replace",
        frame,
        np.zeros((4, 6), np.uint8),
        ClassInfo.unknown(),
        mask_format="alpha",
        background=Background((1, 2, 3)),
    )
    assert (replaced == [1, 2, 3]).all()
