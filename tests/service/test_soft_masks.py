"""Soft masks (format=alpha / probability) and temporal smoothing through a real server: REST, video
upload and the WebSocket, each checked against the in-process runtime on the same decoded frames."""

from __future__ import annotations

import json

import cv2
import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from seg_service.api import imaging
from seg_service.api.streams import StreamState, frame_mask
from seg_service.runtime import load_model

from .helpers import PERSON_IMAGES, STREET_IMAGES, VIDEO
from .test_http import decode_png, post_image
from .test_websocket import receive_result

MAX_PIXELS = 4_000_000  # the shared server's --max-image-pixels


@pytest.fixture(scope="module")
def models(packed_model_dir):
    return {name: load_model(packed_model_dir / f"{name}.gnpk") for name in ("person", "street")}


@pytest.fixture(scope="module")
def jpeg_frames() -> list[bytes]:
    cap = cv2.VideoCapture(str(VIDEO))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    cap.release()
    return frames


def decode(data: bytes) -> np.ndarray:
    """The RGB frame exactly as the server decodes it."""
    return imaging.decode_image(data, MAX_PIXELS)


def test_rest_alpha_and_probability_are_the_runtime_soft_masks(server, models):
    data = PERSON_IMAGES[0].read_bytes()
    rgb = decode(data)
    for kind in ("alpha", "probability"):
        r = post_image(server.url, data, format=kind)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
        assert float(r.headers["X-Inference-Time-Ms"]) > 0
        soft = decode_png(r.content)
        expected, _ = frame_mask(models["person"], rgb, False, True, kind)
        assert soft.shape == rgb.shape[:2] and np.array_equal(soft, expected), kind
    # The label mask is unchanged: still predict() itself.
    assert np.array_equal(decode_png(post_image(server.url, data).content), models["person"].predict(rgb))


def test_rest_alpha_follows_the_label_mask(server, models):
    """On the person model the matte is over one half exactly where the probability is, and is sure
    (0 or 255) where the probability is: two views of the same scores."""
    data = PERSON_IMAGES[1].read_bytes()
    alpha = decode_png(post_image(server.url, data, format="alpha").content).astype(int)
    probability = decode_png(post_image(server.url, data, format="probability").content).astype(int)
    assert ((alpha >= 128) == (probability >= 128)).mean() > 0.99
    assert (alpha[probability <= 30] == 0).all() and (alpha[probability >= 225] == 255).all()


def test_rest_foreground_classes_on_a_street_model(server, models):
    data = STREET_IMAGES[0].read_bytes()
    rgb = decode(data)
    r = post_image(server.url, data, model="street", format="probability", foreground="car,pedestrian")
    assert r.status_code == 200, r.text
    expected, _ = frame_mask(models["street"], rgb, False, True, "probability", ["car", "pedestrian"])
    assert np.array_equal(decode_png(r.content), expected)
    car_only = decode_png(
        post_image(server.url, data, model="street", format="probability", foreground="car").content
    )
    assert (decode_png(r.content).astype(int) >= car_only.astype(int) - 1).all()  # probabilities add up


@pytest.mark.parametrize(
    "params,detail",
    [
        ({"model": "street", "format": "alpha"}, "name the foreground"),
        ({"format": "alpha", "foreground": "dog"}, "unknown foreground"),
        ({"format": "matte"}, "format"),
    ],
)
def test_rest_bad_soft_mask_requests_are_422(server, params, detail):
    r = post_image(server.url, PERSON_IMAGES[0].read_bytes(), **params)
    assert r.status_code == 422 and detail in json.dumps(r.json()["detail"]), r.text


def stream(
    ws_url: str, frames: list[bytes], query: str = "", settings: dict | None = None
) -> list[tuple[dict, np.ndarray]]:
    """Send each frame and wait for its answer (so none is dropped): [(result JSON, mask)]."""
    answers = []
    with connect(ws_url + "/ws/segment" + query) as ws:
        if settings:
            ws.send(json.dumps(settings))
        for frame in frames:
            ws.send(frame)
            result, png = receive_result(ws)
            assert png is not None, result
            answers.append((result, decode_png(png)))
    return answers


def test_websocket_smoothing_is_on_by_default_and_per_connection(server, models, jpeg_frames):
    """Paced stream of 8 real frames: with the default (smooth on) every mask equals the runtime's
    smoothed stream over the same frames; with smooth=false every mask is predict()'s; they differ."""
    frames = jpeg_frames[:8]
    model = models["street"]
    smoothed = stream(server.ws_url, frames, "?model=street")
    plain = stream(server.ws_url, frames, "?model=street&smooth=false")
    state = StreamState(smooth=True)
    differs = False
    for i, frame in enumerate(frames):
        rgb = decode(frame)
        expected_smoothed, _ = frame_mask(model, rgb, False, True, "labels", None, state)
        assert smoothed[i][0]["smoothed"] is True and plain[i][0]["smoothed"] is False
        assert np.array_equal(smoothed[i][1], expected_smoothed), i
        assert np.array_equal(plain[i][1], model.predict(rgb)), i
        differs |= not np.array_equal(expected_smoothed, plain[i][1])
    assert differs
    assert np.array_equal(smoothed[0][1], plain[0][1])  # the first frame has no history
    # A new connection starts with no history: its first answer is the frame's own mask.
    fresh = stream(server.ws_url, frames[5:6], "?model=street")
    assert np.array_equal(fresh[0][1], model.predict(decode(frames[5])))


