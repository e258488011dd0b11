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
