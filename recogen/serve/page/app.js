// recogen web page: plain JavaScript, no build step, no network beyond this server.
//
// The page knows no task by name: it builds itself from GET /v1/models. A model with an "endpoint"
// reads one image: its "params" become the controls (numbers, checkboxes, choices) and an upload is
// POSTed to the endpoint with them; the answer is drawn by its shape (RENDERERS). A model whose info
// says "samples" gets the generate panel (POST /v1/generate). So a newly registered task shows up here
// with no edit of this file.
//
// State for tests and scripts: body[data-state] is loading | ready | busy | done | error;
// #result[data-state] is empty | topk | detections | overlay | fields | samples (the view drawn);
// canvas[data-boxes] counts the boxes drawn; each .bar has data-label and data-prob; each parameter
// control is #param-NAME (name=NAME) inside label[data-param=NAME]; each row of the generic result
// table has data-key.
//
// Pipelines: a model whose info has "capabilities" (a diffusers pipeline, `recogen serve --pipeline`) gets
// the pipeline panel: #capability picks one, whose "params" become the form's controls (#pipe-NAME inside
// label[data-param=NAME]) and whose "image"/"mask" show the file inputs #pipe-image/#pipe-mask; the form
// (#pipeline-form, data-capability) POSTs to the capability's endpoint and the images come back in
// #images (img.made-image, data-index), the call's record as the table; #result[data-state] is "images".
//
// Zero-shot: a foundation model (`recogen serve --zero-shot`, task "zero-shot") has an "endpoint" and "params"
// like a run, so it uses the predict panel: its labels / points / boxes are text boxes (#param-labels...,
// required ones marked), the model is named by the endpoint's path (no model= in the query), and a
// change of a parameter runs the last image again, so that new labels show their new ranking at once.
//
// Explain: a model whose info has "explain" gets the Explain checkbox (#explain) and its methods
// (#explain-method). Ticked, each prediction is followed by POST /v1/explain with the same image, and
// its overlay(s) (img.explain-overlay, data-label) are shown beside the result in #explanation, whose
// data-state is off | busy | done | error; body[data-state] is "done" only once both have answered.
"use strict";

const $ = (id) => document.getElementById(id);
const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990"];
let models = [];
let image = null;  // the last chosen File
let explainRun = 0;  // numbers explain requests: the answer of an older one is dropped
let said = "";  // the status line of the last prediction, which an explanation adds to
const kept = new Map();  // "endpoint name" -> the value the user gave, kept across model switches

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

// The endpoint relative to the page ("/v1/x" -> "v1/x"), so that the page also works behind a path prefix.
function relative(path) { return path.replace(/^\/+/, ""); }

function clearResult() {
  $("bars").replaceChildren();
  $("images").replaceChildren();
  for (const id of ["canvas", "overlay", "grid", "table"]) $(id).hidden = true;
  $("table").replaceChildren();
  $("canvas").dataset.boxes = "0";
  $("result").dataset.state = "empty";
  clearExplanation();
}

function clearExplanation() {
  explainRun += 1;
  $("explain-images").replaceChildren();
  $("explain-caption").textContent = "";
  $("explanation").dataset.state = "off";
  $("explanation").hidden = true;
}

