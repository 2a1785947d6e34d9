"""The demo page in real headless Chromium (Debian's package, driven by Playwright): the fake camera
plays the test video (converted to Y4M), frames go over the WebSocket, and the live class overlay,
background blur and background replacement are drawn; screenshots of each go to test-artifacts/, or to
docs/img/ (the README's pictures) with SEG_UPDATE_DOC_IMAGES=1."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from .helpers import PERSON_IMAGES, ROOT, VIDEO

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
if not CHROMIUM.exists():
    pytest.skip(
        f"Chromium not found at {CHROMIUM} (apt-get install chromium); skipping the browser test",
        allow_module_level=True,
    )


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
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={fake_camera}",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
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
    page.on(
        "websocket",
        lambda ws: ws.on(
            "framesent",
            lambda payload: ws_settings.append(json.loads(payload)) if isinstance(payload, str) else None,
        ),
    )
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length === 2")
    page.check("#flip")  # the mirrored pass for the stream, sent as the first settings message
    page.click("#start")
    page.wait_for_function("Number(document.getElementById('stats').dataset.frames) >= 5", timeout=120_000)

    state = page.evaluate("""() => {
        const canvas = document.getElementById('output');
        const stats = document.getElementById('stats').dataset;
        return {width: canvas.width, height: canvas.height, painted: Number(stats.painted),
                mode: stats.drawnMode, latency: document.getElementById('latency').textContent,
                status: document.getElementById('status').textContent};
    }""")
    assert (state["width"], state["height"]) == (320, 240), state
    assert state["painted"] > 0 and state["mode"] == "overlay", state
    assert state["latency"].endswith(" ms") and state["status"] == "Streaming.", state
    first = {"flip": True, "refine": True, "smooth": True, "format": "png", "foreground": ["person"]}
    assert ws_settings[0] == first, ws_settings
    page.uncheck("#refine")  # while streaming: sent at once
    deadline = time.monotonic() + 30
    while first | {"refine": False} not in ws_settings and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert ws_settings[-1] == first | {"refine": False}, ws_settings
    page.uncheck("#smooth")  # "Steady masks": the stream's temporal smoothing
    while first | {"refine": False, "smooth": False} not in ws_settings and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert ws_settings[-1] == first | {"refine": False, "smooth": False}, ws_settings

    page.set_input_files("#upload-file", str(PERSON_IMAGES[0]))
    page.click("#upload-form button[type=submit]")
    page.wait_for_function("document.getElementById('upload-result').naturalWidth > 0", timeout=120_000)
    page.wait_for_function(
        "document.getElementById('upload-status').textContent.includes('inference')", timeout=120_000
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_demo.png"), full_page=True)
    # The upload used the switches: its JSON equals the API's answer for the same settings.
    uploads = [u for u in requests if "/segment?" in u]
    assert uploads and all("flip=true" in u and "refine=false" in u for u in uploads), uploads
    shown = page.evaluate("""() => [...document.querySelectorAll('#upload-classes tr')]
        .map((row) => [row.cells[0].textContent, row.cells[1].textContent])""")
    model = page.evaluate("document.getElementById('model').value")
    r = httpx.post(
        server.url + "/segment",
        params={"format": "json", "model": model, "flip": "true", "refine": "false"},
        files={"file": (PERSON_IMAGES[0].name, PERSON_IMAGES[0].read_bytes())},
        timeout=120,
    )
    expected = [[c["name"], f"{100 * c['fraction']:.1f} %"] for c in r.json()["classes"] if c["pixels"] > 0]
    assert shown == expected, (shown, expected)
    page.click("#stop")
    assert not outside, outside
    assert not console_errors, console_errors
    page.close()


# ---- the webcam effects on the shipped street model, composited in the page ----------------------

# A test run leaves the work tree as it found it: the README's pictures are rewritten only on request.
DOCS_IMG = ROOT / "docs" / "img" if os.environ.get("SEG_UPDATE_DOC_IMAGES") == "1" else ARTIFACTS
BACKGROUND_IMAGE = (
    ROOT / "tests" / "data" / "imagenette" / "val" / "n03888257" / "ILSVRC2012_val_00001440.jpg"
)


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory):
    """A server on the shipped models (weights/): the street model finds the video's cyclists."""
    from .helpers import start_server

    srv = start_server(
        ROOT / "weights", tmp_path_factory.mktemp("shipped") / "server.log", "--max-in-flight", "2"
    )
    yield srv
    srv.stop()


