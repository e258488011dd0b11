//! Images for training, evaluation and inference, native and in the browser alike: the
//! preprocessing every path shares ([`resize`], [`normalize`], [`preprocess`]), the
//! training augmentation ([`augment`]), labelled image sources ([`Source`]), a pass over
//! one as batches ([`Pass`], the same on any thread), and the built-in procedural dataset.
//!
//! The built-in procedural dataset: coloured shapes and textures drawn from a seed, so
//! training needs no download and the trainer and the viewer draw the same images.
//!
//! Pure functions, no I/O: image `index` of a split is a deterministic function of
//! (seed, split, index). Each image has one object of its class at a random position,
//! scale and rotation, in a random colour on a random background, plus pixel noise.
//! Three classes differ only in a fine texture (stripes, checks, dots) whose period is a
//! few pixels at 32 px, so low resolutions blur them together: resolution matters.

pub mod augment;
mod batch;
mod mirror;
mod pass;
mod pixels;
mod source;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use augment::AugmentConfig;
pub use batch::{Batch, LoadError, Shard};
pub use mirror::{probe_mirroring, FlipAdvice, MirrorProbe, PROBE_IMAGES};
pub use pass::{InlineBatches, Pass, PassConfig, Skipped};
pub use pixels::{normalize, preprocess, resize, CropBox, RgbImage};
pub use source::{epoch_order, split_train_val, stream_seed, ProceduralSource, Source, Stream, Subset};

/// Class names, in label order.
pub const CLASSES: [&str; 10] =
    ["disc", "ring", "crescent", "triangle", "cross", "stripes", "target", "checks", "dots", "pair"];

/// Which part of the dataset an image belongs to (they never share an image).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

/// The dataset's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Procedural {
    /// Number of classes, 2..=10 (the first `classes` of [`CLASSES`]).
    pub classes: usize,
    /// Side of the square images in pixels.
    pub image_size: usize,
    pub seed: u64,
}

impl Default for Procedural {
    fn default() -> Self {
        Procedural { classes: CLASSES.len(), image_size: 32, seed: 0 }
    }
}

/// SplitMix64: spreads (seed, split, index) over the whole 64-bit seed space.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in [lo, hi).
fn uniform(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    let unit = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
    lo + (hi - lo) * unit
}

/// Whether object-frame point (u, v) (the object spans about [-1, 1]²) is foreground.
fn inside(class: usize, u: f32, v: f32, period: f32) -> bool {
    let r = (u * u + v * v).sqrt();
    let even = |x: f32| (x / period).floor().rem_euclid(2.0) < 1.0;
    match class {
        0 => r <= 1.0,
        1 => (0.55..=1.0).contains(&r),
        2 => r <= 1.0 && (u - 0.5).powi(2) + v * v > 0.64,
        3 => v >= -0.6 && 1.732 * u.abs() <= 0.9 - v,
        4 => (u.abs() <= 0.25 && v.abs() <= 0.95) || (v.abs() <= 0.25 && u.abs() <= 0.95),
        5 => r <= 1.0 && even(v),
        6 => r <= 1.0 && even(r),
        7 => u.abs().max(v.abs()) <= 0.85 && (even(u) == even(v)),
        8 => {
            let (fu, fv) = ((u / period).rem_euclid(1.0) - 0.5, (v / period).rem_euclid(1.0) - 0.5);
            u.abs().max(v.abs()) <= 0.85 && fu * fu + fv * fv <= 0.09
        }
        _ => ((u - 0.5).powi(2) + v * v).sqrt() <= 0.38 || ((u + 0.5).powi(2) + v * v).sqrt() <= 0.38,
    }
}

impl Procedural {
    /// Image `index` of `split`: ([3, R, R] values in [0, 1], channel-major, and its label).
    /// Labels cycle through the classes, so every run of `classes` images is balanced.
    pub fn image(&self, split: Split, index: u64) -> (Vec<f32>, u32) {
        let classes = self.classes.clamp(2, CLASSES.len());
        let label = (index % classes as u64) as usize;
        let split_id = match split {
            Split::Train => 1,
            Split::Val => 2,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(self.seed ^ split_id) ^ index));
        let size = self.image_size.max(1);
        let scale = uniform(&mut rng, 0.6, 0.85);
        let (cx, cy) = (uniform(&mut rng, -0.2, 0.2), uniform(&mut rng, -0.2, 0.2));
        let angle = uniform(&mut rng, 0.0, std::f32::consts::TAU);
        let (sin, cos) = angle.sin_cos();
        // Texture period in object units: about 3 to 4 pixels at 32 px and a typical scale.
        let period = 2.0 * 3.5 / (32.0 * scale);
        let background: [f32; 3] = std::array::from_fn(|_| uniform(&mut rng, 0.0, 0.6));
        // Foreground kept visibly apart from the background in at least one channel.
        let mut foreground: [f32; 3] = std::array::from_fn(|_| uniform(&mut rng, 0.0, 1.0));
        let far = (0..3).max_by(|&a, &b| background[a].total_cmp(&background[b]).reverse()).unwrap_or(0);
        foreground[far] = (background[far] + uniform(&mut rng, 0.4, 0.6)).min(1.0);
        let noise = uniform(&mut rng, 0.02, 0.06);

