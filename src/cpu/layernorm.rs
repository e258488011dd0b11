//! CPU twins of `shaders/layernorm.wgsl` (f64, rows of x [R, C] flattened row-major).

/// (y, mean, rstd): y = (x - mean) * rstd * gamma + beta per row, rstd = 1 / sqrt(var + eps),
/// biased variance.
pub fn layernorm_forward(
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    rows: usize,
    cols: usize,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; rows * cols];
    let mut mean = vec![0.0; rows];
    let mut rstd = vec![0.0; rows];
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let mu = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / cols as f64;
        let rs = 1.0 / (var + eps).sqrt();
        for c in 0..cols {
            y[r * cols + c] = (row[c] - mu) * rs * gamma[c] + beta[c];
        }
        mean[r] = mu;
        rstd[r] = rs;
    }
    (y, mean, rstd)
}

/// (dx, dgamma_partial, dbeta_partial): dx per row, and dgamma/dbeta summed over chunks of
/// ceil(rows / num_partials) consecutive rows, one partial row [C] per chunk ([num_partials, C]).
#[allow(clippy::too_many_arguments, reason = "mirrors the shader's bindings")]
pub fn layernorm_backward(
    x: &[f64],
    gamma: &[f64],
    mean: &[f64],
    rstd: &[f64],
    dy: &[f64],
    rows: usize,
    cols: usize,
    num_partials: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows_per_partial = rows.div_ceil(num_partials);
    let mut dx = vec![0.0; rows * cols];
    let mut dgamma_partial = vec![0.0; num_partials * cols];
    let mut dbeta_partial = vec![0.0; num_partials * cols];
    for r in 0..rows {
        let j = r / rows_per_partial;
        let xhat: Vec<f64> = (0..cols).map(|c| (x[r * cols + c] - mean[r]) * rstd[r]).collect();
        let g: Vec<f64> = (0..cols).map(|c| dy[r * cols + c] * gamma[c]).collect();
        let mean_g = g.iter().sum::<f64>() / cols as f64;
        let mean_gx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / cols as f64;
        for c in 0..cols {
            dx[r * cols + c] = rstd[r] * (g[c] - mean_g - xhat[c] * mean_gx);
            dgamma_partial[j * cols + c] += dy[r * cols + c] * xhat[c];
            dbeta_partial[j * cols + c] += dy[r * cols + c];
        }
    }
    (dx, dgamma_partial, dbeta_partial)
}

/// (dgamma, dbeta): the partial rows summed, added to `previous` (dgamma, dbeta) when given
/// (the shader's `accumulate`).
pub fn layernorm_param_grad(
    dgamma_partial: &[f64],
    dbeta_partial: &[f64],
    num_partials: usize,
    cols: usize,
    previous: Option<(&[f64], &[f64])>,
) -> (Vec<f64>, Vec<f64>) {
    let (mut dgamma, mut dbeta) = match previous {
        Some((g, b)) => (g.to_vec(), b.to_vec()),
        None => (vec![0.0; cols], vec![0.0; cols]),
    };
    for j in 0..num_partials {
        for c in 0..cols {
            dgamma[c] += dgamma_partial[j * cols + c];
            dbeta[c] += dbeta_partial[j * cols + c];
        }
    }
    (dgamma, dbeta)
}

/// (dx, dgamma, dbeta): the whole backward, [`layernorm_backward`] then [`layernorm_param_grad`].
pub fn layernorm_backward_full(
    x: &[f64],
    gamma: &[f64],
    mean: &[f64],
    rstd: &[f64],
    dy: &[f64],
    rows: usize,
    cols: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (dx, dgp, dbp) = layernorm_backward(x, gamma, mean, rstd, dy, rows, cols, 1);
    let (dgamma, dbeta) = layernorm_param_grad(&dgp, &dbp, 1, cols, None);
    (dx, dgamma, dbeta)
}
