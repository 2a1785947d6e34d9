"""`seg-service`: start the segmentation server (uvicorn)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from seg_service.api.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seg-service",
        description="Serve binary Group-Net segmentation over HTTP/WebSocket. Each setting also reads "
        "an environment variable (shown in brackets); flags win.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on this machine; kernel threads are divided among them",
    )
    p.add_argument("--model-dir", type=Path, help="folder of .gnpk models [SEG_MODEL_DIR]")
    p.add_argument("--default-model", help="model used when a request names none [SEG_DEFAULT_MODEL]")
    p.add_argument(
        "--threads", type=int, help="kernel threads for the whole server, divided among workers [SEG_THREADS]"
    )
    p.add_argument("--max-upload-bytes", type=int, help="largest image upload [SEG_MAX_UPLOAD_BYTES]")
    p.add_argument("--max-image-pixels", type=int, help="largest width*height [SEG_MAX_IMAGE_PIXELS]")
    p.add_argument(
        "--max-in-flight",
        type=int,
        help="inference jobs at once per worker; more get 503 [SEG_MAX_IN_FLIGHT]",
    )
    p.add_argument("--api-key", help="require this key in X-API-Key [SEG_API_KEY]")
    p.add_argument("--cors-origins", help="comma-separated allowed origins [SEG_CORS_ORIGINS]")
    p.add_argument("--max-video-bytes", type=int, help="largest video upload [SEG_MAX_VIDEO_BYTES]")
    p.add_argument("--max-video-frames", type=int, help="most frames per video [SEG_MAX_VIDEO_FRAMES]")
    p.add_argument("--max-video-seconds", type=float, help="longest video [SEG_MAX_VIDEO_SECONDS]")
    p.add_argument(
        "--max-connections",
        type=int,
        help="open connections (HTTP and WebSocket) per worker; more get 503 [SEG_MAX_CONNECTIONS]",
    )
    p.add_argument(
        "--max-websockets",
        type=int,
        help="open WebSocket sessions per worker; more are closed with 1013 [SEG_MAX_WEBSOCKETS]",
    )
    p.add_argument(
        "--max-header-bytes",
        type=int,
        help="largest request line plus headers; more get 400 [SEG_MAX_HEADER_BYTES]",
    )
    p.add_argument(
        "--keep-alive-seconds",
        type=int,
        help="close an idle keep-alive connection after this many seconds [SEG_KEEP_ALIVE_SECONDS]",
    )
    p.add_argument(
        "--header-timeout-seconds",
        type=float,
        help="close a connection whose request head is not in after this [SEG_HEADER_TIMEOUT_SECONDS]",
    )
    p.add_argument(
        "--body-timeout-seconds",
        type=float,
        help="answer 408 when an upload pauses longer than this [SEG_BODY_TIMEOUT_SECONDS]",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="[SEG_LOG_LEVEL]")
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds to let running requests finish on SIGTERM/SIGINT (default 30)",
    )
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    overrides = {}
    for name in (
        "model_dir",
        "default_model",
        "threads",
        "max_upload_bytes",
        "max_image_pixels",
        "max_in_flight",
        "api_key",
        "max_video_bytes",
        "max_video_frames",
        "max_video_seconds",
        "log_level",
        "max_connections",
        "max_websockets",
        "max_header_bytes",
        "keep_alive_seconds",
        "header_timeout_seconds",
        "body_timeout_seconds",
    ):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.cors_origins is not None:
        overrides["cors_origins"] = tuple(o.strip() for o in args.cors_origins.split(",") if o.strip())
    return replace(settings, **overrides).validated()


def threads_per_worker(total: int, workers: int) -> int:
    """Split the machine's (or the requested) thread count evenly among worker processes."""
    if total <= 0:  # the cores this process may run on (a container's CPU set), as the kernels count
        total = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, total // workers)


def logging_config(level: str) -> dict:
    """Plain one-line records on stderr; the access lines are JSON of their own."""
    fmt = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"format": fmt}},
        # Query strings (which may hold api_key) never reach the log, whichever logger writes them.
        "filters": {"redact": {"()": "seg_service.api.logfilter.RedactQueryStrings"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "line",
                "stream": "ext://sys.stderr",
                "filters": ["redact"],
            }
        },
        "loggers": {
            "seg_service": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            # Our AccessLogMiddleware writes the per-request line (with latency) instead.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        print("seg-service: error: --workers must be >= 1", file=sys.stderr)
        return 2
    try:
        settings = settings_from_args(args)
    except ValueError as e:
        print(f"seg-service: error: {e}", file=sys.stderr)
        return 2
    if args.workers > 1 or settings.threads > 0:
        settings = replace(settings, threads=threads_per_worker(settings.threads, args.workers))
    # Workers are separate processes that build their settings from the environment; the kernels
    # also read SEG_THREADS when they are imported.
    os.environ.update(settings.to_env())

    import uvicorn

    from seg_service.api.protocol import HeadTimeoutH11Protocol

    uvicorn.run(
        "seg_service.api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=logging_config(settings.log_level),
        access_log=False,
        # h11 rather than httptools: it caps what it buffers of an incomplete head (answered 400 and
        # closed), where httptools buffers headers of any size; our subclass adds a head deadline.
        http=HeadTimeoutH11Protocol,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_seconds,
        ws_max_size=settings.max_upload_bytes,
        timeout_graceful_shutdown=args.graceful_timeout,
        server_header=False,
        proxy_headers=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
