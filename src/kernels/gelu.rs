//! GELU (erf form), forward and backward: `shaders/gelu.wgsl`. Tensors are all f32 or
//! all f16 (computed in f32).

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, Access, KernelSpec, Recorder, Shader, Tensor};
use crate::kernels::{act_const, same_shape};
use crate::Result;

pub const SHADER: Shader = Shader {
    name: "gelu",
    source: concat!(include_str!("../../shaders/common.wgsl"), include_str!("../../shaders/gelu.wgsl")),
};
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

/// y = gelu(x), elementwise.
pub fn gelu_forward(rec: &mut Recorder<'_>, x: &Tensor, y: &Tensor) -> Result<()> {
    same_shape("gelu_forward", &[("x", x), ("y", y)])?;
    let consts = act_const(x.element());
    let kernel = rec.ctx().kernel(
        &KernelSpec::new(SHADER, "gelu_forward", &[Access::Read, Access::ReadWrite, Access::Uniform])
            .with_consts(&consts)
            .with_elements(&[x.element(); 2]),
    )?;
    let n = x.numel() as u32;
    rec.dispatch(&kernel, &[x, y], &Params { n, _pad: [0; 3] }, grid_1d(n.div_ceil(WG)))
}

/// dx = dy * gelu'(x), elementwise.
pub fn gelu_backward(rec: &mut Recorder<'_>, x: &Tensor, dy: &Tensor, dx: &Tensor) -> Result<()> {
    same_shape("gelu_backward", &[("x", x), ("dy", dy), ("dx", dx)])?;
    let consts = act_const(x.element());
    let kernel = rec.ctx().kernel(
        &KernelSpec::new(SHADER, "gelu_backward", &[Access::Read, Access::Read, Access::ReadWrite, Access::Uniform])
            .with_consts(&consts)
            .with_elements(&[x.element(); 3]),
    )?;
    let n = x.numel() as u32;
    rec.dispatch(&kernel, &[x, dy, dx], &Params { n, _pad: [0; 3] }, grid_1d(n.div_ceil(WG)))
}
