// The Train view: starts a run of the core's training loop on this page's WebGPU adapter
// (TrainSession, in Rust), polls it, feeds its log to the run panels as it grows, keeps its
// last checkpoint in IndexedDB (a reload continues the run) and offers its files for download.
import { PickedImages, train_config, TrainSession } from "./pkg/autoprog_viewer.js";

const POLL_MS = 300;
const DRAW_MS = 1000;
const DB = { name: "autoprog", store: "runs", key: "current" };
// Picked images larger than this on their longer side are shrunk as they are decoded, so that a
// folder of photos fits in the page's memory (training resizes them to the model's input anyway).
const MAX_PICKED_SIDE = 512;

const $ = (id) => document.getElementById(id);
const testid = (id) => document.querySelector(`[data-testid="${id}"]`);

// IndexedDB, promised: the run in progress, kept at each checkpoint.
function database() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB.name, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(DB.store);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function storage(mode, act) {
  const db = await database();
  try {
    return await new Promise((resolve, reject) => {
      const transaction = db.transaction(DB.store, mode);
      const request = act(transaction.objectStore(DB.store));
      transaction.oncomplete = () => resolve(request.result);
      transaction.onerror = () => reject(transaction.error);
      transaction.onabort = () => reject(transaction.error ?? new Error("the browser's storage refused the run"));
    });
  } finally {
    db.close();
  }
}

const savedRun = () => storage("readonly", (s) => s.get(DB.key)).catch(() => undefined);
const saveRun = (run) => storage("readwrite", (s) => s.put(run, DB.key));
const forgetRun = () => storage("readwrite", (s) => s.delete(DB.key)).catch(() => undefined);

// A run's request from a `?train=MODEL&schedule=…&epochs=…&seed=…` link (epochs, images,
// val_images, search_cost and search_space are optional), or null when the link has none.
export function requestFromLink(params) {
  const model = params.get("train");
  if (!model) return null;
  const number = (name, fallback) => (params.has(name) ? Number(params.get(name)) : fallback);
  const request = {
    model,
    schedule: params.get("schedule") ?? "auto",
    epochs: number("epochs", null),
    seed: number("seed", 0),
    search_cost: params.get("search_cost") ?? "time",
    search_space: params.get("search_space") ?? "thrifty",
  };
  if (params.has("images")) request.train_images = number("images");
  if (params.has("val_images")) request.val_images = number("val_images");
  return request;
}


const sameRequest = (a, b) => JSON.stringify(a) === JSON.stringify(b);

function describe(request) {
  const data = request.folder ? `, the folder ${request.folder.root}` : "";
  return `${request.model}, ${request.schedule}, ${request.epochs ?? "auto"} epochs, seed ${request.seed}${data}`;
}

// Replaces a download link's file, releasing the one it held.
function offer(link, bytes, type) {
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([bytes], { type }));
}

export class TrainView {
  constructor({ showRun, loadModel, showError, decodeImage }) {
    this.decodeImage = decodeImage;
    this.picked = null;
    this.showRun = showRun;
    this.loadModel = loadModel;
    this.showError = showError;
    this.session = null;
    this.request = null;
    this.drawn = { bytes: -1, at: 0 };
    this.checkpoints = 0;
    this.notes = [];
  }

  // Wires the form; shows a saved run that a reload interrupted, if any.
  async setup(userAction) {
    $("train-form").addEventListener("submit", (e) => {
      e.preventDefault();
      userAction(() => this.start(this.requestFromForm()))();
    });
    $("train-data").addEventListener("change", () => this.dataChanged());
    $("train-folder").addEventListener("change", userAction((e) => this.pickFolder(e.target.files)));
    $("train-pause").addEventListener("click", userAction(() => this.togglePause()));
    $("train-stop").addEventListener("click", userAction(() => this.session?.stop()));
    $("train-continue").addEventListener("click", userAction(() => this.continueSaved()));
    $("train-discard").addEventListener("click", userAction(() => forgetRun().then(() => ($("train-saved").hidden = true))));
    document.addEventListener("visibilitychange", () => this.backgroundChanged());
    if (!navigator.gpu) {
      $("train-start").disabled = true;
      testid("train-status").textContent = "unavailable";
      $("train-progress").textContent =
        "— training needs WebGPU, which this browser does not offer (recent Chrome, Edge or Safari have it); " +
        "the Inference view below still works, on the CPU.";
    }
    await this.offerSaved("before this page was left");
  }

