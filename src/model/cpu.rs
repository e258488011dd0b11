//! The whole ViT on the CPU in f64, built from the kernels' CPU twins: the reference the
//! GPU model is tested against, and the browser's fallback when there is no WebGPU.
//! Plain and unoptimised on purpose.

use crate::cpu;
use crate::cpu::attention::{AttentionMasks, AttentionShape};
use crate::cpu::matmul::Epilogue;
use crate::kernels::matmul::Layout;
use crate::model::{ParamLayout, VitConfig};
use crate::{Error, Result};

/// A ViT's parameters (an arena laid out by `layout`) on the CPU.
pub struct CpuVit<'a> {
    pub config: &'a VitConfig,
    pub layout: &'a ParamLayout,
    pub params: &'a [f64],
}

/// What the backward pass needs from one block's forward.
struct BlockCache {
    x_in: Vec<f64>,  // [B·N, C]
    ln1: Vec<f64>,   // [B·N, C]
    mean1: Vec<f64>, // [B·N]
    rstd1: Vec<f64>, // [B·N]
    qkv: Vec<f64>,   // [B·N, 3C]
    attn: Vec<f64>,  // [B·N, C]
    x_mid: Vec<f64>, // [B·N, C]
    ln2: Vec<f64>,
    mean2: Vec<f64>,
    rstd2: Vec<f64>,
    pre: Vec<f64>, // [B·N, H] fc1 output before GELU
    act: Vec<f64>, // [B·N, H]
}

/// A forward pass: the logits and what the backward pass needs.
pub struct Forward {
    /// [B, K]
    pub logits: Vec<f64>,
    batch: usize,
    resolution: usize,
    images: Vec<f64>,
    blocks: Vec<BlockCache>,
    /// The block index of each entry of `blocks`.
    active: Vec<usize>,
    cls: Vec<f64>, // [B, C] class token after the last block
    cls_norm: Vec<f64>,
    mean_f: Vec<f64>,
    rstd_f: Vec<f64>,
}

/// Per-sample drop-path factors: `scales[(2·block + branch)·B + b]` multiplies branch
/// (0 attention, 1 MLP) of `block` for image b (0 drops it, 1/keep keeps it).
#[derive(Clone, Copy)]
pub struct DropPath<'a> {
    pub scales: &'a [f64],
}

impl<'a> DropPath<'a> {
    fn of(self, block: usize, branch: usize, batch: usize) -> &'a [f64] {
        &self.scales[(2 * block + branch) * batch..][..batch]
    }
}

/// x + branch, or x + branch · scale[b] under drop-path.
fn residual(x: &[f64], branch: &[f64], scale: Option<&[f64]>) -> Vec<f64> {
    match scale {
        Some(s) => cpu::ops::add_scaled_rows(x, branch, s),
        None => cpu::ops::add_forward(x, branch),
    }
}

/// y = x Wᵀ + bias for x [rows, in], W [out, in]: a timm Linear.
fn linear(x: &[f64], w: &[f64], bias: &[f64], rows: usize, gelu: bool) -> (Vec<f64>, Vec<f64>) {
    let (out, inp) = (bias.len(), w.len() / bias.len());
    let epi = Epilogue { bias: Some(bias), gelu, ..Default::default() };
    cpu::matmul::matmul(Layout::NT, 1, rows, out, inp, x, true, w, true, &epi)
}

/// Gradients of a Linear: (dx [rows, in], dW [out, in], dbias [out]) from dy [rows, out].
fn linear_backward(x: &[f64], w: &[f64], dy: &[f64], rows: usize, out: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let inp = w.len() / out;
    let none = Epilogue::default();
    let (dx, _) = cpu::matmul::matmul(Layout::NN, 1, rows, inp, out, dy, true, w, true, &none);
    let (dw, _) = cpu::matmul::matmul(Layout::TN, 1, out, inp, rows, dy, true, x, true, &none);
    let db = cpu::ops::column_sum(dy, rows, out, None);
    (dx, dw, db)
}

impl Forward {
    /// The last block's q, k, v projection [B, N, 3C] (the input of attention maps).
    pub fn last_block_qkv(&self) -> Option<&[f64]> {
        self.blocks.last().map(|b| b.qkv.as_slice())
    }
}

