// The page: fetches or reads the files, hands them to the wasm viewer (the same Rust crate as
// the trainer), and places what it returns. All parsing, charting and inference is in Rust.
import init, { open_run, Model, sample_image, sample_label, sample_size } from "./pkg/autoprog_viewer.js";
import { requestFromLink, TrainView } from "./train.js";

const $ = (id) => document.getElementById(id);
const testid = (id) => document.querySelector(`[data-testid="${id}"]`);
const params = new URLSearchParams(location.search);
let model = null;
let lastImage = null; // {rgba, width, height}
// Each load or classification takes a number; a result whose number is no longer the
// latest (the user picked something else meanwhile) is dropped.
let modelGeneration = 0;
let imageGeneration = 0;
let runGeneration = 0;

function showError(error) {
  testid("error").textContent = !error ? "" : error instanceof Error ? error.message : String(error);
}

// An event handler that clears the last error and shows its own, if any.
function userAction(handler) {
  return (...args) => {
    showError("");
    Promise.resolve()
      .then(() => handler(...args))
      .catch(showError);
  };
}

// A fetched text file; null when absent (404), an error for anything else.
async function fetchText(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (response.status === 404) return null;
  if (!response.ok) throw new Error(`cannot fetch ${url}: HTTP ${response.status}`);
  return response.text();
}

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot fetch ${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

function showRun(name, log, summary, compare) {
  const started = performance.now();
  const report = JSON.parse(open_run(log, summary ?? undefined, compare ?? undefined));
  $("run-name").textContent = name;
  $("run-schedule").textContent = report.schedule || "–";
  testid("stage-count").textContent = String(report.stage_count);
  $("run-epochs").textContent = String(report.epochs);
  $("run-acc-label").textContent = report.running ? "val acc so far" : "final val acc";
  $("run-acc").textContent = report.final_val_acc == null ? "–" : report.final_val_acc.toFixed(4);
  $("run-adapter").textContent = report.adapter || "–";
  const warnings = $("run-warnings");
  warnings.replaceChildren(...report.warnings.map((w) => Object.assign(document.createElement("li"), { textContent: w })));
  for (const panel of ["timeline", "curves", "searches", "compute", "network"]) {
    $(`panel-${panel}`).innerHTML = report[panel]; // SVG and tables built (and escaped) in Rust
  }
  $("run-overview").hidden = false;
  $("run-panels").hidden = false;
  console.log(`run ${name} shown in ${(performance.now() - started).toFixed(0)} ms`);
}

async function openServedRun(name) {
  const generation = ++runGeneration;
  const started = performance.now();
  const base = `runs/${encodeURIComponent(name)}/`;
  const log = await fetchText(base + "log.jsonl");
  if (log == null) throw new Error(`run "${name}" has no log.jsonl on this server; is it one of the directories given to autoprog serve?`);
  const [summary, compare] = await Promise.all([fetchText(base + "summary.json"), fetchText(base + "compare.json")]);
  if (generation !== runGeneration) return; // another run was picked meanwhile
  showRun(name, log, summary, compare);
  // Fetch, parse and draw, for the load-time check of the end-to-end test.
  document.body.dataset.runLoadMs = (performance.now() - started).toFixed(0);
}

async function openRunFiles(files) {
  const byName = {};
  for (const f of files) byName[f.name.endsWith(".jsonl") ? "log" : f.name.replace(/\.json$/, "")] = f;
  if (!byName.log) throw new Error("drop or pick the run's log.jsonl (summary.json and compare.json are optional)");
  const text = async (f) => (f ? f.text() : null);
  ++runGeneration; // supersedes a served run still loading
  showRun(byName.log.name, await text(byName.log), await text(byName.summary), await text(byName.compare));
}

async function listServedRuns() {
  let names = [];
  try {
    const text = await fetchText("runs/index.json");
    names = text ? JSON.parse(text) : [];
  } catch {
    return; // a static server without runs: files can still be opened by hand
  }
  if (!Array.isArray(names)) return; // not autoprog serve's list
  const select = $("run-select");
  for (const name of names) select.append(new Option(name, name));
  select.addEventListener("change", userAction(() => select.value && openServedRun(select.value)));
}

async function loadModel(bytes, name) {
  const generation = ++modelGeneration;
  const shown = testid("backend").textContent;
  testid("backend").textContent = "loading…";
  let loaded;
  try {
    loaded = await Model.load(bytes, name, Boolean(navigator.gpu));
  } catch (error) {
    if (generation === modelGeneration) testid("backend").textContent = shown; // the old model stays
    throw error;
  }
  if (generation !== modelGeneration) {
    loaded.free(); // a later load replaced this one while it was loading
    return;
  }
  model?.free(); // releases its GPU buffers
  model = loaded;
  const info = JSON.parse(model.info());
  testid("backend").textContent = info.backend;
  $("adapter").textContent =
    `(${info.adapter}, ${info.precision})` + (info.fallback ? ` — CPU fallback: ${info.fallback}` : "");
  $("model-info").textContent =
    `${name}: ${info.parameters.toLocaleString()} parameters, ${info.depth} blocks of width ${info.dim} ` +
    `(${info.heads} heads), ${info.image_size} px in ${info.patch_size} px patches, ${info.classes.length} classes.`;
  if (lastImage) await classify(lastImage);
}

// An image file or URL as RGBA pixels without colour management, shrunk to `maxSide` pixels on its
// longer side if larger. Opaque pixels come back exactly as stored; a 2D canvas premultiplies alpha,
// so fully transparent ones lose their colour (the CLI keeps it).
async function decodeImage(blob, maxSide = Infinity) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch {
    throw new Error("that file is not an image the browser can decode (PNG, JPEG, GIF, WebP, BMP)");
  }
  const scale = Math.min(1, maxSide / Math.max(bitmap.width, bitmap.height));
  const width = Math.max(1, Math.round(bitmap.width * scale));
  const height = Math.max(1, Math.round(bitmap.height * scale));
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { colorSpace: "srgb" });
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, 0, 0, width, height);
  const data = context.getImageData(0, 0, width, height, { colorSpace: "srgb" }).data;
  return { rgba: new Uint8Array(data.buffer), width, height };
}

