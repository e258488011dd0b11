//! What autoprog's safetensors files hold, by name: the one place the writer (the training
//! loop, `export`) and every reader (resume, `predict`, `eval`, the viewer) take the keys
//! from.
//!
//! A *training checkpoint* holds the weights under timm's names, each EMA under
//! [`ema_prefix`], AdamW's moments under [`ADAM_M`] / [`ADAM_V`], and metadata: the
//! [`meta`] keys, [`meta::PROGRESS`] being where the run stands. A *model file* (`export`)
//! holds one set of weights and the metadata inference needs.

/// The `format` value of a training checkpoint.
pub const TRAINING_FORMAT: &str = "autoprog-checkpoint-1";
/// The `format` value of a model file (one set of weights, no optimizer state).
pub const MODEL_FORMAT: &str = "autoprog-model-1";

/// Prefix of the first AdamW moment of every parameter.
pub const ADAM_M: &str = "optimizer.m.";
/// Prefix of the second AdamW moment of every parameter.
pub const ADAM_V: &str = "optimizer.v.";

/// The name of the EMA of decay `decay` (`ema_0.999`), as events and messages show it.
pub fn ema_name(decay: f64) -> String {
    format!("ema_{decay}")
}

/// Prefix of the tensors of the EMA of decay `decay` (`ema_0.999.`).
pub fn ema_prefix(decay: f64) -> String {
    format!("{}.", ema_name(decay))
}

/// Metadata keys. Values are JSON.
pub mod meta {
    /// [`super::TRAINING_FORMAT`] or [`super::MODEL_FORMAT`].
    pub const FORMAT: &str = "format";
    /// The architecture (`VitConfig`) of the weights stored.
    pub const VIT: &str = "vit";
    /// Class names in label order.
    pub const CLASSES: &str = "classes";
    /// The per-channel normalisation the model was trained with.
    pub const MEAN: &str = "mean";
    pub const STD: &str = "std";
    /// The run's configuration (`TrainConfig`).
    pub const CONFIG: &str = "config";
    /// Where the run stands (`train::Progress`): what `--resume` reads.
    pub const PROGRESS: &str = "progress";
    /// Copies of progress fields for other tools to read without knowing `Progress`.
    pub const EPOCH: &str = "epoch";
    pub const STEP: &str = "step";
    pub const RESOLUTION: &str = "resolution";
    pub const DEPTH: &str = "depth";
    /// The seed and step every random choice derives from.
    pub const RNG: &str = "rng";
}
