//! The resolved configuration of a training run: architecture, data, recipe. Written to
//! `config.toml` in the run directory; `--config` reads it back, and flags override it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::options::{DepthGrowth, GrowFrom, OptState, Precision, Schedule, SearchCost, SearchSpace};
use crate::data::AugmentConfig;
use crate::model::VitConfig;
use crate::prog::schedule::{ScheduleConfig, Stage};

/// Everything a run depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The preset this configuration started from (`quick` or `standard`).
    pub preset: String,
    /// The model's name (`nano`, `tiny`, `small` or the config file it came from).
    pub model_name: String,
    pub model: VitConfig,
    pub data: DataConfig,
    pub recipe: Recipe,
    pub augment: AugmentConfig,
}

/// Where the images come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A dataset folder (ImageFolder, CIFAR-10 binary or MNIST IDX); None: the built-in
    /// procedural dataset.
    pub path: Option<PathBuf>,
    /// Built-in data: training and validation images.
    pub train_images: usize,
    pub val_images: usize,
    /// Built-in data: classes (2..=10).
    pub classes: usize,
    /// Built-in data: side of the generated images in pixels (the loader resizes them to
    /// the model's resolution).
    pub image_size: usize,
    /// Built-in data: the seed of the images (not of the training).
    pub data_seed: u64,
    /// Hold this fraction of the training images out for validation when the dataset
    /// has no validation part.
    pub val_split: Option<f64>,
    /// Decoding and augmentation threads.
    pub workers: usize,
    /// Hold AutoProg's scoring images back from training under every schedule, not only
    /// `auto`, so that schedules compared with each other train on the same images
    /// (`autoprog compare` sets it).
    #[serde(default)]
    pub holdout_for_all: bool,
}

/// The optimisation recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub epochs: usize,
    pub batch: usize,
    /// Peak learning rate (reached after warmup).
    pub lr: f64,
    /// Final learning rate of the cosine.
    pub min_lr: f64,
    pub warmup_epochs: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Drop-path rate of the last block (rising linearly from 0 at the first).
    pub drop_path: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub clip_grad: f64,
    /// EMA decays of the weights, each evaluated every epoch (empty: no EMA).
    pub ema_decays: Vec<f64>,
    pub seed: u64,
    /// Evaluation batch.
    pub eval_batch: usize,
    /// How the model grows: `auto` (AutoProg, the default: a supernet search at the start
    /// of every stage but the last picks resolution and depth), `prog` (progressive learning
    /// with MoGrow over `stages` equal stages) or `none` (the full model throughout).
    #[serde(default)]
    pub schedule: Schedule,
    /// Stages of the `prog` schedule, which `auto` searches within.
    #[serde(default = "default_stages")]
    pub stages: usize,
    /// The first stage's resolution and depth, as fractions of the full ones.
    #[serde(default = "half")]
    pub res_scale: f64,
    #[serde(default = "half")]
    pub depth_scale: f64,
    /// AdamW moments of grown blocks, and of the sub-network AutoProg recycles: `reset` (as
    /// the paper) or `copy` (from their source blocks).
    #[serde(default)]
    pub grow_opt_state: OptState,
    /// Which weights MoGrow grows: `ema` (the slowest EMA, as the paper), `weights`, or
    /// `best`: whichever of the weights and every EMA had the highest accuracy at the last
    /// validation (ties go to the EMA listed last; before any validation, the slowest EMA).
    /// In short runs a slow EMA lags the weights, and growing it throws training away.
    #[serde(default)]
    pub grow_from: GrowFrom,
    /// `auto`: epochs of supernet training that open every non-final stage (in the budget);
    /// a fraction (0.25) ends the search inside an epoch, for short runs.
    #[serde(default = "default_search_epochs")]
    pub search_epochs: f64,
    /// `auto`: what a candidate costs: `time` (its step time measured on the device, as the
    /// paper) or `flops` (its step's FLOPs: the same choice on every run, for reproducibility).
    #[serde(default)]
    pub search_cost: SearchCost,
    /// `auto`: which candidates a search offers and how it chooses: `anchored` (around the
    /// `prog` schedule's network, which wins unless another candidate scores better beyond
    /// the noise), `thrifty` (those at or below the schedule's network; the cheapest that
    /// scores no worse than it beyond the noise wins) or `official` (the official code's
    /// candidates, shaped by `max_res_lag` and `depth_growth`; only the first applies to
    /// the other two).
    #[serde(default)]
    pub search_space: SearchSpace,
    /// `auto`: how many stages a search's resolution may trail the `prog` schedule's (the
    /// official code: unbounded; the spaces around the schedule offer at most one level
    /// below their anchor). Every stage the resolution lags must be made up by the jump to
    /// the full resolution that the last stage forces.
    #[serde(default = "default_max_res_lag")]
    pub max_res_lag: usize,
    /// `auto`, official search space: whether a later stage's search may keep the depth:
    /// `schedule` (its depths start at the `prog` schedule's depth for the stage, or the
    /// current one if deeper, so the search decides whether to grow, as the paper) or
    /// `always` (one level deeper at every search, as the official code).
    #[serde(default)]
    pub depth_growth: DepthGrowth,
    /// What activations are stored in: `auto` (f16 where the adapter has f16 shaders),
    /// `f32`, or `f16` (mixed precision: f32 master weights, optimizer state and reductions,
    /// dynamic loss scaling).
    #[serde(default)]
    pub precision: Precision,
    /// Stages below the full resolution crop at random down to (their resolution / the full
    /// one)² of the image's area, so that objects grown to the full resolution's size are no
    /// longer new to the model (docs/decisions.md, "Stage crops"). Missing from the configs
    /// of older runs, which resume without them.
    #[serde(default)]
    pub stage_crops: bool,
    /// Validate and checkpoint after every this many epochs, and after the last. A run spread
    /// over a small dataset ([`TrainConfig::spread_over`]) validates about as often in steps as its
    /// preset does, not after every one of its short epochs; MoGrow growing from the best
    /// of the weights and EMAs validates first where the epoch before it was not validated.
    #[serde(default = "one")]
    pub validate_every: usize,
}