// ---------------------------------------------------------------------------------- parameters
function labelOf(p) {
  if (p.title) return p.title;
  const words = p.name.replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

// The control of one parameter, or null for a type the page cannot edit (the server's default applies).
function control(p) {
  let input;
  if (p.enum) {
    input = document.createElement("select");
    if (p.nullable || p.default === null || p.default === undefined) input.add(new Option("default", ""));
    for (const v of p.enum) input.add(new Option(String(v), String(v)));
    if (p.default !== null && p.default !== undefined) input.value = String(p.default);
  } else if (p.type === "integer" || p.type === "number") {
    input = document.createElement("input");
    input.type = "number";
    const lo = p.minimum ?? p.exclusive_minimum, hi = p.maximum ?? p.exclusive_maximum;
    if (lo !== undefined) input.min = String(lo);
    if (hi !== undefined) input.max = String(hi);
    // Integers step by 1; a number bounded within 1 by a twentieth of its range (0.05 on 0..1); others freely.
    input.step = p.type === "integer" ? "1" : lo !== undefined && hi !== undefined && hi - lo <= 1 ? String((hi - lo) / 20) : "any";
    if (p.default !== null && p.default !== undefined) input.value = String(p.default);
    else input.placeholder = "default";
  } else if (p.type === "boolean") {
    // A checkbox that starts ticked: a boolean parameter switches on an optional part of the answer
    // (e.g. a mask and its overlay), and the page is there to show the whole answer. Untick to leave it out.
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = true;
  } else if (p.type === "string") {
    input = document.createElement("input");
    input.type = "text";
    if (p.default !== null && p.default !== undefined) input.value = String(p.default);
    else input.placeholder = "default";
  } else {
    return null;
  }
  input.id = `param-${p.name}`;
  input.name = p.name;
  if (p.description) input.title = p.description;
  const label = document.createElement("label");
  label.dataset.param = p.name;
  if (p.description) label.title = p.description;
  if (input.type === "checkbox") label.append(input, ` ${labelOf(p)}`);
  else label.append(`${labelOf(p)} `, input);
  return label;
}

function showParams(m) {
  const box = $("params");
  box.replaceChildren();
  for (const p of m.params || []) {
    const el = control(p);
    if (!el) continue;
    const input = el.querySelector("input, select");
    const key = `${m.endpoint} ${p.name}`;
    if (kept.has(key)) {
      if (input.type === "checkbox") input.checked = kept.get(key); else input.value = kept.get(key);
    }
    if (p.required) { input.required = true; if (!input.value) input.placeholder = "required"; }
    if (Array.isArray(p.examples) && p.examples.length && !input.value) input.placeholder = `e.g. ${p.examples[0]}`;
    input.addEventListener("change", () => {
      kept.set(key, input.type === "checkbox" ? input.checked : input.value);
      if (m.task === "zero-shot" && image) predict(image);  // the labels are the question: ask it again
    });
    box.appendChild(el);
  }
}

// The query string of a prediction: the model and every parameter the user left a value in.
function query(m) {
  // A zero-shot model's endpoint names it already (/v1/zero-shot/NAME/TASK).
  const q = new URLSearchParams(m.task === "zero-shot" ? {} : { model: m.name });
  for (const input of $("params").querySelectorAll("input, select")) {
    if (input.type === "checkbox") q.set(input.name, input.checked ? "true" : "false");
    else if (input.value.trim() !== "") q.set(input.name, input.value.trim());
  }
  return q;
}

// ------------------------------------------------------------------------------------- models
function showModel() {
  const m = current();
  clearResult();
  if (!m) return;
  const reads = Boolean(m.endpoint), draws = !reads && Boolean(m.samples);
  const pipes = !reads && !draws && Array.isArray(m.capabilities) && m.capabilities.length > 0;
  $("predict-panel").hidden = !reads;
  $("generate-panel").hidden = !draws;
  $("pipeline-panel").hidden = !pipes;
  const classes = Array.isArray(m.classes) ? `${m.classes.length} classes` : null;
  $("model-info").textContent = [m.task, m.model, classes, m.image_size ? `${m.image_size}px` : null, m.backend]
    .filter((x) => x !== null && x !== undefined && x !== "").join(" · ");
  if (reads) showParams(m);
  showExplain(m, reads);
  if (draws) {
    const sel = $("gen-class");
    sel.replaceChildren(new Option("every class in turn", ""), ...(m.classes || []).map((c) => new Option(c, c)));
    $("gen-class-label").hidden = !m.conditional;
  }
  if (pipes) showPipeline(m);
  if (!reads && !draws && !pipes) setState("ready", `The page cannot use ${m.name}: it neither reads images nor draws them.`);
}

async function loadModels() {
  try {
    models = (await (await api("v1/models")).json()).models;
  } catch (e) {
    setState("error", `cannot list models: ${e.message}`, true);
    return;
  }
  $("model").replaceChildren(...models.map((m) => new Option(`${m.name} (${m.task})`, m.name)));
  setState("ready", models.length ? "Choose or drop an image." : "This server has no models.");
  showModel();
}

// ------------------------------------------------------------------------------------ explain
// The Explain controls of a model that can be explained; the method chosen is kept across models.
function showExplain(m, reads) {
  const ex = reads ? m.explain : null;
  $("explain-controls").hidden = !ex;
  if (!ex) return;
  const sel = $("explain-method"), was = sel.value;
  sel.replaceChildren(...ex.methods.map((name) => new Option(name, name)));
  sel.value = ex.methods.includes(was) ? was : ex.default_method || ex.methods[0];
}

function explaining(m) { return Boolean(m && m.explain && $("explain").checked); }

// POST the image to the model's explain endpoint and show the overlay(s) beside the prediction;
// returns a few words for the status line (the error's message when it failed).
async function explain(m, file) {
  const run = ++explainRun;
  const fig = $("explanation");
  fig.hidden = false;
  fig.dataset.state = "busy";
  $("explain-images").replaceChildren();
  $("explain-caption").textContent = `${$("explain-method").value} ...`;
  const form = new FormData();
  form.append("file", file);
  const q = new URLSearchParams({ model: m.name, method: $("explain-method").value });
  try {
    const r = await (await api(`${relative(m.explain.endpoint)}?${q}`, { method: "POST", body: form })).json();
    if (run !== explainRun) return "";
    const all = [r, ...(Array.isArray(r.others) ? r.others : [])];
    $("explain-images").replaceChildren(...all.map((e) => {
      const img = document.createElement("img");
      img.className = "explain-overlay";
      img.src = `data:image/png;base64,${e.overlay_png}`;
      img.alt = `${e.method} of ${e.target ? e.target.label : ""}`;
      img.dataset.label = e.target ? String(e.target.label) : "";
      return img;
    }));
    const t = r.target || {};
    const what = `${r.method} of ${t.label}${t.prob !== undefined ? ` (${(100 * t.prob).toFixed(1)}%)` : ""}`;
    $("explain-caption").textContent = `${what} at ${r.layer}${all.length > 1 ? ` · ${all.length} maps` : ""}`;
    fig.dataset.state = "done";
    return ` · ${what}`;
  } catch (e) {
    if (run !== explainRun) return "";
    $("explain-caption").textContent = `explain: ${e.message}`;
    fig.dataset.state = "error";
    return ` · explain failed: ${e.message}`;
  }
}

// The checkbox or the method changed with an image on the page: explain it again (or hide the map).
async function reexplain() {
  const m = current();
  if (!explaining(m)) { clearExplanation(); return; }
  if (!image || !m.endpoint || document.body.dataset.state !== "done") return;  // after a prediction only
  setState("busy", `${said} · explaining ...`);
  setState("done", said + await explain(m, image));
}

// ------------------------------------------------------------------------------------ results
function table(rows, head) {
  const t = $("table");
  t.replaceChildren();
  const tr = t.insertRow();
  for (const h of head) { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); }
  for (const r of rows) { const row = t.insertRow(); for (const v of r) row.insertCell().textContent = v; }
  t.hidden = false;
  return t;
}

