//! Training in the page: the core's training loop ([`autoprog::train::run`]) on the
//! browser's WebGPU adapter, with the built-in procedural dataset drawn in wasm by the same
//! code as natively, or a folder of images the user picked ([`crate::folder`]). The page
//! starts a [`TrainSession`], polls it for progress and the run log (which feeds the same
//! panels as a finished run), and takes its checkpoints to keep them in the browser's
//! storage and offer them for download.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use autoprog::checkpoint::Checkpoint;
use autoprog::data::{Procedural, ProceduralSource, Skipped, Source, Split};
use autoprog::model::VitConfig;
use autoprog::runlog::{CheckpointKind, Event, Summary};
use autoprog::train::{
    Clock, Host, HostFuture, Pace, RunSink, Schedule, SearchCost, SearchSpace, SourceData, Start, StepProgress,
    Stopped, TrainConfig,
};
use autoprog::{ContextOptions, GpuContext};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use crate::folder::PickedImages;
use crate::js_error;

/// What the page's Train view (or a `?train=` link) asks for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainRequest {
    model: String,
    schedule: Schedule,
    /// `None`: the preset's; a picked folder then gets the preset's steps spread over it
    /// ([`crate::folder::PickedImages::fit`]).
    epochs: Option<usize>,
    seed: u64,
    #[serde(default)]
    search_cost: SearchCost,
    #[serde(default)]
    search_space: SearchSpace,
    /// Built-in data: training and validation images (default: the quick preset's).
    train_images: Option<usize>,
    val_images: Option<usize>,
    /// The images of a picked folder instead of the built-in data.
    folder: Option<FolderRequest>,
}

/// A picked folder, as [`PickedImages`] describes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FolderRequest {
    root: String,
    classes: usize,
    has_val: bool,
}

/// The configuration of a browser run: the `quick` preset with the request's model, schedule,
/// epochs, seed and image counts, as `autoprog train --preset quick --model M --schedule S
/// --epochs E --seed N [--train-images T --val-images V --search-cost C --search-space S]` resolves it.
fn config_for(request: &TrainRequest) -> anyhow::Result<TrainConfig> {
    let mut config = TrainConfig::preset("quick")?;
    config.model = VitConfig::preset(&request.model, config.model.classes)?;
    config.model_name = request.model.clone();
    config.augment.resolution = config.model.image_size;
    let r = &mut config.recipe;
    (r.schedule, r.seed, r.search_cost, r.search_space) =
        (request.schedule, request.seed, request.search_cost, request.search_space);
    if let Some(epochs) = request.epochs {
        r.epochs = epochs;
    }
    if let Some(n) = request.train_images {
        config.data.train_images = n;
    }
    if let Some(n) = request.val_images {
        config.data.val_images = n;
    }
    if let Some(folder) = &request.folder {
        // As `--data ROOT` (and `--val-split 0.1` when the folder has no val split).
        config.data.path = Some(folder.root.clone().into());
        config.model.classes = folder.classes;
        config.data.val_split = (!folder.has_val).then_some(0.1);
    }
    config.fit_stages_to_epochs();
    config.validate()?;
    Ok(config)
}

/// The `config.toml` of the run a request (JSON, see the page) asks for.
#[wasm_bindgen]
pub fn train_config(request: &str) -> Result<String, JsValue> {
    let request: TrainRequest =
        serde_json::from_str(request).map_err(|e| js_error(format!("not a training request: {e}")))?;
    Ok(config_for(&request).map_err(js_error)?.to_toml())
}

/// Milliseconds from the page's time origin (monotonic).
fn now_ms() -> f64 {
    let global = js_sys::global();
    js_sys::Reflect::get(&global, &"performance".into())
        .ok()
        .and_then(|p| {
            let now = js_sys::Reflect::get(&p, &"now".into()).ok()?;
            now.dyn_into::<js_sys::Function>().ok()?.call0(&p).ok()?.as_f64()
        })
        .unwrap_or_else(js_sys::Date::now)
}

