//! The Vision Transformer: architecture ([`VitConfig`]), parameters with timm's names in one
//! flat arena ([`ParamLayout`]), the GPU model ([`GpuVit`]) and its f64 CPU twin
//! ([`cpu::CpuVit`]), and the training step that records forward, loss, backward, clipping,
//! AdamW and EMA as one submission ([`step`]), and what inference needs around the forward
//! pass ([`inference`]).

mod activations;
mod config;
pub mod cpu;
mod gpu;
pub mod inference;
mod params;
pub mod plans;
pub mod step;

pub use config::{limits, VitConfig, PRESETS};
pub use gpu::{Activations, GpuVit, Loss};
pub use params::{blocks_present, infer_config, param_shapes, parameter_count, GradPart, ParamLayout, ParamSpec};
