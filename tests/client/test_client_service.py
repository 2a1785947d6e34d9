"""seg-client end to end: the real client process against a real seg-service process, on a real video."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from client_harness import (
    API_KEY,
    VIDEO,
    ClientProcess,
    DelayProxy,
    ServerProcess,
    WebSocketRefusingProxy,
    api_key_server,
    free_port,
    run_client,
)

from seg_client.app import ClientConfig, DemoClient
from seg_client.capture import video_spec
from seg_client.transport import Backoff, SegResult, Streamer, inference_options

pytestmark = pytest.mark.slow  # see README, Tests: excluded by -m "not slow"

JPEG_QUALITY = 80  # the client's default: the test sends the server the very same bytes
HUD_ROWS = 60  # status text lives in the top rows of the picture; compare below them


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def server_masks(
    server: ServerProcess, frames: list[np.ndarray], model: str, **options: str
) -> list[np.ndarray]:
    """The label masks the server computes for these frames, asked over REST."""
    masks = []
    with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=60) as http:
        for frame in frames:
            jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
            response = http.post(
                "/segment", params={"model": model, **options}, files={"file": ("f.jpg", jpeg, "image/jpeg")}
            )
            response.raise_for_status()
            masks.append(cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_UNCHANGED))
    return masks


def inner(region: np.ndarray) -> np.ndarray:
    """A region shrunk by a few pixels: video coding smears colours across region borders."""
    return cv2.erode(region.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)


def run_headless(server_url: str, out: Path, stats: Path, *extra: str) -> dict:
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
        *extra,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(stats.read_text())


def test_overlay_video_has_one_frame_per_input_frame_and_shows_the_masks(server, tmp_path):
    out = tmp_path / "overlay.mp4"
    # --no-smooth: each mask is the frame's own, as POST /segment gives it (the stream's smoothing
    # would average it with the frames before)
    stats = run_headless(server.url, out, tmp_path / "stats.json", "--max-frames", "24", "--no-smooth")

    inputs = read_video(VIDEO)[:24]
    outputs = read_video(out)
    assert len(outputs) == 24
    assert outputs[0].shape == inputs[0].shape
    assert stats["frames_read"] == stats["frames_written"] == 24
    assert stats["results"] > 0 and stats["transport"] == "ws" and stats["last_model"] == "person"

    # Each output frame is its input frame with the mask of input frame (i - age) blended in:
    # crimson where that mask says "person", untouched where it says "background".
    masks = server_masks(server, inputs, "person")
    checked = 0
    for i, age in enumerate(stats["mask_age"]):
        if age is None:
            continue
        mask = masks[i - age][HUD_ROWS:]
        diff = np.abs(outputs[i][HUD_ROWS:].astype(np.int16) - inputs[i][HUD_ROWS:].astype(np.int16)).mean(
            axis=2
        )
        person, background = inner(mask == 1), inner(mask == 0)
        assert person.sum() + background.sum() > 0
        if person.sum() > 200:
            assert diff[person].mean() > 25, f"frame {i}: no overlay where the mask is person"
        if background.sum() > 200:
            assert diff[background].mean() < 10, f"frame {i}: background changed"
        checked += 1
    assert checked >= 12


def test_side_by_side_shows_the_server_mask_in_the_model_palette(server, tmp_path):
    out = tmp_path / "side.mp4"
    stats = run_headless(
        server.url,
        out,
        tmp_path / "stats.json",
        "--max-frames",
        "16",
        "--model",
        "street",
        "--view",
        "side",
        "--no-smooth",
    )
    inputs = read_video(VIDEO)[:16]
    outputs = read_video(out)
    assert len(outputs) == 16
    h, w = inputs[0].shape[:2]
    assert outputs[0].shape == (h, 2 * w, 3)
    assert stats["last_model"] == "street"

    classes = httpx.get(server.url + "/classes", params={"model": "street"}).json()["classes"]
    palette_bgr = np.array([c["color"][::-1] for c in sorted(classes, key=lambda c: c["index"])], np.int16)
    masks = server_masks(server, inputs, "street")
    checked = 0
    for i, age in enumerate(stats["mask_age"]):
        if age is None:
            continue
        left = outputs[i][HUD_ROWS:, :w].astype(np.int16)
        right = outputs[i][HUD_ROWS:, w:].astype(np.int16)
        # Left: the frame itself.
        assert np.abs(left - inputs[i][HUD_ROWS:]).mean() < 8
        # Right: every pixel's nearest palette colour is the server's label for it.
        nearest = np.abs(right[:, :, None, :] - palette_bgr[None, None]).sum(axis=3).argmin(axis=2)
        expected = masks[i - age][HUD_ROWS:]
        agree = (nearest == expected)[inner(np.ones_like(expected))]
        assert agree.mean() > 0.9, f"frame {i}: only {agree.mean():.0%} of mask pixels match"
        checked += 1
    assert checked >= 8


def test_rest_transport_gives_the_same_kind_of_run(server, tmp_path):
    stats = run_headless(
        server.url,
        tmp_path / "rest.mp4",
        tmp_path / "stats.json",
        "--max-frames",
        "10",
        "--transport",
        "rest",
    )
    assert stats["transport"] == "rest"
    assert stats["frames_written"] == 10 and stats["results"] > 0


def test_refused_websocket_upgrade_falls_back_to_rest(server, tmp_path):
    # HTTP reaches the server, the WebSocket handshake gets 403: the rule for falling back to REST.
    proxy = WebSocketRefusingProxy(server.port, status=403)
    stats_path = tmp_path / "stats.json"
    try:
        result = run_client(
            "--video",
            VIDEO,
            "--headless",
            "--out",
            tmp_path / "fallback.mp4",
            "--stats-json",
            stats_path,
            "--server",
            proxy.url,
            "--api-key",
            API_KEY,
            "--max-frames",
            "10",
            "--model",
            "street",
        )
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert proxy.upgrades_refused >= 1
    assert "falling back to REST" in result.stderr
    stats = json.loads(stats_path.read_text())
    assert stats["transport"] == "rest" and stats["connections"] == 1
    assert stats["frames_written"] == 10 and stats["results"] > 0 and stats["frame_errors"] == 0
    assert stats["last_model"] == "street"


def _segment_frame(streamer: Streamer, seq: int, frame: np.ndarray, timeout: float = 30.0) -> SegResult:
    streamer.submit(seq, frame)
    streamer.wait_result(seq, timeout)
    result = streamer.take_result()
    assert streamer.fatal is None, streamer.fatal
    assert result is not None and result.seq == seq, f"no mask for frame {seq} ({streamer.last_error})"
    return result


@pytest.mark.parametrize("transport", ["ws", "rest"])
def test_flip_option_reaches_the_server_over_both_transports(transport, server):
    """seg-client --flip: the masks are the server's flip=true masks, which differ from the plain ones."""
    frames = read_video(VIDEO)[:3]
    flipped = server_masks(server, frames, "street", flip="true")
    plain = server_masks(server, frames, "street")
    assert any(not np.array_equal(a, b) for a, b in zip(flipped, plain))
    streamer = Streamer(
        server.url,
        API_KEY,
        transport,
        "street",
        timeout=30,
        options=inference_options(flip=True, smooth=False),
    )
    try:
        streamer.start()
        assert streamer.wait_connected(60), streamer.fatal
        for seq, (frame, expected) in enumerate(zip(frames, flipped)):
            assert np.array_equal(_segment_frame(streamer, seq, frame).mask, expected), seq
    finally:
        streamer.stop()