fn default_max_res_lag() -> usize {
    0
}

fn default_search_epochs() -> f64 {
    2.0
}

fn default_stages() -> usize {
    4
}
fn one() -> usize {
    1
}

fn half() -> f64 {
    0.5
}

/// Every schedule, in the order `compare` runs them.
pub const SCHEDULES: [Schedule; 3] = [Schedule::Full, Schedule::Prog, Schedule::Auto];

/// At most how many times its epochs [`TrainConfig::spread_over`] gives a preset's run on a
/// small dataset: a folder of a few images would otherwise take thousands of short epochs.
pub const MAX_EPOCH_STRETCH: usize = 20;

/// Run presets: a whole run configuration.
pub const PRESETS: [&str; 2] = ["quick", "standard"];

impl TrainConfig {
    /// The preset `name` for the built-in data: `quick` finishes in minutes on a CPU
    /// adapter, `standard` is a longer, more accurate run for real GPUs.
    pub fn preset(name: &str) -> anyhow::Result<TrainConfig> {
        let classes = crate::data::CLASSES.len();
        let (model, data, recipe, augment) = match name {
            // nano at 24 px for 4 epochs of 15 000 images: minutes on a CPU adapter. Light
            // augmentation, one growth stage per epoch from 16 px and 4 blocks, quarter-stage
            // searches, growth from the best-validated weights with the moments copied; the
            // measurements behind each are in docs/decisions.md ("The quick preset").
            "quick" => {
                let mut model = VitConfig::preset("nano", classes)?;
                model.image_size = 24;
                let data = DataConfig {
                    path: None,
                    train_images: 15_000,
                    val_images: 1000,
                    classes,
                    image_size: 32,
                    data_seed: 0,
                    val_split: None,
                    workers: 2,
                    holdout_for_all: false,
                };
                let recipe = Recipe {
                    epochs: 4,
                    batch: 32,
                    warmup_epochs: 0.5,
                    drop_path: 0.0,
                    ema_decays: vec![0.995],
                    stages: 4,
                    res_scale: 2.0 / 3.0,
                    depth_scale: 2.0 / 3.0,
                    search_epochs: 0.25,
                    grow_from: GrowFrom::Best,
                    grow_opt_state: OptState::Copy,
                    ..Recipe::default()
                };
                let augment = AugmentConfig {
                    resolution: 24,
                    min_scale: 1.0,
                    randaug_ops: 0,
                    erase_prob: 0.0,
                    mix_prob: 0.0,
                    ..AugmentConfig::default()
                };
                (model, data, recipe, augment)
            }
            // nano at its full 32 px with the default (DeiT-style) augmentation for 30 epochs.
            "standard" => {
                let model = VitConfig::preset("nano", classes)?;
                let data = DataConfig {
                    path: None,
                    train_images: 50_000,
                    val_images: 5000,
                    classes,
                    image_size: 32,
                    data_seed: 0,
                    val_split: None,
                    workers: 4,
                    holdout_for_all: false,
                };
                let augment = AugmentConfig { resolution: model.image_size, ..AugmentConfig::default() };
                (model, data, Recipe { epochs: 30, ..Recipe::default() }, augment)
            }
            other => anyhow::bail!("unknown preset `{other}`; use one of {}", PRESETS.join(", ")),
        };
        Ok(TrainConfig { preset: name.into(), model_name: "nano".into(), model, data, recipe, augment })
    }

