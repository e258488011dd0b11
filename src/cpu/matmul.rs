//! CPU twin of `shaders/matmul.wgsl` (both `matmul_register` and `matmul_tiled`
//! compute the same function; this is it).

use crate::cpu::gelu::{gelu_backward, gelu_forward};
use crate::kernels::matmul::Layout;

/// The epilogue inputs in f64, mirroring `kernels::matmul::Epilogue`.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f64]>,
    pub gelu: bool,
    /// Multiply by GELU'(x) of these values (shape of C), after the bias.
    pub gelu_grad_of: Option<&'a [f64]>,
    pub residual: Option<&'a [f64]>,
    /// `(scale, rows)`: multiply by `scale[(bi·m + i) / rows]` before the residual.
    pub row_scale: Option<(&'a [f64], usize)>,
    /// Previous contents of C when accumulating.
    pub accumulate: Option<&'a [f64]>,
}

/// C = op(A) op(B) with the epilogue, for `batch` items; `a_shared`/`b_shared` mean the
/// operand is one matrix used for every item. Returns (C, pre-activation).
#[allow(clippy::too_many_arguments, reason = "mirrors the kernel's parameter block")]
pub fn matmul(
    layout: Layout,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: &[f64],
    a_shared: bool,
    b: &[f64],
    b_shared: bool,
    epi: &Epilogue<'_>,
) -> (Vec<f64>, Vec<f64>) {
    let mut c = vec![0.0; batch * m * n];
    let mut pre = vec![0.0; batch * m * n];
    for bi in 0..batch {
        let ao = if a_shared { 0 } else { bi * m * k };
        let bo = if b_shared { 0 } else { bi * k * n };
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for kk in 0..k {
                    let av = match layout {
                        Layout::TN => a[ao + kk * m + i],
                        _ => a[ao + i * k + kk],
                    };
                    let bv = match layout {
                        Layout::NT => b[bo + j * k + kk],
                        _ => b[bo + kk * n + j],
                    };
                    acc += av * bv;
                }
                let at = bi * m * n + i * n + j;
                if let Some(bias) = epi.bias {
                    acc += bias[j];
                }
                pre[at] = acc;
                if epi.gelu {
                    acc = gelu_forward(&[acc])[0];
                }
                if let Some(x) = epi.gelu_grad_of {
                    acc = gelu_backward(&[x[at]], &[acc])[0];
                }
                if let Some((scale, rows)) = epi.row_scale {
                    acc *= scale[(bi * m + i) / rows];
                }
                if let Some(r) = epi.residual {
                    acc += r[at];
                }
                if let Some(old) = epi.accumulate {
                    acc += old[at];
                }
                c[at] = acc;
            }
        }
    }
    (c, pre)
}
