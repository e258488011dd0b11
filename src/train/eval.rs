//! Top-1 accuracy and mean loss of several weight arenas (the weights and every EMA) on a
//! pass over labelled images, each batch uploaded once for all of them; the passes are
//! recorded once per evaluation and replayed for every batch.

use super::host::Batches;
use crate::gpu::Element;
use crate::kernels::ops::convert;
use crate::model::cpu::cross_entropy;
use crate::model::{Activations, GpuVit};
use crate::{GpuContext, Tensor};

/// Top-1 accuracy and mean loss of each weight arena on a source.
pub struct Evaluation {
    pub acc: Vec<f64>,
    pub loss: Vec<f64>,
    /// Images evaluated (those that failed to load are left out).
    pub images: usize,
}

/// Evaluates every arena in `arenas` (the weights, then each EMA) on `batches` (eval
/// transform, at the resolution of `acts`, at most `acts.batch` images each).
pub async fn evaluate(
    ctx: &GpuContext,
    model: &GpuVit,
    arenas: &[&Tensor],
    acts: &Activations,
    batches: Batches,
) -> anyhow::Result<Evaluation> {
    let classes = model.config.classes;
    let batch = acts.batch;
    let logits_all = ctx.empty(&[arenas.len(), batch, classes], "eval.logits")?;
    // f16 logits are widened here first: a copy cannot change the element type.
    let widened = match acts.logits.element() {
        Element::F32 => None,
        Element::F16 => Some(ctx.empty(&[batch, classes], "eval.logits_f32")?),
    };
    // Every batch runs the same passes over the same tensors: recorded once, replayed.
    let mut capture = ctx.capture("eval");
    for (i, arena) in arenas.iter().enumerate() {
        model.forward(&mut capture, arena, acts, false)?;
        let logits = match &widened {
            None => &acts.logits,
            Some(f32_logits) => {
                convert(&mut capture, &acts.logits, f32_logits)?;
                f32_logits
            }
        };
        capture.copy(logits, &logits_all.view(i * batch * classes, &[batch, classes])?)?;
    }
    let plan = capture.into_plan()?;
    let (mut correct, mut loss_sum, mut count) = (vec![0usize; arenas.len()], vec![0.0; arenas.len()], 0usize);
    for item in batches {
        let b = item?;
        if b.is_empty() {
            continue;
        }
        let n = b.len();
        let mut images = b.images;
        images.resize(acts.images.numel(), 0.0); // the last batch is padded; its extra rows are ignored
        ctx.write(&acts.images, &images)?;
        let mut rec = ctx.recorder("eval");
        rec.replay(&plan)?;
        ctx.submit(rec)?;
        let logits = ctx.read(&logits_all).await?;
        for i in 0..arenas.len() {
            let rows = &logits[i * batch * classes..][..n * classes];
            let predicted = argmax_rows(rows, classes);
            correct[i] += predicted.iter().zip(&b.labels).filter(|(p, l)| **p == **l as usize).count();
            let rows64: Vec<f64> = rows.iter().map(|&v| v as f64).collect();
            loss_sum[i] += cross_entropy(&rows64, &b.labels, classes, 0.0).0 * n as f64;
        }
        count += n;
    }
    let images = count;
    let count = count.max(1) as f64;
    Ok(Evaluation {
        acc: correct.iter().map(|&c| c as f64 / count).collect(),
        loss: loss_sum.iter().map(|&l| l / count).collect(),
        images,
    })
}

/// Index of the largest value of each row of `logits` [B, K].
fn argmax_rows(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks(classes)
        .map(|row| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_logits() {
        let logits = [0.0, 2.0, 1.0, 3.0, 0.0, 0.0];
        assert_eq!(argmax_rows(&logits, 3), [1, 0]);
        let logits64: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
        let loss = cross_entropy(&logits64, &[1, 0], 3, 0.0).0;
        let row = |z: [f64; 3], l: usize| z.iter().map(|v| v.exp()).sum::<f64>().ln() - z[l];
        assert!((loss - (row([0.0, 2.0, 1.0], 1) + row([3.0, 0.0, 0.0], 0)) / 2.0).abs() < 1e-6);
    }
}