@pytest.mark.parametrize("transport", ["ws", "rest"])
def test_refused_model_switch_keeps_the_model_the_server_uses(transport, packed_model_dir, tmp_path, caplog):
    server = api_key_server(packed_model_dir, tmp_path).start()
    streamer = Streamer(server.url, API_KEY, transport, "person", backoff=Backoff(0.1, 0.5, 100), timeout=20)
    client = DemoClient(ClientConfig(source=video_spec(str(VIDEO)), headless=True))
    frame = read_video(VIDEO)[0]
    caplog.set_level(logging.INFO, logger="seg-client")
    try:
        streamer.start()
        assert streamer.wait_connected(60), streamer.fatal
        assert _segment_frame(streamer, 1, frame).model == "person"

        streamer.request_model("no-such-model")
        client.latest = _segment_frame(streamer, 2, frame)
        # The frame was still segmented, by the model the server kept, and the HUD says so.
        assert client.latest.model == "person"
        lines, warning = client.hud_text(streamer)
        assert lines[0].startswith("person ") and "no-such-model" not in lines[0]
        assert warning is not None and "no-such-model" in warning and "refused" in warning, warning
        refusals = [r.getMessage() for r in caplog.records if "no-such-model" in r.getMessage()]
        assert len(refusals) == 1 and "refused" in refusals[0] and "'person'" in refusals[0], refusals

        # Asking again sends the switch again (and it is refused again), frames keep coming.
        streamer.request_model("no-such-model")
        assert _segment_frame(streamer, 3, frame).model == "person"
        assert len([r for r in caplog.records if "no-such-model" in r.getMessage()]) == 2

        # A reconnect asks for the model the server was using, not the refused one.
        server.kill()
        server.start()
        seq = 4
        while True:
            streamer.submit(seq, frame)
            streamer.wait_result(seq, 2.0)
            result = streamer.take_result()
            assert streamer.fatal is None, streamer.fatal
            if result is not None and result.seq == seq:
                break
            assert seq < 60, f"no mask after the restart ({streamer.last_error})"
            seq += 1
        assert result.model == "person"
        if transport == "ws":  # REST has no connection to lose: httpx just opens a new one
            assert streamer.stats.connections >= 2
    finally:
        streamer.stop()
        server.stop()


