// The demo page: picks a model, sends one or two views to /api/v1/predict, and draws the answer.
// Attention maps come as numbers ([tokens, views, h, w]) and are drawn here over the views the model saw,
// as `cxrjax predict --attention-maps` draws them: red, scaled to each map's own maximum.
"use strict";

const DISPLAY = 256;  // pixels per view on the page
const PANEL = 232;  // pixels per AG-CNN panel (three side by side)
const $ = (id) => document.getElementById(id);
const state = {models: [], files: [null, null], result: null, images: []};

function model() {
  return state.models.find((m) => m.name === $("model").value);
}

async function loadModels() {
  const response = await fetch("/api/v1/models");
  const body = await response.json();
  state.models = body.models;
  for (const m of body.models) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = `${m.name} (${m.family}, step ${m.step ?? "-"})`;
    $("model").append(option);
  }
  $("model").value = body.default;
  modelChanged();
}

function modelChanged() {
  const m = model();
  const captioning = m.task === "captioning";
  $("lateral-drop").hidden = m.views < 2;
  if (m.views < 2) setFile(1, null);
  $("decoding").hidden = !captioning;
  let info = `${m.task}, ${m.image_size}px, ${m.views} view${m.views > 1 ? "s" : ""}`;
  if (captioning) {
    $("search").value = m.decoding.beam_size > 1 ? "beam" : "greedy";
    $("beam-size").value = m.decoding.beam_size;
    $("max-length").max = m.decoding.max_length;
    $("max-length").value = m.decoding.max_length;
    info += `, ${m.decoding.search} ${m.decoding.beam_size}, up to ${m.decoding.max_length} tokens`;
  } else {
    info += `, ${m.labels.length} findings`;
  }
  $("model-info").textContent = info;
  showError("");
  updateButton();
}

function setFile(index, file) {
  state.files[index] = file;
  const zone = document.querySelector(`.drop[data-index="${index}"]`);
  const img = zone.querySelector("img");
  if (file) {
    img.src = URL.createObjectURL(file);
    img.hidden = false;
    zone.classList.add("filled");
  } else {
    img.hidden = true;
    zone.classList.remove("filled");
    zone.querySelector("input").value = "";
  }
  updateButton();
}

function updateButton() {
  $("generate").disabled = !state.files[0];
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function generate() {
  const m = model();
  const form = new FormData();
  for (const file of state.files) if (file) form.append("images", file, file.name);
  form.append("model", m.name);
  form.append("attention", "true");
  form.append("views", "true");
  if (m.task === "captioning") {
    form.append("search", $("search").value);
    if ($("search").value === "beam") form.append("beam_size", $("beam-size").value);
    form.append("max_length", $("max-length").value);
  }
  showError("");
  $("generate").disabled = true;
  $("status").textContent = "running...";
  try {
    const response = await fetch("/api/v1/predict", {method: "POST", body: form});
    const body = await response.json();
    if (!response.ok) {
      showError(`${response.status}: ${body.error}`);
      return;
    }
    state.result = body;
    state.images = await Promise.all((body.views || []).map(loadImage));
    render(m, body);
  } catch (error) {
    showError(String(error));
  } finally {
    $("status").textContent = "";
    updateButton();
  }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = reject;
    img.src = url;
  });
}

function render(m, result) {
  $("result").hidden = false;
  const captioning = m.task === "captioning";
  $("captioning").hidden = !captioning;
  $("classification").hidden = captioning;
  const t = result.timings;
  $("timings").textContent = `${result.model} at step ${result.step}: ${t.total_ms} ms in all, model ` +
      `${t.model_ms} ms in a batch of ${t.batch_size} (compiled size ${t.compiled_batch_size}), queued ` +
      `${t.queue_ms} ms`;
  if (captioning) renderText(m, result);
  else renderFindings(m, result);
}

function renderText(m, result) {
  const text = result.report ?? result.caption;
  $("result-title").textContent = result.report !== undefined ? "Report" : "Caption";
  $("report").textContent = text || "(empty)";
  const words = $("words");
  words.replaceChildren();
  result.words.forEach((word, index) => {
    const chip = document.createElement("span");
    chip.className = "word";
    chip.textContent = word;
    chip.title = `p = ${Math.exp(result.token_logprobs[index]).toFixed(3)}`;
    chip.dataset.index = index;
    chip.addEventListener("mouseenter", () => selectWord(index));
    chip.addEventListener("click", () => selectWord(index));
    words.append(chip);
  });
  const attention = result.attention || {};
  const container = $("attention");
  container.replaceChildren();
  const hasMaps = Boolean(attention.maps);
  $("word-picker").hidden = !hasMaps;
  $("attention-note").textContent = hasMaps ? "Hover a word (or move the slider) to see where the model " +
      "looked while writing it." : `No attention maps: ${attention.none || "none returned"}.`;
  if (!hasMaps) return;
  const views = attention.shape[1];
  for (let v = 0; v < views; v++) {
    const figure = document.createElement("figure");
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = DISPLAY;
    canvas.className = "attention-map";
    const caption = document.createElement("figcaption");
    const shown = Math.min(v, state.images.length - 1);
    caption.textContent = v === 0 ? "frontal" : (shown < v ? "lateral (the frontal, repeated)" : "lateral");
    figure.append(canvas, caption);
    container.append(figure);
  }
  $("word-slider").max = result.words.length - 1;
  $("word-slider").value = 0;
  selectWord(0);
}

