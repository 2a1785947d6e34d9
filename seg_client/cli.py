"""seg-client: live segmentation of a webcam, video file or stream through seg-service.

Exit status: 0 on success, 1 when the source, the output or the server fails (one-line message on
stderr), 2 for bad command-line arguments, 130 when interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from seg_client.app import ClientConfig, run_client
from seg_client.capture import SourceError, camera_spec, video_spec
from seg_client.display import DisplayError
from seg_client.overlay import VIEWS, Background
from seg_client.transport import Backoff, ServerError

log = logging.getLogger("seg-client")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be in 1..100, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in 0..1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _background(text: str) -> Background:
    try:
        return Background.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seg-client",
        description="Stream a webcam, video file or RTSP/HTTP stream to seg-service and show the masks live.",
        epilog="Keys (window mode): o overlay, m mask, s side-by-side, b background blur, r background "
        "replacement, [ ] blur strength, n next model, p snapshot, q/Esc quit.",
    )
    src = parser.add_argument_group("source (default: camera 0)").add_mutually_exclusive_group()
    src.add_argument("--camera", metavar="INDEX|PATH", help="camera index (0, 1, ...) or device path")
    src.add_argument("--video", metavar="FILE|URL", help="video file, or rtsp:// / http(s):// stream URL")
    parser.add_argument("--width", type=_positive_int, help="resize frames to this width before sending")
    parser.add_argument("--height", type=_positive_int, help="resize frames to this height before sending")
    parser.add_argument(
        "--fps", type=float, help="pace video files at this rate (default: the file's; 0: no pacing)"
    )
    parser.add_argument("--loop", action="store_true", help="restart a video file at its end")
    parser.add_argument("--max-frames", type=_positive_int, metavar="N", help="stop after N input frames")

    srv = parser.add_argument_group("server")
    srv.add_argument("--server", default="http://127.0.0.1:8000", metavar="URL", help="seg-service base URL")
    srv.add_argument("--api-key", help="API key, sent as the X-API-Key header (HTTP and WebSocket handshake)")
    srv.add_argument("--model", help="model to use (default: the server's default model)")
    srv.add_argument(
        "--transport",
        choices=("ws", "rest"),
        default="ws",
        help="WebSocket /ws/segment (falls back to REST when refused) or REST POST /segment",
    )
    srv.add_argument(
        "--flip",
        action="store_true",
        help="the server also segments each mirrored frame and averages (more accurate, twice the time)",
    )
    srv.add_argument(
        "--no-refine",
        dest="refine",
        action="store_false",
        help="skip the model's stored post-processing (edge-aware filter), as refine=false",
    )
    srv.add_argument(
        "--no-smooth",
        dest="smooth",
        action="store_false",
        help="turn off the server's temporal smoothing of the stream (steadier masks; on by default)",
    )
    srv.add_argument(
        "--foreground",
        metavar="CLASS[,CLASS...]",
        help="classes the blur and replace views keep (default: the model's person class)",
    )
    srv.add_argument("--jpeg-quality", type=_quality, default=80, help="JPEG quality of sent frames (1-100)")
    srv.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for one answer")
    srv.add_argument("--retries", type=int, default=8, help="reconnect attempts before giving up")
    srv.add_argument("--retry-delay", type=float, default=0.5, help="first reconnect delay, doubled each try")
    srv.add_argument("--retry-max-delay", type=float, default=5.0, help="cap on the reconnect delay")

    out = parser.add_argument_group("output")
    out.add_argument("--headless", action="store_true", help="no window (needed with opencv-python-headless)")
    out.add_argument(
        "--out", type=Path, metavar="FILE", help="write the rendered video (.mp4, .avi, .mkv, .mov)"
    )
    out.add_argument("--view", choices=VIEWS, default="overlay", help="initial view")
    out.add_argument("--alpha", type=_fraction, default=0.5, help="mask opacity in the overlay view")
    out.add_argument(
        "--blur",
        type=_positive_float,
        default=8.0,
        metavar="SIGMA",
        help="background blur strength in the blur view (Gaussian standard deviation, pixels)",
    )
    out.add_argument(
        "--background",
        type=_background,
        default=Background(),
        metavar="#RRGGBB|IMAGE",
        help="what the replace view puts behind the kept classes: a colour or an image file "
        "(default #1e88e5)",
    )
    out.add_argument("--snapshot-dir", type=Path, default=Path.cwd(), help="where the p key saves snapshots")
    out.add_argument("--stats-json", type=Path, metavar="FILE", help="write a run summary as JSON")
    out.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="seg-client: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    if args.headless and args.out is None:
        log.info("--headless without --out: frames are processed but not saved")
    source = video_spec(args.video) if args.video else camera_spec(args.camera or "0")
    cfg = ClientConfig(
        source=source,
        server=args.server,
        api_key=args.api_key,
        transport=args.transport,
        model=args.model,
        flip=args.flip,
        refine=args.refine,
        smooth=args.smooth,
        foreground=[n.strip() for n in args.foreground.split(",") if n.strip()] if args.foreground else None,
        blur=args.blur,
        background=args.background,
        width=args.width,
        height=args.height,
        jpeg_quality=args.jpeg_quality,
        fps=args.fps,
        loop=args.loop,
        headless=args.headless,
        out=args.out,
        max_frames=args.max_frames,
        view=args.view,
        alpha=args.alpha,
        snapshot_dir=args.snapshot_dir,
        backoff=Backoff(args.retry_delay, args.retry_max_delay, max(0, args.retries)),
        timeout=args.timeout,
        stats_json=args.stats_json,
    )
    try:
        summary = run_client(cfg)
    except (SourceError, DisplayError, ServerError) as exc:
        print(f"seg-client: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("seg-client: interrupted", file=sys.stderr)
        return 130
    rtt = summary["mean_round_trip_ms"]
    log.info(
        "done: %d frames read, %d sent, %d dropped, %d masks, %d reconnects%s",
        summary["frames_read"],
        summary["frames_sent"],
        summary["frames_dropped"],
        summary["results"],
        summary["reconnects"],
        f", mean round trip {rtt:.0f} ms" if rtt is not None else "",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