class StreamRecorder:
    """Every binary frame the page sends (index = the server's frame number) and every mask it gets."""

    def __init__(self, page) -> None:
        self.sent: list[bytes] = []
        self.masks: dict[int, tuple[dict, bytes]] = {}
        self.settings: list[dict] = []
        self._pending: dict | None = None
        page.on("websocket", self._attach)

    def _attach(self, ws) -> None:
        ws.on("framesent", self._sent)
        ws.on("framereceived", self._received)

    def _sent(self, payload) -> None:
        if isinstance(payload, str):
            self.settings.append(json.loads(payload))
        else:
            self.sent.append(bytes(payload))

    def _received(self, payload) -> None:
        if isinstance(payload, str):
            message = json.loads(payload)
            self._pending = message if message["type"] == "result" else None
        elif self._pending is not None:
            self.masks[self._pending["frame"]] = (self._pending, bytes(payload))
            self._pending = None


def decode_rgb(data: bytes, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    assert image is not None
    return image[:, :, ::-1].astype(np.float32) if image.ndim == 3 else image


def drawn_frame(
    page, recorder: StreamRecorder, mode: str, after: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(canvas RGB, the frame it was made from as sent, its alpha matte) for the first frame drawn
    in `mode` whose number is past `after`: the canvas and the frame number read in one step."""
    page.wait_for_function(
        f"(() => {{ const s = document.getElementById('stats').dataset;"
        f" return s.drawnMode === '{mode}' && Number(s.drawn) > {after}; }})()",
        timeout=120_000,
    )
    shot = page.evaluate("""() => ({url: document.getElementById('output').toDataURL('image/png'),
                                    frame: Number(document.getElementById('stats').dataset.drawn),
                                    mode: document.getElementById('stats').dataset.drawnMode})""")
    assert shot["mode"] == mode, shot
    deadline = time.monotonic() + 30
    while shot["frame"] not in recorder.masks and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    result, mask_png = recorder.masks[shot["frame"]]
    assert result["format"] == "alpha" and result["smoothed"] is True, result
    canvas = decode_rgb(base64.b64decode(shot["url"].split(",", 1)[1]))
    frame = decode_rgb(recorder.sent[shot["frame"]])
    alpha = decode_rgb(mask_png, cv2.IMREAD_UNCHANGED).astype(np.float32)
    assert canvas.shape == frame.shape == alpha.shape + (3,) == (240, 320, 3)
    return canvas, frame, alpha


def regions(alpha: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept pixels: alpha 255, dropped pixels: alpha 0), both at least `margin` pixels from the
    picture's border, where a blur reaches outside the frame."""
    inside = np.zeros(alpha.shape, bool)
    inside[margin:-margin, margin:-margin] = True
    return (alpha == 255) & inside, (alpha == 0) & inside


def mean_abs(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(np.abs(a - b)[where].mean())


def test_webcam_effects_blur_and_replace(shipped_server, browser):
    """Fake camera playing the real street video, the shipped street model: the page asks for alpha
    mattes of the people classes over the WebSocket and composites them. Each check compares the
    canvas with the same effect computed here from the frame the page sent and the matte it got."""
    page = browser.new_page(viewport={"width": 1000, "height": 1200})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    recorder = StreamRecorder(page)
    page.goto(shipped_server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length === 2")
    page.select_option("#model", "camvid")
    page.wait_for_function("document.querySelectorAll('#foreground input').length === 11")
    keep = page.evaluate("[...document.querySelectorAll('#foreground input:checked')].map((e) => e.value)")
    assert keep == ["pedestrian", "bicyclist"]
    page.click("#start")
    page.wait_for_function(
        "document.getElementById('stats').dataset.drawnMode === 'overlay'", timeout=120_000
    )
    section = page.locator("section").nth(1)
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    section.screenshot(path=str(DOCS_IMG / "webcam_overlay.png"))

    # Blur: the kept people are the frame itself, the rest the frame blurred with the chosen strength.
    page.select_option("#effect", "blur")
    for strength, other in ((4, 14), (14, 4)):
        page.evaluate(f"document.getElementById('blur').value = '{strength}'")  # read at each drawing
        after = len(recorder.sent)  # frames sent from now on are drawn with this strength
        canvas, frame, alpha = drawn_frame(page, recorder, "blur", after)
        keep_region, drop_region = regions(alpha, 3 * max(strength, other))
        assert keep_region.sum() > 30 and drop_region.sum() > 10000, (keep_region.sum(), drop_region.sum())
        assert mean_abs(canvas, frame, keep_region) < 8
        blurred = cv2.GaussianBlur(frame, (0, 0), strength)
        wrong = cv2.GaussianBlur(frame, (0, 0), other)
        assert mean_abs(canvas, blurred, drop_region) < 0.5 * mean_abs(canvas, frame, drop_region)
        assert mean_abs(canvas, blurred, drop_region) < mean_abs(canvas, wrong, drop_region)
        if strength == 14:
            section.screenshot(path=str(DOCS_IMG / "webcam_blur.png"))

    # Replace by a colour: canvas = alpha * frame + (1 - alpha) * colour, everywhere.
    page.select_option("#effect", "replace")
    page.fill("#bg-colour", "#20c040")
    after = len(recorder.sent)
    canvas, frame, alpha = drawn_frame(page, recorder, "replace", after)
    a = alpha[:, :, None] / 255.0
    expected = a * frame + (1 - a) * np.array([0x20, 0xC0, 0x40], np.float32)
    everywhere = np.ones(alpha.shape, bool)
    assert mean_abs(canvas, expected, everywhere) < 3
    inverted = (1 - a) * frame + a * np.array([0x20, 0xC0, 0x40], np.float32)
    assert mean_abs(canvas, inverted, everywhere) > 10 * mean_abs(canvas, expected, everywhere)

    # Replace by an image the user picks: scaled to cover the frame, centred.
    page.set_input_files("#bg-image", str(BACKGROUND_IMAGE))
    page.wait_for_timeout(500)  # the picked file is decoded asynchronously
    after = len(recorder.sent)
    canvas, frame, alpha = drawn_frame(page, recorder, "replace", after)
    picture = cv2.imread(str(BACKGROUND_IMAGE))[:, :, ::-1].astype(np.float32)
    scale = max(320 / picture.shape[1], 240 / picture.shape[0])
    w, h = round(picture.shape[1] * scale), round(picture.shape[0] * scale)
    cover = cv2.resize(picture, (w, h), interpolation=cv2.INTER_LINEAR)
    top, left = (h - 240) // 2, (w - 320) // 2
    cover = cover[top : top + 240, left : left + 320]
    keep_region, drop_region = regions(alpha, 2)
    assert mean_abs(canvas, cover, drop_region) < 12
    assert mean_abs(canvas, frame, keep_region) < 8
    assert mean_abs(canvas, frame, drop_region) > 3 * mean_abs(canvas, cover, drop_region)
    section.screenshot(path=str(DOCS_IMG / "webcam_replace.png"))

    # Every settings message asked for the people of the street model; smoothing stayed on.
    alpha_settings = [s for s in recorder.settings if s.get("format") == "alpha"]
    assert alpha_settings and all(
        s["foreground"] == ["pedestrian", "bicyclist"] and s["smooth"] for s in alpha_settings
    ), recorder.settings
    shown = page.evaluate("['fps', 'latency'].map((id) => document.getElementById(id).textContent)")
    assert shown[1].endswith(" ms"), shown
    page.click("#stop")
    assert not errors, errors
    page.close()
