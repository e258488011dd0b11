//! CPU twin of `shaders/patch.wgsl`.

/// patches [B·Np, Ch·P·P] from images [B, Ch, H, W] (`shape`), patch size `p`; H and W must be
/// multiples of `p` (the GPU binding checks; here a violation is a programmer error).
pub fn patchify(images: &[f64], shape: [usize; 4], p: usize) -> Vec<f64> {
    let [b, ch, h, w] = shape;
    assert!(p > 0 && h % p == 0 && w % p == 0, "patchify: {shape:?} is not a multiple of {p}");
    let (grid_h, grid_w) = (h / p, w / p);
    let mut patches = Vec::with_capacity(images.len());
    for bi in 0..b {
        for gy in 0..grid_h {
            for gx in 0..grid_w {
                for c in 0..ch {
                    for py in 0..p {
                        for px in 0..p {
                            patches.push(images[((bi * ch + c) * h + gy * p + py) * w + gx * p + px]);
                        }
                    }
                }
            }
        }
    }
    patches
}

/// The patch embedding as the strided convolution it is: out [B·Np, C] from images
/// [B, Ch, H, W] (`shape`), weight [C, Ch, P, P] and bias [C].
pub fn patch_embed_forward(images: &[f64], shape: [usize; 4], weight: &[f64], bias: &[f64], p: usize) -> Vec<f64> {
    let [b, ch, h, w] = shape;
    let c_out = bias.len();
    let (grid_h, grid_w) = (h / p, w / p);
    let mut out = vec![0.0; b * grid_h * grid_w * c_out];
    for bi in 0..b {
        for gy in 0..grid_h {
            for gx in 0..grid_w {
                let row = (bi * grid_h + gy) * grid_w + gx;
                for co in 0..c_out {
                    let mut acc = bias[co];
                    for ci in 0..ch {
                        for py in 0..p {
                            for px in 0..p {
                                let x = images[((bi * ch + ci) * h + gy * p + py) * w + gx * p + px];
                                acc += weight[((co * ch + ci) * p + py) * p + px] * x;
                            }
                        }
                    }
                    out[row * c_out + co] = acc;
                }
            }
        }
    }
    out
}

/// Gradients of [`patch_embed_forward`] for upstream gradient `dout` [B·Np, C]:
/// (dweight [C, Ch, P, P], dbias [C]).
pub fn patch_embed_backward(
    images: &[f64],
    shape: [usize; 4],
    dout: &[f64],
    c_out: usize,
    p: usize,
) -> (Vec<f64>, Vec<f64>) {
    let [b, ch, h, w] = shape;
    let (grid_h, grid_w) = (h / p, w / p);
    let mut dweight = vec![0.0; c_out * ch * p * p];
    let mut dbias = vec![0.0; c_out];
    for bi in 0..b {
        for gy in 0..grid_h {
            for gx in 0..grid_w {
                let row = (bi * grid_h + gy) * grid_w + gx;
                for co in 0..c_out {
                    let g = dout[row * c_out + co];
                    dbias[co] += g;
                    for ci in 0..ch {
                        for py in 0..p {
                            for px in 0..p {
                                let x = images[((bi * ch + ci) * h + gy * p + py) * w + gx * p + px];
                                dweight[((co * ch + ci) * p + py) * p + px] += g * x;
                            }
                        }
                    }
                }
            }
        }
    }
    (dweight, dbias)
}
