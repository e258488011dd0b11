//! CPU twins of `shaders/attention.wgsl` (f64). The plain reference builds each
//! (image, head)'s N x N probability matrix; the backward twins of the GPU entry points
//! recompute probabilities from lse the way the kernels do.
//!
//! Layouts as on the GPU: qkv [B, N, 3, NH, HS], out/dout [B, N, NH, HS], lse/d [B, NH, N].
//! Masks are u32, 0 = masked. Undefined rows (masked head, or no unmasked key) give
//! zero output, lse 0 and zero gradients.

/// The dimensions of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub b: usize,
    pub n: usize,
    pub nh: usize,
    pub hs: usize,
}

/// Optional masks: key [B, N], head [NH]; 0 masks, anything else keeps.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionMasks<'a> {
    pub key: Option<&'a [u32]>,
    pub head: Option<&'a [u32]>,
}

impl AttentionShape {
    fn c(&self) -> usize {
        self.nh * self.hs
    }
    /// Offset of q (part 0), k (1) or v (2) of token i, head h, image b in qkv.
    fn qkv(&self, b: usize, i: usize, part: usize, h: usize) -> usize {
        ((b * self.n + i) * 3 + part) * self.c() + h * self.hs
    }
    /// Offset of token i, head h, image b in out / dout.
    fn row(&self, b: usize, i: usize, h: usize) -> usize {
        (b * self.n + i) * self.c() + h * self.hs
    }
    /// Offset of row i of (b, h) in lse / d.
    fn stat(&self, b: usize, h: usize, i: usize) -> usize {
        (b * self.nh + h) * self.n + i
    }
    fn qkv_len(&self) -> usize {
        self.b * self.n * 3 * self.c()
    }
}

