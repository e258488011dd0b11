//! The ViT on the GPU: parameters and gradients in flat arenas, activations planned once
//! per (batch, resolution), and forward / loss / backward recorded into a [`Recorder`]
//! so that a whole training step is one submission.
//!
//! Mixed precision ([`GpuVit::set_activations`] with f16): activations, saved tensors and
//! activation gradients are stored as f16, and the kernels read the weights from an f16
//! copy of the arena that each forward pass converts first; parameters, gradients,
//! optimizer state and every reduction stay f32.

pub use super::activations::{Activations, Loss};
use super::activations::{BlockActs, PosResize};
use crate::gpu::{Element, GpuContext, Owner, Recorder, Tensor};
use crate::kernels::attention::{attention_backward, attention_forward, AttentionOptions};
use crate::kernels::cross_entropy::{cross_entropy_hard, cross_entropy_soft};
use crate::kernels::layernorm::{layernorm_backward_full, layernorm_forward};
use crate::kernels::matmul::{matmul, Epilogue, Layout};
use crate::kernels::ops;
use crate::kernels::patch::{patch_embed_backward, patch_embed_forward};
use crate::kernels::resize::{pos_embed_resize_backward, pos_embed_resize_forward};
use crate::model::{GradPart, ParamLayout, VitConfig};
use crate::{Error, Result};

/// A ViT's parameters and their gradients on the GPU.
pub struct GpuVit {
    pub config: VitConfig,
    pub layout: ParamLayout,
    /// [layout.len]
    pub params: Tensor,
    /// [layout.len]; padding stays 0, every parameter's slice is overwritten by `backward`.
    pub grads: Tensor,
    /// What activations are stored as (f32 unless [`GpuVit::set_activations`]).
    activations: Element,
    /// With f16 activations: the f16 copy of the weights the passes read [layout.len],
    /// written by every forward from the arena it runs.
    weights16: Option<Tensor>,
    /// Identifies the model's tensors to the step plans that bind them (new after
    /// [`GpuVit::set_activations`]).
    pub(crate) owner: Owner,
}

impl GpuVit {
    /// Uploads `params` (an arena laid out by `layout`) and a zeroed gradient arena.
    pub fn new(ctx: &GpuContext, config: VitConfig, layout: ParamLayout, params: &[f32]) -> Result<GpuVit> {
        config.validate()?;
        if params.len() != layout.len {
            return Err(Error::shape(
                "vit",
                format!("{} parameter values for a layout of {}", params.len(), layout.len),
            ));
        }
        let (params, grads) =
            (ctx.upload(params, &[layout.len], "vit.params")?, ctx.zeros(&[layout.len], "vit.grads")?);
        let (activations, weights16, owner) = (Element::F32, None, Owner::default());
        Ok(GpuVit { config, layout, params, grads, activations, weights16, owner })
    }

    /// Stores activations (and the weights the kernels read) as `element` from the next
    /// [`GpuVit::plan`] on; f16 needs the adapter's `SHADER_F16`. Plans made before keep
    /// their type, so plan again after a change.
    pub fn set_activations(&mut self, ctx: &GpuContext, element: Element) -> Result<()> {
        if element == Element::F16 && !ctx.has_f16() {
            return Err(Error::missing_f16(format!("f16 activations on {}", ctx.summary.display_name())));
        }
        self.weights16 = match element {
            Element::F32 => None,
            Element::F16 => Some(ctx.empty_as(&[self.layout.len], Element::F16, "vit.weights16")?),
        };
        self.activations = element;
        self.owner = Owner::default();
        Ok(())
    }

    /// What activations are stored as.
    pub fn activations(&self) -> Element {
        self.activations
    }

    /// The arena the kernels read weights from: `arena` itself in f32; in f16 the copy
    /// that [`GpuVit::forward`] converted `arena` into.
    fn weights<'a>(&'a self, arena: &'a Tensor) -> &'a Tensor {
        self.weights16.as_ref().unwrap_or(arena)
    }

    /// Blocks in this model (L).
    pub fn depth(&self) -> usize {
        self.layout.depth()
    }

    /// The view of parameter `name` in `arena` (parameters, gradients or an EMA).
    pub fn view(&self, arena: &Tensor, name: &str) -> Result<Tensor> {
        let spec = self.layout.spec(name);
        arena.view(spec.offset, &spec.shape)
    }