function renderTopk(r) {
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
  const best = r.label !== undefined ? r : r.topk[0] || {};
  return best.prob !== undefined ? `${best.label} (${(100 * best.prob).toFixed(1)}%)` : `${r.topk.length} label(s)`;
}

async function renderDetections(r, file) {
  const bitmap = await createImageBitmap(file);
  const c = $("canvas");
  // Draw at least 256 px wide so that boxes on small images stay visible.
  const scale = Math.max(1, 256 / bitmap.width);
  c.width = Math.round(bitmap.width * scale); c.height = Math.round(bitmap.height * scale);
  const g = c.getContext("2d");
  g.imageSmoothingEnabled = false;
  g.drawImage(bitmap, 0, 0, c.width, c.height);
  g.lineWidth = 2; g.font = "13px sans-serif";
  r.detections.forEach((d, i) => {
    const [x1, y1, x2, y2] = d.box.map((v) => v * scale);
    const colour = COLOURS[(d.index ?? i) % COLOURS.length];
    g.strokeStyle = colour; g.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = d.score !== undefined ? `${d.label} ${d.score.toFixed(2)}` : String(d.label);
    g.fillStyle = colour; g.fillRect(x1, Math.max(0, y1 - 16), g.measureText(text).width + 6, 16);
    g.fillStyle = "#fff"; g.fillText(text, x1 + 3, Math.max(12, y1 - 4));
  });
  c.dataset.boxes = String(r.detections.length);
  c.hidden = false;
  table(r.detections.map((d) => [d.label, d.score !== undefined ? d.score.toFixed(3) : "", d.box.map((v) => v.toFixed(0)).join(", ")]),
    ["label", "score", "box (x1, y1, x2, y2)"]);
  return `${r.detections.length} object(s)`;
}