impl AttentionMasks<'_> {
    fn head_on(&self, h: usize) -> bool {
        self.head.is_none_or(|m| m[h] != 0)
    }
    fn key_on(&self, shape: &AttentionShape, b: usize, j: usize) -> bool {
        self.key.is_none_or(|m| m[b * shape.n + j] != 0)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Softmax probabilities [N, N] of image b, head h (row-major, query-major), with masked
/// keys at 0, and each row's log-sum-exp. Rows without an unmasked key are all 0, lse 0.
fn probabilities(
    qkv: &[f64],
    s: &AttentionShape,
    m: &AttentionMasks<'_>,
    scale: f64,
    b: usize,
    h: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (n, hs) = (s.n, s.hs);
    let mut p = vec![0.0; n * n];
    let mut lse = vec![0.0; n];
    for i in 0..n {
        let q = &qkv[s.qkv(b, i, 0, h)..][..hs];
        let scores: Vec<Option<f64>> =
            (0..n).map(|j| m.key_on(s, b, j).then(|| dot(q, &qkv[s.qkv(b, j, 1, h)..][..hs]) * scale)).collect();
        let Some(max) = scores.iter().flatten().copied().reduce(f64::max) else {
            continue;
        };
        let sum: f64 = scores.iter().flatten().map(|x| (x - max).exp()).sum();
        for (j, x) in scores.iter().enumerate() {
            if let Some(x) = x {
                p[i * n + j] = (x - max).exp() / sum;
            }
        }
        lse[i] = max + sum.ln();
    }
    (p, lse)
}

/// Plain reference: (out [B, N, C], lse [B, NH, N]) with out = softmax(q kᵀ · scale) v.
pub fn attention_forward(
    qkv: &[f64],
    s: AttentionShape,
    masks: AttentionMasks<'_>,
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(qkv.len(), s.qkv_len(), "qkv length");
    let (n, hs) = (s.n, s.hs);
    let mut out = vec![0.0; s.b * n * s.c()];
    let mut lse = vec![0.0; s.b * s.nh * n];
    for b in 0..s.b {
        for h in (0..s.nh).filter(|&h| masks.head_on(h)) {
            let (p, row_lse) = probabilities(qkv, &s, &masks, scale, b, h);
            for i in 0..n {
                lse[s.stat(b, h, i)] = row_lse[i];
                for j in 0..n {
                    let v = &qkv[s.qkv(b, j, 2, h)..][..hs];
                    for (o, &vd) in out[s.row(b, i, h)..][..hs].iter_mut().zip(v) {
                        *o += p[i * n + j] * vd;
                    }
                }
            }
        }
    }
    (out, lse)
}

/// d [B, NH, N] = rowsum(dout ∘ out) per head.
pub fn attention_backward_preprocess(out: &[f64], dout: &[f64], s: AttentionShape) -> Vec<f64> {
    let mut d = vec![0.0; s.b * s.nh * s.n];
    for b in 0..s.b {
        for h in 0..s.nh {
            for i in 0..s.n {
                let at = s.row(b, i, h);
                d[s.stat(b, h, i)] = dot(&out[at..][..s.hs], &dout[at..][..s.hs]);
            }
        }
    }
    d
}

/// p_ij = exp(q_i·k_j · scale − lse_i) and ds_ij = p_ij (dout_i·v_j − d_i), recomputed
/// as the GPU does (callers skip masked keys).
fn recompute(
    qkv: &[f64],
    dout: &[f64],
    lse: &[f64],
    d: &[f64],
    s: &AttentionShape,
    scale: f64,
    (b, h, i, j): (usize, usize, usize, usize),
) -> (f64, f64) {
    let hs = s.hs;
    let q = &qkv[s.qkv(b, i, 0, h)..][..hs];
    let k = &qkv[s.qkv(b, j, 1, h)..][..hs];
    let v = &qkv[s.qkv(b, j, 2, h)..][..hs];
    let at = s.stat(b, h, i);
    let p = (dot(q, k) * scale - lse[at]).exp();
    let ds = p * (dot(&dout[s.row(b, i, h)..][..hs], v) - d[at]);
    (p, ds)
}

/// dqkv [B, N, 3C] with only the k and v slots filled: dv_j = Σ_i p_ij dout_i,
/// dk_j = Σ_i ds_ij q_i · scale.
pub fn attention_backward_dkdv(
    qkv: &[f64],
    dout: &[f64],
    lse: &[f64],
    d: &[f64],
    s: AttentionShape,
    masks: AttentionMasks<'_>,
    scale: f64,
) -> Vec<f64> {
    let hs = s.hs;
    let mut dqkv = vec![0.0; s.qkv_len()];
    for b in 0..s.b {
        for h in (0..s.nh).filter(|&h| masks.head_on(h)) {
            for j in (0..s.n).filter(|&j| masks.key_on(&s, b, j)) {
                for i in 0..s.n {
                    let (p, ds) = recompute(qkv, dout, lse, d, &s, scale, (b, h, i, j));
                    for t in 0..hs {
                        dqkv[s.qkv(b, j, 2, h) + t] += p * dout[s.row(b, i, h) + t];
                        dqkv[s.qkv(b, j, 1, h) + t] += ds * qkv[s.qkv(b, i, 0, h) + t] * scale;
                    }
                }
            }
        }
    }
    dqkv
}

/// dqkv [B, N, 3C] with only the q slots filled: dq_i = Σ_j ds_ij k_j · scale.
pub fn attention_backward_dq(
    qkv: &[f64],
    dout: &[f64],
    lse: &[f64],
    d: &[f64],
    s: AttentionShape,
    masks: AttentionMasks<'_>,
    scale: f64,
) -> Vec<f64> {
    let hs = s.hs;
    let mut dqkv = vec![0.0; s.qkv_len()];
    for b in 0..s.b {
        for h in (0..s.nh).filter(|&h| masks.head_on(h)) {
            for i in 0..s.n {
                for j in (0..s.n).filter(|&j| masks.key_on(&s, b, j)) {
                    let (_, ds) = recompute(qkv, dout, lse, d, &s, scale, (b, h, i, j));
                    for t in 0..hs {
                        dqkv[s.qkv(b, i, 0, h) + t] += ds * qkv[s.qkv(b, j, 1, h) + t] * scale;
                    }
                }
            }
        }
    }
    dqkv
}

/// Plain reference backward: dqkv [B, N, 3C] from the N x N probabilities, without lse or
/// d: dv = pᵀ dout, dp = dout vᵀ, ds = p ∘ (dp − rowsum(p ∘ dp)), dq = ds k · scale,
/// dk = dsᵀ q · scale.
pub fn attention_backward(
    qkv: &[f64],
    dout: &[f64],
    s: AttentionShape,
    masks: AttentionMasks<'_>,
    scale: f64,
) -> Vec<f64> {
    let (n, hs) = (s.n, s.hs);
    let mut dqkv = vec![0.0; s.qkv_len()];
    for b in 0..s.b {
        for h in (0..s.nh).filter(|&h| masks.head_on(h)) {
            let (p, _) = probabilities(qkv, &s, &masks, scale, b, h);
            for i in 0..n {
                let g = &dout[s.row(b, i, h)..][..hs];
                let dp: Vec<f64> = (0..n).map(|j| dot(g, &qkv[s.qkv(b, j, 2, h)..][..hs])).collect();
                let row_dot: f64 = (0..n).map(|j| p[i * n + j] * dp[j]).sum();
                for j in 0..n {
                    let pij = p[i * n + j];
                    let ds = pij * (dp[j] - row_dot);
                    for t in 0..hs {
                        dqkv[s.qkv(b, j, 2, h) + t] += pij * g[t];
                        dqkv[s.qkv(b, i, 0, h) + t] += ds * qkv[s.qkv(b, j, 1, h) + t] * scale;
                        dqkv[s.qkv(b, j, 1, h) + t] += ds * qkv[s.qkv(b, i, 0, h) + t] * scale;
                    }
                }
            }
        }
    }
    dqkv
}