function drawImage(image, prediction) {
  const canvas = $("image-canvas");
  const context = canvas.getContext("2d");
  const pixels = new ImageData(new Uint8ClampedArray(image.rgba), image.width, image.height);
  const source = new OffscreenCanvas(image.width, image.height);
  source.getContext("2d").putImageData(pixels, 0, 0);
  context.imageSmoothingEnabled = false;
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.drawImage(source, 0, 0, canvas.width, canvas.height);
  if (!prediction || !prediction.attention.length) return;
  const grid = prediction.grid;
  // Contrast stretch: attention is often nearly uniform, and only its differences matter here.
  const max = Math.max(...prediction.attention);
  const min = Math.min(...prediction.attention);
  const cell = canvas.width / grid;
  prediction.attention.forEach((a, i) => {
    context.fillStyle = `rgba(220, 30, 30, ${(0.6 * (a - min)) / Math.max(max - min, 1e-12)})`;
    context.fillRect((i % grid) * cell, Math.floor(i / grid) * cell, cell, cell);
  });
}

async function classify(image) {
  const generation = ++imageGeneration;
  lastImage = image;
  drawImage(image, null);
  testid("top1").textContent = "–";
  testid("logits").textContent = "";
  $("top5").tBodies[0].replaceChildren();
  if (!model) return;
  const started = performance.now();
  const prediction = JSON.parse(await model.predict(image.rgba, image.width, image.height));
  const latency = performance.now() - started;
  if (generation !== imageGeneration) return; // another image was picked meanwhile
  testid("top1").textContent = prediction.top[0].label;
  testid("logits").textContent = JSON.stringify(prediction.logits);
  $("latency").textContent = `(${latency.toFixed(1)} ms on ${testid("backend").textContent})`;
  $("top5").tBodies[0].replaceChildren(
    ...prediction.top.map((t) => {
      const row = document.createElement("tr");
      row.append(
        Object.assign(document.createElement("td"), { textContent: t.label }),
        Object.assign(document.createElement("td"), { textContent: `${(100 * t.prob).toFixed(1)} %` }),
      );
      return row;
    }),
  );
  drawImage(image, prediction);
}

function showSamples() {
  const size = sample_size();
  const box = $("samples");
  for (let i = 0; i < 10; i++) {
    const rgba = sample_image(i);
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = size;
    canvas.getContext("2d").putImageData(new ImageData(new Uint8ClampedArray(rgba), size, size), 0, 0);
    const button = document.createElement("button");
    button.title = `built-in sample: ${sample_label(i)}`;
    button.append(canvas);
    button.addEventListener("click", userAction(() => classify({ rgba, width: size, height: size })));
    box.append(button);
  }
}

async function handleFiles(files) {
  const list = [...files];
  const modelFile = list.find((f) => f.name.endsWith(".safetensors"));
  const runFiles = list.filter((f) => /\.jsonl?$/.test(f.name));
  const images = list.filter((f) => f !== modelFile && !runFiles.includes(f));
  if (modelFile) await loadModel(new Uint8Array(await modelFile.arrayBuffer()), modelFile.name);
  if (runFiles.length) await openRunFiles(runFiles);
  if (images.length) await classify(await decodeImage(images[0]));
}

async function main() {
  await init();
  showSamples();
  $("run-files").addEventListener("change", userAction((e) => openRunFiles(e.target.files)));
  $("model-file").addEventListener("change", userAction((e) => handleFiles(e.target.files)));
  $("image-file").addEventListener("change", userAction((e) => handleFiles(e.target.files)));
  document.addEventListener("dragover", (e) => e.preventDefault());
  const drop = userAction((files) => handleFiles(files));
  document.addEventListener("drop", (e) => {
    e.preventDefault(); // must happen now, or the browser navigates to the dropped file
    drop(e.dataTransfer.files);
  });
  const trainView = new TrainView({ showRun, loadModel, showError, decodeImage });
  await trainView.setup(userAction);
  await listServedRuns();
  // Deep links: ?run=NAME&model=URL&image=URL&train=MODEL…; one failing does not stop the others,
  // and every failure is shown.
  const errors = [];
  const attempt = (promise) => promise.catch((e) => errors.push(e instanceof Error ? e.message : String(e)));
  const run = params.get("run");
  if (run) await attempt(openServedRun(run));
  const modelUrl = params.get("model");
  if (modelUrl) await attempt(fetchBytes(modelUrl).then((bytes) => loadModel(bytes, modelUrl.split("/").pop())));
  const imageUrl = params.get("image");
  if (imageUrl) {
    await attempt(
      fetch(imageUrl)
        .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`cannot fetch ${imageUrl}: HTTP ${r.status}`))))
        .then(decodeImage)
        .then(classify),
    );
  }
  const trainRequest = requestFromLink(params);
  if (trainRequest) await attempt(trainView.start(trainRequest));
  showError(errors.join(" · "));
  document.body.dataset.ready = "true";
}

main().catch(showError);
