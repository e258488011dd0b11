//! CPU twins of `shaders/cross_entropy.wgsl` (f64, logits [B, K] flattened row-major).

/// log-sum-exp of a row, max-subtracted.
fn log_sum_exp(z: &[f64]) -> f64 {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// Loss and gradient of one row against a dense target: loss = sum t (lse - z),
/// dz = grad_scale (softmax sum t - t).
fn row_soft(z: &[f64], t: &[f64], grad_scale: f64) -> (f64, Vec<f64>) {
    let lse = log_sum_exp(z);
    let sum_t: f64 = t.iter().sum();
    let loss = z.iter().zip(t).map(|(zk, tk)| tk * (lse - zk)).sum();
    let grad = z.iter().zip(t).map(|(zk, tk)| grad_scale * ((zk - lse).exp() * sum_t - tk)).collect();
    (loss, grad)
}

/// (loss [B], dlogits [B, K]) for hard labels with label smoothing: the target is
/// (1 - s) onehot(label) + s / K. A label >= K gives NaN loss and gradient for that row.
pub fn cross_entropy_hard(
    logits: &[f64],
    labels: &[u32],
    batch: usize,
    classes: usize,
    smoothing: f64,
    grad_scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let mut loss = Vec::with_capacity(batch);
    let mut dlogits = Vec::with_capacity(batch * classes);
    for b in 0..batch {
        let label = labels[b] as usize;
        if label >= classes {
            loss.push(f64::NAN);
            dlogits.extend(std::iter::repeat_n(f64::NAN, classes));
            continue;
        }
        let target: Vec<f64> =
            (0..classes).map(|k| smoothing / classes as f64 + if k == label { 1.0 - smoothing } else { 0.0 }).collect();
        let (l, g) = row_soft(&logits[b * classes..(b + 1) * classes], &target, grad_scale);
        loss.push(l);
        dlogits.extend(g);
    }
    (loss, dlogits)
}

/// (loss [B], dlogits [B, K]) for soft targets [B, K].
pub fn cross_entropy_soft(
    logits: &[f64],
    targets: &[f64],
    batch: usize,
    classes: usize,
    grad_scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let mut loss = Vec::with_capacity(batch);
    let mut dlogits = Vec::with_capacity(batch * classes);
    for b in 0..batch {
        let row = b * classes..(b + 1) * classes;
        let (l, g) = row_soft(&logits[row.clone()], &targets[row], grad_scale);
        loss.push(l);
        dlogits.extend(g);
    }
    (loss, dlogits)
}
