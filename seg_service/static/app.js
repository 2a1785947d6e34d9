// Browser demo for the segmentation service: webcam frames over the WebSocket (/ws/segment) with the
// label mask drawn live as a colour overlay, and a still-image upload to POST /segment.
// Plain JavaScript, no dependencies: everything is served by the app itself.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_CAPTURE_WIDTH = 640;   // frames are downscaled before upload to keep the link light
const MAX_OUTSTANDING = 2;       // frames sent but not yet answered; the server drops stale ones anyway
const JPEG_QUALITY = 0.8;

const state = {
  palette: [],          // [[r, g, b], ...] per class index
  ws: null,
  stream: null,
  sent: 0,              // binary frames sent on this connection (the server numbers them from 0)
  answered: -1,         // highest frame index answered
  sendTimes: new Map(), // frame index -> performance.now() at send
  pendingResult: null,  // text "result" message waiting for its binary mask
  resultTimes: [],      // arrival times of the last second's results, for the FPS figure
  frames: 0,
  capture: document.createElement("canvas"),
  scratch: document.createElement("canvas"),
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
  state.pendingResult = null;
  ws.onopen = () => {
    ws.send(JSON.stringify(inferenceSettings()));  // applies to every frame sent after it
    setStatus("status", "Streaming.");
    pump();
  };
  ws.onmessage = (event) => onMessage(event.data);
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
  const index = state.sent++;
  canvas.toBlob((blob) => {
    if (blob && ws.readyState === WebSocket.OPEN) {
      state.sendTimes.set(index, performance.now());
      ws.send(blob);
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
  await drawMask(data);
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
}

function markAnswered(frame) {
  state.answered = Math.max(state.answered, frame);
}

// Colours an 8-bit label mask PNG with the class palette. Classes whose palette colour is black
// (the usual "background") stay transparent, as in the server's overlay.
async function drawMask(blob) {
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const scratch = state.scratch;
  scratch.width = bitmap.width;
  scratch.height = bitmap.height;
  const sctx = scratch.getContext("2d", { willReadFrequently: true });
  sctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const pixels = sctx.getImageData(0, 0, scratch.width, scratch.height);
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
  const overlay = $("overlay");
  overlay.width = scratch.width;
  overlay.height = scratch.height;
  overlay.getContext("2d").putImageData(pixels, 0, 0);
  $("stats").dataset.painted = String(painted);
}

// ---- still image upload ----

// The switches shared by the live stream (WebSocket settings) and the upload (query parameters).
function inferenceSettings() {
  return { flip: $("flip").checked, refine: $("refine").checked };
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
$("model").addEventListener("change", () => {
  loadClasses().catch((err) => setStatus("status", err.message, true));
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ model: $("model").value }));
  }
});
for (const id of ["flip", "refine"]) {
  $(id).addEventListener("change", () => {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(inferenceSettings()));
  });
}
$("upload-form").addEventListener("submit", uploadStill);
loadModels().catch((err) => setStatus("status", `Cannot list models: ${err.message}`, true));