impl CpuVit<'_> {
    fn p(&self, name: &str) -> &[f64] {
        self.layout.slice(self.params, name)
    }

    /// The position embedding [N, C] at `resolution`: the stored grid resized bicubically
    /// when the resolution is not the one it was made for (the class position as is).
    fn pos_embed(&self, resolution: usize) -> Vec<f64> {
        let c = self.config.dim;
        let pos = self.p("pos_embed");
        let (g, g2) = (self.config.grid(), resolution / self.config.patch_size);
        if g == g2 {
            return pos.to_vec();
        }
        let mut out = pos[..c].to_vec();
        out.extend(cpu::resize::pos_embed_resize_forward(&pos[c..], [g, g], c, [g2, g2]));
        out
    }

    fn check(&self, images: &[f64], batch: usize, resolution: usize) -> Result<()> {
        let cfg = self.config;
        if !resolution.is_multiple_of(cfg.patch_size) || images.len() != batch * cfg.in_chans * resolution * resolution
        {
            return Err(Error::shape(
                "vit_forward",
                format!(
                    "{} image values for batch {batch} at {resolution} px; need [B, {}, R, R] with R a multiple of {}",
                    images.len(),
                    cfg.in_chans,
                    cfg.patch_size
                ),
            ));
        }
        Ok(())
    }

    /// Logits [B, K] of images [B, Ch, R, R] (normalised), with optional drop-path.
    pub fn forward(
        &self,
        images: &[f64],
        batch: usize,
        resolution: usize,
        drop: Option<DropPath<'_>>,
    ) -> Result<Forward> {
        let all: Vec<usize> = (0..self.layout.depth()).collect();
        self.forward_blocks(images, batch, resolution, drop, &all)
    }

    /// [`CpuVit::forward`] of the elastic sub-network that runs only `active` (increasing
    /// block indices); the other blocks are the identity.
    pub fn forward_blocks(
        &self,
        images: &[f64],
        batch: usize,
        resolution: usize,
        drop: Option<DropPath<'_>>,
        active: &[usize],
    ) -> Result<Forward> {
        self.check(images, batch, resolution)?;
        let cfg = self.config;
        let (c, h, p) = (cfg.dim, cfg.mlp_hidden, cfg.patch_size);
        let n = cfg.tokens_at(resolution);
        let rows = batch * n;
        let shape = [batch, cfg.in_chans, resolution, resolution];
        let tokens = cpu::patch::patch_embed_forward(
            images,
            shape,
            self.p("patch_embed.proj.weight"),
            self.p("patch_embed.proj.bias"),
            p,
        ); // [B·Np, C]
        let seq = cpu::ops::cls_concat(&tokens, self.p("cls_token"), batch, n - 1, c); // [B, N, C]
        let pos = self.pos_embed(resolution);
        let mut x: Vec<f64> = seq.iter().enumerate().map(|(i, v)| v + pos[i % (n * c)]).collect();
        let eps = cfg.layernorm_eps;
        let att = AttentionShape { b: batch, n, nh: cfg.heads, hs: cfg.head_size() };
        let scale = 1.0 / (cfg.head_size() as f64).sqrt();
        let mut blocks = Vec::new();
        for &i in active {
            let q = |s: &str| self.p(&format!("blocks.{i}.{s}"));
            let (ln1, mean1, rstd1) =
                cpu::layernorm::layernorm_forward(&x, q("norm1.weight"), q("norm1.bias"), rows, c, eps);
            let (qkv, _) = linear(&ln1, q("attn.qkv.weight"), q("attn.qkv.bias"), rows, false);
            let (attn, _) = cpu::attention::attention_forward(&qkv, att, AttentionMasks::default(), scale);
            let (branch, _) = linear(&attn, q("attn.proj.weight"), q("attn.proj.bias"), rows, false);
            let x_mid = residual(&x, &branch, drop.map(|d| d.of(i, 0, batch)));
            let (ln2, mean2, rstd2) =
                cpu::layernorm::layernorm_forward(&x_mid, q("norm2.weight"), q("norm2.bias"), rows, c, eps);
            let (act, pre) = linear(&ln2, q("mlp.fc1.weight"), q("mlp.fc1.bias"), rows, true);
            debug_assert_eq!(act.len(), rows * h);
            let (branch, _) = linear(&act, q("mlp.fc2.weight"), q("mlp.fc2.bias"), rows, false);
            let x_out = residual(&x_mid, &branch, drop.map(|d| d.of(i, 1, batch)));
            blocks.push(BlockCache { x_in: x, ln1, mean1, rstd1, qkv, attn, x_mid, ln2, mean2, rstd2, pre, act });
            x = x_out;
        }
        // The final norm is per token and only the class token reaches the head.
        let cls = cpu::ops::cls_slice(&x, batch, n, c);
        let (cls_norm, mean_f, rstd_f) =
            cpu::layernorm::layernorm_forward(&cls, self.p("norm.weight"), self.p("norm.bias"), batch, c, eps);
        let (logits, _) = linear(&cls_norm, self.p("head.weight"), self.p("head.bias"), batch, false);
        Ok(Forward {
            logits,
            batch,
            resolution,
            images: images.to_vec(),
            blocks,
            active: active.to_vec(),
            cls,
            cls_norm,
            mean_f,
            rstd_f,
        })
    }

    /// The gradient of every parameter (an arena laid out like the parameters, padding 0)
    /// for upstream gradient `dlogits` [B, K].
    pub fn backward(&self, fwd: &Forward, dlogits: &[f64], drop: Option<DropPath<'_>>) -> Vec<f64> {
        let cfg = self.config;
        let (c, h, k, p) = (cfg.dim, cfg.mlp_hidden, cfg.classes, cfg.patch_size);
        let (batch, resolution) = (fwd.batch, fwd.resolution);
        let n = cfg.tokens_at(resolution);
        let rows = batch * n;
        let mut grads = vec![0.0; self.layout.len];
        let mut put = |name: &str, g: Vec<f64>| grads[self.layout.spec(name).range()].copy_from_slice(&g);

        let (dcls_norm, dw, db) = linear_backward(&fwd.cls_norm, self.p("head.weight"), dlogits, batch, k);
        put("head.weight", dw);
        put("head.bias", db);
        let (dcls, dg, db) = cpu::layernorm::layernorm_backward_full(
            &fwd.cls,
            self.p("norm.weight"),
            &fwd.mean_f,
            &fwd.rstd_f,
            &dcls_norm,
            batch,
            c,
        );
        put("norm.weight", dg);
        put("norm.bias", db);
        let mut dx = cpu::ops::cls_slice_backward(&dcls, batch, n, c); // [B, N, C]

        // Blocks the forward pass skipped keep a zero gradient.
        for (&i, bc) in fwd.active.iter().zip(&fwd.blocks).rev() {
            let q = |s: &str| self.p(&format!("blocks.{i}.{s}"));
            let name = |s: &str| format!("blocks.{i}.{s}");
            // MLP branch: x_out = x_mid + s·fc2(gelu(fc1(ln2(x_mid)))).
            let dbranch = match drop {
                Some(d) => cpu::ops::scale_rows(&dx, d.of(i, 1, batch)),
                None => dx.clone(),
            };
            let (dact, dw, db) = linear_backward(&bc.act, q("mlp.fc2.weight"), &dbranch, rows, c);
            put(&name("mlp.fc2.weight"), dw);
            put(&name("mlp.fc2.bias"), db);
            let dpre = cpu::gelu::gelu_backward(&bc.pre, &dact);
            let (dln2, dw, db) = linear_backward(&bc.ln2, q("mlp.fc1.weight"), &dpre, rows, h);
            put(&name("mlp.fc1.weight"), dw);
            put(&name("mlp.fc1.bias"), db);
            let (dxm, dg, db) = cpu::layernorm::layernorm_backward_full(
                &bc.x_mid,
                q("norm2.weight"),
                &bc.mean2,
                &bc.rstd2,
                &dln2,
                rows,
                c,
            );
            put(&name("norm2.weight"), dg);
            put(&name("norm2.bias"), db);
            let dx_mid = cpu::ops::add_forward(&dx, &dxm);
            // Attention branch: x_mid = x_in + s·proj(attn(qkv(ln1(x_in)))).
            let dbranch = match drop {
                Some(d) => cpu::ops::scale_rows(&dx_mid, d.of(i, 0, batch)),
                None => dx_mid.clone(),
            };
            let (dattn, dw, db) = linear_backward(&bc.attn, q("attn.proj.weight"), &dbranch, rows, c);
            put(&name("attn.proj.weight"), dw);
            put(&name("attn.proj.bias"), db);
            let att = AttentionShape { b: batch, n, nh: cfg.heads, hs: cfg.head_size() };
            let scale = 1.0 / (cfg.head_size() as f64).sqrt();
            let dqkv = cpu::attention::attention_backward(&bc.qkv, &dattn, att, AttentionMasks::default(), scale);
            let (dln1, dw, db) = linear_backward(&bc.ln1, q("attn.qkv.weight"), &dqkv, rows, 3 * c);
            put(&name("attn.qkv.weight"), dw);
            put(&name("attn.qkv.bias"), db);
            let (dxi, dg, db) = cpu::layernorm::layernorm_backward_full(
                &bc.x_in,
                q("norm1.weight"),
                &bc.mean1,
                &bc.rstd1,
                &dln1,
                rows,
                c,
            );
            put(&name("norm1.weight"), dg);
            put(&name("norm1.bias"), db);
            dx = cpu::ops::add_forward(&dx_mid, &dxi);
        }

        // Embeddings: x0 = cls_concat(patch_embed(images), cls) + pos.
        let dpos_rt = cpu::ops::add_broadcast_backward(&dx, batch, n * c, None); // [N, C]
        let (g, g2) = (cfg.grid(), resolution / p);
        let dpos = if g == g2 {
            dpos_rt
        } else {
            let mut d = dpos_rt[..c].to_vec();
            d.extend(cpu::resize::pos_embed_resize_backward(&dpos_rt[c..], [g, g], c, [g2, g2]));
            d
        };
        put("pos_embed", dpos);
        let (dtokens, dcls) = cpu::ops::cls_concat_backward(&dx, batch, n, c, None);
        put("cls_token", dcls);
        let shape = [batch, cfg.in_chans, resolution, resolution];
        let (dw, db) = cpu::patch::patch_embed_backward(&fwd.images, shape, &dtokens, c, p);
        put("patch_embed.proj.weight", dw);
        put("patch_embed.proj.bias", db);
        grads
    }
}

/// Mean softmax cross-entropy with label smoothing over a batch: (loss, dlogits [B, K]).
pub fn cross_entropy(logits: &[f64], labels: &[u32], classes: usize, smoothing: f64) -> (f64, Vec<f64>) {
    let batch = labels.len();
    let (loss, dlogits) =
        cpu::cross_entropy::cross_entropy_hard(logits, labels, batch, classes, smoothing, 1.0 / batch as f64);
    (loss.iter().sum::<f64>() / batch as f64, dlogits)
}