def test_websocket_alpha_format_and_settings(server, models, jpeg_frames):
    frames = jpeg_frames[:3]
    answers = stream(server.ws_url, frames, "", {"format": "alpha", "smooth": False})
    for (result, alpha), frame in zip(answers, frames):
        assert result["format"] == "alpha" and (result["width"], result["height"]) == (320, 240)
        expected, _ = frame_mask(models["person"], decode(frame), False, True, "alpha")
        assert np.array_equal(alpha, expected)
    # Query form, smoothed: equal to the runtime's smoothed alpha stream.
    answers = stream(server.ws_url, frames, "?model=street&format=probability&foreground=car")
    state = StreamState(smooth=True)
    for (result, soft), frame in zip(answers, frames):
        assert result["format"] == "probability" and result["smoothed"]
        expected, _ = frame_mask(models["street"], decode(frame), False, True, "probability", ["car"], state)
        assert np.array_equal(soft, expected)


def test_websocket_bad_soft_settings_keep_the_session(server, jpeg_frames):
    with connect(server.ws_url + "/ws/segment") as ws:
        for settings, detail in (
            ({"smooth": "yes"}, "smooth must be true or false"),
            ({"format": "matte"}, "unsupported format"),
            ({"foreground": "dog", "format": "alpha"}, "unknown foreground"),
            ({"model": "street", "format": "alpha"}, "name the foreground"),
            ({"foreground": 3}, "foreground must be"),
            ({"format": {"a": 1}}, "unsupported format"),
            ({"foreground": {"a": 1}, "format": "alpha"}, "foreground must be"),
            ({"smooth": [True]}, "smooth must be true or false"),
        ):
            ws.send(json.dumps(settings))
            error, _ = receive_result(ws)
            assert error["type"] == "error" and detail in error["detail"], (settings, error)
        ws.send(jpeg_frames[0])
        result, png = receive_result(ws)  # nothing of the refused settings applied
        assert png is not None and (result["model"], result["format"]) == ("person", "png")
    with connect(server.ws_url + "/ws/segment?model=street&format=alpha") as ws:
        assert "name the foreground" in json.loads(ws.recv(timeout=30))["detail"]


def test_video_smoothing_default_alpha_video_and_switch(server, models):
    """Video upload: json counts equal the runtime's smoothed stream by default and predict() with
    smooth=false; format=alpha is a grey video of the matte."""
    model = models["street"]
    smoothed = httpx.post(
        server.url + "/segment/video",
        params={"format": "json", "model": "street"},
        files={"file": ("v.mp4", VIDEO.read_bytes())},
        timeout=300,
    )
    plain = httpx.post(
        server.url + "/segment/video",
        params={"format": "json", "model": "street", "smooth": "false"},
        files={"file": ("v.mp4", VIDEO.read_bytes())},
        timeout=300,
    )
    assert smoothed.status_code == 200 and plain.status_code == 200, (smoothed.text, plain.text)
    cap = cv2.VideoCapture(str(VIDEO))
    state = StreamState(smooth=True)
    differs = False
    for smoothed_frame, plain_frame in zip(smoothed.json()["frames"][:6], plain.json()["frames"][:6]):
        ok, bgr = cap.read()
        assert ok
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        expected, _ = frame_mask(model, rgb, False, True, "labels", None, state)
        counts = [c["pixels"] for c in smoothed_frame["classes"]]
        assert counts == np.bincount(expected.ravel(), minlength=11).tolist()
        plain_counts = [c["pixels"] for c in plain_frame["classes"]]
        assert plain_counts == np.bincount(model.predict(rgb).ravel(), minlength=11).tolist()
        differs |= counts != plain_counts
    cap.release()
    assert differs

    r = httpx.post(
        server.url + "/segment/video",
        params={"format": "alpha", "smooth": "false"},
        files={"file": ("v.mp4", VIDEO.read_bytes())},
        timeout=300,
    )
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4", r.text
    assert r.headers["X-Frames"] == "30"
    path = server.log_path.parent / "alpha.mp4"
    path.write_bytes(r.content)
    cap = cv2.VideoCapture(str(path))
    ok, first = cap.read()
    cap.release()
    assert ok and first.shape == (240, 320, 3)
    source = cv2.VideoCapture(str(VIDEO))
    ok, bgr = source.read()
    source.release()
    expected, _ = frame_mask(models["person"], np.ascontiguousarray(bgr[:, :, ::-1]), False, True, "alpha")
    # Grey (the matte in every channel), lossy: close to the runtime's matte on average.
    assert np.abs(first.astype(int) - first[..., :1].astype(int)).max() <= 8
    assert np.abs(first[..., 0].astype(int) - expected.astype(int)).mean() < 6
    bad = httpx.post(
        server.url + "/segment/video",
        params={"format": "alpha", "model": "street"},
        files={"file": ("v.mp4", VIDEO.read_bytes())},
        timeout=60,
    )
    assert bad.status_code == 422 and "name the foreground" in bad.json()["detail"]