/// A promise that resolves after `ms` milliseconds (a macrotask: the browser renders and
/// handles input before it resolves).
async fn sleep(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let global = js_sys::global();
        let set_timeout = js_sys::Reflect::get(&global, &"setTimeout".into())
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        match set_timeout {
            Some(f) => {
                let _ = f.call2(&global, &resolve, &JsValue::from(ms));
            }
            None => {
                let _ = resolve.call0(&JsValue::NULL);
            }
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// How often the loop gives the browser a turn while training (it also yields at every
/// awaited readback, which is most steps).
const YIELD_EVERY_MS: f64 = 30.0;

/// Stop, pause and the paused time, shared by the page's buttons and the loop.
#[derive(Default)]
struct Controls {
    stop: AtomicBool,
    paused_since: Cell<Option<f64>>,
    paused_ms: Cell<f64>,
    last_yield: Cell<f64>,
    /// The tab is hidden: nothing to draw, and the browser throttles timers, so the loop
    /// does not give the page turns.
    background: Cell<bool>,
}

impl Controls {
    /// Milliseconds spent paused so far.
    fn paused_total(&self) -> f64 {
        self.paused_ms.get() + self.paused_since.get().map_or(0.0, |since| now_ms() - since)
    }

    fn is_paused(&self) -> bool {
        self.paused_since.get().is_some()
    }
}

impl Pace for Controls {
    fn between_steps(&self) -> HostFuture<'_> {
        Box::pin(async move {
            let due = !self.background.get() && now_ms() - self.last_yield.get() >= YIELD_EVERY_MS;
            if self.is_paused() || due {
                sleep(0).await;
                while self.is_paused() && !self.stop.load(Ordering::Relaxed) {
                    sleep(100).await;
                }
                self.last_yield.set(now_ms());
            }
        })
    }
}

/// The page's clock, less the time the run spent paused (so that images/s and the search's
/// step times count training only).
struct PageClock {
    controls: Rc<Controls>,
}

impl Clock for PageClock {
    fn seconds(&self) -> f64 {
        (now_ms() - self.controls.paused_total()) / 1000.0
    }

    fn unix_time(&self) -> f64 {
        js_sys::Date::now() / 1000.0
    }
}

/// How the run stands.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    #[default]
    Running,
    Paused,
    /// Stopped on request, after its checkpoint.
    Stopped,
    Done,
    Error,
}

/// Everything the run has handed its sink, for the page to poll.
#[derive(Default)]
struct Live {
    status: Status,
    error: Option<String>,
    /// `log.jsonl` so far.
    log: String,
    /// Notes (the native command's stderr lines) not yet taken by the page.
    notes: Vec<String>,
    /// The last checkpoint, with the log up to its `checkpoint` event: what is kept to
    /// continue the run after a reload.
    checkpoint: Option<Rc<Vec<u8>>>,
    checkpoint_log_len: usize,
    /// Counts checkpoints, so the page sees a new one.
    checkpoints: u32,
    /// The step and epoch (counted from 1) the last checkpoint was taken in.
    checkpoint_at: (u64, u32),
    summary: Option<String>,
    steps: StepState,
}

/// Where the steps stand, for the page's progress line.
#[derive(Clone, Debug, Default, Serialize)]
struct StepState {
    epoch: usize,
    epochs: usize,
    steps_in_epoch: u64,
    position: u64,
    /// Steps logged so far (a `step` event every few steps).
    step_events: u64,
    loss: Option<f32>,
    images_per_second: Option<f64>,
}

/// The run's sink: the log as text, the checkpoint as bytes, the rest for polling.
struct PageSink {
    live: Rc<RefCell<Live>>,
}

impl RunSink for PageSink {
    fn event(&mut self, event: &Event) -> anyhow::Result<()> {
        let mut live = self.live.borrow_mut();
        live.log.push_str(&serde_json::to_string(event)?);
        live.log.push('\n');
        match event {
            Event::Checkpoint(c) if c.kind == CheckpointKind::Last => {
                live.checkpoint_log_len = live.log.len();
                live.checkpoints += 1;
                live.checkpoint_at = (c.step, c.epoch + 1);
            }
            Event::Step(_) => live.steps.step_events += 1,
            _ => {}
        }
        Ok(())
    }

    fn note(&mut self, line: &str) {
        self.live.borrow_mut().notes.push(line.to_string());
    }

