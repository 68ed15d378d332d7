// recogen web page: plain JavaScript, no build step, no network beyond this server.
// State for tests and scripts: body[data-state] is loading | ready | busy | done | error;
// canvas[data-boxes] counts the boxes drawn; each .bar has data-label and data-prob.
"use strict";

const $ = (id) => document.getElementById(id);
const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990"];
let models = [];
let image = null;  // the last chosen File

function setState(state, message = "", error = false) {
  document.body.dataset.state = state;
  $("status").textContent = message;
  $("status").classList.toggle("error", error);
}

function headers() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!res.ok) {
    let msg = `${res.status} ${res.statusText}`;
    try { msg = (await res.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return res;
}

function current() { return models.find((m) => m.name === $("model").value); }

function clearResult() {
  $("bars").replaceChildren();
  for (const id of ["canvas", "overlay", "grid", "table"]) $(id).hidden = true;
  $("table").replaceChildren();
  $("canvas").dataset.boxes = "0";
  $("result").dataset.state = "empty";
}

function showModel() {
  const m = current();
  clearResult();
  if (!m) return;
  const generative = m.task === "generate";
  $("predict-panel").hidden = generative;
  $("generate-panel").hidden = !generative;
  $("model-info").textContent = `${m.task} · ${m.model} · ${m.classes.length} classes · ${m.image_size}px · ${m.backend}`;
  for (const el of document.querySelectorAll(".params [data-task]")) el.hidden = el.dataset.task !== m.task;
  if (generative) {
    const sel = $("gen-class");
    sel.replaceChildren(new Option("every class in turn", ""), ...m.classes.map((c) => new Option(c, c)));
    $("gen-class-label").hidden = !m.conditional;
  }
}

async function loadModels() {
  try {
    models = (await (await api("v1/models")).json()).models;
  } catch (e) {
    setState("error", `cannot list models: ${e.message}`, true);
    return;
  }
  $("model").replaceChildren(...models.map((m) => new Option(`${m.name} (${m.task})`, m.name)));
  showModel();
  setState("ready", models.length ? "Choose or drop an image." : "This server has no models.");
}

function table(rows, head) {
  const t = $("table");
  t.replaceChildren();
  const tr = t.insertRow();
  for (const h of head) { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); }
  for (const r of rows) { const row = t.insertRow(); for (const v of r) row.insertCell().textContent = v; }
  t.hidden = false;
}

function renderClassify(r) {
  const bars = r.topk.map((t) => {
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.label = t.label;
    row.dataset.prob = String(t.prob);
    const name = document.createElement("span"); name.className = "label"; name.textContent = t.label;
    const track = document.createElement("div"); track.className = "track";
    const fill = document.createElement("div"); fill.className = "fill"; fill.style.width = `${(100 * t.prob).toFixed(1)}%`;
    track.appendChild(fill);
    const p = document.createElement("span"); p.className = "prob"; p.textContent = `${(100 * t.prob).toFixed(1)}%`;
    row.append(name, track, p);
    return row;
  });
  $("bars").replaceChildren(...bars);
  return `${r.label} (${(100 * r.prob).toFixed(1)}%)`;
}

async function renderDetect(r, file) {
  const bitmap = await createImageBitmap(file);
  const c = $("canvas");
  // Draw at least 256 px wide so that boxes on small images stay visible.
  const scale = Math.max(1, 256 / bitmap.width);
  c.width = Math.round(bitmap.width * scale); c.height = Math.round(bitmap.height * scale);
  const g = c.getContext("2d");
  g.imageSmoothingEnabled = false;
  g.drawImage(bitmap, 0, 0, c.width, c.height);
  g.lineWidth = 2; g.font = "13px sans-serif";
  for (const d of r.detections) {
    const [x1, y1, x2, y2] = d.box.map((v) => v * scale);
    const colour = COLOURS[d.index % COLOURS.length];
    g.strokeStyle = colour; g.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${d.label} ${d.score.toFixed(2)}`;
    g.fillStyle = colour; g.fillRect(x1, Math.max(0, y1 - 16), g.measureText(text).width + 6, 16);
    g.fillStyle = "#fff"; g.fillText(text, x1 + 3, Math.max(12, y1 - 4));
  }
  c.dataset.boxes = String(r.detections.length);
  c.hidden = false;
  table(r.detections.map((d) => [d.label, d.score.toFixed(3), d.box.map((v) => v.toFixed(0)).join(", ")]), ["label", "score", "box (x1, y1, x2, y2)"]);
  return `${r.detections.length} object(s)`;
}

function renderSegment(r) {
  $("overlay").src = `data:image/png;base64,${r.overlay_png}`;
  $("overlay").hidden = false;
  const total = r.size[0] * r.size[1];
  const rows = Object.entries(r.class_pixels).sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, v, `${(100 * v / total).toFixed(1)}%`]);
  table(rows, ["class", "pixels", "share"]);
  return `${rows.length} class(es) present`;
}

async function predict(file) {
  const m = current();
  if (!m || m.task === "generate") return;
  image = file;
  clearResult();
  setState("busy", `${m.task}: ${file.name} ...`);
  const q = new URLSearchParams({ model: m.name });
  if (m.task === "classify") q.set("topk", $("topk").value);
  if (m.task === "detect") q.set("conf", $("conf").value);
  if (m.task === "segment") { q.set("mask", "true"); q.set("alpha", $("alpha").value); }
  const form = new FormData();
  form.append("file", file);
  try {
    const r = await (await api(`v1/${m.task}?${q}`, { method: "POST", body: form })).json();
    const summary = m.task === "classify" ? renderClassify(r) : m.task === "detect" ? await renderDetect(r, file) : renderSegment(r);
    $("result").dataset.state = m.task;
    setState("done", `${file.name}: ${summary}`);
  } catch (e) {
    setState("error", e.message, true);
  }
}

async function generate(event) {
  event.preventDefault();
  const m = current();
  clearResult();
  setState("busy", "generating ...");
  const body = { model: m.name, n: Number($("gen-n").value), seed: Number($("gen-seed").value), format: "png" };
  if (m.conditional && $("gen-class").value !== "") body.class = $("gen-class").value;
  try {
    const blob = await (await api("v1/generate", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })).blob();
    const grid = $("grid");
    if (grid.src) URL.revokeObjectURL(grid.src);
    grid.src = URL.createObjectURL(blob);
    grid.hidden = false;
    $("result").dataset.state = "generate";
    setState("done", `${body.n} image(s), seed ${body.seed}${body.class !== undefined ? `, class ${body.class}` : ""}`);
  } catch (e) {
    setState("error", e.message, true);
  }
}

function setup() {
  const key = localStorage.getItem("recogen-api-key");
  if (key) $("api-key").value = key;
  $("api-key").addEventListener("change", () => { localStorage.setItem("recogen-api-key", $("api-key").value.trim()); loadModels(); });
  $("model").addEventListener("change", () => { showModel(); if (image && current().task !== "generate") predict(image); });
  $("file").addEventListener("change", (e) => { if (e.target.files.length) predict(e.target.files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) predict(e.dataTransfer.files[0]);
  });
  $("generate-form").addEventListener("submit", generate);
  loadModels();
}

setup();