function renderOverlay(r) {
  $("overlay").src = `data:image/png;base64,${r.overlay_png}`;
  $("overlay").hidden = false;
  if (r.class_pixels && typeof r.class_pixels === "object") {
    const total = Array.isArray(r.size) ? r.size[0] * r.size[1] : Object.values(r.class_pixels).reduce((a, b) => a + b, 0);
    const rows = Object.entries(r.class_pixels).sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, v, `${(100 * v / total).toFixed(1)}%`]);
    table(rows, ["class", "pixels", "share"]);
    return `${rows.length} class(es) present`;
  }
  const { overlay_png, ...rest } = r;
  renderFields(rest);
  return "overlay";
}

// One cell's text: strings and numbers as they are, anything else as JSON; long values shortened.
function cell(v) {
  const s = typeof v === "string" ? v : typeof v === "number" ? String(Number.isInteger(v) ? v : Number(v.toPrecision(6))) : JSON.stringify(v);
  return s.length > 160 ? `${s.slice(0, 157)}... (${s.length} characters)` : s;
}

function renderFields(r) {
  const entries = Object.entries(r);
  const t = table(entries.map(([k, v]) => [k, cell(v)]), ["field", "value"]);
  entries.forEach(([k], i) => { t.rows[i + 1].dataset.key = k; });
  if (r.label !== undefined && typeof r.label !== "object") return String(r.label);
  return `${entries.length} field(s)`;
}

// How an answer is drawn, by its shape (the first that fits): the task's name plays no part.
const RENDERERS = [
  ["topk", (r) => Array.isArray(r.topk), renderTopk],
  ["detections", (r) => Array.isArray(r.detections), renderDetections],
  ["overlay", (r) => typeof r.overlay_png === "string", renderOverlay],
  ["fields", () => true, renderFields],
];

async function render(r, file) {
  if (r === null || typeof r !== "object" || Array.isArray(r)) r = { result: r };
  const [view, , draw] = RENDERERS.find(([, fits]) => fits(r));
  const summary = await draw(r, file);
  $("result").dataset.state = view;
  return summary;
}

async function predict(file) {
  const m = current();
  if (!m || !m.endpoint) return;
  image = file;
  clearResult();
  setState("busy", `${m.task}: ${file.name} ...`);
  const form = new FormData();
  form.append("file", file);
  try {
    const r = await (await api(`${relative(m.endpoint)}?${query(m)}`, { method: "POST", body: form })).json();
    said = `${file.name}: ${await render(r, file)}`;
    if (explaining(m)) {
      setState("busy", `${said} · explaining ...`);
      setState("done", said + await explain(m, file));
    } else {
      setState("done", said);
    }
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
    $("result").dataset.state = "samples";
    setState("done", `${body.n} image(s), seed ${body.seed}${body.class !== undefined ? `, class ${body.class}` : ""}`);
  } catch (e) {
    setState("error", e.message, true);
  }
}

// ---------------------------------------------------------------------------------- pipelines
function capability() {
  const m = current();
  return m && Array.isArray(m.capabilities) ? m.capabilities.find((c) => c.name === $("capability").value) : undefined;
}

// The capability chooser of a pipeline model; the capability chosen is kept across models that have it.
function showPipeline(m) {
  const sel = $("capability"), was = sel.value;
  sel.replaceChildren(...m.capabilities.map((c) => new Option(c.name, c.name)));
  if (m.capabilities.some((c) => c.name === was)) sel.value = was;
  showCapability();
}

