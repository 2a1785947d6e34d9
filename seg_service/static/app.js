// Browser demo for the segmentation service: webcam frames over the WebSocket (/ws/segment), drawn
// live with one of three effects composited here in the browser (the server only sends masks):
// the class overlay (label masks), background blur and background replacement (alpha mattes of the
// "Keep" classes); and a still-image upload to POST /segment.
// Each mask is composited with the very frame it was computed from (kept until its answer arrives),
// so edges line up even when the round trip is long; the picture then trails the camera by that time.
// Plain JavaScript, no dependencies: everything is served by the app itself.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_CAPTURE_WIDTH = 640;   // frames are downscaled before upload to keep the link light
const MAX_OUTSTANDING = 2;       // frames sent but not yet answered; the server drops stale ones anyway
const JPEG_QUALITY = 0.8;
// Classes kept sharp by Blur and Replace when a model is chosen (the user can tick others).
const PEOPLE_CLASSES = ["person", "pedestrian", "bicyclist", "rider", "human"];

const state = {
  palette: [],          // [[r, g, b], ...] per class index
  ws: null,
  stream: null,
  sent: 0,              // binary frames sent on this connection (the server numbers them from 0)
  answered: -1,         // highest frame index answered
  sendTimes: new Map(), // frame index -> performance.now() at send
  sentFrames: new Map(), // frame index -> ImageBitmap of the frame as captured, until answered
  background: null,     // ImageBitmap chosen for Replace, or null for the solid colour
  classNames: [],
  pendingResult: null,  // text "result" message waiting for its binary mask
  resultTimes: [],      // arrival times of the last second's results, for the FPS figure
  frames: 0,
  capture: document.createElement("canvas"),
  scratch: document.createElement("canvas"),
  layer: document.createElement("canvas"),   // the kept (foreground) part of a frame
};

function apiHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function setStatus(id, text, isError = false) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function fetchJson(url) {
  const response = await fetch(url, { headers: apiHeaders() });
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
  return body;
}

async function loadModels() {
  const info = await fetchJson("/models");
  const select = $("model");
  select.innerHTML = "";
  for (const m of info.models) {
    const option = new Option(`${m.name} (${m.classes.length} classes)`, m.name, m.default, m.default);
    select.add(option);
  }
  await loadClasses();
}

async function loadClasses() {
  const name = $("model").value;
  const info = await fetchJson(`/classes?model=${encodeURIComponent(name)}`);
  state.palette = info.classes.map((c) => c.color);
  state.classNames = info.classes.map((c) => c.name);
  fillForeground(info.classes.map((c) => c.name));
  const legend = $("legend");
  legend.innerHTML = "";
  for (const c of info.classes) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.style.background = `rgb(${c.color.join(",")})`;
    item.append(swatch, c.name);
    legend.append(item);
  }
}

// The "Keep" checkboxes: people-like classes ticked by default, else class 1 of a two-class model.
function fillForeground(names) {
  const box = $("foreground");
  box.querySelectorAll("label").forEach((el) => el.remove());
  let defaults = names.filter((n) => PEOPLE_CLASSES.includes(n.toLowerCase()));
  if (!defaults.length && names.length === 2) defaults = [names[1]];
  for (const name of names) {
    const label = document.createElement("label");
    const box_ = document.createElement("input");
    box_.type = "checkbox";
    box_.value = name;
    box_.checked = defaults.includes(name);
    box_.addEventListener("change", sendSettings);
    label.append(box_, " " + name);
    box.append(label);
  }
}

function foregroundClasses() {
  return [...$("foreground").querySelectorAll("input:checked")].map((el) => el.value);
}

function effect() {
  return $("effect").value;
}

// ---- live camera over the WebSocket ----

async function startCamera() {
  $("start").disabled = true;
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 } }, audio: false });
  } catch (err) {
    setStatus("status", `Camera unavailable: ${err.message}`, true);
    $("start").disabled = false;
    return;
  }
  const video = $("video");
  video.srcObject = state.stream;
  await video.play();
  openSocket();
  $("stop").disabled = false;
}

