"""The client's pieces on their own: capture, drawing, output files, URLs, backoff, frame dropping."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from client_harness import VIDEO

from seg_client.app import ClientConfig, DemoClient
from seg_client.capture import FrameSource, SourceError, camera_spec, output_size, video_spec
from seg_client.cli import build_parser
from seg_client.display import DisplayError, VideoFileSink
from seg_client.overlay import ClassInfo, blend, colorize, compose, matte_blend
from seg_client.transport import (
    Backoff,
    ServerError,
    Streamer,
    decode_mask,
    http_base,
    inference_options,
    ws_url,
)

PERSON = ClassInfo(["background", "person"], np.array([[0, 0, 0], [220, 20, 60]], np.uint8))


def test_output_size_keeps_the_aspect_ratio_when_one_side_is_given():
    assert output_size(320, 240, None, None) == (320, 240)
    assert output_size(320, 240, 160, None) == (160, 120)
    assert output_size(320, 240, None, 480) == (640, 480)
    assert output_size(320, 240, 100, 100) == (100, 100)


def test_source_options_pick_camera_file_or_stream():
    assert camera_spec("0").target == 0
    assert camera_spec("/dev/video2").target == "/dev/video2"
    assert video_spec("clip.mp4").kind == "video"
    assert video_spec("rtsp://cam.local:554/s1").kind == "stream"
    assert video_spec("HTTPS://cam.local/mjpg").kind == "stream"


def test_video_source_reads_every_frame_resized():
    with FrameSource(video_spec(str(VIDEO)), width=160, fps=0) as source:
        assert source.native_fps == pytest.approx(15.0)
        frames = []
        while (frame := source.read()) is not None:
            frames.append(frame)
    assert len(frames) == 30
    assert all(f.shape == (120, 160, 3) and f.dtype == np.uint8 for f in frames)


def test_looping_video_source_goes_past_the_end():
    with FrameSource(video_spec(str(VIDEO)), fps=0, loop=True) as source:
        frames = [source.read() for _ in range(45)]
    assert all(f is not None for f in frames)
    assert np.array_equal(frames[0], frames[30])


def test_video_file_pacing_defaults_to_the_file_rate():
    with FrameSource(video_spec(str(VIDEO))) as source:
        assert source.pace_fps == pytest.approx(15.0)
    with FrameSource(video_spec(str(VIDEO)), fps=0) as source:
        assert source.pace_fps == 0 and source.output_fps == pytest.approx(15.0)


def test_unreadable_video_is_a_source_error(tmp_path):
    fake = tmp_path / "not-a-video.mp4"
    fake.write_bytes(b"this is text, not video")
    with pytest.raises(SourceError, match="not-a-video.mp4"):
        FrameSource(video_spec(str(fake))).open()


def test_backoff_doubles_up_to_its_cap():
    backoff = Backoff(initial=0.5, maximum=3.0, attempts=6)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_inference_switches_parse():
    from seg_client.cli import build_parser

    args = build_parser().parse_args(["--flip", "--no-refine"])
    assert (args.flip, args.refine) == (True, False)
    args = build_parser().parse_args([])
    assert (args.flip, args.refine) == (False, True)


def test_server_urls():
    assert http_base("127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert ws_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws/segment"
    assert ws_url("https://seg.example/api", "street") == "wss://seg.example/api/ws/segment?model=street"
    assert (
        ws_url("http://h:1", "street", inference_options(flip=True, refine=False))
        == "ws://h:1/ws/segment?model=street&flip=true&refine=false"
    )
    assert inference_options() == {} and ws_url("http://h:1", None, inference_options(flip=True)).endswith(
        "?flip=true"
    )
    with pytest.raises(ServerError, match="bad --server"):
        http_base("ftp://seg.example")


def test_overlay_colours_classes_and_leaves_background_untouched():
    frame = np.full((4, 6, 3), 100, np.uint8)
    mask = np.zeros((4, 6), np.uint8)
    mask[:, 3:] = 1
    out = blend(frame, mask, PERSON, alpha=0.5)
    assert np.array_equal(out[:, :3], frame[:, :3])
    # BGR of RGB (220, 20, 60) blended half and half with grey 100.
    assert np.allclose(out[:, 3:].reshape(-1, 3), [80, 60, 160], atol=1)


@pytest.mark.parametrize("shape", [(1, 1), (480, 640)])
def test_colours_and_blend_equal_their_table_definitions(shape):
    """The OpenCV lookups give numpy's table indexing: colours per label, and the frame itself where
    the class is transparent (background), for every label value."""
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, shape, dtype=np.uint8)
    street = ClassInfo(["background", "road", "car"] + [f"c{i}" for i in range(8)], None)
    for classes in (PERSON, street, ClassInfo.unknown()):
        np.testing.assert_array_equal(colorize(mask, classes), classes.lut_bgr[mask])
        mixed = cv2.addWeighted(frame, 0.6, classes.lut_bgr[mask], 0.4, 0.0)
        keep = classes.transparent[mask]
        mixed[keep] = frame[keep]
        np.testing.assert_array_equal(blend(frame, mask, classes, alpha=0.4), mixed)


def test_matte_blend_equals_its_formula():
    """front * a + back * (1 - a), a = matte / 255, rounded half up, as float32 arithmetic gives it."""
    rng = np.random.default_rng(6)
    front, back = (rng.integers(0, 256, (37, 53, 3), dtype=np.uint8) for _ in range(2))
    matte = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    a = matte.astype(np.float32)[:, :, None] * np.float32(1.0 / 255.0)
    mixed = back.astype(np.float32)
    mixed += a * (front.astype(np.float32) - mixed)
    np.testing.assert_array_equal(matte_blend(front, back, matte), (mixed + 0.5).astype(np.uint8))


def test_views_and_palette_order():
    frame = np.zeros((8, 10, 3), np.uint8)
    mask = np.ones((4, 5), np.uint8)  # smaller than the frame: scaled up with nearest neighbour
    assert compose("overlay", frame, None, PERSON).shape == (8, 10, 3)
    side = compose("side", frame, mask, PERSON)
    assert side.shape == (8, 20, 3)
    assert (compose("mask", frame, mask, PERSON) == [60, 20, 220]).all()  # BGR for OpenCV
    assert np.array_equal(colorize(mask, PERSON)[0, 0], [60, 20, 220])


def test_unknown_classes_still_get_distinct_colours():
    colours = colorize(np.arange(20, dtype=np.uint8)[None], ClassInfo.unknown())[0]
    assert len({tuple(c) for c in colours}) == 20


def test_mask_png_decodes_to_labels():
    mask = np.random.default_rng(0).integers(0, 11, (30, 40), dtype=np.uint8)
    png = cv2.imencode(".png", mask)[1].tobytes()
    assert np.array_equal(decode_mask(png), mask)


def test_video_sink_writes_one_frame_per_call(tmp_path):
    sink = VideoFileSink(tmp_path / "out.avi", fps=10)
    for value in range(5):
        sink.write(np.full((48, 64, 3), value * 40, np.uint8))
    sink.close()
    cap = cv2.VideoCapture(str(tmp_path / "out.avi"))
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == 5
    with pytest.raises(DisplayError, match="unsupported extension"):
        VideoFileSink(tmp_path / "out.gif", fps=10)
    with pytest.raises(DisplayError, match="does not exist"):
        VideoFileSink(tmp_path / "missing" / "out.mp4", fps=10)


def test_a_waiting_frame_is_replaced_by_a_newer_one():
    streamer = Streamer("http://127.0.0.1:9")  # never started: frames only pile up in its mailbox
    frame = np.zeros((4, 4, 3), np.uint8)
    for seq in range(1, 4):
        streamer.submit(seq, frame)
    assert streamer.stats.frames_submitted == 3
    assert streamer.stats.frames_dropped == 2
    streamer.stop()
    assert streamer.stats.frames_dropped == 3  # the last one was never sent either


def test_keys_switch_views_save_snapshots_and_quit(tmp_path: Path):
    demo = DemoClient(ClientConfig(source=camera_spec("0"), snapshot_dir=tmp_path))
    streamer = Streamer("http://127.0.0.1:9")
    image = np.zeros((8, 8, 3), np.uint8)
    assert demo._handle_key(ord("m"), image, streamer) and demo.view == "mask"
    assert demo._handle_key(ord("s"), image, streamer) and demo.view == "side"
    assert demo._handle_key(ord("o"), image, streamer) and demo.view == "overlay"
    assert demo._handle_key(ord("p"), image, streamer)
    assert [p.exists() for p in demo.snapshots] == [True]
    assert not demo._handle_key(ord("q"), image, streamer)
    assert not demo._handle_key(27, image, streamer)
    streamer.stop()


@pytest.mark.parametrize(
    "argv",
    [
        ["--jpeg-quality", "0"],
        ["--camera", "0", "--video", "a.mp4"],
        ["--transport", "udp"],
        ["--width", "-3"],
    ],
)
def test_bad_arguments_exit_with_usage_error(argv):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
