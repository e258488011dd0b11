//! autoprog: Vision Transformer training on WGSL kernels through wgpu.
//!
//! The core library: the GPU runtime ([`gpu`]), the WGSL kernels and their dispatch
//! ([`kernels`]), the CPU twin of every kernel entry point ([`cpu`]), the ViT ([`model`]),
//! AutoProg's decisions ([`prog`]), the training loop ([`train`]), and the files that
//! trainer and viewer share: checkpoints ([`checkpoint`]) and the run log ([`runlog`]).
//! The same crate compiles natively and to wasm32 (`native` / `web` cfg aliases, see
//! `build.rs`).

pub mod bench;
pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod error;
#[cfg(native)]
pub mod fsutil;
pub mod gpu;
mod json;
pub mod kernels;
pub mod model;
pub mod prog;
pub mod runlog;
pub mod tolerance;
pub mod train;

pub use error::{Error, Result};
pub use gpu::{ContextOptions, GpuContext, Recorder, Tensor};