    /// A run of fewer epochs than the configured stages gets one stage per epoch (a stage
    /// lasts at least an epoch); for when the stage count was not asked for explicitly, so
    /// that `--epochs 2` works with the default `auto` schedule.
    pub fn fit_stages_to_epochs(&mut self) {
        let r = &mut self.recipe;
        r.stages = r.stages.min(r.epochs.max(1));
    }

    /// Spreads the preset's run over a dataset of `train_images` instead of its built-in
    /// images. A preset's length is a budget of steps (its epochs of its built-in images),
    /// which its warmup, search lengths and stages were tuned for: fewer images get the
    /// epochs that take about as many steps, up to [`MAX_EPOCH_STRETCH`] times the preset's,
    /// with the warmup and searches lengthened alike and validations as far apart in steps
    /// (docs/decisions.md, "Epochs follow the data"); as many or more keep the preset's
    /// epochs. Returns the factor the epochs grew by (1: unchanged).
    pub fn spread_over(&mut self, train_images: usize) -> anyhow::Result<f64> {
        let preset = TrainConfig::preset(&self.preset)?;
        let budget = (preset.recipe.epochs * preset.data.train_images) as f64;
        let epochs =
            ((budget / train_images.max(1) as f64).round() as usize).min(MAX_EPOCH_STRETCH * self.recipe.epochs);
        if epochs <= self.recipe.epochs {
            return Ok(1.0);
        }
        let factor = epochs as f64 / self.recipe.epochs as f64;
        let r = &mut self.recipe;
        r.epochs = epochs;
        r.warmup_epochs *= factor;
        r.search_epochs *= factor;
        r.validate_every = (factor.round() as usize).max(1);
        Ok(factor)
    }

    /// Reads a `config.toml` written by an earlier run.
    #[cfg(native)]
    pub fn load(path: &std::path::Path) -> anyhow::Result<TrainConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the config file {}: {e}", path.display()))?;
        TrainConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{} is not a valid run config: {e}", path.display()))
    }

    /// Parses the text of a `config.toml`.
    pub fn from_toml(text: &str) -> Result<TrainConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// The stages this run trains: one full-size stage for `none`, K growing ones for `prog`.
    pub fn schedule(&self) -> anyhow::Result<Vec<Stage>> {
        let r = &self.recipe;
        let progressive = r.schedule != Schedule::Full;
        let config = ScheduleConfig {
            stages: if progressive { r.stages } else { 1 },
            epochs: r.epochs,
            resolution: self.model.image_size,
            res_scale: r.res_scale,
            patch: self.model.patch_size,
            depth: self.model.depth,
            depth_scale: r.depth_scale,
            randaug_magnitude: self.augment.randaug_magnitude,
            drop_path: r.drop_path,
            erase_prob: self.augment.erase_prob as f64,
            mix_prob: self.augment.mix_prob as f64,
            // As the official script: RandAugment from half its magnitude, the others from 0.
            randaug_scale: 0.5,
            drop_path_scale: 0.0,
            erase_scale: 0.0,
            mix_scale: 0.0,
        };
        let stages = config.stages()?;
        for pair in stages.windows(2) {
            anyhow::ensure!(
                pair[1].depth <= 2 * pair[0].depth,
                "the schedule grows depth {} to {} at epoch {}; MoGrow at most doubles it, so use more --stages or a \
                    larger --depth-scale",
                pair[0].depth,
                pair[1].depth,
                pair[1].start_epoch
            );
        }
        if r.schedule == Schedule::Auto && stages.len() > 1 {
            let (first, last) = (stages[0].depth, stages[stages.len() - 1].depth);
            anyhow::ensure!(
                last <= 2 * first,
                "AutoProg's first supernet grows depth {first} to {last}, more than MoGrow's 2x; use --depth-scale 0.5 \
                    or more"
            );
        }
        Ok(stages)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a config always serialises")
    }

    /// Checks the parts that do not depend on the data.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.model.validate()?;
        let r = &self.recipe;
        anyhow::ensure!(r.epochs >= 1, "--epochs must be at least 1");
        anyhow::ensure!(r.batch >= 1, "--batch must be at least 1");
        anyhow::ensure!(r.validate_every >= 1, "--validate-every must be at least 1 (1: after every epoch)");
        anyhow::ensure!(r.lr > 0.0 && r.lr.is_finite(), "the learning rate {} must be positive", r.lr);
        anyhow::ensure!((0.0..1.0).contains(&r.drop_path), "drop_path {} must lie in [0, 1)", r.drop_path);
        self.augment.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(
            r.search_epochs > 0.0 && r.search_epochs.is_finite(),
            "--search-epochs {} must be positive (a fraction such as 0.25 is allowed)",
            r.search_epochs
        );
        self.schedule()?;
        for &d in &r.ema_decays {
            anyhow::ensure!((0.0..1.0).contains(&d), "EMA decay {d} must lie in [0, 1)");
        }
        if let Some(f) = self.data.val_split {
            anyhow::ensure!(f > 0.0 && f < 1.0, "--val-split {f} must lie strictly between 0 and 1");
        }
        Ok(())
    }
}