    fn checkpoint(&mut self, checkpoint: &Checkpoint, best: bool) -> anyhow::Result<Vec<String>> {
        self.live.borrow_mut().checkpoint = Some(Rc::new(checkpoint.to_bytes()?));
        let mut names = vec!["checkpoints/last.safetensors".to_string()];
        if best {
            names.push("checkpoints/best.safetensors".into());
        }
        Ok(names)
    }

    fn checkpoint_location(&self) -> String {
        "the page (its last checkpoint can be downloaded)".into()
    }

    fn summary(&mut self, summary: &Summary) -> anyhow::Result<()> {
        self.live.borrow_mut().summary = Some(serde_json::to_string_pretty(summary)? + "\n");
        Ok(())
    }

    fn epoch_started(&mut self, epoch: usize, epochs: usize, steps: u64, position: u64) {
        let mut live = self.live.borrow_mut();
        let s = &mut live.steps;
        (s.epoch, s.epochs, s.steps_in_epoch, s.position) = (epoch, epochs, steps, position);
    }

    fn step_done(&mut self, progress: StepProgress) {
        let mut live = self.live.borrow_mut();
        let s = &mut live.steps;
        s.position = progress.position;
        if let Some((loss, ips)) = progress.loss {
            (s.loss, s.images_per_second) = (Some(loss), Some(ips));
        }
    }
}

/// What [`TrainSession::poll`] returns.
#[derive(Serialize)]
struct Poll<'a> {
    status: &'a Status,
    error: Option<&'a str>,
    #[serde(flatten)]
    steps: &'a StepState,
    log_bytes: usize,
    checkpoints: u32,
    checkpoint_step: u64,
    checkpoint_epoch: u32,
    notes: Vec<String>,
}

/// A training run in the page.
#[wasm_bindgen]
pub struct TrainSession {
    live: Rc<RefCell<Live>>,
    controls: Rc<Controls>,
    config: String,
    adapter: String,
}

#[wasm_bindgen]
impl TrainSession {
    /// Starts the run of `config` (a `config.toml`) on the page's WebGPU adapter, on the
    /// built-in data or on `images` (a picked folder); with `checkpoint` and `log` (what
    /// [`TrainSession::checkpoint`] and [`TrainSession::checkpoint_log`] gave), continues a
    /// run from its last checkpoint. The promise resolves once the run has started, or
    /// rejects with what to do.
    pub async fn start(
        config: String,
        checkpoint: Option<Vec<u8>>,
        log: Option<String>,
        images: Option<PickedImages>,
    ) -> Result<TrainSession, JsValue> {
        let parsed = TrainConfig::from_toml(&config).map_err(|e| js_error(format!("not a run config: {e}")))?;
        parsed.validate().map_err(js_error)?;
        let data = run_data(&parsed, images.as_ref()).map_err(js_error)?;
        let ctx = GpuContext::new(&ContextOptions::default()).await.map_err(|_| {
            js_error("training needs WebGPU, and this browser offers no WebGPU adapter (GPU blocked or disabled)")
        })?;
        let checkpoint = match checkpoint {
            Some(bytes) => Some(Checkpoint::from_bytes(&bytes, "the saved run").map_err(js_error)?),
            None => None,
        };
        let live = Rc::new(RefCell::new(Live { log: log.unwrap_or_default(), ..Live::default() }));
        let controls = Rc::new(Controls::default());
        let adapter = ctx.summary.display_name();
        let (task_live, task_controls) = (live.clone(), controls.clone());
        wasm_bindgen_futures::spawn_local(async move {
            let outcome = train(&ctx, &parsed, data, checkpoint.as_ref(), &task_live, task_controls).await;
            let mut live = task_live.borrow_mut();
            (live.status, live.error) = match outcome {
                Ok(_) => (Status::Done, None),
                Err(e) if e.is::<Stopped>() => (Status::Stopped, None),
                Err(e) => (Status::Error, Some(format!("{e:#}"))),
            };
        });
        Ok(TrainSession { live, controls, config, adapter })
    }

    /// Progress, status and new notes, as JSON.
    pub fn poll(&self) -> String {
        let mut live = self.live.borrow_mut();
        let notes = std::mem::take(&mut live.notes);
        let poll = Poll {
            status: &live.status,
            error: live.error.as_deref(),
            steps: &live.steps,
            log_bytes: live.log.len(),
            checkpoints: live.checkpoints,
            checkpoint_step: live.checkpoint_at.0,
            checkpoint_epoch: live.checkpoint_at.1,
            notes,
        };
        serde_json::to_string(&poll).expect("a poll serialises")
    }

