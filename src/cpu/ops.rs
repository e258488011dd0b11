//! CPU twins of `shaders/ops.wgsl` (f64, tensors flattened row-major; B batch, N tokens,
//! Np patch tokens, Nk kept tokens, C channels, R rows).

/// z = x + y
pub fn add_forward(x: &[f64], y: &[f64]) -> Vec<f64> {
    x.iter().zip(y).map(|(a, b)| a + b).collect()
}

/// a * x
pub fn scale(x: &[f64], a: f64) -> Vec<f64> {
    x.iter().map(|v| a * v).collect()
}

/// y + a * x
pub fn axpy(a: f64, x: &[f64], y: &[f64]) -> Vec<f64> {
    x.iter().zip(y).map(|(xv, yv)| yv + a * xv).collect()
}

/// scale * sum(x)
pub fn reduce_sum(x: &[f64], scale: f64) -> f64 {
    scale * x.iter().sum::<f64>()
}

/// partial [num_blocks, C]: column sums of x [R, C] over blocks of ceil(R / num_blocks) rows.
pub fn column_sum_partial(x: &[f64], rows: usize, cols: usize, num_blocks: usize) -> Vec<f64> {
    let rows_per_block = rows.div_ceil(num_blocks).max(1);
    let mut partial = vec![0.0; num_blocks * cols];
    for r in 0..rows {
        for c in 0..cols {
            partial[(r / rows_per_block) * cols + c] += x[r * cols + c];
        }
    }
    partial
}

/// out [C] = column sums of x [R, C], plus `previous` when accumulating.
pub fn column_sum(x: &[f64], rows: usize, cols: usize, previous: Option<&[f64]>) -> Vec<f64> {
    let mut out = previous.map_or_else(|| vec![0.0; cols], <[f64]>::to_vec);
    for r in 0..rows {
        for c in 0..cols {
            out[c] += x[r * cols + c];
        }
    }
    out
}

/// out [B, Np + 1, C]: the class token, then the patches, per batch.
pub fn cls_concat(patches: &[f64], cls: &[f64], batch: usize, patch_tokens: usize, cols: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(batch * (patch_tokens + 1) * cols);
    for b in 0..batch {
        out.extend_from_slice(cls);
        out.extend_from_slice(&patches[b * patch_tokens * cols..(b + 1) * patch_tokens * cols]);
    }
    out
}

/// (dpatches [B, Np, C], dcls [C]) from dout [B, Np + 1, C]; dcls adds to `previous` when
/// accumulating.
pub fn cls_concat_backward(
    dout: &[f64],
    batch: usize,
    tokens: usize,
    cols: usize,
    previous: Option<&[f64]>,
) -> (Vec<f64>, Vec<f64>) {
    let mut dpatches = Vec::with_capacity(batch * (tokens - 1) * cols);
    let mut dcls = previous.map_or_else(|| vec![0.0; cols], <[f64]>::to_vec);
    for b in 0..batch {
        let seq = &dout[b * tokens * cols..(b + 1) * tokens * cols];
        for c in 0..cols {
            dcls[c] += seq[c];
        }
        dpatches.extend_from_slice(&seq[cols..]);
    }
    (dpatches, dcls)
}

/// out [B, C] = x[b, 0, :]
pub fn cls_slice(x: &[f64], batch: usize, tokens: usize, cols: usize) -> Vec<f64> {
    (0..batch).flat_map(|b| x[b * tokens * cols..b * tokens * cols + cols].to_vec()).collect()
}

/// dx [B, N, C]: dout[b] in row 0, zeros elsewhere.
pub fn cls_slice_backward(dout: &[f64], batch: usize, tokens: usize, cols: usize) -> Vec<f64> {
    let mut dx = vec![0.0; batch * tokens * cols];
    for b in 0..batch {
        dx[b * tokens * cols..b * tokens * cols + cols].copy_from_slice(&dout[b * cols..(b + 1) * cols]);
    }
    dx
}

/// x [B, N, C] + pos [N, C] broadcast over the batch.
pub fn add_broadcast(x: &[f64], pos: &[f64]) -> Vec<f64> {
    x.iter().enumerate().map(|(i, v)| v + pos[i % pos.len()]).collect()
}

/// dpos [N, C] = sum over the batch of dy [B, N, C], plus `previous` when accumulating.
pub fn add_broadcast_backward(dy: &[f64], batch: usize, per_batch: usize, previous: Option<&[f64]>) -> Vec<f64> {
    column_sum(dy, batch, per_batch, previous)
}

/// out [B, Nk, C] = x[b, index[b, k], :]; an index >= N gives a zero row.
pub fn gather_rows(x: &[f64], index: &[u32], batch: usize, tokens: usize, kept: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; batch * kept * cols];
    for b in 0..batch {
        for k in 0..kept {
            let n = index[b * kept + k] as usize;
            if n < tokens {
                let src = (b * tokens + n) * cols;
                out[(b * kept + k) * cols..(b * kept + k + 1) * cols].copy_from_slice(&x[src..src + cols]);
            }
        }
    }
    out
}

/// dx [B, N, C]: dout[b, k, :] at row index[b, k], zeros for tokens not kept; indices >= N
/// are skipped, and duplicates add (the adjoint of [`gather_rows`]; the GPU requires distinct
/// indices, where both agree).
pub fn scatter_rows(dout: &[f64], index: &[u32], batch: usize, tokens: usize, kept: usize, cols: usize) -> Vec<f64> {
    let mut dx = vec![0.0; batch * tokens * cols];
    for b in 0..batch {
        for k in 0..kept {
            let n = index[b * kept + k] as usize;
            if n < tokens {
                for c in 0..cols {
                    dx[(b * tokens + n) * cols + c] += dout[(b * kept + k) * cols + c];
                }
            }
        }
    }
    dx
}

/// out = x + branch · scale[b], b = i / (len / B).
pub fn add_scaled_rows(x: &[f64], branch: &[f64], scale: &[f64]) -> Vec<f64> {
    let per_item = x.len() / scale.len();
    x.iter().zip(branch).enumerate().map(|(i, (x, br))| x + br * scale[i / per_item]).collect()
}

/// y = x · scale[b], b = i / (len / B).
pub fn scale_rows(x: &[f64], scale: &[f64]) -> Vec<f64> {
    let per_item = x.len() / scale.len();
    x.iter().enumerate().map(|(i, x)| x * scale[i / per_item]).collect()
}