// The form of the chosen capability, built from its "params" as the predict controls are from a task's.
function showCapability() {
  const c = capability();
  const box = $("pipe-params");
  box.replaceChildren();
  $("pipeline-form").dataset.capability = c ? c.name : "";
  $("capability-help").textContent = c ? c.help || "" : "";
  if (!c) return;
  for (const p of c.params) {
    const el = control(p);
    if (!el) continue;
    const input = el.querySelector("input, select");
    input.id = `pipe-${p.name}`;  // the predict panel's controls are #param-NAME
    if (p.required) input.required = true;
    if (p.type === "boolean") input.checked = p.default !== false;  // a pipeline option: its own default
    const key = `pipeline ${c.name} ${p.name}`;  // kept across models; the prompt across capabilities too
    const shared = p.name === "prompt" || p.name === "negative_prompt" ? `pipeline ${p.name}` : key;
    if (kept.has(shared)) {
      if (input.type === "checkbox") input.checked = kept.get(shared); else input.value = kept.get(shared);
    }
    input.addEventListener("change", () => kept.set(shared, input.type === "checkbox" ? input.checked : input.value));
    box.appendChild(el);
  }
  $("pipe-image-label").hidden = !c.image;
  $("pipe-mask-label").hidden = !c.mask;
}

// POST the form to the capability's endpoint: JSON for a capability that reads no image, multipart
// (file, mask and the parameters as fields) for one that does.
async function runPipeline(event) {
  event.preventDefault();
  const m = current(), c = capability();
  if (!m || !c) return;
  clearResult();
  const values = {};
  for (const p of c.params) {
    const input = $(`pipe-${p.name}`);
    if (!input) continue;
    if (input.type === "checkbox") values[p.name] = input.checked;
    else if (input.value.trim() !== "") values[p.name] = p.type === "integer" || p.type === "number" ? Number(input.value) : input.value.trim();
  }
  let options;
  if (c.image) {
    const image = $("pipe-image").files[0], mask = $("pipe-mask").files[0];
    if (!image || (c.mask && !mask)) { setState("error", `${c.name} needs ${c.mask ? "an image and its mask" : "an image"}: choose the file(s)`, true); return; }
    const form = new FormData();
    form.append("file", image);
    if (c.mask) form.append("mask", mask);
    for (const [k, v] of Object.entries(values)) form.append(k, String(v));
    options = { method: "POST", body: form };
  } else {
    options = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(values) };
  }
  setState("busy", `${c.name} with ${m.name} ...`);
  try {
    const r = await (await api(relative(c.endpoint), options)).json();
    $("images").replaceChildren(...r.images_png.map((b64, i) => {
      const img = document.createElement("img");
      img.className = "made-image";
      img.src = `data:image/png;base64,${b64}`;
      img.alt = `${c.name} image ${i + 1}`;
      img.dataset.index = String(i);
      return img;
    }));
    renderFields(r.record);
    $("result").dataset.state = "images";
    const rec = r.record;
    setState("done", `${c.name}: ${r.images_png.length} image(s) ${rec.width}x${rec.height}, ${rec.steps} steps, seed ${rec.seed}, ${Number(rec.seconds).toFixed(1)} s`);
  } catch (e) {
    setState("error", e.message, true);
  }
}

function setup() {
  const key = localStorage.getItem("recogen-api-key");
  if (key) $("api-key").value = key;
  $("api-key").addEventListener("change", () => { localStorage.setItem("recogen-api-key", $("api-key").value.trim()); loadModels(); });
  $("model").addEventListener("change", () => { showModel(); const m = current(); if (image && m && m.endpoint) predict(image); });
  $("file").addEventListener("change", (e) => { if (e.target.files.length) predict(e.target.files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) predict(e.dataTransfer.files[0]);
  });
  $("generate-form").addEventListener("submit", generate);
  $("pipeline-form").addEventListener("submit", runPipeline);
  $("capability").addEventListener("change", () => { clearResult(); showCapability(); });
  $("explain").addEventListener("change", reexplain);
  $("explain-method").addEventListener("change", reexplain);
  loadModels();
}

setup();