impl Default for Recipe {
    /// DeiT's recipe (AdamW, lr 5e-4 per 512 images, cosine, warmup, drop-path 0.1; label
    /// smoothing lives in the augmentation config) scaled for small data and short runs.
    fn default() -> Self {
        Recipe {
            epochs: 30,
            batch: 64,
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_epochs: 1.0,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.999,
            drop_path: 0.1,
            clip_grad: 1.0,
            ema_decays: vec![0.99, 0.999],
            seed: 0,
            eval_batch: 256,
            schedule: Schedule::default(),
            stages: default_stages(),
            res_scale: half(),
            depth_scale: half(),
            grow_opt_state: OptState::default(),
            grow_from: GrowFrom::default(),
            search_epochs: default_search_epochs(),
            search_cost: SearchCost::default(),
            search_space: SearchSpace::default(),
            // One level below the anchor at every search (4 stages): with stage crops the
            // last stage's jump to the full resolution costs no accuracy (docs/decisions.md,
            // "Thrifty searches"). Older configs without the field keep 0.
            max_res_lag: 2,
            depth_growth: DepthGrowth::default(),
            precision: Precision::default(),
            stage_crops: true,
            validate_every: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_survive_a_round_trip_through_config_toml() {
        // `--resume` and `--config` read config.toml back: every field must come back as it
        // was written (TOML has no null, so nothing may hide in an Option).
        for name in PRESETS {
            let config = TrainConfig::preset(name).unwrap();
            config.validate().unwrap();
            let back: TrainConfig = toml::from_str(&config.to_toml()).unwrap();
            assert_eq!(back, config, "{name}");
        }
        let mut with_path = TrainConfig::preset("quick").unwrap();
        with_path.data.path = Some("/data/digits".into());
        with_path.data.val_split = Some(0.1);
        let back: TrainConfig = toml::from_str(&with_path.to_toml()).unwrap();
        assert_eq!(back, with_path);
    }

    #[test]
    fn shipped_configs_load_and_validate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let config = TrainConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            config.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            count += 1;
        }
        assert!(count >= 1);
    }

    #[test]
    fn unknown_presets_and_bad_recipes_are_named() {
        let err = TrainConfig::preset("fast").unwrap_err().to_string();
        assert!(err.contains("fast") && err.contains("quick"), "{err}");
        let mut c = TrainConfig::preset("quick").unwrap();
        c.recipe.drop_path = 1.5;
        assert!(c.validate().unwrap_err().to_string().contains("drop_path"));
        let mut c = TrainConfig::preset("quick").unwrap();
        c.recipe.search_epochs = 0.0;
        assert!(c.validate().unwrap_err().to_string().contains("--search-epochs"));
    }

    #[test]
    fn search_epochs_take_fractions_and_the_integers_of_older_configs() {
        let config = TrainConfig::preset("standard").unwrap();
        let written = config.to_toml();
        assert!(written.contains("search_epochs = 2.0"), "{written}");
        let older: TrainConfig = toml::from_str(&written.replace("search_epochs = 2.0", "search_epochs = 2")).unwrap();
        assert_eq!(older.recipe.search_epochs, 2.0);
        let half: TrainConfig = toml::from_str(&written.replace("search_epochs = 2.0", "search_epochs = 0.5")).unwrap();
        assert_eq!(half.recipe.search_epochs, 0.5);
    }

    #[test]
    fn every_preset_runs_every_schedule_without_further_options() {
        for name in PRESETS {
            for schedule in SCHEDULES {
                let mut config = TrainConfig::preset(name).unwrap();
                config.recipe.schedule = schedule;
                config.validate().unwrap_or_else(|e| panic!("{name}, {schedule:?}: {e}"));
                let stages = config.schedule().unwrap_or_else(|e| panic!("{name}, {schedule:?}: {e}"));
                let expected = if schedule == Schedule::Full { 1 } else { config.recipe.stages };
                assert_eq!(stages.len(), expected, "{name}, {schedule:?}");
            }
        }
    }