function stopCamera() {
  if (state.ws) state.ws.close(1000, "client stopped");
  clearSentFrames();
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.ws = null;
  state.stream = null;
  $("start").disabled = false;
  $("stop").disabled = true;
  setStatus("status", "Camera off.");
}

function openSocket() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const params = new URLSearchParams({ model: $("model").value });
  const key = $("api-key").value.trim();
  if (key) params.set("api_key", key);
  const ws = new WebSocket(`${scheme}://${location.host}/ws/segment?${params}`);
  ws.binaryType = "blob";
  state.ws = ws;
  state.sent = 0;
  state.answered = -1;
  state.sendTimes.clear();
  clearSentFrames();
  state.pendingResult = null;
  ws.onopen = () => {
    ws.send(JSON.stringify(streamSettings()));  // applies to every frame sent after it
    setStatus("status", "Streaming.");
    pump();
  };
  // One message at a time: a mask's rendering awaits its decode, and the next answer closes the
  // bitmaps of the frames before it; handled concurrently, it could close the frame being drawn.
  let handled = Promise.resolve();
  ws.onmessage = (event) => {
    handled = handled.then(() => onMessage(event.data)).catch((err) => setStatus("status", String(err), true));
  };
  ws.onclose = (event) => {
    if (state.ws === ws && state.stream) {
      setStatus("status", `Connection closed (code ${event.code}${event.reason ? ": " + event.reason : ""}).`,
                event.code !== 1000);
    }
  };
}

// Sends the current video frame when fewer than MAX_OUTSTANDING frames await an answer.
function pump() {
  const ws = state.ws;
  const video = $("video");
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  if (state.sent - (state.answered + 1) >= MAX_OUTSTANDING || video.readyState < 2 || !video.videoWidth) {
    requestAnimationFrame(pump);
    return;
  }
  const scale = Math.min(1, MAX_CAPTURE_WIDTH / video.videoWidth);
  const canvas = state.capture;
  canvas.width = Math.round(video.videoWidth * scale);
  canvas.height = Math.round(video.videoHeight * scale);
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  const captured = createImageBitmap(canvas);  // the frame as drawn, kept to composite its mask with
  canvas.toBlob(async (blob) => {
    // Sent as an ArrayBuffer (the same bytes as the blob; tools that inspect the socket see them).
    const buffer = blob ? await blob.arrayBuffer() : null;
    const bitmap = await captured;
    if (buffer && ws.readyState === WebSocket.OPEN) {
      const index = state.sent++;  // the server numbers the binary messages it receives from 0
      state.sentFrames.set(index, bitmap);
      state.sendTimes.set(index, performance.now());
      ws.send(buffer);
    } else {
      bitmap.close();
    }
    requestAnimationFrame(pump);
  }, "image/jpeg", JPEG_QUALITY);
}

async function onMessage(data) {
  if (typeof data === "string") {
    const message = JSON.parse(data);
    if (message.type === "result") {
      state.pendingResult = message;
    } else if (message.type === "error") {
      setStatus("status", `Server: ${message.detail}`, true);
      if (Number.isInteger(message.frame)) markAnswered(message.frame);
    }
    return;
  }
  const result = state.pendingResult;
  state.pendingResult = null;
  if (!result) return;
  markAnswered(result.frame);
  const frame = state.sentFrames.get(result.frame);
  for (const [k, bitmap] of state.sentFrames) {
    if (k < result.frame) { bitmap.close(); state.sentFrames.delete(k); }
  }
  if (!frame) return;
  await render(frame, data, result.format);
  const now = performance.now();
  state.resultTimes.push(now);
  while (state.resultTimes.length && now - state.resultTimes[0] > 1000) state.resultTimes.shift();
  state.frames += 1;
  const sentAt = state.sendTimes.get(result.frame);
  for (const k of state.sendTimes.keys()) if (k <= result.frame) state.sendTimes.delete(k);
  $("fps").textContent = state.resultTimes.length.toFixed(0);
  $("latency").textContent = sentAt === undefined ? "–" : `${(now - sentAt).toFixed(0)} ms`;
  $("inference").textContent = `${result.inference_ms.toFixed(1)} ms`;
  $("frames").textContent = String(state.frames);
  $("dropped").textContent = String(result.dropped);
  $("stats").dataset.frames = String(state.frames);
  $("stats").dataset.drawn = String(result.frame);
}

