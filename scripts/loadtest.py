"""Loopback load test of the segmentation service: requests/s and latency percentiles of POST /segment
at several client concurrencies, with errors and 503s (over the in-flight limit) counted apart.

Bounded in count and time: each level stops after --requests requests or --seconds seconds,
whichever comes first. By default it starts its own server on a free loopback port; --url targets
a running one instead (loopback only).

    python scripts/loadtest.py --model-dir weights --concurrency 1 4 16 --requests 100
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT / "tests" / "data" / "ccp" / "images" / "0001.jpg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "seg_service.api.cli",
        "--port",
        str(port),
        "--model-dir",
        str(args.model_dir),
        "--max-in-flight",
        str(args.max_in_flight),
        "--log-level",
        "warning",
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.model:
        cmd += ["--default-model", args.model]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit("server did not become ready in 120 s")


async def run_level(
    url: str, image: bytes, clients: int, max_requests: int, max_seconds: float, params: dict
) -> dict:
    latencies: list[float] = []
    busy_latencies: list[float] = []  # how fast a 503 comes back
    statuses: dict[int, int] = {}
    transport_errors = 0
    issued = 0
    deadline = time.perf_counter() + max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal issued, transport_errors
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            start = time.perf_counter()
            try:
                r = await http.post(url + "/segment", params=params, files={"file": ("img.jpg", image)})
            except httpx.TransportError:
                transport_errors += 1
                continue
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                latencies.append(time.perf_counter() - start)
            elif r.status_code == 503:
                busy_latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    ok = statuses.get(200, 0)
    lat = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return {
        "clients": clients,
        "requests": sum(statuses.values()) + transport_errors,
        "ok": ok,
        "busy_503": statuses.get(503, 0),
        "errors": sum(n for code, n in statuses.items() if code not in (200, 503)) + transport_errors,
        "ok_per_s": ok / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "busy_p50_ms": float(np.percentile(np.array(busy_latencies) * 1e3, 50))
        if busy_latencies
        else float("nan"),
        "seconds": elapsed,
    }


def peak_rss_kib(pid: int) -> int:
    """VmHWM of a process in KiB, 0 where /proc is not available."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server on loopback (default: start one)")
    p.add_argument("--model-dir", type=Path, default=ROOT / "weights", help="models for the started server")
    p.add_argument("--model", help="model to request (default: the server's default)")
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    p.add_argument("--format", default="png", choices=["png", "overlay", "json"])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=100, help="requests per level at most")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds per level at most")
    p.add_argument("--max-in-flight", type=int, default=4, help="for the started server")
    p.add_argument("--threads", type=int, default=0, help="kernel threads for the started server (0: all)")
    args = p.parse_args(argv)

    proc = None
    if args.url:
        host = urlsplit(args.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            sys.exit("--url must be a loopback address: this script is not for load-testing other machines")
        url = args.url.rstrip("/")
    else:
        proc, url = start_server(args)
    try:
        image = args.image.read_bytes()
        params = {"format": args.format} | ({"model": args.model} if args.model else {})
        # One warm-up request so the first level does not pay for lazy initialisation.
        httpx.post(url + "/segment", params=params, files={"file": ("img.jpg", image)}, timeout=120)
        print(f"server {url}, image {args.image.name}, format={args.format}, cpu cores {os.cpu_count()}")
        print(
            f"{'clients':>7} {'requests':>8} {'ok':>5} {'503':>5} {'errors':>6} {'ok req/s':>9} "
            f"{'p50 ms':>8} {'p99 ms':>8} {'503 p50 ms':>10} {'peak RSS MiB':>12}"
        )
        for clients in args.concurrency:
            r = asyncio.run(run_level(url, image, clients, args.requests, args.seconds, params))
            # The started server's peak resident memory so far (Linux /proc; "-" for --url).
            peak = (
                f"{peak_rss_kib(proc.pid) / 1024:.0f}" if proc is not None and peak_rss_kib(proc.pid) else "-"
            )
            print(
                f"{r['clients']:>7} {r['requests']:>8} {r['ok']:>5} {r['busy_503']:>5} {r['errors']:>6} "
                f"{r['ok_per_s']:>9.2f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
                f"{r['busy_p50_ms']:>10.1f} {peak:>12}"
            )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
