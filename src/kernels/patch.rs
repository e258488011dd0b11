//! Patchify: cuts images into flattened patches for the patch embedding: `shaders/patch.wgsl`.
//! The patch vector is ordered (channel, py, px), the flattening of a Conv2d weight
//! [C, Ch, P, P], so the patch embedding is a plain matmul with that weight viewed as
//! [C, Ch·P·P]. `patchify` has no backward (images take no gradient); the embedding's
//! weight and bias gradients are a matmul and a column sum. Images and patches are f32 or
//! f16, each its own.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Access, KernelSpec, Recorder, Shader, Tensor};
use crate::kernels::matmul::{matmul, Epilogue, Layout};
use crate::kernels::ops::column_sum;
use crate::kernels::{expect_shape, src_dst_consts};
use crate::{Error, Result};

pub const SHADER: Shader = Shader { name: "patch", source: include_str!("../../shaders/patch.wgsl") };
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    ch: u32,
    h: u32,
    w: u32,
    p: u32,
    grid_w: u32,
    _pad: [u32; 2],
}

/// patches [B·Np, Ch·P·P] from images [B, Ch, H, W] with patch size `patch` (P); Np = (H/P)·(W/P),
/// patches in row-major order over the patch grid. H and W must be multiples of P.
pub fn patchify(rec: &mut Recorder<'_>, images: &Tensor, patches: &Tensor, patch: usize) -> Result<()> {
    const OP: &str = "patchify";
    let s = images.shape(); // [B, Ch, H, W]
    if s.len() != 4 || s.contains(&0) {
        return Err(Error::shape(OP, format!("images is {s:?}; need [B, Ch, H, W] with all sizes >= 1")));
    }
    let (b, ch, h, w) = (s[0], s[1], s[2], s[3]);
    if patch == 0 || h % patch != 0 || w % patch != 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "images {s:?} cannot be cut into {patch}x{patch} patches; the resolution must be a multiple of the \
                patch size"
            ),
        ));
    }
    let np = (h / patch) * (w / patch);
    expect_shape(OP, "patches", patches, &[b * np, ch * patch * patch])?; // [B·Np, Ch·P·P]
    let (consts, elements) = (src_dst_consts(images, patches), [images.element(), patches.element()]);
    let spec = KernelSpec::new(SHADER, OP, &[Access::Read, Access::ReadWrite, Access::Uniform]);
    let kernel = rec.ctx().kernel(&spec.with_consts(&consts).with_elements(&elements))?;
    let n = patches.numel() as u32;
    let params = Params {
        n,
        ch: ch as u32,
        h: h as u32,
        w: w as u32,
        p: patch as u32,
        grid_w: (w / patch) as u32,
        _pad: [0; 2],
    };
    rec.dispatch(&kernel, &[images, patches], &params, grid_1d(n.div_ceil(WG)))
}

/// The patch embedding (timm's `patch_embed.proj`, a P×P convolution with stride P):
/// out [B·Np, C] = patchify(images) · Wᵀ + bias, with W = weight [C, Ch, P, P] and bias [C].
/// `patches` [B·Np, Ch·P·P] is scratch that the backward pass reads again.
pub fn patch_embed_forward(
    rec: &mut Recorder<'_>,
    images: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    patches: &Tensor,
    out: &Tensor,
) -> Result<()> {
    let (c, patch) = conv_weight("patch_embed_forward", weight, images)?;
    patchify(rec, images, patches, patch)?;
    let w = weight.reshape(&[c, patches.shape()[1]])?; // [C, Ch·P·P]
    let epilogue = Epilogue { bias: Some(bias), ..Default::default() };
    matmul(rec, Layout::NT, patches, &w, out, &epilogue)
}

/// Gradients of the patch embedding: dweight [C, Ch, P, P] = doutᵀ · patches and
/// dbias [C] = column sums of dout [B·Np, C]; added to the existing values when
/// `accumulate`.
pub fn patch_embed_backward(
    rec: &mut Recorder<'_>,
    patches: &Tensor,
    dout: &Tensor,
    dweight: &Tensor,
    dbias: &Tensor,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "patch_embed_backward";
    let s = dweight.shape();
    if s.len() != 4 || s[1] * s[2] * s[3] != patches.shape().get(1).copied().unwrap_or(0) {
        return Err(Error::shape(
            OP,
            format!(
                "dweight is {s:?} but patches are {:?}; dweight must be [C, Ch, P, P] with Ch·P·P patch values",
                patches.shape()
            ),
        ));
    }
    let dw = dweight.reshape(&[s[0], s[1] * s[2] * s[3]])?; // [C, Ch·P·P]
    matmul(rec, Layout::TN, dout, patches, &dw, &Epilogue { accumulate, ..Default::default() })?;
    column_sum(rec, dout, dbias, accumulate)
}

/// (C, P) of a Conv2d weight [C, Ch, P, P] that matches the images' channels.
fn conv_weight(op: &'static str, weight: &Tensor, images: &Tensor) -> Result<(usize, usize)> {
    match (weight.shape(), images.shape()) {
        (&[c, ch, p, q], &[_, ich, _, _]) if p == q && ch == ich && c > 0 && p > 0 => Ok((c, p)),
        (w, i) => Err(Error::shape(
            op,
            format!("weight is {w:?} and images {i:?}; weight must be [C, Ch, P, P] with the images' Ch channels"),
        )),
    }
}