function markAnswered(frame) {
  state.answered = Math.max(state.answered, frame);
}

function clearSentFrames() {
  for (const bitmap of state.sentFrames.values()) bitmap.close();
  state.sentFrames.clear();
}

// The mask PNG's pixels (8-bit grey: a class index, or an alpha value 0-255) in a scratch canvas.
async function maskPixels(blob) {
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const scratch = state.scratch;
  scratch.width = bitmap.width;
  scratch.height = bitmap.height;
  const sctx = scratch.getContext("2d", { willReadFrequently: true });
  sctx.clearRect(0, 0, scratch.width, scratch.height);
  sctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return sctx.getImageData(0, 0, scratch.width, scratch.height);
}

// Draws one answered frame with the effect its mask is for: "png" masks (labels) get the class
// overlay; "alpha" mattes get Blur or Replace, whichever is selected now. A mask of the other kind
// (the effect changed while it was on its way) shows the plain frame.
async function render(frame, maskBlob, format) {
  const pixels = await maskPixels(maskBlob);
  const out = $("output");
  out.width = frame.width;
  out.height = frame.height;
  const ctx = out.getContext("2d", { willReadFrequently: true });
  const mode = effect();
  ctx.drawImage(frame, 0, 0);
  let drawn = "plain";
  if (format === "png" && mode === "overlay") {
    drawOverlay(ctx, pixels);
    drawn = "overlay";
  } else if (format === "alpha" && mode !== "overlay") {
    if (mode === "blur") drawBlurred(ctx, frame); else drawBackground(ctx, out.width, out.height);
    ctx.drawImage(keptLayer(frame, pixels), 0, 0);
    drawn = mode;
  }
  $("stats").dataset.drawnMode = drawn;
}

// Colours the label mask with the class palette over the frame. Classes whose palette colour is
// black (the usual "background") stay clear, as in the server's overlay.
function drawOverlay(ctx, pixels) {
  const d = pixels.data;
  const alpha = Math.round(255 * Number($("opacity").value) / 100);
  let painted = 0;
  for (let i = 0; i < d.length; i += 4) {
    const colour = state.palette[d[i]];
    if (colour && (colour[0] || colour[1] || colour[2])) {
      d[i] = colour[0]; d[i + 1] = colour[1]; d[i + 2] = colour[2]; d[i + 3] = alpha;
      painted += 1;
    } else {
      d[i + 3] = 0;
    }
  }
  const scratch = state.scratch;
  scratch.getContext("2d").putImageData(pixels, 0, 0);
  ctx.drawImage(scratch, 0, 0);
  $("stats").dataset.painted = String(painted);
}

// The frame with the matte as its alpha channel: what Blur and Replace keep.
function keptLayer(frame, pixels) {
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    d[i + 3] = d[i];  // grey matte -> alpha; the colour is replaced by the frame below
  }
  const scratch = state.scratch;
  scratch.getContext("2d").putImageData(pixels, 0, 0);
  const layer = state.layer;
  layer.width = frame.width;
  layer.height = frame.height;
  const lctx = layer.getContext("2d");
  lctx.globalCompositeOperation = "copy";
  lctx.drawImage(frame, 0, 0);
  lctx.globalCompositeOperation = "destination-in";  // keep the frame where the matte is opaque
  lctx.drawImage(scratch, 0, 0, layer.width, layer.height);
  lctx.globalCompositeOperation = "source-over";
  return layer;
}

