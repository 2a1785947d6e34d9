"""API key, the in-flight limit, video limits, refused model files, graceful shutdown, no torch."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from .helpers import (
    CORS_ORIGIN,
    ROOT,
    SMALL_IMAGE,
    TEST_API_KEY,
    start_server,
    wait_for_metric,
)

AUTH = {"X-API-Key": TEST_API_KEY}


def post_video(url: str, video: Path, headers: dict, results: list) -> None:
    r = httpx.post(
        url + "/segment/video",
        params={"format": "json"},
        headers=headers,
        files={"file": ("v.mp4", video.read_bytes())},
        timeout=600,
    )
    results.append(r)


@pytest.mark.parametrize("headers,status", [({}, 401), ({"X-API-Key": "wrong"}, 401), (AUTH, 200)])
def test_api_key(restricted_server, headers, status):
    r = httpx.post(
        restricted_server.url + "/segment",
        headers=headers,
        files={"file": ("x.jpg", SMALL_IMAGE.read_bytes())},
        timeout=120,
    )
    assert r.status_code == status, r.text
    if status == 401:
        assert "API key" in r.json()["detail"]


def test_key_is_checked_before_the_upload_is_read(restricted_server):
    """A request that announces a terabyte body and sends none is answered 401 at once: without the
    key the server reads nothing (with the key it would be a 413, see test_bad_input)."""
    with socket.create_connection(("127.0.0.1", restricted_server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /segment/video HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: 1000000000000\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(4096):  # the server closes the connection after answering
            answer += chunk
    text = answer.decode(errors="replace")
    assert text.startswith("HTTP/1.1 401") and "API key" in text, text


def test_open_endpoints_need_no_key(restricted_server):
    for path in ("/health", "/ready", "/metrics", "/models", "/classes", "/", "/openapi.json"):
        assert httpx.get(restricted_server.url + path).status_code == 200, path


def test_cors_preflight(restricted_server):
    def preflight(origin: str) -> httpx.Response:
        return httpx.options(
            restricted_server.url + "/segment",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "X-API-Key",
            },
        )

    allowed = preflight(CORS_ORIGIN)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == CORS_ORIGIN
    other = preflight("http://elsewhere.example")
    assert "access-control-allow-origin" not in other.headers
    # A refused request still carries the CORS header, so the page can read the reason.
    refused = httpx.post(
        restricted_server.url + "/segment", headers={"Origin": CORS_ORIGIN}, files={"file": ("x.jpg", b"x")}
    )
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == CORS_ORIGIN


def test_refused_model_files_are_logged_and_the_others_serve(restricted_server):
    assert httpx.get(restricted_server.url + "/ready").json() == {"ready": True}  # details need the key
    ready = httpx.get(restricted_server.url + "/ready", headers=AUTH).json()
    assert ready["ready"] is True and ready["models"] == ["person", "street"]
    refused = dict(item.split(": ", 1) for item in ready["refused"])
    assert set(refused) == {"corrupt.gnpk", "future.gnpk"}
    log = restricted_server.log()
    for name in refused:
        lines = [ln for ln in log.splitlines() if "refused model file" in ln and name in ln]
        assert len(lines) == 1, log


def test_over_the_in_flight_limit_is_503_at_once(restricted_server, looped_video):
    """max_in_flight=1: while a video holds the only slot, an image request is refused, not queued."""
    url = restricted_server.url
    results: list[httpx.Response] = []
    worker = threading.Thread(target=post_video, args=(url, looped_video, AUTH, results))
    worker.start()
    try:
        wait_for_metric(url, "seg_inference_in_flight", 1)
        r = httpx.post(
            url + "/segment", headers=AUTH, files={"file": ("x.jpg", SMALL_IMAGE.read_bytes())}, timeout=120
        )
        assert r.status_code == 503, r.text
        assert "busy" in r.json()["detail"] and r.headers["retry-after"] == "1"
    finally:
        worker.join()
    assert results[0].status_code == 200 and len(results[0].json()["frames"]) == 120
    text = httpx.get(url + "/metrics").text
    assert 'seg_http_errors_total{status="503"}' in text
    wait_for_metric(url, "seg_inference_in_flight", 0)
    ok = httpx.post(
        url + "/segment", headers=AUTH, files={"file": ("x.jpg", SMALL_IMAGE.read_bytes())}, timeout=120
    )
    assert ok.status_code == 200


def test_graceful_shutdown_finishes_running_requests(packed_model_dir, looped_video, tmp_path):
    server = start_server(packed_model_dir, tmp_path / "server.log")
    results: list[httpx.Response] = []
    worker = threading.Thread(target=post_video, args=(server.url, looped_video, {}, results))
    try:
        worker.start()
        wait_for_metric(server.url, "seg_inference_in_flight", 1)
    finally:
        code = server.stop()
        worker.join()
    # Recent uvicorn re-raises the caught SIGTERM after a clean shutdown, so -SIGTERM is a clean exit too.
    assert code in (0, -signal.SIGTERM), server.log()[-2000:]
    assert results[0].status_code == 200 and len(results[0].json()["frames"]) == 120
    log = server.log()
    assert log.index('"route":"/segment/video","status":200') < log.index("Application shutdown complete")


def test_server_process_never_loads_torch(server):
    maps = Path(f"/proc/{server.proc.pid}/maps")
    if not maps.exists():
        pytest.skip("needs Linux /proc to inspect the server's loaded libraries")
    assert "libtorch" not in maps.read_text()


def test_service_modules_do_not_import_torch(packed_model_dir):
    """Import and run the whole app (one request through it) in a fresh interpreter."""
    code = f"""
import sys
from fastapi.testclient import TestClient
from seg_service.api import Settings, create_app
settings = Settings(model_dir=__import__("pathlib").Path({str(packed_model_dir)!r}))
with TestClient(create_app(settings)) as client:
    r = client.post("/segment", files={{"file": open({str(SMALL_IMAGE)!r}, "rb")}})
    assert r.status_code == 200, r.text
    assert client.get("/").status_code == 200
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, loaded
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
