//! Kernel tests: every WGSL entry point against its CPU twin on random shapes, every
//! CPU backward against finite differences, every shader validated by naga.

mod attention;
mod common;
mod gelu;
mod matmul;
mod optimizer;
mod patch;
mod resize;
mod runtime;
mod shaders;
