//! Kernel tests: every WGSL entry point against its CPU twin on random shapes, every
//! CPU backward against finite differences, every shader validated by naga.

mod attention;
mod common;
mod cross_entropy;
mod gelu;
mod layernorm;
mod matmul;
mod model;
mod model_f16;
mod ops;
mod optimizer;
mod patch;
mod plans;
mod resize;
mod runtime;
mod shaders;
