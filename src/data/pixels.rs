//! 8-bit RGB images and the one preprocessing every consumer of a model shares: training's
//! evaluation, `eval`, `predict` and the web viewer all turn an image into the model's
//! input with [`preprocess`] (antialiased resize to R×R, then normalisation), so a model
//! sees the same pixels in the browser as in training. Training's random crops use the
//! same [`resize`].

use crate::{Error, Result};

/// An 8-bit RGB image, rows top to bottom, pixels interleaved: `data` is [H, W, 3].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// An image from its pixels, checking that there are `width`·`height`·3 of them and
    /// at least one pixel.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<RgbImage> {
        // Checked: the sizes may come from a file or the page, and wasm32's usize is 32 bits.
        let needed = width.checked_mul(height).and_then(|n| n.checked_mul(3));
        if width == 0 || height == 0 || needed != Some(data.len()) {
            return Err(Error::shape(
                "image",
                format!(
                    "{} bytes for a {width}×{height} RGB image (need 3 per pixel and at least one pixel)",
                    data.len()
                ),
            ));
        }
        Ok(RgbImage { width, height, data })
    }

    /// An RGBA image ([H, W, 4], as a browser canvas gives it) without its alpha.
    pub fn from_rgba(width: usize, height: usize, rgba: &[u8]) -> Result<RgbImage> {
        if width.checked_mul(height).and_then(|n| n.checked_mul(4)) != Some(rgba.len()) {
            return Err(Error::shape("image", format!("{} bytes for a {width}×{height} RGBA image", rgba.len())));
        }
        RgbImage::new(width, height, rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect())
    }

    /// A `width` × `height` image of one colour.
    pub fn filled(width: usize, height: usize, rgb: [u8; 3]) -> Self {
        RgbImage { width, height, data: rgb.repeat(width * height) }
    }

    /// The pixel at column `x`, row `y`.
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = 3 * (y * self.width + x);
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// An image as the model's input [3, R, R]: the whole image resized to R×R with
/// [`resize`] (antialiased when shrinking, like PIL and torchvision), then
/// (v / 255 − mean) / std per channel.
pub fn preprocess(image: &RgbImage, resolution: usize, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let full = CropBox { x: 0, y: 0, width: image.width, height: image.height };
    normalize(&resize(image, full, resolution, resolution), mean, std)
}

/// A rectangle of an image, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// Fractional bits of the fixed-point filter weights (PIL's `PRECISION_BITS`: 32 − 8 − 2,
/// so that 8-bit pixels times weights summing to 1 stay inside an i32).
const PRECISION_BITS: u32 = 22;

/// Per output pixel along one axis: the first source pixel and the filter weights in
/// fixed point (sum ≈ 1 << PRECISION_BITS).
struct AxisTaps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

/// Triangle-filter taps resampling `src` pixels to `dst`. When shrinking, the triangle
/// widens with the scale factor, so every source pixel contributes instead of aliasing;
/// when enlarging it is plain bilinear with half-pixel centres. The weights and their
/// rounding to fixed point are PIL's (`Image.resize(..., BILINEAR)`, what torchvision's
/// transforms do to PIL images), so the result is PIL's to the bit.
fn axis_taps(src: usize, dst: usize) -> AxisTaps {
    let scale = src as f64 / dst as f64;
    let support = scale.max(1.0);
    let mut first = Vec::with_capacity(dst);
    let mut weights = Vec::with_capacity(dst);
    for i in 0..dst {
        let centre = (i as f64 + 0.5) * scale;
        let lo = ((centre - support).floor().max(0.0) as usize).min(src - 1);
        let hi = ((centre + support).ceil() as usize).clamp(lo + 1, src);
        let mut w: Vec<f64> = (lo..hi).map(|j| (1.0 - ((j as f64 + 0.5 - centre) / support).abs()).max(0.0)).collect();
        let total: f64 = w.iter().sum();
        if total > 0.0 {
            w.iter_mut().for_each(|v| *v /= total);
        } else {
            // Only reachable for a one-pixel window exactly on a tap's edge.
            w = vec![1.0 / w.len() as f64; w.len()];
        }
        first.push(lo);
        // Triangle weights are never negative: round half up, as PIL does for them.
        weights.push(w.into_iter().map(|v| (0.5 + v * (1u32 << PRECISION_BITS) as f64) as i32).collect());
    }
    AxisTaps { first, weights }
}

