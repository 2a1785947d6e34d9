"""Peak resident memory of a fresh `seg-service` process for one request on a 25 MP image.

Starts a server on a free loopback port, sends one warm-up request on a small image, reads the
process's peak RSS (VmHWM in /proc), sends one 5000x5000 JPEG (the default pixel limit) in the given
format, and prints the peak before and after: the increase is what that request cost.

    python scripts/peak_rss.py --model-dir weights --format overlay
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "tests" / "data" / "ccp" / "images" / "0001.jpg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/{pid}/status")


def big_jpeg(side: int) -> bytes:
    """A side x side photo-like JPEG (smooth gradients plus noise, so it is not trivially small)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    rgb = np.stack([x * 255, y * 255, (x + y) * 127], axis=2)
    rgb += rng.normal(0, 8, (side, side, 1)).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "weights")
    p.add_argument("--format", default="overlay", choices=["overlay", "png", "json"])
    p.add_argument("--side", type=int, default=5000)
    args = p.parse_args()
    data = big_jpeg(args.side)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "seg_service.api.cli",
            "--port",
            str(port),
            "--model-dir",
            str(args.model_dir),
            "--log-level",
            "warning",
            "--threads",
            "1",
            "--max-upload-bytes",
            str(64 << 20),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("server did not start")
            time.sleep(0.2)
        warm = httpx.post(url + "/segment", files={"file": ("s.jpg", SMALL.read_bytes())}, timeout=300)
        warm.raise_for_status()
        before = vm_kib(proc.pid, "VmHWM")
        r = httpx.post(
            url + "/segment", params={"format": args.format}, files={"file": ("big.jpg", data)}, timeout=600
        )
        after = vm_kib(proc.pid, "VmHWM")
        rss_after = vm_kib(proc.pid, "VmRSS")
        print(
            f"{args.side}x{args.side} JPEG ({len(data) / 1e6:.1f} MB) format={args.format}: status "
            f"{r.status_code}; peak RSS {before / 1024:.0f} MiB before, {after / 1024:.0f} MiB after "
            f"(+{(after - before) / 1024:.0f} MiB); RSS after the request {rss_after / 1024:.0f} MiB"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
