"""Hostile input against a real server process (issue 19): images, videos, WebSocket messages and
headers that used to give a 5xx, crash a session, leak the API key or hold resources, plus a
reusable corpus that asserts, for every entry, never a 5xx, never a crash, and /health still
answering afterwards. (Hostile model files: test_model_files.py.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .helpers import (
    ROOT,
    SMALL_IMAGE,
    TEST_API_KEY,
    ServerProcess,
    metric_value,
    start_server,
    wait_for_metric,
)
from .hostile import photo_jpeg, png_bytes, raw_mjpeg, raw_request, status_of

AUTH = {"X-API-Key": TEST_API_KEY}
MAX_VIDEO_FRAMES = 150  # above the 120 frames of `looped_video`, which tests use to hold the slot


@pytest.fixture(scope="module")
def hostile_server(packed_model_dir: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    """API key on, one inference slot, two WebSocket sessions at most, 2 s head and body timeouts,
    default pixel and upload limits."""
    log_path = tmp_path_factory.mktemp("hostile") / "server.log"
    srv = start_server(
        packed_model_dir,
        log_path,
        "--max-in-flight",
        "1",
        "--max-websockets",
        "2",
        "--max-video-frames",
        str(MAX_VIDEO_FRAMES),
        "--header-timeout-seconds",
        "2",
        "--body-timeout-seconds",
        "2",
        env={"SEG_API_KEY": TEST_API_KEY},
    )
    yield srv
    srv.stop()


def assert_still_serving(server: ServerProcess) -> None:
    assert server.alive(), server.log()[-3000:]
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200
    wait_for_metric(server.url, "seg_inference_in_flight", 0)  # nothing left holding a slot


def post_image(
    server: ServerProcess, data: bytes, fmt: str = "png", headers: dict | None = None
) -> httpx.Response:
    return httpx.post(
        server.url + "/segment",
        params={"format": fmt},
        headers=headers or AUTH,
        files={"file": ("upload", data)},
        timeout=300,
    )


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


# ---- 1: sides the output encoder cannot write --------------------------------------------------


@pytest.mark.parametrize("width,fmt,limit", [(1_000_001, "png", 1_000_000), (65_501, "overlay", 65_500)])
def test_side_over_the_encoder_limit_is_413_before_inference(hostile_server, width, fmt, limit):
    before = metric_value(hostile_server.url, "seg_inference_duration_seconds_count")
    r = post_image(hostile_server, png_bytes(width, 1), fmt)
    assert r.status_code == 413, r.text
    assert f"{width}x1" in r.json()["detail"] and str(limit) in r.json()["detail"]
    assert metric_value(hostile_server.url, "seg_inference_duration_seconds_count") == before
    assert (
        post_image(hostile_server, png_bytes(width, 1), "json").status_code == 200
    )  # JSON has no encoder limit
    assert_still_serving(hostile_server)


def test_websocket_frame_over_the_png_side_limit_keeps_the_session(hostile_server):
    with connect(hostile_server.ws_url + "/ws/segment", additional_headers=AUTH) as ws:
        ws.send(png_bytes(1_000_001, 1))
        error = json.loads(ws.recv(timeout=120))
        assert error["type"] == "error" and error["frame"] == 0 and "1000000" in error["detail"]
        ws.send(SMALL_IMAGE.read_bytes())
        assert json.loads(ws.recv(timeout=120))["type"] == "result"
        assert isinstance(ws.recv(timeout=120), bytes)


# ---- 2: the API key never reaches the log ------------------------------------------------------


def test_api_key_in_a_websocket_query_string_is_not_logged(hostile_server):
    wrong = "wrong-secret-4242"
    with connect(hostile_server.ws_url + f"/ws/segment?api_key={TEST_API_KEY}&flip=false") as ws:
        ws.send(SMALL_IMAGE.read_bytes())
        assert json.loads(ws.recv(timeout=120))["type"] == "result"
        ws.recv(timeout=120)
    with connect(hostile_server.ws_url + f"/ws/segment?api_key={wrong}") as ws:
        assert json.loads(ws.recv(timeout=60))["detail"] == "wrong API key"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=60)
    httpx.get(hostile_server.url + f"/health?api_key={wrong}")
    log = hostile_server.log()
    assert '"WebSocket /ws/segment?<redacted>"' in log  # uvicorn's handshake line is still written
    assert TEST_API_KEY not in log and wrong not in log


# ---- 3: header size -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [100 * 1024, 16 * 1024 * 1024])
def test_oversized_headers_are_refused(hostile_server, size):
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    try:
        answer = raw_request(hostile_server.port, head)
    except (ConnectionResetError, BrokenPipeError):
        answer = b""  # the server closed the socket while the client still sent: refused as well
    assert status_of(answer) in (0, 400, 431), answer[:200]
    assert_still_serving(hostile_server)


def test_slow_request_head_is_cut_off(hostile_server):
    """A client that sends half a request head and then nothing used to hold its connection for
    ever; the server now closes it after --header-timeout-seconds (2 s here)."""
    with socket.create_connection(("127.0.0.1", hostile_server.port), timeout=120) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        assert sock.recv(4096) == b""  # closed by the server (a timeout here would raise instead)
    assert_still_serving(hostile_server)


def test_stalled_upload_gets_408(hostile_server):
    head = (
        f"POST /segment HTTP/1.1\r\nHost: x\r\nX-API-Key: {TEST_API_KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    answer = raw_request(hostile_server.port, head, b"--b\r\n", timeout=120)
    assert status_of(answer) == 408, answer[:300]
    assert_still_serving(hostile_server)


# ---- 4, 5: videos -------------------------------------------------------------------------------


def test_abandoned_video_upload_frees_its_inference_slot(hostile_server, looped_video):
    """The client closes its socket once the job holds the only slot: the job stops instead of
    segmenting all 120 frames for nobody."""
    url = hostile_server.url
    wait_for_metric(url, "seg_inference_in_flight", 0)
    frames_before = metric_value(url, "seg_frames_processed_total")
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="v.mp4"\r\n'
        b"Content-Type: video/mp4\r\n\r\n" + looped_video.read_bytes() + b"\r\n--b--\r\n"
    )
    head = (
        f"POST /segment/video?format=json HTTP/1.1\r\nHost: x\r\nX-API-Key: {TEST_API_KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", hostile_server.port), timeout=60) as sock:
        sock.sendall(head + body)
        wait_for_metric(url, "seg_inference_in_flight", 1)
    wait_for_metric(url, "seg_inference_in_flight", 0, timeout=300)
    processed = metric_value(url, "seg_frames_processed_total") - frames_before
    assert processed < 120, f"{processed} frames segmented after the client left"
    assert '"status":499' in hostile_server.log()
    r = post_image(hostile_server, SMALL_IMAGE.read_bytes())
    assert r.status_code == 200


def test_video_without_declared_length_is_refused_before_any_inference(hostile_server):
    frames_before = metric_value(hostile_server.url, "seg_frames_processed_total")
    r = httpx.post(
        hostile_server.url + "/segment/video",
        headers=AUTH,
        params={"format": "json"},
        files={"file": ("stream.mjpeg", raw_mjpeg(MAX_VIDEO_FRAMES + 10))},
        timeout=300,
    )
    assert r.status_code == 413 and str(MAX_VIDEO_FRAMES) in r.json()["detail"], r.text
    assert metric_value(hostile_server.url, "seg_frames_processed_total") == frames_before
    ok = httpx.post(
        hostile_server.url + "/segment/video",
        headers=AUTH,
        params={"format": "json"},
        files={"file": ("stream.mjpeg", raw_mjpeg(5))},
        timeout=300,
    )
    assert ok.status_code == 200 and len(ok.json()["frames"]) == 5


# ---- 6: peak memory of a 25 MP overlay ------------------------------------------------------------

# Peak RSS added by one 25 MP request, measured with scripts/peak_rss.py (docs/service.md): overlay
# 1046 MiB and png 319 MiB before the fix (float32 overlay, copies in decoding), 221 MiB each after.
PEAK_LIMIT_MIB = {"overlay": 400, "png": 300}


@pytest.mark.parametrize("fmt", sorted(PEAK_LIMIT_MIB))
def test_peak_memory_of_a_25_megapixel_request_is_bounded(hostile_server, fmt):
    clear_refs = Path(f"/proc/{hostile_server.proc.pid}/clear_refs")
    try:
        clear_refs.write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pytest.skip("cannot reset the server's peak RSS (/proc/PID/clear_refs)")
    before = peak_rss_kib(hostile_server.proc.pid)
    r = post_image(hostile_server, photo_jpeg(5000), fmt)
    assert r.status_code == 200, r.text
    added_mib = (peak_rss_kib(hostile_server.proc.pid) - before) / 1024
    assert added_mib < PEAK_LIMIT_MIB[fmt], f"format={fmt} added {added_mib:.0f} MiB of peak RSS"


# ---- 11: WebSocket settings messages ------------------------------------------------------------


@pytest.mark.parametrize("text", ["[" * 100_000, '{"model": ' * 3000, "{" + " " * 10_000 + "}"])
def test_hostile_settings_message_keeps_the_session_open(hostile_server, text):
    with connect(hostile_server.ws_url + "/ws/segment", additional_headers=AUTH) as ws:
        ws.send(text)
        error = json.loads(ws.recv(timeout=60))
        assert error["type"] == "error" and "frame" not in error
        ws.send(SMALL_IMAGE.read_bytes())
        assert json.loads(ws.recv(timeout=120))["type"] == "result"
        assert isinstance(ws.recv(timeout=120), bytes)


# ---- 12: an API key clients cannot send ---------------------------------------------------------


@pytest.mark.parametrize("key", ["clé-secrète", "with space", "tab\tkey"])
def test_unsendable_api_key_is_refused_at_start(key, tmp_path):
    env = {"SEG_API_KEY": key, "SEG_MODEL_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "seg_service.api.cli", "--port", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "api_key" in lines[0] and "ASCII" in lines[0], out.stderr
    assert key not in out.stderr


# ---- 13: readiness details, early 503, open sessions --------------------------------------------


def test_ready_details_need_the_key(hostile_server):
    open_answer = httpx.get(hostile_server.url + "/ready")
    assert open_answer.status_code == 200 and open_answer.json() == {"ready": True}
    full = httpx.get(hostile_server.url + "/ready", headers=AUTH).json()
    assert full["models"] == ["person", "street"] and full["default_model"] == "person"


def test_over_the_in_flight_cap_is_503_before_the_upload_is_read(hostile_server, looped_video):
    """While a video holds the only slot, a request announcing a 5 MB body and sending none of it is
    answered 503 at once (it used to wait for the whole upload)."""
    url = hostile_server.url
    results: list[httpx.Response] = []

    def post_video() -> None:
        results.append(
            httpx.post(
                url + "/segment/video",
                params={"format": "json"},
                headers=AUTH,
                files={"file": ("v.mp4", looped_video.read_bytes())},
                timeout=600,
            )
        )

    worker = threading.Thread(target=post_video)
    worker.start()
    try:
        wait_for_metric(url, "seg_inference_in_flight", 1)
        head = (
            f"POST /segment HTTP/1.1\r\nHost: x\r\nX-API-Key: {TEST_API_KEY}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000000\r\n\r\n"
        ).encode()
        answer = raw_request(hostile_server.port, head, timeout=120)
        assert status_of(answer) == 503 and b"retry-after: 1" in answer.lower(), answer[:300]
    finally:
        worker.join()
    assert results[0].status_code == 200


def test_websocket_sessions_over_the_cap_are_closed_with_1013(hostile_server):
    with (
        connect(hostile_server.ws_url + "/ws/segment", additional_headers=AUTH),
        connect(hostile_server.ws_url + "/ws/segment", additional_headers=AUTH),
    ):
        wait_for_metric(hostile_server.url, "seg_websocket_connections", 2)
        with connect(hostile_server.ws_url + "/ws/segment", additional_headers=AUTH) as third:
            assert "busy" in json.loads(third.recv(timeout=60))["detail"]
            with pytest.raises(ConnectionClosed) as info:
                third.recv(timeout=60)
            assert info.value.rcvd.code == 1013
    wait_for_metric(hostile_server.url, "seg_websocket_connections", 0)
    with connect(hostile_server.ws_url + "/ws/segment", additional_headers=AUTH) as ws:
        ws.send(SMALL_IMAGE.read_bytes())
        assert json.loads(ws.recv(timeout=120))["type"] == "result"


# ---- the reusable corpus: never a 5xx, never a crash, /health after each --------------------------


def _multipart(field: str, name: str, data: bytes) -> tuple[bytes, bytes]:
    body = (
        (
            f'--b\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + b"\r\n--b--\r\n"
    )
    return body, b"multipart/form-data; boundary=b"


def _raw_post(
    path: str, data: bytes, field: str = "file", extra: bytes = b""
) -> Callable[[ServerProcess], int]:
    def send(server: ServerProcess) -> int:
        body, ctype = _multipart(field, "x", data)
        head = (
            (f"POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {TEST_API_KEY}\r\nContent-Type: ").encode()
            + ctype
            + f"\r\nContent-Length: {len(body)}\r\n".encode()
            + extra
            + b"\r\n"
        )
        return status_of(raw_request(server.port, head, body))

    return send


def _raw(head: bytes) -> Callable[[ServerProcess], int]:
    def send(server: ServerProcess) -> int:
        try:
            return status_of(raw_request(server.port, head))
        except (ConnectionResetError, BrokenPipeError):
            return 0

    return send


def _image(data: bytes, fmt: str = "png", **params: str) -> Callable[[ServerProcess], int]:
    def send(server: ServerProcess) -> int:
        return httpx.post(
            server.url + "/segment",
            params={"format": fmt, **params},
            headers=AUTH,
            files={"file": ("x", data)},
            timeout=300,
        ).status_code

    return send


def _video(data: bytes) -> Callable[[ServerProcess], int]:
    def send(server: ServerProcess) -> int:
        return httpx.post(
            server.url + "/segment/video",
            params={"format": "json"},
            headers=AUTH,
            files={"file": ("x", data)},
            timeout=300,
        ).status_code

    return send


HTTP_CORPUS: dict[str, Callable[[ServerProcess], int]] = {
    "image_empty": _image(b""),
    "image_garbage": _image(b"\x00\x01garbage" * 100),
    "image_png_signature_only": _image(b"\x89PNG\r\n\x1a\n"),
    "image_png_side_1000001": _image(png_bytes(1_000_001, 1)),
    "image_overlay_side_65501": _image(png_bytes(65_501, 1), "overlay"),
    "image_overlay_tall_65501": _image(png_bytes(1, 65_501), "overlay"),
    "image_one_pixel_all_formats_rle": _image(png_bytes(1, 1), "json", rle="true", flip="true"),
    "image_16bit_gray": _image(png_bytes(31, 17, "I;16")),
    "image_bad_params": _image(png_bytes(8, 8), "tiff", flip="maybe"),
    "image_unknown_model": _image(png_bytes(8, 8), "png", model="nope\r\nX: 1"),
    "video_empty": _video(b""),
    "video_garbage": _video(b"\x00" * 10_000),
    "video_mjpeg_over_limit": _video(raw_mjpeg(MAX_VIDEO_FRAMES + 1)),
    "video_is_an_image": _video(SMALL_IMAGE.read_bytes()),
    "header_1mib": _raw(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"),
    "header_5000_fields": _raw(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 5000 + b"\r\n"),
    "header_non_ascii_key": _raw(
        b"POST /segment HTTP/1.1\r\nHost: x\r\nX-API-Key: cl\xc3\xa9\r\nContent-Length: 0\r\n\r\n"
    ),
    "header_bad_content_length": _raw(b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"),
    "header_huge_content_length": _raw(
        f"POST /segment HTTP/1.1\r\nHost: x\r\nX-API-Key: {TEST_API_KEY}\r\n"
        "Content-Length: 1000000000000000\r\n\r\n".encode()
    ),
    "header_duplicate_content_length": _raw_post("/segment", png_bytes(4, 4), extra=b"Content-Length: 3\r\n"),
    "request_line_garbage": _raw(
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n"
    ),
    "path_very_long": _raw(b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    "multipart_wrong_field": _raw_post("/segment?format=json", png_bytes(4, 4), field="image"),
}


@pytest.mark.parametrize("case", sorted(HTTP_CORPUS))
def test_http_corpus_never_5xx(hostile_server, case):
    status = HTTP_CORPUS[case](hostile_server)
    assert status < 500, f"{case}: {status}\n{hostile_server.log()[-2000:]}"
    assert_still_serving(hostile_server)


WS_CORPUS: dict[str, list[str | bytes]] = {
    "nested_json": ["[" * 200_000],
    "json_not_object": ["[1, 2]", "null", '"png"'],
    "wrong_types": ['{"model": ["person"]}', '{"flip": "yes"}', '{"format": {"a": 1}}', '{"model": null}'],
    "unknown_keys": ['{"' + "k" * 1000 + '": 1}'],
    "binary_garbage": [b"\x00" * 1000, b"\x89PNG\r\n\x1a\n", b""],
    "side_over_png_limit": [png_bytes(1_000_001, 1)],
    "lone_surrogate_text": ['{"model": "\\ud800"}'],
}


@pytest.mark.parametrize("case", sorted(WS_CORPUS))
def test_websocket_corpus_never_closes_the_session(hostile_server, case):
    with connect(hostile_server.ws_url + "/ws/segment", additional_headers=AUTH, max_size=None) as ws:
        for message in WS_CORPUS[case]:
            ws.send(message)
            reply = json.loads(ws.recv(timeout=120))
            assert reply["type"] == "error" and "internal" not in reply["detail"], reply
        ws.send(SMALL_IMAGE.read_bytes())  # the session still works
        assert json.loads(ws.recv(timeout=120))["type"] == "result"
        ws.recv(timeout=120)
    assert_still_serving(hostile_server)


def test_websocket_message_over_the_upload_limit_closes_with_1009(hostile_server):
    with connect(hostile_server.ws_url + "/ws/segment", additional_headers=AUTH, max_size=None) as ws:
        ws.send(b"\xff\xd8\xff" + b"\x00" * (11 * 1024 * 1024))
        with pytest.raises(ConnectionClosed) as info:
            while True:
                ws.recv(timeout=120)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    assert_still_serving(hostile_server)