/// One output value of a pass: the taps' fixed-point sum, rounded and clamped to 8 bits.
fn filter(weights: &[i32], pixel: impl Fn(usize) -> u8) -> u8 {
    let sum =
        weights.iter().enumerate().fold(1i64 << (PRECISION_BITS - 1), |acc, (k, &w)| acc + w as i64 * pixel(k) as i64);
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resamples the `crop` of `image` to `out_w` × `out_h`: rows, then columns, each pass
/// rounded to 8 bits, bit for bit as PIL's bilinear `resize` of the cropped image.
///
/// # Panics
/// If the crop is empty or leaves the image (a programmer error: crops come from
/// [`CropBox`]es made for the image).
pub fn resize(image: &RgbImage, crop: CropBox, out_w: usize, out_h: usize) -> RgbImage {
    assert!(
        crop.width > 0 && crop.height > 0 && crop.x + crop.width <= image.width && crop.y + crop.height <= image.height
    );
    let (tx, ty) = (axis_taps(crop.width, out_w), axis_taps(crop.height, out_h));
    // Horizontal pass: [crop.height, out_w, 3].
    let mut rows = vec![0u8; crop.height * out_w * 3];
    for y in 0..crop.height {
        let src_row = &image.data[3 * ((crop.y + y) * image.width + crop.x)..];
        for (x, (&first, w)) in tx.first.iter().zip(&tx.weights).enumerate() {
            for c in 0..3 {
                rows[3 * (y * out_w + x) + c] = filter(w, |k| src_row[3 * (first + k) + c]);
            }
        }
    }
    // Vertical pass: [out_h, out_w, 3].
    let mut data = vec![0u8; out_h * out_w * 3];
    for (y, (&first, w)) in ty.first.iter().zip(&ty.weights).enumerate() {
        for i in 0..out_w * 3 {
            data[y * out_w * 3 + i] = filter(w, |k| rows[(first + k) * out_w * 3 + i]);
        }
    }
    RgbImage { width: out_w, height: out_h, data }
}

/// RGB8 [H, W, 3] → [3, H, W], (v / 255 - mean) / std.
pub fn normalize(image: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let plane = image.width * image.height;
    let mut chw = vec![0.0f32; 3 * plane];
    for (i, p) in image.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = (p[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    chw
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 23×17 image whose channels vary differently along x and y.
    fn pattern() -> RgbImage {
        let data =
            (0..17).flat_map(|y| (0..23).flat_map(move |x| [(x * 11) as u8, (y * 15) as u8, ((x + y) * 5) as u8]));
        RgbImage::new(23, 17, data.collect()).unwrap()
    }

    #[test]
    fn resize_is_identity_at_the_same_size_and_averages_when_shrinking() {
        let image = pattern();
        let full = CropBox { x: 0, y: 0, width: 23, height: 17 };
        assert_eq!(resize(&image, full, 23, 17), image);
        // Shrinking 8 → 2 must see every source pixel: a lone white corner pixel still
        // shows (point-sampling bilinear would read pixels 1, 2, 5 and 6 only and miss it).
        let mut dot = RgbImage::filled(8, 8, [0, 0, 0]);
        dot.data[..3].copy_from_slice(&[255, 255, 255]);
        let small = resize(&dot, CropBox { x: 0, y: 0, width: 8, height: 8 }, 2, 2);
        assert_eq!(small.pixel(0, 0), [8, 8, 8]);
        assert_eq!(small.pixel(1, 1), [0, 0, 0]);
        let crop = resize(&image, CropBox { x: 5, y: 3, width: 2, height: 1 }, 2, 1);
        assert_eq!(crop.data, [image.pixel(5, 3), image.pixel(6, 3)].concat());
    }

    /// PIL's bilinear resize (what torchvision does to PIL images) of random images, shrunk,
    /// enlarged, and one side each way (scripts/timm_reference.py). Ours is PIL's arithmetic
    /// (weights, fixed point, rows then columns, each pass rounded to 8 bits) and matches it
    /// to the bit where Pillow also resamples the rows first (the first five cases, the
    /// fixture image among them). For some shapes (cases 5 and 6) Pillow 13 resamples the
    /// columns first, observed but not documented: the intermediate rounding then differs
    /// by at most one level.
    #[test]
    fn resize_is_pils_bilinear() {
        let cases = crate::checkpoint::Checkpoint::from_bytes(
            include_bytes!("../../tests/fixtures/pil_resize.safetensors"),
            "pil_resize.safetensors",
        )
        .unwrap();
        let image = |name: &str| {
            let t = cases.get(name).unwrap_or_else(|| panic!("no {name}"));
            let data = t.data.iter().map(|&v| v as u8).collect();
            RgbImage::new(t.shape[1], t.shape[0], data).unwrap()
        };
        let mut compared = 0;
        for i in 0.. {
            if cases.get(&format!("in{i}")).is_none() {
                break;
            }
            let (input, expected) = (image(&format!("in{i}")), image(&format!("out{i}")));
            let full = CropBox { x: 0, y: 0, width: input.width, height: input.height };
            let ours = resize(&input, full, expected.width, expected.height);
            let case = format!("case {i}: {}x{} -> {}x{}", input.width, input.height, expected.width, expected.height);
            let differing = ours.data.iter().zip(&expected.data).filter(|(a, b)| a != b).count();
            let largest = ours.data.iter().zip(&expected.data).map(|(&a, &b)| a.abs_diff(b)).max().unwrap_or(0);
            assert!(largest <= 1, "{case}: off by {largest}");
            if i < 5 {
                assert_eq!(differing, 0, "{case}");
            }
            compared += 1;
        }
        assert_eq!(compared, 8);
    }

    #[test]
    fn preprocess_resizes_the_whole_image_and_normalises() {
        let image = RgbImage::filled(5, 3, [255, 0, 51]);
        let x = preprocess(&image, 4, [0.5; 3], [0.5; 3]);
        assert_eq!(x.len(), 3 * 16);
        for (i, &v) in x.iter().enumerate() {
            let want = [1.0, -1.0, -0.6][i / 16];
            assert!((v - want).abs() < 1e-6, "{i}: {v} vs {want}");
        }
        // At its own size a square image is only normalised.
        let square = resize(&pattern(), CropBox { x: 0, y: 0, width: 23, height: 17 }, 9, 9);
        assert_eq!(preprocess(&square, 9, [0.0; 3], [1.0; 3]), normalize(&square, [0.0; 3], [1.0; 3]));
    }

    #[test]
    fn sizes_that_do_not_fit_the_bytes_are_errors() {
        assert!(RgbImage::new(3, 2, vec![0; 18]).is_ok());
        assert!(RgbImage::new(3, 2, vec![0; 17]).is_err());
        assert!(RgbImage::new(0, 0, Vec::new()).is_err());
        assert!(RgbImage::new(usize::MAX, 3, vec![0; 9]).is_err());
        assert!(RgbImage::from_rgba(usize::MAX / 2, 4, &[0; 16]).is_err());
        let rgb = RgbImage::from_rgba(2, 1, &[1, 2, 3, 255, 4, 5, 6, 0]).unwrap();
        assert_eq!(rgb.data, [1, 2, 3, 4, 5, 6]);
    }
}
