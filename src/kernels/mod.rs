//! Kernel families. Each module binds one `shaders/<family>.wgsl`: a `#[repr(C)]`
//! params struct matching the WGSL uniform, shape checks, and one function per entry
//! point that records a dispatch. Pipelines are built once through the context's cache.

pub mod attention;
pub mod gelu;
pub mod matmul;
pub mod optimizer;
pub mod patch;
pub mod resize;

use crate::gpu::{Shader, Tensor};
use crate::{Error, Result};

/// Every WGSL file of the crate, for validation and inspection.
pub fn shaders() -> Vec<Shader> {
    vec![COMMON, gelu::SHADER, matmul::SHADER, patch::SHADER, resize::SHADER, optimizer::SHADER, attention::SHADER]
}

/// Functions shared by several families (erf, GELU), prepended to their sources.
pub const COMMON: Shader = Shader { name: "common", source: include_str!("../../shaders/common.wgsl") };

/// Checks that all named tensors have the shape of the first.
pub(crate) fn same_shape(op: &'static str, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let (first_name, first) = tensors[0];
    for (name, t) in &tensors[1..] {
        if t.shape() != first.shape() {
            return Err(Error::shape(
                op,
                format!("{name} is {:?} but {first_name} is {:?}; they must match", t.shape(), first.shape()),
            ));
        }
    }
    Ok(())
}

/// Checks a tensor's exact shape.
pub(crate) fn expect_shape(op: &'static str, name: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.shape() != shape {
        return Err(Error::shape(op, format!("{name} is {:?} but must be {shape:?}", t.shape())));
    }
    Ok(())
}