def test_slow_server_drops_frames_instead_of_queueing_them(server, tmp_path):
    # 0.25 s added each way: one answer takes over 0.5 s, the video delivers a frame every 67 ms.
    proxy = DelayProxy(server.port, delay=0.25)
    try:
        out = tmp_path / "slow.mp4"
        stats = run_headless(proxy.url, out, tmp_path / "stats.json", "--timeout", "20")
    finally:
        proxy.close()
    # Every input frame still gives exactly one output frame ...
    assert stats["frames_read"] == 30
    assert len(read_video(out)) == 30
    # ... but most were never sent: at most one frame was ever in flight ...
    assert stats["results"] >= 1
    assert stats["frames_dropped"] > stats["frames_sent"]
    assert stats["frames_sent"] + stats["frames_dropped"] == stats["frames_read"]
    assert stats["frames_sent"] - stats["results"] - stats["frame_errors"] <= 1
    # ... so the server never had a backlog of ours to drop, and old masks were reused meanwhile.
    assert stats["server_dropped_max"] == 0
    assert max(age for age in stats["mask_age"] if age is not None) >= 2


def test_client_survives_a_server_restart(packed_model_dir, tmp_path):
    server = api_key_server(packed_model_dir, tmp_path).start()
    stats_path = tmp_path / "stats.json"
    client = ClientProcess(
        "--video",
        VIDEO,
        "--loop",
        "--max-frames",
        "150",
        "--headless",
        "--out",
        tmp_path / "restart.mp4",
        "--stats-json",
        stats_path,
        "--server",
        server.url,
        "--api-key",
        API_KEY,
        "--retries",
        "60",
        "--retry-delay",
        "0.2",
        "--retry-max-delay",
        "0.5",
    )
    try:
        client.wait_for_line("first mask on this connection")
        server.kill()
        client.wait_for_line("reconnecting")
        server.start()
        client.wait_for_line("first mask on this connection")
        assert client.wait(timeout=120) == 0, "\n".join(client.lines)
    finally:
        client.close()
        server.stop()
    stats = json.loads(stats_path.read_text())
    assert stats["reconnects"] >= 1
    assert stats["frames_written"] == 150
    assert len(read_video(tmp_path / "restart.mp4")) == 150


def _assert_one_line_error(result, *fragments: str) -> str:
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("seg-client: error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_unreachable_server_fails_after_bounded_retries(tmp_path):
    result = run_client(
        "--video",
        VIDEO,
        "--headless",
        "--server",
        f"http://127.0.0.1:{free_port()}",
        "--retries",
        "2",
        "--retry-delay",
        "0.05",
    )
    _assert_one_line_error(result, "unreachable after 2 retries")


def test_wrong_api_key_is_a_clear_error(server):
    result = run_client("--video", VIDEO, "--headless", "--server", server.url, "--api-key", "wrong")
    _assert_one_line_error(result, "API key")


@pytest.mark.parametrize("transport", ["ws", "rest"])
def test_unknown_model_is_a_clear_error(server, transport):
    result = run_client(
        "--video",
        VIDEO,
        "--headless",
        "--server",
        server.url,
        "--api-key",
        API_KEY,
        "--model",
        "no-such-model",
        "--transport",
        transport,
    )
    _assert_one_line_error(result, "unknown model 'no-such-model'")


def test_wrong_api_key_over_rest_is_a_clear_error(server):
    result = run_client(
        "--video", VIDEO, "--headless", "--server", server.url, "--api-key", "wrong", "--transport", "rest"
    )
    _assert_one_line_error(result, "API key")


@pytest.mark.parametrize("source", [["--camera", "99"], ["--camera", "/dev/no-such-camera"]])
def test_camera_that_cannot_be_opened_is_a_clear_error(source):
    result = run_client(*source, "--headless", "--server", "http://127.0.0.1:9")
    _assert_one_line_error(result, "cannot open camera", source[1])


def test_missing_video_file_is_a_clear_error(tmp_path):
    result = run_client("--video", tmp_path / "missing.mp4", "--headless")
    _assert_one_line_error(result, "no such file")


def test_window_mode_without_gui_build_says_to_use_headless():
    from seg_client.display import gui_support

    if gui_support()[0]:
        pytest.skip("this OpenCV build can open windows here")
    result = run_client("--video", VIDEO)
    _assert_one_line_error(result, "--headless")