        let mut pixels = vec![0.0f32; 3 * size * size];
        for y in 0..size {
            for x in 0..size {
                // Pixel centre in [-1, 1]², then into the object's frame.
                let px = (x as f32 + 0.5) / size as f32 * 2.0 - 1.0 - cx;
                let py = (y as f32 + 0.5) / size as f32 * 2.0 - 1.0 - cy;
                let (u, v) = ((cos * px + sin * py) / scale, (-sin * px + cos * py) / scale);
                let colour = if inside(label, u, v, period) { foreground } else { background };
                for c in 0..3 {
                    let value = colour[c] + uniform(&mut rng, -noise, noise);
                    pixels[(c * size + y) * size + x] = value.clamp(0.0, 1.0);
                }
            }
        }
        (pixels, label as u32)
    }

    /// Image `index` as 8-bit RGB, row-major and interleaved ([R, R, 3]), with its label:
    /// the pixels a file of it would hold.
    pub fn image_rgb8(&self, split: Split, index: u64) -> (Vec<u8>, u32) {
        let (chw, label) = self.image(split, index);
        let plane = self.image_size.max(1).pow(2);
        let rgb = (0..plane).flat_map(|i| (0..3).map(move |c| c * plane + i)).map(|j| (chw[j] * 255.0).round() as u8);
        (rgb.collect(), label)
    }

    /// A batch of consecutive images: ([n, 3, R, R] values, labels).
    pub fn batch(&self, split: Split, start: u64, n: usize) -> (Vec<f32>, Vec<u32>) {
        let mut images = Vec::with_capacity(n * 3 * self.image_size * self.image_size);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let (pixels, label) = self.image(split, start + i);
            images.extend_from_slice(&pixels);
            labels.push(label);
        }
        (images, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_deterministic_and_distinct() {
        let data = Procedural::default();
        assert_eq!(data.image(Split::Train, 7), data.image(Split::Train, 7));
        assert_ne!(data.image(Split::Train, 7).0, data.image(Split::Train, 17).0);
        assert_ne!(data.image(Split::Train, 7).0, data.image(Split::Val, 7).0);
        let other_seed = Procedural { seed: 1, ..data };
        assert_ne!(data.image(Split::Train, 7).0, other_seed.image(Split::Train, 7).0);
    }

    #[test]
    fn values_shape_and_labels() {
        let data = Procedural { classes: 10, image_size: 24, seed: 3 };
        let (images, labels) = data.batch(Split::Train, 0, 30);
        assert_eq!(images.len(), 30 * 3 * 24 * 24);
        assert!(images.iter().all(|v| (0.0..=1.0).contains(v)));
        for class in 0..10u32 {
            assert_eq!(labels.iter().filter(|&&l| l == class).count(), 3, "class {class}");
        }
        let two = Procedural { classes: 2, ..data };
        assert!(two.batch(Split::Val, 0, 10).1.iter().all(|&l| l < 2));
    }

    #[test]
    fn every_class_draws_a_visible_object() {
        // Object pixels must cover a sensible part of the image for every class.
        let data = Procedural { classes: 10, image_size: 32, seed: 5 };
        for class in 0..10u64 {
            for k in 0..5 {
                let (pixels, label) = data.image(Split::Train, class + 10 * k);
                assert_eq!(label as u64, class);
                // Foreground differs from the background by >= 0.4 in some channel; count
                // pixels far from the corner pixel's colour in any channel.
                let plane = 32 * 32;
                let far = (0..plane)
                    .filter(|&i| (0..3).any(|c| (pixels[c * plane + i] - pixels[c * plane]).abs() > 0.3))
                    .count();
                let share = far as f64 / plane as f64;
                assert!(
                    (0.02..0.95).contains(&share),
                    "class {} image {k}: object covers {share:.3}",
                    CLASSES[class as usize]
                );
            }
        }
    }

    #[test]
    fn textures_need_resolution() {
        // The textured classes alternate colour every few pixels at 32 px: along a row
        // through the object, the colour changes far more often than for a plain disc.
        let data = Procedural { classes: 10, image_size: 32, seed: 9 };
        let changes = |class: u64| -> usize {
            (0..20)
                .map(|k| {
                    let (pixels, _) = data.image(Split::Train, class + 10 * k);
                    (0..32)
                        .flat_map(|y| (1..32).map(move |x| (y, x)))
                        .filter(|&(y, x)| {
                            (0..3).any(|c| {
                                (pixels[(c * 32 + y) * 32 + x] - pixels[(c * 32 + y) * 32 + x - 1]).abs() > 0.3
                            })
                        })
                        .count()
                })
                .sum()
        };
        let plain = changes(0);
        for textured in [5u64, 7, 8] {
            assert!(
                changes(textured) > 2 * plain,
                "{} vs disc: {} vs {plain}",
                CLASSES[textured as usize],
                changes(textured)
            );
        }
    }
}