    /// `log.jsonl` so far.
    pub fn log(&self) -> String {
        self.live.borrow().log.clone()
    }

    /// `summary.json`, once the run has finished.
    pub fn summary(&self) -> Option<String> {
        self.live.borrow().summary.clone()
    }

    /// The run's `config.toml`.
    pub fn config(&self) -> String {
        self.config.clone()
    }

    /// The WebGPU adapter the run trains on.
    pub fn adapter(&self) -> String {
        self.adapter.clone()
    }

    /// The last checkpoint (`checkpoints/last.safetensors`), if one was written.
    pub fn checkpoint(&self) -> Option<Vec<u8>> {
        self.live.borrow().checkpoint.as_ref().map(|c| c.to_vec())
    }

    /// The log up to the last checkpoint: with it, the run continues where it left off.
    pub fn checkpoint_log(&self) -> String {
        let live = self.live.borrow();
        live.log[..live.checkpoint_log_len].to_string()
    }

    /// Holds the run before its next step (the time paused is not counted as training).
    pub fn pause(&self) {
        if !self.controls.is_paused() && self.live.borrow().status == Status::Running {
            self.controls.paused_since.set(Some(now_ms()));
            self.live.borrow_mut().status = Status::Paused;
        }
    }

    pub fn resume(&self) {
        if let Some(since) = self.controls.paused_since.take() {
            self.controls.paused_ms.set(self.controls.paused_ms.get() + now_ms() - since);
            let mut live = self.live.borrow_mut();
            if live.status == Status::Paused {
                live.status = Status::Running;
            }
        }
    }

    /// Whether the tab is in the background (the loop then stops yielding to the page).
    pub fn set_background(&self, hidden: bool) {
        self.controls.background.set(hidden);
    }

    /// Ends the run after its current step with a checkpoint (it can be continued later).
    pub fn stop(&self) {
        self.controls.stop.store(true, Ordering::Relaxed);
        self.resume();
    }
}

/// The data of a run of `config`: the built-in images, or the picked folder's.
fn run_data(config: &TrainConfig, images: Option<&PickedImages>) -> anyhow::Result<SourceData> {
    let d = &config.data;
    let (train, val, summary): (Arc<dyn Source>, Arc<dyn Source>, String) = match (&d.path, images) {
        (None, _) => {
            let procedural = Procedural { classes: d.classes, image_size: d.image_size, seed: d.data_seed };
            let train = ProceduralSource::new(procedural, Split::Train, d.train_images);
            let val = ProceduralSource::new(procedural, Split::Val, d.val_images);
            let summary = format!("procedural: {} train, {} val images, {} classes", train.len(), val.len(), d.classes);
            (Arc::new(train), Arc::new(val), summary)
        }
        (Some(root), Some(images)) if images.root() == root.to_string_lossy() => {
            let (train, val) = images.sources(config)?;
            (train, val, images.describe())
        }
        (Some(root), _) => anyhow::bail!(
            "this run trains on the folder `{}`: pick that folder (Data: my images) and continue again",
            root.display()
        ),
    };
    SourceData::new(train, val, config, summary, Skipped::default())
}

/// The run itself: its data, the page's sink and clock, the core's loop.
async fn train(
    ctx: &GpuContext,
    config: &TrainConfig,
    mut data: SourceData,
    checkpoint: Option<&Checkpoint>,
    live: &Rc<RefCell<Live>>,
    controls: Rc<Controls>,
) -> anyhow::Result<Summary> {
    let mut sink = PageSink { live: live.clone() };
    let clock = PageClock { controls: controls.clone() };
    let start = match checkpoint {
        Some(checkpoint) => Start::Resume { checkpoint, what: "the saved run" },
        None => Start::Fresh,
    };
    let host = Host {
        data: &mut data,
        sink: &mut sink,
        clock: &clock,
        stop: &controls.stop,
        pace: Some(&*controls),
        collective: None,
    };
    autoprog::train::run(ctx, config, start, host).await
}
