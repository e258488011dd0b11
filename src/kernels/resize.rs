//! Resizing with PyTorch's `F.interpolate(align_corners=False, antialias=False)` semantics:
//! bilinear for images (progressive resolution, forward only) and bicubic for the
//! position-embedding grid (forward and backward): `shaders/resize.wgsl`. Input and output
//! are f32 or f16, each its own (the arithmetic is f32).

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Access, KernelSpec, Recorder, Shader, Tensor};
use crate::kernels::src_dst_consts;
use crate::{Error, Result};

pub const SHADER: Shader = Shader { name: "resize", source: include_str!("../../shaders/resize.wgsl") };
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BilinearParams {
    n: u32,
    h: u32,
    w: u32,
    h2: u32,
    w2: u32,
    scale_h: f32,
    scale_w: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BicubicParams {
    n: u32,
    c: u32,
    gh: u32,
    gw: u32,
    gh2: u32,
    gw2: u32,
    scale_h: f32,
    scale_w: f32,
}

/// torch's scale for a given output size: in / out, rounded to f32 as torch does for f32 tensors.
fn scale(input: usize, output: usize) -> f32 {
    input as f32 / output as f32
}

/// Bilinear resize of images, y[b, ch] = interpolate(x[b, ch], size = (H2, W2)).
/// The output size is `y`'s shape. Forward only: images take no gradient.
pub fn resize_bilinear(rec: &mut Recorder<'_>, x: &Tensor, y: &Tensor) -> Result<()> {
    const OP: &str = "resize_bilinear";
    let (xs, ys) = (x.shape(), y.shape()); // [B, Ch, H, W], [B, Ch, H2, W2]
    if xs.len() != 4 || ys.len() != 4 || xs[..2] != ys[..2] || xs.contains(&0) || ys.contains(&0) {
        return Err(Error::shape(
            OP,
            format!("x is {xs:?} and y is {ys:?}; need x [B, Ch, H, W] and y [B, Ch, H2, W2], all sizes >= 1"),
        ));
    }
    let (consts, elements) = (src_dst_consts(x, y), [x.element(), y.element()]);
    let spec = KernelSpec::new(SHADER, OP, &[Access::Read, Access::ReadWrite, Access::Uniform]);
    let kernel = rec.ctx().kernel(&spec.with_consts(&consts).with_elements(&elements))?;
    let n = y.numel() as u32;
    let params = BilinearParams {
        n,
        h: xs[2] as u32,
        w: xs[3] as u32,
        h2: ys[2] as u32,
        w2: ys[3] as u32,
        scale_h: scale(xs[2], ys[2]),
        scale_w: scale(xs[3], ys[3]),
        _pad: 0,
    };
    rec.dispatch(&kernel, &[x, y], &params, grid_1d(n.div_ceil(WG)))
}

/// Checks a source grid [Gh, Gw, C] against a destination grid [Gh2, Gw2, C] and returns the
/// params with `n` left at 0.
fn bicubic_params(op: &'static str, grid: &Tensor, out: &Tensor, names: [&str; 2]) -> Result<BicubicParams> {
    let (gs, os) = (grid.shape(), out.shape());
    if gs.len() != 3 || os.len() != 3 || gs[2] != os[2] || gs.contains(&0) || os.contains(&0) {
        return Err(Error::shape(
            op,
            format!(
                "{} is {gs:?} and {} is {os:?}; need [Gh, Gw, C] and [Gh2, Gw2, C], all sizes >= 1",
                names[0], names[1]
            ),
        ));
    }
    Ok(BicubicParams {
        n: 0,
        c: gs[2] as u32,
        gh: gs[0] as u32,
        gw: gs[1] as u32,
        gh2: os[0] as u32,
        gw2: os[1] as u32,
        scale_h: scale(gs[0], os[0]),
        scale_w: scale(gs[1], os[1]),
    })
}

/// Bicubic resize (A = -0.75) of the position-embedding grid, `out` = interpolate(`grid`,
/// size = (Gh2, Gw2)) with channels last. The ViT's pos_embed [1, 1 + Gh·Gw, C] holds this grid
/// after the class position; bind it with [`Tensor::view`] when the offset meets the adapter's
/// alignment, else copy it out first.
pub fn pos_embed_resize_forward(rec: &mut Recorder<'_>, grid: &Tensor, out: &Tensor) -> Result<()> {
    const OP: &str = "pos_embed_resize_forward";
    let mut params = bicubic_params(OP, grid, out, ["grid", "out"])?; // [Gh, Gw, C] -> [Gh2, Gw2, C]
    let (consts, elements) = (src_dst_consts(grid, out), [grid.element(), out.element()]);
    let spec = KernelSpec::new(SHADER, OP, &[Access::Read, Access::ReadWrite, Access::Uniform]);
    let kernel = rec.ctx().kernel(&spec.with_consts(&consts).with_elements(&elements))?;
    params.n = out.numel() as u32;
    rec.dispatch(&kernel, &[grid, out], &params, grid_1d(params.n.div_ceil(WG)))
}

/// Gradient of [`pos_embed_resize_forward`]: `dgrid` [Gh, Gw, C] from `dout` [Gh2, Gw2, C].
/// Overwrites `dgrid` (the caller adds it to the parameter's gradient). Deterministic: each
/// thread gathers the destinations that read its source cell, no atomics.
pub fn pos_embed_resize_backward(rec: &mut Recorder<'_>, dout: &Tensor, dgrid: &Tensor) -> Result<()> {
    const OP: &str = "pos_embed_resize_backward";
    let mut params = bicubic_params(OP, dgrid, dout, ["dgrid", "dout"])?;
    let (consts, elements) = (src_dst_consts(dout, dgrid), [dout.element(), dgrid.element()]);
    let spec = KernelSpec::new(SHADER, OP, &[Access::Read, Access::ReadWrite, Access::Uniform]);
    let kernel = rec.ctx().kernel(&spec.with_consts(&consts).with_elements(&elements))?;
    params.n = dgrid.numel() as u32;
    rec.dispatch(&kernel, &[dout, dgrid], &params, grid_1d(params.n.div_ceil(WG)))
}