    #[test]
    fn auto_is_the_default_and_short_runs_get_a_stage_per_epoch() {
        let mut config = TrainConfig::preset("standard").unwrap();
        assert_eq!((config.recipe.schedule, config.recipe.stages), (Schedule::Auto, 4));
        config.recipe.epochs = 2;
        assert!(config.validate().is_err(), "4 stages cannot fit 2 epochs");
        config.fit_stages_to_epochs();
        assert_eq!(config.recipe.stages, 2);
        config.validate().unwrap();
        config.recipe.epochs = 30;
        config.fit_stages_to_epochs();
        assert_eq!(config.recipe.stages, 2, "only ever fewer stages");
    }

    #[test]
    fn a_smaller_dataset_gets_the_presets_steps_in_more_epochs() {
        let quick = TrainConfig::preset("quick").unwrap();
        // Real digits' 8000 images: 60 000 images seen in 7.5, rounded to 8 epochs.
        let mut digits = quick.clone();
        assert_eq!(digits.spread_over(8000).unwrap(), 2.0);
        let r = &digits.recipe;
        assert_eq!((r.epochs, r.warmup_epochs, r.search_epochs, r.stages), (8, 1.0, 0.5, 4));
        // Validated after every second epoch: as often in steps as the preset on its data.
        assert_eq!(r.validate_every, 2);
        // A thousand images: 60 epochs; a hundred would need 600, capped at 20 times 4.
        let mut small = quick.clone();
        assert_eq!((small.spread_over(1000).unwrap(), small.recipe.epochs), (15.0, 60));
        assert_eq!(small.recipe.validate_every, 15);
        let mut tiny = quick.clone();
        assert_eq!(tiny.spread_over(100).unwrap(), MAX_EPOCH_STRETCH as f64);
        assert_eq!((tiny.recipe.epochs, tiny.recipe.validate_every), (80, 20));
        // As many images as the preset's, or more: unchanged.
        for images in [15_000, 1_000_000] {
            let mut large = quick.clone();
            assert_eq!(large.spread_over(images).unwrap(), 1.0);
            assert_eq!(large, quick);
        }
        // The standard preset's budget is 30 epochs of 50 000 images.
        let mut standard = TrainConfig::preset("standard").unwrap();
        assert_eq!((standard.spread_over(25_000).unwrap(), standard.recipe.epochs), (2.0, 60));
        let mut unknown = quick.clone();
        unknown.preset = "custom".into();
        assert!(unknown.spread_over(1000).is_err());
    }

    #[test]
    fn configs_without_a_resolution_lag_get_the_capped_default() {
        let mut config = TrainConfig::preset("quick").unwrap();
        config.recipe.max_res_lag = 2;
        let written = config.to_toml();
        assert!(written.contains("max_res_lag = 2"), "{written}");
        let older: TrainConfig = toml::from_str(&written.replace("max_res_lag = 2\n", "")).unwrap();
        assert_eq!(older.recipe.max_res_lag, 0);
    }

    #[test]
    fn depth_growth_is_checked_and_defaults_to_the_schedule() {
        let config = TrainConfig::preset("quick").unwrap();
        assert_eq!(config.recipe.depth_growth, DepthGrowth::Schedule);
        let written = config.to_toml();
        let older: TrainConfig = toml::from_str(&written.replace("depth_growth = \"schedule\"\n", "")).unwrap();
        assert_eq!(older.recipe.depth_growth, DepthGrowth::Schedule);
        let unknown = written.replace("depth_growth = \"schedule\"", "depth_growth = \"sometimes\"");
        let err = TrainConfig::from_toml(&unknown).unwrap_err().to_string();
        assert!(err.contains("depth_growth") && err.contains("sometimes") && err.contains("always"), "{err}");
    }

    #[test]
    fn new_runs_get_stage_crops_and_older_configs_resume_without() {
        for name in PRESETS {
            let config = TrainConfig::preset(name).unwrap();
            assert!(config.recipe.stage_crops, "{name}");
            let written = config.to_toml();
            assert!(written.contains("stage_crops = true\n"), "{written}");
            // A run written before the field existed trained without them, and resumes so.
            let older: TrainConfig = toml::from_str(&written.replace("stage_crops = true\n", "")).unwrap();
            assert!(!older.recipe.stage_crops, "{name}");
        }
    }
}