  requestFromForm() {
    const request = {
      model: $("train-model").value,
      schedule: $("train-schedule").value,
      // Empty: the preset's epochs, or for a folder the preset's steps spread over its images.
      epochs: $("train-epochs").value === "" ? null : Number($("train-epochs").value),
      seed: Number($("train-seed").value),
    };
    if ($("train-data").value !== "folder") return { ...request, train_images: Number($("train-images").value) };
    if (!this.picked) throw new Error("pick a folder of images first (Image folder…), or train on the built-in shapes");
    const folder = { root: this.picked.root(), classes: this.picked.classes().length, has_val: this.picked.has_val() };
    return { ...request, folder };
  }

  dataChanged() {
    const folder = $("train-data").value === "folder";
    $("train-folder-label").hidden = !folder;
    $("train-folder-info").hidden = !folder;
    $("train-images-label").hidden = folder;
  }

  // Reads a picked folder: the layout planned from the paths (in Rust, as `--data` reads a
  // folder), then every image decoded by the browser.
  async pickFolder(files) {
    const list = [...files];
    const info = $("train-folder-info");
    const picked = new PickedImages(list.map((f) => f.webkitRelativePath || f.name));
    const wanted = picked.wanted();
    let failed = 0;
    for (const [n, index] of wanted.entries()) {
      if (n % 50 === 0) info.textContent = `decoding ${n + 1} of ${wanted.length} images…`;
      try {
        const image = await this.decodeImage(list[index], MAX_PICKED_SIDE);
        picked.add(index, image.rgba, image.width, image.height);
      } catch (error) {
        failed += 1;
        picked.failed(index, error instanceof Error ? error.message : String(error));
      }
    }
    this.picked?.free();
    this.picked = picked;
    const skipped = failed ? ` (${failed} could not be decoded and will be skipped)` : "";
    info.textContent = `${picked.describe()}${skipped}`;
    document.body.dataset.folderReady = "true"; // for the end-to-end test
  }

  // Shows the saved run, if any, with buttons to continue or discard it.
  async offerSaved(when) {
    const saved = await savedRun();
    if (!saved) return;
    const { request, step, epoch } = saved;
    $("train-saved-text").textContent =
      `A run (${describe(request)}) was saved at step ${step}, in epoch ${epoch} of ${request.epochs}, ${when}.`;
    $("train-saved").hidden = false;
  }

  // Starts `request`, continuing the saved run instead when it is the same request (a
  // reloaded `?train=` link goes on where it was).
  async start(request) {
    if (this.session && !this.finished) throw new Error("a run is in progress: stop it first");
    try {
      if (!navigator.gpu) throw new Error("training needs WebGPU, which this browser does not offer; inference still works on the CPU");
      const saved = await savedRun();
      if (saved && sameRequest(saved.request, request)) return await this.resumeFrom(saved);
      let config = train_config(JSON.stringify(request));
      this.notes = [];
      if (request.folder) {
        // Flips and (with the epochs left empty) the length follow the folder, as natively.
        const fitted = JSON.parse(this.picked.fit(config, request.epochs == null));
        config = fitted.config;
        this.addNotes(fitted.notes);
      }
      await forgetRun();
      await this.launch(request, config, undefined, undefined);
    } catch (error) {
      testid("train-status").textContent = `error: ${error instanceof Error ? error.message : error}`;
      throw error;
    }
  }

  async continueSaved() {
    try {
      const saved = await savedRun();
      if (!saved) throw new Error("the saved run is gone (discarded in another tab?)");
      await this.resumeFrom(saved);
    } catch (error) {
      testid("train-status").textContent = `error: ${error instanceof Error ? error.message : error}`;
      throw error;
    }
  }

  async resumeFrom(saved) {
    this.notes.push(`continuing the saved run from step ${saved.step}`);
    await this.launch(saved.request, saved.config, saved.checkpoint, saved.log);
  }

  // The form shows the run's request (a link's or a saved run's too).
  showRequest(request) {
    $("train-model").value = request.model;
    $("train-schedule").value = request.schedule;
    $("train-epochs").value = request.epochs == null ? "" : String(request.epochs);
    $("train-seed").value = String(request.seed);
    if (request.train_images) $("train-images").value = String(request.train_images);
    $("train-data").value = request.folder ? "folder" : "builtin";
    this.dataChanged();
  }

  async launch(request, config, checkpoint, log) {
    $("train-saved").hidden = true;
    $("train-files").hidden = true;
    $("train-summary-item").hidden = true;
    this.showRequest(request);
    testid("train-status").textContent = "starting";
    this.request = request;
    this.finished = false;
    this.checkpoints = 0;
    this.drawn = { bytes: -1, at: 0 };
    this.session = null;
    const images = request.folder && this.picked ? this.picked.share() : undefined;
    this.session = await TrainSession.start(config, checkpoint, log, images);
    $("train-adapter").textContent = `on ${this.session.adapter()}`;
    offer($("train-config"), this.session.config(), "application/toml");
    $("train-start").disabled = true;
    $("train-pause").disabled = false;
    $("train-stop").disabled = false;
    this.backgroundChanged();
    this.poll();
  }

