"""Every HTTP endpoint of a real server, with real images and the real test video."""

from __future__ import annotations

import io
import json
import re
import time

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from .helpers import PERSON_IMAGES, SMALL_IMAGE, STREET_IMAGES, VIDEO


def post_image(
    url: str, data: bytes, filename: str = "image.jpg", timeout: float = 120, **params
) -> httpx.Response:
    return httpx.post(url + "/segment", params=params, files={"file": (filename, data)}, timeout=timeout)


def decode_png(data: bytes) -> np.ndarray:
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask is not None and mask.dtype == np.uint8 and mask.ndim == 2
    return mask


def rle_to_mask(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=bool)
    pos, value = 0, False
    for run in rle["counts"]:
        flat[pos : pos + run] = value
        pos += run
        value = not value
    assert pos == h * w
    return flat.reshape((h, w), order="F")


def test_health_and_ready(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/ready").json()
    assert ready == {"ready": True, "default_model": "person", "models": ["person", "street"], "refused": []}


def test_models_and_classes(server):
    info = httpx.get(server.url + "/models").json()
    assert info["default_model"] == "person"
    by_name = {m["name"]: m for m in info["models"]}
    assert set(by_name) == {"person", "street"}
    person = by_name["person"]
    assert person["classes"] == ["background", "person"] and person["default"] is True
    assert len(person["checksum"]) == 64 and person["file_size"] > 0
    assert person["input"]["size_divisor"] > 0

    classes = httpx.get(server.url + "/classes").json()
    assert classes["model"] == "person"
    assert classes["classes"] == [
        {"index": 0, "name": "background", "color": [0, 0, 0]},
        {"index": 1, "name": "person", "color": [220, 20, 60]},
    ]
    street = httpx.get(server.url + "/classes", params={"model": "street"}).json()
    assert [c["name"] for c in street["classes"]][:3] == ["sky", "building", "pole"]
    missing = httpx.get(server.url + "/classes", params={"model": "nope"})
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


@pytest.mark.parametrize("path", PERSON_IMAGES[:3], ids=lambda p: p.name)
def test_segment_png_mask_at_original_size(server, path):
    r = post_image(server.url, path.read_bytes())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert float(r.headers["x-inference-time-ms"]) > 0
    assert r.headers["x-model"] == "person"
    mask = decode_png(r.content)
    w, h = Image.open(path).size
    assert mask.shape == (h, w)
    assert mask.max() <= 1


def test_segment_json_counts_and_rle_agree_with_png(server):
    data = STREET_IMAGES[0].read_bytes()
    mask = decode_png(post_image(server.url, data, model="street").content)
    r = post_image(server.url, data, model="street", format="json", rle="true")
    assert r.status_code == 200
    body = r.json()
    assert (body["height"], body["width"]) == mask.shape
    assert body["model"] == "street" and body["inference_ms"] > 0
    assert [c["index"] for c in body["classes"]] == list(range(11))
    assert sum(c["pixels"] for c in body["classes"]) == mask.size
    assert sum(c["fraction"] for c in body["classes"]) == pytest.approx(1.0, abs=1e-4)
    for c in body["classes"]:
        assert c["pixels"] == int((mask == c["index"]).sum())
        assert np.array_equal(rle_to_mask(c["rle"]), mask == c["index"])
    # Without rle=true the RLE is left out.
    plain = post_image(server.url, data, model="street", format="json").json()
    assert all("rle" not in c for c in plain["classes"])


def test_segment_overlay_blends_class_colours(server):
    path = PERSON_IMAGES[1]
    data = path.read_bytes()
    mask = decode_png(post_image(server.url, data).content)
    r = post_image(server.url, data, format="overlay")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    overlay = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(np.float32)
    original = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
    assert overlay.shape == original.shape
    # Half-and-half blend with the person colour; background (black in the palette) stays as it was.
    crimson = np.array([220, 20, 60], np.float32)
    expected = np.where((mask == 1)[:, :, None], 0.5 * original + 0.5 * crimson, original)
    assert np.abs(overlay - expected).mean() < 4  # JPEG noise only
    assert np.abs(expected - original).mean() > 2 * np.abs(overlay - expected).mean()


def test_exif_rotation_is_applied(server):
    rgb = Image.open(PERSON_IMAGES[0]).convert("RGB")
    w, h = rgb.size
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", exif=exif.tobytes())
    mask = decode_png(post_image(server.url, buf.getvalue()).content)
    assert mask.shape == (w, h)  # the upright image is h wide and w tall


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("L", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("P", "GIF"),
        ("RGB", "WEBP"),
        ("RGB", "BMP"),
        ("1", "PNG"),
    ],
)
def test_image_modes_and_formats(server, mode, fmt):
    image = Image.open(SMALL_IMAGE).convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt)
    r = post_image(server.url, buf.getvalue(), filename=f"x.{fmt.lower()}", format="json")
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) == image.size


