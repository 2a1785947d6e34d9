"""WS /ws/segment with frames decoded from the real test video."""

from __future__ import annotations

import json

import cv2
import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .helpers import TEST_API_KEY, VIDEO, metric_value


@pytest.fixture(scope="module")
def video_frames() -> list[bytes]:
    cap = cv2.VideoCapture(str(VIDEO))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    cap.release()
    assert len(frames) == 30
    return frames


def receive_result(ws) -> tuple[dict, bytes | None]:
    """The next result (JSON + mask PNG) or error (JSON, None)."""
    message = json.loads(ws.recv(timeout=120))
    if message["type"] == "error":
        return message, None
    assert message["type"] == "result"
    mask = ws.recv(timeout=120)
    assert isinstance(mask, bytes)
    return message, mask


def test_stream_of_video_frames_latest_frame_wins(server, video_frames):
    """All 30 frames are sent at once: every frame is either answered or counted as dropped, the
    answers come in order, and the last frame is always answered."""
    with connect(server.ws_url + "/ws/segment") as ws:
        for frame in video_frames:
            ws.send(frame)
        answered = []
        while True:
            result, png = receive_result(ws)
            assert png is not None, result
            mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
            assert mask.shape == (240, 320) and mask.dtype == np.uint8 and mask.max() <= 1
            assert (result["width"], result["height"], result["model"]) == (320, 240, "person")
            assert result["inference_ms"] > 0
            answered.append(result["frame"])
            if result["frame"] == len(video_frames) - 1:
                break
    assert answered == sorted(answered) and len(set(answered)) == len(answered)
    assert len(answered) + result["dropped"] == len(video_frames)
    assert metric_value(server.url, "seg_frames_dropped_total") >= result["dropped"]
    assert metric_value(server.url, "seg_frames_processed_total") >= len(answered)


def test_paced_stream_answers_every_frame(server, video_frames):
    """A client that waits for each answer before sending the next frame never loses one."""
    with connect(server.ws_url + "/ws/segment?model=street") as ws:
        for i, frame in enumerate(video_frames[:8]):
            ws.send(frame)
            result, png = receive_result(ws)
            assert png is not None
            assert (result["frame"], result["dropped"], result["model"]) == (i, 0, "street")
            mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
            assert mask.max() < 11


def test_errors_are_json_and_the_stream_goes_on(server, video_frames):
    with connect(server.ws_url + "/ws/segment") as ws:
        ws.send(b"this is not an image")
        error, _ = receive_result(ws)
        assert error["type"] == "error" and error["frame"] == 0 and "not a supported image" in error["detail"]
        ws.send("{not json")
        assert receive_result(ws)[0]["type"] == "error"
        ws.send(json.dumps({"model": "nope"}))
        assert "unknown model" in receive_result(ws)[0]["detail"]
        ws.send(json.dumps({"format": "overlay"}))
        assert "format" in receive_result(ws)[0]["detail"]
        ws.send(json.dumps({"colour": "red"}))
        assert "unknown settings" in receive_result(ws)[0]["detail"]
        ws.send(json.dumps({"model": "street", "format": "png"}))
        ws.send(video_frames[0])
        result, png = receive_result(ws)
        assert png is not None and result["frame"] == 1 and result["model"] == "street"


def test_unknown_model_at_connect_closes_with_policy_code(server):
    with connect(server.ws_url + "/ws/segment?model=nope") as ws:
        assert "unknown model" in json.loads(ws.recv(timeout=30))["detail"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd.code == 1008


@pytest.mark.parametrize(
    "query,ok", [("", False), ("?api_key=wrong", False), (f"?api_key={TEST_API_KEY}", True)]
)
def test_websocket_api_key(restricted_server, video_frames, query, ok):
    with connect(restricted_server.ws_url + "/ws/segment" + query) as ws:
        if ok:
            ws.send(video_frames[0])
            result, png = receive_result(ws)
            assert png is not None and result["frame"] == 0
            return
        assert "API key" in json.loads(ws.recv(timeout=30))["detail"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1008


def test_websocket_api_key_header(restricted_server, video_frames):
    with connect(
        restricted_server.ws_url + "/ws/segment", additional_headers={"X-API-Key": TEST_API_KEY}
    ) as ws:
        ws.send(video_frames[1])
        assert receive_result(ws)[1] is not None


def test_message_over_the_upload_limit_closes_with_1009(server):
    with connect(server.ws_url + "/ws/segment", max_size=None) as ws:
        ws.send(b"\xff" * (3 * 1024 * 1024))  # the server's limit is 2 MiB
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd.code == 1009
    assert httpx.get(server.url + "/health").status_code == 200


def test_flip_setting_switches_the_mirrored_pass(server, packed_model_dir, video_frames):
    """{"flip": true} makes later frames equal the in-process runtime's flip prediction; false turns
    it off."""
    from seg_service.runtime import load_model

    model = load_model(packed_model_dir / "street.gnpk")
    frame = video_frames[3]
    rgb = np.ascontiguousarray(cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1])
    expected = {False: model.predict(rgb), True: model.predict(rgb, flip=True)}
    assert not np.array_equal(expected[False], expected[True])
    with connect(server.ws_url + "/ws/segment?model=street") as ws:
        ws.send(json.dumps({"flip": "yes"}))
        assert "flip must be true or false" in receive_result(ws)[0]["detail"]
        for flip in (True, False):
            ws.send(json.dumps({"flip": flip}))
            ws.send(frame)
            result, png = receive_result(ws)
            assert png is not None, result
            mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(mask, expected[flip]), flip