// Background blur: a Gaussian of the chosen strength over the frame already drawn (drawn sharp
// first, so the blur's transparent fringe at the borders shows the frame, not black).
function drawBlurred(ctx, frame) {
  ctx.filter = `blur(${Number($("blur").value)}px)`;
  ctx.drawImage(frame, 0, 0);
  ctx.filter = "none";
}

// Background replacement: the chosen image, scaled to cover the frame and centred, or the colour.
function drawBackground(ctx, width, height) {
  const image = state.background;
  if (!image) {
    ctx.fillStyle = $("bg-colour").value;
    ctx.fillRect(0, 0, width, height);
    return;
  }
  const scale = Math.max(width / image.width, height / image.height);
  const w = image.width * scale;
  const h = image.height * scale;
  ctx.drawImage(image, (width - w) / 2, (height - h) / 2, w, h);
}

// ---- still image upload ----

// The switches shared by the live stream (WebSocket settings) and the upload (query parameters).
function inferenceSettings() {
  return { flip: $("flip").checked, refine: $("refine").checked };
}

// Everything the stream's settings message carries: the mask the effect needs, and for mattes the
// classes to keep (none ticked: the server's default foreground).
function streamSettings() {
  const settings = { ...inferenceSettings(), smooth: $("smooth").checked,
                     format: effect() === "overlay" ? "png" : "alpha" };
  const keep = foregroundClasses();
  if (keep.length) settings.foreground = keep;
  return settings;
}

function sendSettings() {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(streamSettings()));
}

async function chooseBackground() {
  const file = $("bg-image").files[0];
  if (!file) return;
  try {
    const image = await createImageBitmap(file);
    if (state.background) state.background.close();
    state.background = image;
  } catch (err) {
    setStatus("status", `Cannot read that image: ${err.message}`, true);
  }
}

async function uploadStill(event) {
  event.preventDefault();
  const file = $("upload-file").files[0];
  if (!file) return;
  const { flip, refine } = inferenceSettings();
  const post = (format) => {
    const form = new FormData();
    form.append("file", file);
    const query = new URLSearchParams({ format, model: $("model").value, flip, refine });
    return fetch(`/segment?${query}`, { method: "POST", body: form, headers: apiHeaders() });
  };
  setStatus("upload-status", "Segmenting…");
  try {
    const overlayResponse = await post("overlay");
    if (!overlayResponse.ok) throw new Error((await overlayResponse.json()).detail);
    const img = $("upload-result");
    if (img.src) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(await overlayResponse.blob());
    const statsResponse = await post("json");
    if (!statsResponse.ok) throw new Error((await statsResponse.json()).detail);
    const stats = await statsResponse.json();
    const table = $("upload-classes");
    table.innerHTML = "";
    for (const c of stats.classes.filter((c) => c.pixels > 0)) {
      const row = table.insertRow();
      row.insertCell().textContent = c.name;
      row.insertCell().textContent = `${(100 * c.fraction).toFixed(1)} %`;
    }
    setStatus("upload-status",
      `${stats.width}×${stats.height}, ${stats.model}, inference ${stats.inference_ms.toFixed(1)} ms`);
  } catch (err) {
    setStatus("upload-status", `Error: ${err.message}`, true);
  }
}

$("start").addEventListener("click", startCamera);
$("stop").addEventListener("click", stopCamera);
$("model").addEventListener("change", async () => {
  try {
    await loadClasses();  // new "Keep" defaults, sent with the model so the server checks them together
  } catch (err) {
    setStatus("status", err.message, true);
  }
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ model: $("model").value, ...streamSettings() }));
  }
});
for (const id of ["flip", "refine", "smooth", "effect"]) $(id).addEventListener("change", sendSettings);
$("bg-colour").addEventListener("input", () => {
  if (state.background) state.background.close();
  state.background = null;
  $("bg-image").value = "";
});
$("bg-image").addEventListener("change", chooseBackground);
$("upload-form").addEventListener("submit", uploadStill);
loadModels().catch((err) => setStatus("status", `Cannot list models: ${err.message}`, true));
