//! Split-K for weight gradients: a long K (batch × tokens) and a small output would leave
//! most of a GPU idle with one workgroup per output tile, so the K range is cut into
//! slices that accumulate into the output.

use super::{dims, matmul_with, Config, Dims, Epilogue, Layout};
use crate::gpu::{GpuContext, Recorder, Tensor};
use crate::{Error, Result};

/// Workgroups a matmul should launch to fill a large GPU (an H100 runs about two
/// 256-invocation workgroups on each of its 132 multiprocessors).
const SPLIT_K_TARGET_WORKGROUPS: usize = 256;
/// The shortest K slice worth a workgroup of its own.
const SPLIT_K_MIN_SLICE: usize = 256;

/// How many K slices to split a weight-gradient matmul into, if any. A dW = dYᵀ·X is TN
/// with a small output (width × width) and a long K (batch × tokens): one workgroup per
/// output tile would leave most of a GPU idle. Only on GPUs (CPU adapters have a handful
/// of cores, which the tiles already fill) and only for a plain or accumulating epilogue;
/// the caller asks only for an f32 C (the slices are summed by an f32 kernel).
pub(super) fn split_k_count(
    ctx: &GpuContext,
    layout: Layout,
    config: Config,
    d: &Dims,
    a: &Tensor,
    b: &Tensor,
    epi: &Epilogue<'_>,
) -> Option<usize> {
    let fused = epi.gelu || epi.pre.is_some() || epi.gelu_grad_of.is_some() || epi.row_scale.is_some();
    let plain = epi.bias.is_none() && !fused && epi.residual.is_none();
    let two_d = a.shape().len() == 2 && b.shape().len() == 2;
    if ctx.summary.is_cpu() || layout != Layout::TN || !plain || !two_d || d.batch != 1 {
        return None;
    }
    let (bm, bn) = config.block();
    split_k_slices(d.m.div_ceil(bm as usize) * d.n.div_ceil(bn as usize), d.k)
}

/// Slices for an output of `tiles` workgroup tiles and a reduction of length `k`: enough
/// to reach the target number of workgroups, none shorter than the minimum slice, and
/// none at all when the tiles alone fill half the target.
fn split_k_slices(tiles: usize, k: usize) -> Option<usize> {
    let splits = SPLIT_K_TARGET_WORKGROUPS.div_ceil(tiles).min(k / SPLIT_K_MIN_SLICE);
    (tiles * 2 <= SPLIT_K_TARGET_WORKGROUPS && splits >= 2).then_some(splits)
}

/// C (+)= Aᵀ·B for A [K, M] and B [K, N], with K cut into about `splits` slices that run
/// as one batched matmul into a scratch [slices, M, N], then summed into C in a fixed
/// order (deterministic, no atomics). Public for tests; [`matmul`] picks it by itself on
/// GPUs when the output is too small to fill the device.
pub fn matmul_split_k(
    rec: &mut Recorder<'_>,
    config: Config,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    accumulate: bool,
    splits: usize,
) -> Result<()> {
    let d = dims(Layout::TN, a, b, c)?;
    if a.shape().len() != 2 || b.shape().len() != 2 || d.batch != 1 || splits == 0 {
        return Err(Error::invalid(
            "matmul_tn",
            format!(
                "split-K takes 2-D operands and output and at least one slice (A {:?}, B {:?}, C {:?}, {splits} \
                    slices)",
                a.shape(),
                b.shape(),
                c.shape()
            ),
        ));
    }
    // Slices of a multiple of 64 rows (128 in f16) start every view of A and B at a
    // multiple of 256 bytes, the largest storage offset alignment an adapter may ask for.
    let slice = d.k.div_ceil(splits).next_multiple_of(256 / a.element().bytes());
    let full = d.k / slice;
    let tail = d.k - full * slice;
    if full == 0 {
        return matmul_with(rec, Layout::TN, config, a, b, c, &Epilogue { accumulate, ..Default::default() });
    }
    // The tail (K not a multiple of the slice) goes straight into C, the slices' sum after it.
    let mut add_slices = accumulate;
    if tail > 0 {
        let at = full * slice;
        let (a_tail, b_tail) = (a.view(at * d.m, &[tail, d.m])?, b.view(at * d.n, &[tail, d.n])?);
        matmul_with(rec, Layout::TN, config, &a_tail, &b_tail, c, &Epilogue { accumulate, ..Default::default() })?;
        add_slices = true;
    }
    let partial = rec.ctx().empty(&[full, d.m, d.n], "matmul.split_k")?;
    // Held until submission, so that the pool cannot hand it out again before the sum runs.
    rec.keep(partial.clone());
    let a_slices = a.view(0, &[full, slice, d.m])?;
    let b_slices = b.view(0, &[full, slice, d.n])?;
    matmul_with(rec, Layout::TN, config, &a_slices, &b_slices, &partial, &Epilogue::default())?;
    let sums = partial.reshape(&[full, d.m * d.n])?;
    crate::kernels::ops::column_sum(rec, &sums, &c.reshape(&[d.m * d.n])?, add_slices)
}

#[cfg(test)]
mod tests {
    use super::split_k_slices;

    #[test]
    fn split_k_fills_the_device_only_when_the_output_cannot() {
        // nano at batch 512 (K = 512 x 65 tokens): qkv's dW [192, 64] is 2 tiles of 128 x 128.
        assert_eq!(split_k_slices(2, 33_280), Some(128));
        // A short K limits the slices to 256 rows each.
        assert_eq!(split_k_slices(2, 1_000), Some(3));
        assert_eq!(split_k_slices(2, 511), None);
        // tiny's fc1 dW [768, 192]: 12 tiles.
        assert_eq!(split_k_slices(12, 33_280), Some(22));
        // Up to half the target the tiles are doubled at least; beyond it they go unsplit.
        assert_eq!(split_k_slices(128, 1 << 20), Some(2));
        assert_eq!(split_k_slices(129, 1 << 20), None);
    }
}