  togglePause() {
    if (!this.session) return;
    const paused = JSON.parse(this.session.poll()).status === "paused";
    if (paused) this.session.resume();
    else this.session.pause();
    $("train-pause").textContent = paused ? "Pause" : "Resume";
  }

  backgroundChanged() {
    if (!this.session) return;
    this.session.set_background(document.hidden);
    const note = $("train-background");
    note.hidden = !document.hidden;
    note.textContent = "This tab is in the background: training goes on at full speed; the panels catch up when you come back.";
  }

  // Polls the run until it ends; a failure to show or keep one update is shown and polling
  // goes on (the run itself goes on regardless).
  async poll() {
    let ended = false;
    try {
      ended = await this.update(this.session);
    } catch (error) {
      ended = this.finished; // once the end is being shown, one failure there is enough
      this.showError(error);
    }
    if (!ended) setTimeout(() => this.poll(), POLL_MS);
  }

  // Adds lines to the notes shown under the progress.
  addNotes(notes) {
    this.notes.push(...notes);
    if (!notes.length) return;
    $("train-notes").hidden = false;
    $("train-notes").textContent = this.notes.join("\n");
  }

  // Shows where the run stands; true once it has ended.
  async update(session) {
    const p = JSON.parse(session.poll());
    this.addNotes(p.notes);
    testid("train-step").textContent = String(p.epoch * p.steps_in_epoch + p.position);
    const speed = p.images_per_second == null ? "" : ` · ${p.images_per_second.toFixed(0)} images/s`;
    const loss = p.loss == null ? "" : ` · loss ${p.loss.toFixed(3)}`;
    $("train-progress").textContent = `· epoch ${Math.min(p.epoch + 1, p.epochs)}/${p.epochs}${loss}${speed}`;
    if (p.checkpoints !== this.checkpoints) {
      this.checkpoints = p.checkpoints;
      await this.keep(p, session);
    }
    const ended = ["done", "stopped", "error"].includes(p.status);
    const due = p.log_bytes !== this.drawn.bytes && performance.now() - this.drawn.at > DRAW_MS;
    if (ended || (due && !document.hidden)) {
      this.draw(p.log_bytes, session, !ended);
    }
    if (!ended) {
      testid("train-status").textContent = p.status;
      return false;
    }
    await this.end(p, session);
    return true;
  }

  // The run's panels from its log so far.
  draw(bytes, session, live) {
    this.drawn = { bytes, at: performance.now() };
    try {
      this.showRun(`this page's run (${describe(this.request)})`, session.log(), session.summary() ?? null);
    } catch (error) {
      if (!live) throw error; // early in a run the log may have nothing to draw yet
    }
  }

  // A new checkpoint: offered for download and kept in the browser's storage.
  async keep(p, session) {
    const checkpoint = session.checkpoint();
    offer(testid("train-download"), checkpoint, "application/octet-stream");
    offer($("train-log"), session.log(), "application/jsonl");
    $("train-files").hidden = false;
    const { checkpoint_step: step, checkpoint_epoch: epoch } = p;
    const run = { request: this.request, config: session.config(), log: session.checkpoint_log(), checkpoint, step, epoch };
    try {
      await saveRun(run);
      document.body.dataset.trainSavedStep = String(step); // for the end-to-end test
    } catch (error) {
      this.notes.push(`warning: the browser's storage did not keep the run (${error?.message ?? error}); a reload will lose it`);
    }
  }

  async end(p, session) {
    this.finished = true;
    $("train-start").disabled = false;
    $("train-pause").disabled = true;
    $("train-stop").disabled = true;
    $("train-pause").textContent = "Pause";
    offer($("train-log"), session.log(), "application/jsonl");
    const summary = session.summary();
    if (summary) {
      offer($("train-summary"), summary, "application/json");
      $("train-summary-item").hidden = false;
    }
    if (p.status === "done") {
      await forgetRun(); // finished: nothing left to continue
      const checkpoint = session.checkpoint();
      // The run is done whether or not its model loads for inference.
      if (checkpoint) await this.loadModel(checkpoint, "last.safetensors").catch(this.showError);
    } else if (p.status === "stopped") {
      await this.offerSaved("when it was stopped");
    }
    testid("train-status").textContent = p.status === "error" ? `error: ${p.error}` : p.status;
  }
}
