"""The demo page in real headless Chromium (Debian's package, driven by Playwright): the fake camera
plays the test video, frames go over the WebSocket and the live overlay is drawn."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import httpx
import pytest

from .helpers import PERSON_IMAGES, ROOT, VIDEO

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium); skipping the browser test",
                allow_module_level=True)


def video_to_y4m(src: Path, dst: Path) -> None:
    """Chromium's fake camera reads raw Y4M (I420): decode the MP4 and write its frames."""
    cap = cv2.VideoCapture(str(src))
    fps = round(cap.get(cv2.CAP_PROP_FPS)) or 15
    with open(dst, "wb") as out:
        header_written = False
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            h, w = bgr.shape[:2]
            if not header_written:
                out.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
                header_written = True
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes())
    cap.release()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    fake_camera = tmp_path_factory.mktemp("camera") / "camvid.y4m"
    video_to_y4m(VIDEO, fake_camera)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                  "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={fake_camera}",
                  "--disable-background-networking", "--disable-component-update"])
        yield browser
        browser.close()


def test_demo_page_live_overlay_and_upload(server, browser):
    page = browser.new_page(viewport={"width": 1000, "height": 1100})
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    # The page must work with no network beyond the app: refuse anything else it asks for.
    outside: list[str] = []

    def guard(route):
        if route.request.url.startswith(server.url) or route.request.url.startswith(server.ws_url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    # What the page sends: WebSocket text messages (settings) and the upload's request URLs.
    ws_settings: list[dict] = []
    page.on("websocket", lambda ws: ws.on(
        "framesent", lambda payload: ws_settings.append(json.loads(payload)) if isinstance(payload, str) else None))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length === 2")
    page.check("#flip")  # the mirrored pass for the stream, sent as the first settings message
    page.click("#start")
    page.wait_for_function("Number(document.getElementById('stats').dataset.frames) >= 5", timeout=120_000)

    # In one synchronous step: the overlay canvas shows exactly the pixels the last mask painted.
    state = page.evaluate("""() => {
        const canvas = document.getElementById('overlay');
        const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let visible = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) visible++;
        return {width: canvas.width, height: canvas.height, visible,
                painted: Number(document.getElementById('stats').dataset.painted),
                fps: document.getElementById('fps').textContent,
                latency: document.getElementById('latency').textContent,
                status: document.getElementById('status').textContent};
    }""")
    assert (state["width"], state["height"]) == (320, 240), state
    assert state["visible"] == state["painted"] and state["painted"] > 0, state
    assert state["latency"].endswith(" ms") and state["status"] == "Streaming.", state
    assert ws_settings[0] == {"flip": True, "refine": True}, ws_settings
    page.uncheck("#refine")  # while streaming: sent at once
    deadline = time.monotonic() + 30
    while {"flip": True, "refine": False} not in ws_settings and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert ws_settings[-1] == {"flip": True, "refine": False}, ws_settings

    page.set_input_files("#upload-file", str(PERSON_IMAGES[0]))
    page.click("#upload-form button[type=submit]")
    page.wait_for_function("document.getElementById('upload-result').naturalWidth > 0", timeout=120_000)
    page.wait_for_function("document.getElementById('upload-status').textContent.includes('inference')",
                           timeout=120_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_demo.png"), full_page=True)
    # The upload used the switches: its JSON equals the API's answer for the same settings.
    uploads = [u for u in requests if "/segment?" in u]
    assert uploads and all("flip=true" in u and "refine=false" in u for u in uploads), uploads
    shown = page.evaluate("""() => [...document.querySelectorAll('#upload-classes tr')]
        .map((row) => [row.cells[0].textContent, row.cells[1].textContent])""")
    model = page.evaluate("document.getElementById('model').value")
    r = httpx.post(server.url + "/segment", params={"format": "json", "model": model, "flip": "true",
                                                     "refine": "false"},
                   files={"file": (PERSON_IMAGES[0].name, PERSON_IMAGES[0].read_bytes())}, timeout=120)
    expected = [[c["name"], f"{100 * c['fraction']:.1f} %"] for c in r.json()["classes"] if c["pixels"] > 0]
    assert shown == expected, (shown, expected)
    page.click("#stop")
    assert not outside, outside
    assert not console_errors, console_errors
    page.close()