def test_unknown_model_and_bad_params(server):
    data = SMALL_IMAGE.read_bytes()
    r = post_image(server.url, data, model="does-not-exist")
    assert r.status_code == 404 and "does-not-exist" in r.json()["detail"]
    for params in ({"format": "gif"}, {"rle": "maybe"}, {"model": ""}):
        r = post_image(server.url, data, **params)
        assert r.status_code == 422, params
        assert "\n" not in r.json()["detail"]
    r = httpx.post(server.url + "/segment", files={"other": ("x.jpg", data)})
    assert r.status_code == 422 and "file" in r.json()["detail"]
    r = httpx.post(server.url + "/segment", content=b"not multipart", headers={"content-type": "text/plain"})
    assert r.status_code == 422


def test_video_overlay_mp4(server, tmp_path):
    r = httpx.post(server.url + "/segment/video", files={"file": ("v.mp4", VIDEO.read_bytes())}, timeout=300)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4" and r.headers["x-frames"] == "30"
    out = tmp_path / "overlay.mp4"
    out.write_bytes(r.content)
    cap = cv2.VideoCapture(str(out))
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (240, 320, 3)
        frames += 1
    cap.release()
    assert frames == 30


def test_video_json(server):
    r = httpx.post(
        server.url + "/segment/video",
        params={"format": "json", "model": "street"},
        files={"file": ("v.mp4", VIDEO.read_bytes())},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"], body["model"]) == (320, 240, "street")
    assert body["fps"] == pytest.approx(15.0)
    assert [f["frame"] for f in body["frames"]] == list(range(30))
    for f in body["frames"]:
        assert sum(c["pixels"] for c in f["classes"]) == 320 * 240


def test_video_flip_matches_the_runtime_frame_by_frame(server, packed_model_dir):
    """flip=true: each frame's class counts are those of the in-process runtime's flip prediction."""
    from seg_service.runtime import load_model

    r = httpx.post(
        server.url + "/segment/video",
        params={"format": "json", "model": "street", "flip": "true", "smooth": "false"},
        files={"file": ("v.mp4", VIDEO.read_bytes())},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    frames = r.json()["frames"]
    model = load_model(packed_model_dir / "street.gnpk")
    cap = cv2.VideoCapture(str(VIDEO))
    differs = False
    for f in frames[:5]:
        ok, bgr = cap.read()
        assert ok
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        flipped = model.predict(rgb, flip=True)
        assert [c["pixels"] for c in f["classes"]] == np.bincount(flipped.ravel(), minlength=11).tolist()
        differs |= not np.array_equal(flipped, model.predict(rgb))
    cap.release()
    assert differs


def test_video_over_the_frame_limit_is_413(server, looped_video):
    """This server takes at most 30 frames; the looped video has 120."""
    r = httpx.post(
        server.url + "/segment/video", files={"file": ("v.mp4", looped_video.read_bytes())}, timeout=300
    )
    assert r.status_code == 413 and "120 frames" in r.json()["detail"]


def test_video_rejects_non_video(server):
    r = httpx.post(server.url + "/segment/video", files={"file": ("v.mp4", b"\x00" * 5000)}, timeout=60)
    assert r.status_code in (400, 415) and r.json()["detail"]


def test_metrics_prometheus_text(server):
    post_image(server.url, SMALL_IMAGE.read_bytes())
    post_image(server.url, SMALL_IMAGE.read_bytes(), format="nope")
    text = httpx.get(server.url + "/metrics").text
    assert "# TYPE seg_http_requests_total counter" in text
    assert 'seg_http_requests_total{method="POST",route="/segment",status="200"}' in text
    assert 'seg_http_errors_total{status="422"}' in text
    assert 'seg_http_request_duration_seconds_bucket{route="/segment",le="+Inf"}' in text
    assert 'seg_inference_duration_seconds_count{model="person"}' in text
    assert "seg_frames_dropped_total" in text
    # Every sample line is "name{labels} number".
    for line in text.splitlines():
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


def test_openapi_docs_and_demo_page(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    for path in ("/segment", "/segment/video", "/health", "/ready", "/models", "/classes", "/metrics"):
        assert path in spec["paths"], path
    assert "SegmentResponse" in spec["components"]["schemas"]
    assert httpx.get(server.url + "/docs").status_code == 200
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text
    # No CDN: nothing the page loads comes from another host.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)
    for asset in ("/static/app.js", "/static/style.css"):
        r = httpx.get(server.url + asset)
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text


def test_access_log_has_one_line_per_request_with_latency(server):
    def segment_lines() -> list[str]:
        return [
            ln
            for ln in server.log().splitlines()
            if "seg_service.access" in ln and '"route":"/segment"' in ln
        ]

    before = len(segment_lines())
    post_image(server.url, SMALL_IMAGE.read_bytes(), format="json")
    # The line is written once the response has gone out, so it may trail the response a little.
    deadline = time.monotonic() + 30
    while len(segment_lines()) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = segment_lines()
    assert len(lines) == before + 1
    record = json.loads(lines[-1].split(" seg_service.access ", 1)[1].split("] ", 1)[1])
    assert record["status"] == 200 and record["ms"] > 0 and record["inference_ms"] > 0
    assert record["format"] == "json" and record["model"] == "person"


def test_segment_flip_runs_the_mirrored_pass(server, packed_model_dir):
    """flip=true returns exactly the in-process runtime's flip prediction, which differs from the
    plain one."""
    from seg_service.runtime import load_model

    path = STREET_IMAGES[0]
    data = path.read_bytes()
    plain = decode_png(post_image(server.url, data, model="street").content)
    r = post_image(server.url, data, model="street", flip="true")
    assert r.status_code == 200, r.text
    flipped = decode_png(r.content)
    rgb = np.asarray(Image.open(path).convert("RGB"))
    model = load_model(packed_model_dir / "street.gnpk")
    assert np.array_equal(flipped, model.predict(rgb, flip=True))
    assert np.array_equal(plain, model.predict(rgb))
    assert not np.array_equal(flipped, plain)
    assert post_image(server.url, data, flip="sideways").status_code == 422


def test_segment_runs_the_model_test_time(packed_model_dir, tmp_path):
    """A model file's stored test-time augmentation is what /segment runs by default (its passes in
    X-Network-Passes, its settings in /models); flip= and scales= replace it per request; video
    frames run one pass at one scale. Bad scales are a 422."""
    from server_harness import start_server

    from seg_service import format as gnpk
    from seg_service.runtime import load_model

    source = gnpk.read_model(packed_model_dir / "street.gnpk")
    folder = tmp_path / "models"
    folder.mkdir()
    spec = {"flip": True, "scales": [0.75, 1.0, 1.25]}
    gnpk.write_model(folder / "street.gnpk", dict(source.model, test_time=spec), source.graph, source.tensors)
    model, plain = load_model(folder / "street.gnpk"), load_model(packed_model_dir / "street.gnpk")
    srv = start_server(folder, tmp_path / "server.log")
    try:
        info = httpx.get(srv.url + "/models").json()["models"][0]
        assert info["name"] == "street" and info["test_time"] == spec
        path = STREET_IMAGES[0]
        data = path.read_bytes()
        rgb = np.asarray(Image.open(path).convert("RGB"))
        r = post_image(srv.url, data)
        assert r.status_code == 200, r.text
        assert r.headers["X-Network-Passes"] == "6"
        assert np.array_equal(decode_png(r.content), model.predict(rgb))
        assert np.array_equal(model.predict(rgb), plain.predict(rgb, flip=True, scales=[0.75, 1.0, 1.25]))
        one = post_image(srv.url, data, flip="false", scales="1")
        assert one.headers["X-Network-Passes"] == "1"
        assert np.array_equal(decode_png(one.content), plain.predict(rgb))
        assert not np.array_equal(decode_png(one.content), decode_png(r.content))
        two = post_image(srv.url, data, scales="0.5,1", flip="false")
        assert two.headers["X-Network-Passes"] == "2"
        assert np.array_equal(decode_png(two.content), plain.predict(rgb, scales=[0.5, 1.0]))
        soft = post_image(srv.url, data, scales="1", format="probability", foreground="car")
        assert soft.status_code == 200 and soft.headers["X-Network-Passes"] == "2"
        for bad in ("3", "0.5,x", "", "1,1"):
            bad_reply = post_image(srv.url, data, scales=bad)
            assert bad_reply.status_code == 422 and "scales" in bad_reply.json()["detail"], bad
        video = httpx.post(
            srv.url + "/segment/video",
            params={"format": "json", "smooth": "false"},
            files={"file": ("v.mp4", VIDEO.read_bytes())},
            timeout=300,
        )
        assert video.status_code == 200, video.text
        cap = cv2.VideoCapture(str(VIDEO))
        for frame in video.json()["frames"][:3]:
            ok, bgr = cap.read()
            assert ok
            single = plain.predict(np.ascontiguousarray(bgr[:, :, ::-1]))
            assert [c["pixels"] for c in frame["classes"]] == np.bincount(
                single.ravel(), minlength=11
            ).tolist()
        cap.release()
    finally:
        srv.stop()