function selectWord(index) {
  const result = state.result;
  $("word-slider").value = index;
  $("word-label").textContent = `${index + 1}/${result.words.length}: ${result.words[index]}`;
  document.querySelectorAll(".word").forEach((chip) => {
    chip.classList.toggle("selected", Number(chip.dataset.index) === index);
  });
  const maps = result.attention.maps[index];
  document.querySelectorAll("canvas.attention-map").forEach((canvas, v) => {
    const image = state.images[Math.min(v, state.images.length - 1)];
    drawOverlay(canvas, image, maps[v], redHeat);
  });
}

// A map [h][w] -> an RGBA canvas of that size, coloured by `colour(value in 0..1)`.
function mapCanvas(values, colour) {
  const h = values.length, w = values[0].length;
  let max = 1e-12;
  for (const row of values) for (const x of row) max = Math.max(max, x);
  const small = document.createElement("canvas");
  small.width = w;
  small.height = h;
  const context = small.getContext("2d");
  const pixels = context.createImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      pixels.data.set(colour(values[y][x] / max), 4 * (y * w + x));
    }
  }
  context.putImageData(pixels, 0, 0);
  return small;
}

function redHeat(value) {
  return [255, 0, 0, Math.round(value * 0.6 * 255)];
}

function jet(value) {  // figures._jet: blue, cyan, yellow, red
  const c = (k) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * value - k))));
  return [c(3), c(2), c(1), Math.round(0.45 * 255)];
}

function drawOverlay(canvas, image, values, colour) {
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = true;
  context.drawImage(image, 0, 0, canvas.width, canvas.height);
  context.drawImage(mapCanvas(values, colour), 0, 0, canvas.width, canvas.height);  // bilinear upsampling
}

async function renderFindings(m, result) {
  $("result-title").textContent = "Findings";
  const rows = Object.entries(result.probabilities).sort((a, b) => b[1] - a[1]);
  const table = $("findings");
  table.replaceChildren();
  for (const [name, p] of rows) {
    const row = table.insertRow();
    row.className = "finding";
    row.insertCell().textContent = name;
    const bar = row.insertCell();
    bar.innerHTML = `<span class="bar" style="width:${(100 * p).toFixed(1)}%"></span>`;
    row.insertCell().textContent = p.toFixed(3);
  }
  const container = $("heatmap");
  container.replaceChildren();
  if (!result.box || typeof result.heatmap !== "string") return;
  const view = state.images[0];
  const heat = await loadImage(result.heatmap);
  const values = grayValues(heat);
  const [y0, x0, y1, x1] = result.box;
  const scale = PANEL / view.width;
  for (const [label, overlay] of [["view and crop box", false], ["attention heatmap", true]]) {
    const canvas = figureCanvas(container, label, PANEL, PANEL);
    canvas.classList.add(overlay ? "heatmap" : "global");
    const context = canvas.getContext("2d");
    if (overlay) drawOverlay(canvas, view, values, jet);
    else context.drawImage(view, 0, 0, PANEL, PANEL);
    context.strokeStyle = "rgb(255, 40, 40)";
    context.lineWidth = 2;
    context.strokeRect(x0 * scale, y0 * scale, (x1 - x0) * scale, (y1 - y0) * scale);
  }
  const crop = figureCanvas(container, "the crop the local branch reads", PANEL, PANEL);
  crop.classList.add("crop");
  crop.getContext("2d").drawImage(view, x0, y0, x1 - x0, y1 - y0, 0, 0, PANEL, PANEL);
}

function figureCanvas(container, label, width, height) {
  const figure = document.createElement("figure");
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const caption = document.createElement("figcaption");
  caption.textContent = label;
  figure.append(canvas, caption);
  container.append(figure);
  return canvas;
}

function grayValues(image) {  // a grayscale PNG -> [h][w] in 0..1
  const canvas = document.createElement("canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const data = context.getImageData(0, 0, image.width, image.height).data;
  const values = [];
  for (let y = 0; y < image.height; y++) {
    const row = [];
    for (let x = 0; x < image.width; x++) row.push(data[4 * (y * image.width + x)] / 255);
    values.push(row);
  }
  return values;
}

function wireDropZone(zone) {
  const index = Number(zone.dataset.index);
  zone.querySelector("input").addEventListener("change", (event) => setFile(index, event.target.files[0] || null));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (!file) return;
    zone.querySelector("input").value = "";  // the picker no longer names the file shown
    setFile(index, file);
  });
}

document.querySelectorAll(".drop").forEach(wireDropZone);
$("model").addEventListener("change", modelChanged);
$("search").addEventListener("change", () => { $("beam-size").disabled = $("search").value === "greedy"; });
$("word-slider").addEventListener("input", (event) => selectWord(Number(event.target.value)));
$("generate").addEventListener("click", generate);
loadModels().catch((error) => showError(`cannot list the models: ${error}`));