    fn block_view(&self, arena: &Tensor, i: usize, name: &str) -> Result<Tensor> {
        self.view(arena, &format!("blocks.{i}.{name}"))
    }

    /// Allocates the activations of a step over `batch` images at `resolution` px.
    pub fn plan(&self, ctx: &GpuContext, batch: usize, resolution: usize) -> Result<Activations> {
        let cfg = &self.config;
        if batch == 0 || resolution == 0 || !resolution.is_multiple_of(cfg.patch_size) {
            return Err(Error::invalid(
                "vit plan",
                format!(
                    "batch {batch} at {resolution} px: need a batch of at least 1 and a resolution that is a multiple \
                        of the patch size {}",
                    cfg.patch_size
                ),
            ));
        }
        let (c, h, k, nh) = (cfg.dim, cfg.mlp_hidden, cfg.classes, cfg.heads);
        let n = cfg.tokens_at(resolution);
        let np = n - 1;
        let rows = batch * n;
        let depth = self.depth();
        // Activations (`e`) in the model's element type; statistics, losses and the
        // gradients of weights (`f`) always f32.
        let e = |shape: &[usize], label: &str| ctx.empty_as(shape, self.activations, label);
        let f = |shape: &[usize], label: &str| ctx.empty(shape, label);
        let blocks = (0..depth)
            .map(|i| {
                let l = |s: &str| format!("vit.block{i}.{s}");
                Ok(BlockActs {
                    ln1: e(&[batch, n, c], &l("ln1"))?,
                    mean1: f(&[rows], &l("mean1"))?,
                    rstd1: f(&[rows], &l("rstd1"))?,
                    qkv: e(&[batch, n, 3 * c], &l("qkv"))?,
                    attn: e(&[batch, n, c], &l("attn"))?,
                    lse: f(&[batch, nh, n], &l("lse"))?,
                    x_mid: e(&[batch, n, c], &l("x_mid"))?,
                    ln2: e(&[batch, n, c], &l("ln2"))?,
                    mean2: f(&[rows], &l("mean2"))?,
                    rstd2: f(&[rows], &l("rstd2"))?,
                    pre: e(&[batch, n, h], &l("fc1.pre"))?,
                    act: e(&[batch, n, h], &l("fc1.act"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let drop_stride = batch.next_multiple_of(ctx.arena_align());
        let drop_len = depth.max(1) * 2 * drop_stride;
        let (g, g2) = (cfg.grid(), resolution / cfg.patch_size);
        let pos = if g == g2 {
            None
        } else {
            Some(PosResize {
                grid: e(&[g, g, c], "vit.pos.grid")?,
                resized: e(&[g2, g2, c], "vit.pos.resized")?,
                dgrid: f(&[g, g, c], "vit.pos.dgrid")?,
                pos: e(&[n, c], "vit.pos")?,
                dpos: f(&[n, c], "vit.pos.dpos")?,
                dresized: f(&[g2, g2, c], "vit.pos.dresized")?,
            })
        };
        Ok(Activations {
            batch,
            resolution,
            tokens: n,
            images: f(&[batch, cfg.in_chans, resolution, resolution], "vit.images")?,
            labels: ctx.upload_u32(&vec![0; batch], &[batch], "vit.labels")?,
            targets: f(&[batch, k], "vit.targets")?,
            drop_scales: ctx.upload(&vec![1.0; drop_len], &[drop_len], "vit.drop")?,
            drop_stride,
            logits: e(&[batch, k], "vit.logits")?,
            loss: f(&[1], "vit.loss")?,
            patches: e(&[batch * np, cfg.patch_values()], "vit.patches")?,
            tokens_out: e(&[batch * np, c], "vit.tokens")?,
            xs: (0..=depth).map(|i| e(&[batch, n, c], &format!("vit.x{i}"))).collect::<Result<_>>()?,
            blocks,
            cls: e(&[batch, c], "vit.cls")?,
            cls_norm: e(&[batch, c], "vit.cls_norm")?,
            mean_f: f(&[batch], "vit.norm.mean")?,
            rstd_f: f(&[batch], "vit.norm.rstd")?,
            loss_rows: f(&[batch], "vit.loss_rows")?,
            dlogits: e(&[batch, k], "vit.dlogits")?,
            dcls_norm: e(&[batch, c], "vit.dcls_norm")?,
            dcls: e(&[batch, c], "vit.dcls")?,
            dx: e(&[batch, n, c], "vit.dx")?,
            dx_mid: e(&[batch, n, c], "vit.dx_mid")?,
            dtmp: e(&[batch, n, c], "vit.dtmp")?,
            dbranch: e(&[batch, n, c], "vit.dbranch")?,
            dattn: e(&[batch, n, c], "vit.dattn")?,
            dln: e(&[batch, n, c], "vit.dln")?,
            dqkv: e(&[batch, n, 3 * c], "vit.dqkv")?,
            dpre: e(&[batch, n, h], "vit.dpre")?,
            dtokens: e(&[batch, np, c], "vit.dtokens")?,
            pos,
            active: (0..depth).collect(),
            owner: Owner::default(),
        })
    }

    /// The drop-path factors of branch (0 attention, 1 MLP) of block `i`: [B].
    fn drop_scale(&self, acts: &Activations, i: usize, branch: usize) -> Result<Tensor> {
        acts.drop_scales.view((2 * i + branch) * acts.drop_stride, &[acts.batch])
    }

    /// Records the forward pass of `acts.images` with the weights in `arena` (the model's
    /// parameters or an EMA of them) up to `acts.logits`. With `drop_path`, each residual
    /// branch is scaled per image by `acts.drop_scales`. With f16 activations, `arena` is
    /// first converted into the f16 weights the kernels read.
    pub fn forward(&self, rec: &mut Recorder<'_>, arena: &Tensor, acts: &Activations, drop_path: bool) -> Result<()> {
        let cfg = &self.config;
        let (b, n, c) = (acts.batch, acts.tokens, cfg.dim);
        if acts.logits.element() != self.activations {
            return Err(Error::invalid(
                "vit forward",
                format!(
                    "activations planned in {} for a model in {}; plan again",
                    acts.logits.element(),
                    self.activations
                ),
            ));
        }
        if let Some(weights16) = &self.weights16 {
            ops::convert(rec, arena, weights16)?;
        }
        let arena = self.weights(arena);
        let w = |name: &str| self.view(arena, name);
        patch_embed_forward(
            rec,
            &acts.images,
            &w("patch_embed.proj.weight")?,
            &w("patch_embed.proj.bias")?,
            &acts.patches,
            &acts.tokens_out,
        )?;
        let x0 = &acts.xs[0];
        let cls = w("cls_token")?.reshape(&[c])?;
        ops::cls_concat(rec, &acts.tokens_out.reshape(&[b, n - 1, c])?, &cls, x0)?;
        match &acts.pos {
            None => ops::add_broadcast(rec, x0, &w("pos_embed")?.reshape(&[n, c])?)?,
            Some(pr) => {
                let stored = w("pos_embed")?;
                let g = cfg.grid();
                rec.copy(&stored.view(c, &[g, g, c])?, &pr.grid)?;
                pos_embed_resize_forward(rec, &pr.grid, &pr.resized)?;
                rec.copy(&stored.view(0, &[c])?, &pr.pos.view(0, &[c])?)?;
                rec.copy(&pr.resized, &pr.pos.view(c, &[n - 1, c])?)?;
                ops::add_broadcast(rec, x0, &pr.pos)?;
            }
        }
        let opts = AttentionOptions::new(1.0 / (cfg.head_size() as f32).sqrt());
        let eps = cfg.layernorm_eps as f32;
        for (j, (&i, ba)) in acts.active.iter().zip(&acts.blocks).enumerate() {
            let p = |name: &str| self.block_view(arena, i, name);
            let x = &acts.xs[j];
            layernorm_forward(rec, x, &p("norm1.weight")?, &p("norm1.bias")?, &ba.ln1, &ba.mean1, &ba.rstd1, eps)?;
            let bias = p("attn.qkv.bias")?;
            matmul(
                rec,
                Layout::NT,
                &flat(&ba.ln1)?,
                &p("attn.qkv.weight")?,
                &flat(&ba.qkv)?,
                &Epilogue { bias: Some(&bias), ..Default::default() },
            )?;
            attention_forward(rec, &ba.qkv, &opts, &ba.attn, &ba.lse)?;
            let (proj_w, proj_b) = (p("attn.proj.weight")?, p("attn.proj.bias")?);
            self.residual(
                rec,
                acts,
                &ba.attn,
                &proj_w,
                &proj_b,
                x,
                &ba.x_mid,
                drop_path.then(|| self.drop_scale(acts, i, 0)),
            )?;
            layernorm_forward(
                rec,
                &ba.x_mid,
                &p("norm2.weight")?,
                &p("norm2.bias")?,
                &ba.ln2,
                &ba.mean2,
                &ba.rstd2,
                eps,
            )?;
            let bias = p("mlp.fc1.bias")?;
            let pre = flat(&ba.pre)?;
            let epi = Epilogue { bias: Some(&bias), gelu: true, pre: Some(&pre), ..Default::default() };
            matmul(rec, Layout::NT, &flat(&ba.ln2)?, &p("mlp.fc1.weight")?, &flat(&ba.act)?, &epi)?;
            let (fc2_w, fc2_b) = (p("mlp.fc2.weight")?, p("mlp.fc2.bias")?);
            let out = &acts.xs[j + 1];
            self.residual(
                rec,
                acts,
                &ba.act,
                &fc2_w,
                &fc2_b,
                &ba.x_mid,
                out,
                drop_path.then(|| self.drop_scale(acts, i, 1)),
            )?;
        }
        ops::cls_slice(rec, &acts.xs[acts.active.len()], &acts.cls)?;
        layernorm_forward(
            rec,
            &acts.cls,
            &w("norm.weight")?,
            &w("norm.bias")?,
            &acts.cls_norm,
            &acts.mean_f,
            &acts.rstd_f,
            eps,
        )?;
        let bias = w("head.bias")?;
        matmul(
            rec,
            Layout::NT,
            &acts.cls_norm,
            &w("head.weight")?,
            &acts.logits,
            &Epilogue { bias: Some(&bias), ..Default::default() },
        )
    }

    /// out = x + input·Wᵀ + bias, the branch scaled per image under drop-path (`drop_scale`),
    /// in one matmul.
    #[allow(clippy::too_many_arguments, reason = "the linear's operands plus the residual and drop-path")]
    fn residual(
        &self,
        rec: &mut Recorder<'_>,
        acts: &Activations,
        input: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        x: &Tensor,
        out: &Tensor,
        drop_scale: Option<Result<Tensor>>,
    ) -> Result<()> {
        let (input2, x2, out2) = (flat(input)?, flat(x)?, flat(out)?);
        let scale = drop_scale.transpose()?;
        let epilogue = Epilogue {
            bias: Some(bias),
            residual: Some(&x2),
            row_scale: scale.as_ref().map(|s| (s, acts.tokens)),
            ..Default::default()
        };
        matmul(rec, Layout::NT, &input2, weight, &out2, &epilogue)
    }

    /// Records the loss of `acts.logits`: per-image losses, their mean in `acts.loss`, and
    /// dlogits = d(mean loss)/dlogits for [`GpuVit::backward`].
    pub fn loss(&self, rec: &mut Recorder<'_>, acts: &Activations, loss: Loss) -> Result<()> {
        self.scaled_loss(rec, acts, loss, 1.0)
    }

    /// [`GpuVit::loss`] with dlogits multiplied by `scale`, so that every gradient of the
    /// backward pass is `scale` times the true one: loss scaling keeps small f16 activation
    /// gradients above f16's underflow. The mean loss itself is not scaled.
    pub fn scaled_loss(&self, rec: &mut Recorder<'_>, acts: &Activations, loss: Loss, scale: f32) -> Result<()> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::invalid("vit loss", format!("loss scale {scale}; it must be finite and > 0")));
        }
        let rows = match loss {
            Loss::Partial { rows } if rows == 0 || rows > acts.batch => {
                return Err(Error::invalid(
                    "vit loss",
                    format!("{rows} images in activations planned for {}; need 1 to {0}", acts.batch),
                ));
            }
            Loss::Partial { rows } => rows,
            Loss::Hard { .. } | Loss::Soft => acts.batch,
        };
        let mean = 1.0 / rows as f32;
        let grad_scale = scale * mean;
        match loss {
            Loss::Hard { smoothing } => cross_entropy_hard(
                rec,
                &acts.logits,
                &acts.labels,
                &acts.loss_rows,
                &acts.dlogits,
                smoothing,
                grad_scale,
            )?,
            Loss::Soft | Loss::Partial { .. } => {
                cross_entropy_soft(rec, &acts.logits, &acts.targets, &acts.loss_rows, &acts.dlogits, grad_scale)?
            }
        }
        ops::reduce_sum(rec, &acts.loss_rows, &acts.loss, mean)
    }

    /// Records the backward pass from `acts.dlogits` (written by [`GpuVit::loss`]) after a
    /// [`GpuVit::forward`] of the model's own parameters; writes every gradient slice.
    pub fn backward(&self, rec: &mut Recorder<'_>, acts: &Activations, drop_path: bool) -> Result<()> {
        self.backward_in_parts(rec, acts, drop_path, &mut |_, _| Ok(()))
    }

    /// [`GpuVit::backward`], calling `done` as soon as the commands that finish a part of the
    /// gradients are recorded (the head and final norm, then each block that ran, then the
    /// embeddings), so that a data-parallel step can send a part off while the rest runs.
    pub fn backward_in_parts<'r>(
        &self,
        rec: &mut Recorder<'r>,
        acts: &Activations,
        drop_path: bool,
        done: &mut dyn FnMut(&mut Recorder<'r>, GradPart) -> Result<()>,
    ) -> Result<()> {
        let cfg = &self.config;
        let (b, n, c) = (acts.batch, acts.tokens, cfg.dim);
        // The weights the forward pass read (in f16, the copy it converted).
        let (params, grads) = (self.weights(&self.params), &self.grads);
        let w = |name: &str| self.view(params, name);
        let g = |name: &str| self.view(grads, name);
        let none = Epilogue::default();

        // Head and final norm (class token only).
        matmul(rec, Layout::NN, &acts.dlogits, &w("head.weight")?, &acts.dcls_norm, &none)?;
        matmul(rec, Layout::TN, &acts.dlogits, &acts.cls_norm, &g("head.weight")?, &none)?;
        ops::column_sum(rec, &acts.dlogits, &g("head.bias")?, false)?;
        layernorm_backward_full(
            rec,
            &acts.cls,
            &w("norm.weight")?,
            &acts.mean_f,
            &acts.rstd_f,
            &acts.dcls_norm,
            &acts.dcls,
            &g("norm.weight")?,
            &g("norm.bias")?,
            false,
        )?;
        ops::cls_slice_backward(rec, &acts.dcls, &acts.dx)?;
        done(rec, GradPart::Head)?;

        let opts = AttentionOptions::new(1.0 / (cfg.head_size() as f32).sqrt());
        for (j, (&i, ba)) in acts.active.iter().zip(&acts.blocks).enumerate().rev() {
            let p = |name: &str| self.block_view(params, i, name);
            let d = |name: &str| self.block_view(grads, i, name);
            // MLP branch: x_out = x_mid + s·fc2(gelu(fc1(ln2(x_mid)))).
            let dbranch = self.branch_grad(rec, acts, &acts.dx, drop_path, i, 1)?;
            // fc2's input gradient goes through GELU' in the same matmul: dpre = (dy W) ∘ gelu'(pre).
            self.linear_backward(
                rec,
                &ba.act,
                &p("mlp.fc2.weight")?,
                dbranch,
                (&acts.dpre, Some(&ba.pre)),
                &d("mlp.fc2.weight")?,
                &d("mlp.fc2.bias")?,
            )?;
            self.linear_backward(
                rec,
                &ba.ln2,
                &p("mlp.fc1.weight")?,
                &acts.dpre,
                (&acts.dln, None),
                &d("mlp.fc1.weight")?,
                &d("mlp.fc1.bias")?,
            )?;
            layernorm_backward_full(
                rec,
                &ba.x_mid,
                &p("norm2.weight")?,
                &ba.mean2,
                &ba.rstd2,
                &acts.dln,
                &acts.dtmp,
                &d("norm2.weight")?,
                &d("norm2.bias")?,
                false,
            )?;
            ops::add_forward(rec, &acts.dx, &acts.dtmp, &acts.dx_mid)?;
            // Attention branch: x_mid = x_in + s·proj(attention(qkv(ln1(x_in)))).
            let dbranch = self.branch_grad(rec, acts, &acts.dx_mid, drop_path, i, 0)?;
            self.linear_backward(
                rec,
                &ba.attn,
                &p("attn.proj.weight")?,
                dbranch,
                (&acts.dattn, None),
                &d("attn.proj.weight")?,
                &d("attn.proj.bias")?,
            )?;
            attention_backward(rec, &ba.qkv, &ba.attn, &acts.dattn, &ba.lse, &opts, &acts.dqkv)?;
            self.linear_backward(
                rec,
                &ba.ln1,
                &p("attn.qkv.weight")?,
                &acts.dqkv,
                (&acts.dln, None),
                &d("attn.qkv.weight")?,
                &d("attn.qkv.bias")?,
            )?;
            layernorm_backward_full(
                rec,
                &acts.xs[j],
                &p("norm1.weight")?,
                &ba.mean1,
                &ba.rstd1,
                &acts.dln,
                &acts.dtmp,
                &d("norm1.weight")?,
                &d("norm1.bias")?,
                false,
            )?;
            ops::add_forward(rec, &acts.dx_mid, &acts.dtmp, &acts.dx)?;
            done(rec, GradPart::Block(i))?;
        }

        // Skipped blocks take no gradient (their AdamW update is skipped too, see
        // `Optimizer::record_step`); zeros keep the global norm to the blocks that ran.
        for i in (0..self.depth()).filter(|i| !acts.active.contains(i)) {
            for spec in self.layout.specs.iter().filter(|s| s.name.starts_with(&format!("blocks.{i}."))) {
                rec.clear(&grads.view(spec.offset, &spec.shape)?);
            }
        }

        // Embeddings: x0 = cls_concat(patch_embed(images), cls) + pos.
        let dpos = g("pos_embed")?;
        match &acts.pos {
            None => ops::add_broadcast_backward(rec, &acts.dx, &dpos.reshape(&[n, c])?, false)?,
            Some(pr) => {
                ops::add_broadcast_backward(rec, &acts.dx, &pr.dpos, false)?;
                rec.copy(&pr.dpos.view(c, pr.resized.shape())?, &pr.dresized)?;
                pos_embed_resize_backward(rec, &pr.dresized, &pr.dgrid)?;
                let gs = cfg.grid();
                rec.copy(&pr.dpos.view(0, &[c])?, &dpos.view(0, &[c])?)?;
                rec.copy(&pr.dgrid, &dpos.view(c, &[gs, gs, c])?)?;
            }
        }
        ops::cls_concat_backward(rec, &acts.dx, &acts.dtokens, &g("cls_token")?.reshape(&[c])?, false)?;
        patch_embed_backward(
            rec,
            &acts.patches,
            &acts.dtokens.reshape(&[b * (n - 1), c])?,
            &g("patch_embed.proj.weight")?,
            &g("patch_embed.proj.bias")?,
            false,
        )?;
        done(rec, GradPart::Embeddings)
    }

    /// The gradient reaching a residual branch: `dx` itself, or `dx` scaled per image by
    /// the drop-path factors (into `acts.dbranch`).
    fn branch_grad<'a>(
        &self,
        rec: &mut Recorder<'_>,
        acts: &'a Activations,
        dx: &'a Tensor,
        drop_path: bool,
        block: usize,
        branch: usize,
    ) -> Result<&'a Tensor> {
        if !drop_path {
            return Ok(dx);
        }
        ops::scale_rows(rec, dx, &self.drop_scale(acts, block, branch)?, &acts.dbranch)?;
        Ok(&acts.dbranch)
    }

    /// Gradients of a Linear y = x Wᵀ + b: dx = dy W, dW = dyᵀ x, db = column sums of dy.
    /// `dx` is (its tensor, the input of a GELU before the linear): with the second, dx is
    /// the gradient at the GELU's input, (dy W) ∘ GELU'(input), in the same matmul.
    #[allow(clippy::too_many_arguments, reason = "the linear's three inputs and three gradients")]
    fn linear_backward(
        &self,
        rec: &mut Recorder<'_>,
        x: &Tensor,
        weight: &Tensor,
        dy: &Tensor,
        (dx, gelu_input): (&Tensor, Option<&Tensor>),
        dweight: &Tensor,
        dbias: &Tensor,
    ) -> Result<()> {
        let none = Epilogue::default();
        let (x2, dy2, dx2) = (flat(x)?, flat(dy)?, flat(dx)?);
        let gelu_input = gelu_input.map(flat).transpose()?;
        let dx_epilogue = Epilogue { gelu_grad_of: gelu_input.as_ref(), ..Default::default() };
        matmul(rec, Layout::NN, &dy2, weight, &dx2, &dx_epilogue)?;
        matmul(rec, Layout::TN, &dy2, &x2, dweight, &none)?;
        ops::column_sum(rec, &dy2, dbias, false)
    }
}

/// A [.., X] tensor as the 2-D [rows, X] matrix the linears multiply (one large M instead
/// of a batch of small ones).
fn flat(t: &Tensor) -> Result<Tensor> {
    let last = t.shape().last().copied().unwrap_or(1).max(1);
    t.reshape(&[t.numel() / last, last])
}
