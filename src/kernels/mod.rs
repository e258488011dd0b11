//! Kernel families. Each module binds one `shaders/<family>.wgsl`: a `#[repr(C)]`
//! params struct matching the WGSL uniform, shape checks, and one function per entry
//! point that records a dispatch. Pipelines are built once through the context's cache.

pub mod attention;
pub mod cross_entropy;
pub mod gelu;
pub mod layernorm;
pub mod matmul;
pub mod ops;
pub mod optimizer;
pub mod patch;
pub mod resize;

use crate::gpu::{Element, GpuContext, Shader, Tensor};
use crate::{Error, Result};

/// Every WGSL file of the crate, for validation and inspection.
pub fn shaders() -> Vec<Shader> {
    vec![
        COMMON,
        gelu::SHADER,
        matmul::SHADER,
        patch::SHADER,
        resize::SHADER,
        optimizer::SHADER,
        attention::SHADER,
        attention::TILED_SHADER,
        layernorm::SHADER,
        cross_entropy::SHADER,
        ops::SHADER,
    ]
}

/// Functions shared by several families (erf, GELU), prepended to their sources.
pub const COMMON: Shader = Shader { name: "common", source: include_str!("../../shaders/common.wgsl") };

/// The `consts` entry that sets a shader's `Act` alias, the storage type of its activations
/// and of the weights it reads. Statistics, weight gradients and partial sums stay f32
/// whatever `Act` is.
pub(crate) fn act_const(act: Element) -> [(&'static str, String); 1] {
    [("Act", act.wgsl().to_string())]
}

/// The `consts` entries that set a copy-like shader's `Src` and `Dst` aliases, the storage
/// types it reads and writes, to those of `src` and `dst`.
pub(crate) fn src_dst_consts(src: &Tensor, dst: &Tensor) -> [(&'static str, String); 2] {
    [("Src", src.element().wgsl().to_string()), ("Dst", dst.element().wgsl().to_string())]
}

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

/// Loop iterations one shader invocation may run, over all its loops together. lavapipe and
/// llvmpipe (Mesa's gallivm) stop an invocation's loops after 65535 iterations in total
/// (`LP_MAX_TGSI_LOOP_ITERATIONS`) and silently skip the rest. Kernels whose loops grow with
/// the input keep each invocation below this budget, with margin, and reject sizes that would
/// exceed it ([`check_loop_budget`]).
pub const LOOP_BUDGET: usize = 60_000;

/// Fails when an invocation of `op` would run more than [`LOOP_BUDGET`] loop iterations.
pub(crate) fn check_loop_budget(op: &'static str, iterations: usize, what: impl FnOnce() -> String) -> Result<()> {
    if iterations > LOOP_BUDGET {
        return Err(Error::invalid(
            op,
            format!(
                "{} needs {iterations} loop iterations in one invocation; kernels stay under {LOOP_BUDGET} \
                 because software GPUs (lavapipe, llvmpipe) silently stop after 65535",
                what()
            ),
        ));
    }
    Ok(())
}

/// How a row kernel (LayerNorm, softmax cross-entropy) spreads one row over invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowSplit {
    /// One invocation per row with plain loops and no barriers: for CPU adapters (lavapipe,
    /// llvmpipe, SwiftShader), where a workgroup barrier is a coroutine switch.
    Invocation,
    /// A workgroup of [`ROW_WORKGROUP`] invocations per row, partial sums through workgroup
    /// memory: for GPUs, where adjacent invocations then load adjacent values.
    Workgroup,
}

/// Invocations per workgroup of the row kernels (their shaders' `WG`).
pub const ROW_WORKGROUP: usize = 64;

impl RowSplit {
    /// Invocations that share a row (the shaders' `THREADS_PER_ROW`).
    pub fn threads_per_row(self) -> usize {
        match self {
            RowSplit::Invocation => 1,
            RowSplit::Workgroup => ROW_WORKGROUP,
        }
    }

    /// Rows one workgroup handles side by side.
    pub fn rows_per_workgroup(self) -> usize {
        ROW_WORKGROUP / self.threads_per_row()
    }

    /// Loop iterations one invocation spends on one row of `cols` values, for a kernel that
    /// makes `passes` passes over the row and `sums` row reductions (a loop of t trips
    /// counts t + 1 against the software-GPU budget, see [`LOOP_BUDGET`]).
    pub fn iterations_per_row(self, cols: usize, passes: usize, sums: usize) -> usize {
        let t = self.threads_per_row();
        let reduction = if t == 1 { 0 } else { t + 1 };
        passes * (cols.div_ceil(t) + 1) + sums * reduction + 1
    }

    /// The split for rows of `cols` values on `ctx`'s adapter: one invocation per row on CPU
    /// adapters while its loops stay well inside the budget, a workgroup per row otherwise.
    pub fn for_rows(ctx: &GpuContext, cols: usize) -> RowSplit {
        if ctx.summary.is_cpu() && RowSplit::Invocation.iterations_per_row(cols, 3, 0) * 8 <= LOOP_BUDGET {
            RowSplit::Invocation
        } else {
            RowSplit::Workgroup
        }
    }

    /// The `consts` entry that specialises a row shader for this split.
    pub(crate) fn shader_const(self) -> [(&'static str, String); 1] {
        [("THREADS_PER_ROW", format!("{}u", self.threads_per_row()))]
    }
}
