//! Augmentation: the per-sample train and eval transforms (RGB8 in, normalised
//! [3, R, R] f32 out) and the batch-level mixup / cutmix with soft targets.
//!
//! Train: RandomResizedCrop → horizontal flip → RandAugment → to [0, 1] → normalise →
//! random erasing; then mixup or cutmix over the batch. Eval: resize to R×R → normalise.
//! Every random choice comes from the RNG passed in, so the loader can make samples
//! reproducible from (seed, epoch, position).

use crate::data::{normalize, preprocess, resize, CropBox, RgbImage};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Strongest RandAugment magnitude: torchvision's 31-bin scale, 0..=30.
pub const MAX_MAGNITUDE: u32 = 30;

/// Aspect ratios RandomResizedCrop draws from (torchvision's default).
const CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// What the augmentation pipeline does. `Default` is a DeiT-style recipe toned down for
/// small datasets and short runs; [`AugmentConfig::none`] turns everything off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Side R of the square output images.
    pub resolution: usize,
    /// Smallest crop area, as a fraction of the image, for RandomResizedCrop (1 = no crop).
    pub min_scale: f32,
    /// Random horizontal flips (p = 0.5); off for data where mirroring changes the class
    /// (digits, text).
    pub hflip: bool,
    /// RandAugment magnitude on torchvision's 0..=30 scale (timm's `rand-mM` level M/10
    /// corresponds to 3M here).
    pub randaug_magnitude: u32,
    /// RandAugment ops applied per image (N); 0 turns RandAugment off. (A count rather than
    /// an optional magnitude, so that "off" survives a round trip through TOML, which has
    /// no null.)
    pub randaug_ops: usize,
    /// Probability of random erasing (one box of per-pixel normal noise).
    pub erase_prob: f32,
    /// Beta(α, α) parameter for mixup; 0 disables mixup.
    pub mixup_alpha: f32,
    /// Beta(α, α) parameter for cutmix; 0 disables cutmix.
    pub cutmix_alpha: f32,
    /// Probability that a batch is mixed at all.
    pub mix_prob: f32,
    /// When both are enabled, the probability of cutmix rather than mixup.
    pub switch_prob: f32,
    /// Label smoothing folded into the soft targets.
    pub smoothing: f32,
    /// Per-channel normalisation: (x - mean) / std, x in [0, 1].
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// ImageNet statistics (DeiT's normalisation).
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Default for AugmentConfig {
    /// DeiT uses crops down to 8 %, RandAugment m9 (timm scale), erasing 0.25 and mixup 0.8 /
    /// cutmix 1.0 on every batch over 300 ImageNet epochs. Small images and datasets lose
    /// too much to such crops and the run is too short to fit fully mixed targets, so: crops
    /// keep at least 35 % of the image, RandAugment is torchvision's default strength (9
    /// of 30, i.e. ±9° rotations), and only half the batches are mixed.
    fn default() -> Self {
        AugmentConfig {
            resolution: 32,
            min_scale: 0.35,
            hflip: true,
            randaug_magnitude: 9,
            randaug_ops: 2,
            erase_prob: 0.25,
            mixup_alpha: 0.8,
            cutmix_alpha: 1.0,
            mix_prob: 0.5,
            switch_prob: 0.5,
            smoothing: 0.1,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all: the eval transform, hard labels (same normalisation as
    /// the default, so train and eval inputs match).
    pub fn none(resolution: usize) -> Self {
        AugmentConfig {
            resolution,
            min_scale: 1.0,
            hflip: false,
            randaug_magnitude: 0,
            randaug_ops: 0,
            erase_prob: 0.0,
            mixup_alpha: 0.0,
            cutmix_alpha: 0.0,
            mix_prob: 0.0,
            switch_prob: 0.0,
            smoothing: 0.0,
            ..AugmentConfig::default()
        }
    }

    /// Whether batches may be mixed (mixup or cutmix).
    pub fn mixing(&self) -> bool {
        self.mix_prob > 0.0 && (self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0)
    }

    /// Whether training batches carry soft targets (mixing or label smoothing on).
    pub fn soft_targets(&self) -> bool {
        self.mixing() || self.smoothing > 0.0
    }

    /// Checks every field's range; the message names the field and the accepted range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::invalid("augmentation", what));
        let probability = |v: f32| (0.0..=1.0).contains(&v);
        if self.resolution == 0 {
            return bad("resolution must be at least 1".into());
        }
        if !(self.min_scale > 0.0 && self.min_scale <= 1.0) {
            return bad(format!("min_scale {} must be in (0, 1]", self.min_scale));
        }
        if self.randaug_magnitude > MAX_MAGNITUDE {
            return bad(format!("RandAugment magnitude {} must be at most {MAX_MAGNITUDE}", self.randaug_magnitude));
        }
        for (name, value) in
            [("erase_prob", self.erase_prob), ("mix_prob", self.mix_prob), ("switch_prob", self.switch_prob)]
        {
            if !probability(value) {
                return bad(format!("{name} {value} must be a probability in [0, 1]"));
            }
        }
        for (name, value) in [("mixup_alpha", self.mixup_alpha), ("cutmix_alpha", self.cutmix_alpha)] {
            if !(value >= 0.0 && value.is_finite()) {
                return bad(format!("{name} {value} must be 0 (off) or positive"));
            }
        }
        if !(0.0..1.0).contains(&self.smoothing) {
            return bad(format!("smoothing {} must be in [0, 1)", self.smoothing));
        }
        if self.std.iter().any(|&s| s <= 0.0 || !s.is_finite()) || self.mean.iter().any(|m| !m.is_finite()) {
            return bad(format!("mean {:?} must be finite and std {:?} positive", self.mean, self.std));
        }
        Ok(())
    }

    /// The fill colour of geometric ops: the mean, so it normalises to zero.
    fn fill(&self) -> [u8; 3] {
        self.mean.map(|m| (m * 255.0).round().clamp(0.0, 255.0) as u8)
    }
}

/// Eval transform: the core's [`preprocess`] (antialiased resize to R×R, normalise), the
/// same function `predict` and the web viewer use. → [3, R, R]
pub fn eval_transform(image: &RgbImage, config: &AugmentConfig) -> Vec<f32> {
    preprocess(image, config.resolution, config.mean, config.std)
}

/// Train transform, every step drawn from `rng`. → [3, R, R]
pub fn train_transform(image: &RgbImage, config: &AugmentConfig, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let r = config.resolution;
    let crop = random_resized_crop_box(image.width, image.height, (config.min_scale as f64, 1.0), CROP_RATIO, rng);
    let mut img = resize(image, crop, r, r);
    if config.hflip && rng.random_bool(0.5) {
        hflip(&mut img);
    }
    if config.randaug_ops > 0 {
        rand_augment(&mut img, config.randaug_ops, config.randaug_magnitude, config.fill(), rng);
    }
    let mut chw = normalize(&img, config.mean, config.std);
    if config.erase_prob > 0.0 && rng.random::<f32>() < config.erase_prob {
        random_erase(&mut chw, r, r, rng);
    }
    chw
}

/// RandomResizedCrop's box (torchvision's algorithm): up to 10 tries of an area fraction
/// in `scale` and a log-uniform aspect ratio in `ratio`; if none fits, the largest
/// centred box whose ratio is within range.
pub fn random_resized_crop_box(
    width: usize,
    height: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut ChaCha8Rng,
) -> CropBox {
    let area = (width * height) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..=scale.1);
        let aspect = rng.random_range(log_lo..=log_hi).exp();
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if (1..=width).contains(&w) && (1..=height).contains(&h) {
            let y = rng.random_range(0..=height - h);
            let x = rng.random_range(0..=width - w);
            return CropBox { x, y, width: w, height: h };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0 {
        (width, ((width as f64 / ratio.0).round() as usize).clamp(1, height))
    } else if in_ratio > ratio.1 {
        (((height as f64 * ratio.1).round() as usize).clamp(1, width), height)
    } else {
        (width, height)
    };
    CropBox { x: (width - w) / 2, y: (height - h) / 2, width: w, height: h }
}

/// Rounds and clamps a channel value to 8 bits.
fn to_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Mirrors the image left to right.
pub fn hflip(image: &mut RgbImage) {
    let w = image.width;
    for row in image.data.chunks_exact_mut(3 * w) {
        for x in 0..w / 2 {
            for c in 0..3 {
                row.swap(3 * x + c, 3 * (w - 1 - x) + c);
            }
        }
    }
}

/// Random erasing (timm's "pixel" mode): one box covering 2 %–33 % of the area with a
/// log-uniform aspect ratio in [0.3, 3.3], filled with per-pixel standard normal noise
/// (in normalised units). Gives up after 10 boxes that do not fit. `chw` is [3, H, W].
pub fn random_erase(chw: &mut [f32], height: usize, width: usize, rng: &mut ChaCha8Rng) {
    let area = (height * width) as f64;
    let (log_lo, log_hi) = (0.3f64.ln(), (1.0f64 / 0.3).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(0.02..1.0 / 3.0);
        let aspect = rng.random_range(log_lo..log_hi).exp();
        let h = (target * aspect).sqrt().round() as usize;
        let w = (target / aspect).sqrt().round() as usize;
        if (1..height).contains(&h) && (1..width).contains(&w) {
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            for c in 0..3 {
                for y in top..top + h {
                    let row = (c * height + y) * width;
                    for v in &mut chw[row + left..row + left + w] {
                        *v = StandardNormal.sample(rng);
                    }
                }
            }
            return;
        }
    }
}

/// The RandAugment operations (torchvision's list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Identity,
    AutoContrast,
    Equalize,
    Rotate,
    Solarize,
    Color,
    Posterize,
    Contrast,
    Brightness,
    Sharpness,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
}

pub const OPS: [Op; 14] = [
    Op::Identity,
    Op::AutoContrast,
    Op::Equalize,
    Op::Rotate,
    Op::Solarize,
    Op::Color,
    Op::Posterize,
    Op::Contrast,
    Op::Brightness,
    Op::Sharpness,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
];

/// RandAugment: `ops` operations drawn uniformly (with repeats) from [`OPS`], each at
/// `magnitude` (0..=30) with a random sign where the op has one. Ranges at 30: ±30°
/// rotation, ±0.3 shear, ±45 % translation, enhance factors 1 ± 0.9, 4-bit posterize,
/// solarize everything. Uncovered pixels get `fill`.
pub fn rand_augment(image: &mut RgbImage, ops: usize, magnitude: u32, fill: [u8; 3], rng: &mut ChaCha8Rng) {
    for _ in 0..ops {
        let op = OPS[rng.random_range(0..OPS.len())];
        let sign = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
        apply_op(image, op, magnitude, sign, fill);
    }
}

/// Applies one RandAugment op at `magnitude` (0..=30); `sign` (±1) picks the direction of
/// signed ops.
pub fn apply_op(image: &mut RgbImage, op: Op, magnitude: u32, sign: f32, fill: [u8; 3]) {
    let level = magnitude.min(MAX_MAGNITUDE) as f32 / MAX_MAGNITUDE as f32;
    let factor = 1.0 + sign * 0.9 * level;
    match op {
        Op::Identity => {}
        Op::AutoContrast => auto_contrast(image),
        Op::Equalize => equalize(image),
        Op::Rotate => {
            let (sin, cos) = (sign * 30.0 * level).to_radians().sin_cos();
            // Source of an output pixel: the output point turned back by the angle.
            warp(image, fill, |x, y| (cos * x - sin * y, sin * x + cos * y));
        }
        Op::ShearX => warp(image, fill, |x, y| (x - sign * 0.3 * level * y, y)),
        Op::ShearY => warp(image, fill, |x, y| (x, y - sign * 0.3 * level * x)),
        Op::TranslateX => {
            let shift = sign * 0.45 * level * image.width as f32;
            warp(image, fill, |x, y| (x - shift, y))
        }
        Op::TranslateY => {
            let shift = sign * 0.45 * level * image.height as f32;
            warp(image, fill, |x, y| (x, y - shift))
        }
        Op::Solarize => {
            let threshold = 256.0 * (1.0 - level);
            image.data.iter_mut().filter(|v| **v as f32 >= threshold).for_each(|v| *v = 255 - *v);
        }
        Op::Posterize => {
            let bits = 8 - (4.0 * level).round() as u32;
            let mask = !(0xffu32 >> bits) as u8;
            image.data.iter_mut().for_each(|v| *v &= mask);
        }
        Op::Brightness => blend_with(image, factor, |_| [0.0; 3]),
        Op::Color => blend_with(image, factor, |p| [luma(p); 3]),
        Op::Contrast => {
            let plane = (image.width * image.height) as f32;
            let mean = image.data.chunks_exact(3).map(luma).sum::<f32>() / plane;
            blend_with(image, factor, |_| [mean; 3]);
        }
        Op::Sharpness => sharpness(image, factor),
    }
}

/// ITU-R 601 luma of an RGB pixel (PIL's grayscale conversion).
fn luma(p: &[u8]) -> f32 {
    0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32
}

/// Each pixel becomes `base + factor · (pixel − base)`: factor 1 keeps the image, 0 gives
/// the base (black, gray, mean gray, ...), above 1 pushes away from it.
fn blend_with(image: &mut RgbImage, factor: f32, base: impl Fn(&[u8]) -> [f32; 3]) {
    for p in image.data.chunks_exact_mut(3) {
        let b = base(p);
        for c in 0..3 {
            p[c] = to_u8(b[c] + factor * (p[c] as f32 - b[c]));
        }
    }
}

/// Blend with a 3×3 smoothed copy (centre weight 5, neighbours 1, as PIL's SMOOTH); the
/// border keeps its pixels, as PIL's ImageEnhance.Sharpness does.
fn sharpness(image: &mut RgbImage, factor: f32) {
    let (w, h) = (image.width, image.height);
    if w < 3 || h < 3 {
        return;
    }
    let src = image.data.clone();
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            for c in 0..3 {
                let mut sum = 0.0;
                for dy in 0..3 {
                    for dx in 0..3 {
                        let weight = if dx == 1 && dy == 1 { 5.0 } else { 1.0 };
                        sum += weight * src[3 * ((y + dy - 1) * w + x + dx - 1) + c] as f32;
                    }
                }
                let smooth = sum / 13.0;
                let i = 3 * (y * w + x) + c;
                image.data[i] = to_u8(smooth + factor * (src[i] as f32 - smooth));
            }
        }
    }
}

/// Stretches each channel to the full 0..=255 range (channels with one value are kept).
fn auto_contrast(image: &mut RgbImage) {
    for c in 0..3 {
        let values = image.data.iter().skip(c).step_by(3);
        let (lo, hi) = values.fold((255u8, 0u8), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if hi > lo {
            let scale = 255.0 / (hi - lo) as f32;
            image.data.iter_mut().skip(c).step_by(3).for_each(|v| *v = to_u8((*v - lo) as f32 * scale));
        }
    }
}

/// Histogram equalisation per channel: each value maps to its cumulative share of the
/// pixels, stretched so the darkest present value maps to 0 and the brightest to 255.
fn equalize(image: &mut RgbImage) {
    for c in 0..3 {
        let mut histogram = [0usize; 256];
        image.data.iter().skip(c).step_by(3).for_each(|&v| histogram[v as usize] += 1);
        let total: usize = histogram.iter().sum();
        let darkest = histogram.iter().copied().find(|&n| n > 0).unwrap_or(0);
        if total == darkest {
            continue; // One value only: nothing to spread.
        }
        let mut lut = [0u8; 256];
        let mut cumulative = 0usize;
        for (v, &n) in histogram.iter().enumerate() {
            cumulative += n;
            lut[v] = to_u8(cumulative.saturating_sub(darkest) as f32 * 255.0 / (total - darkest) as f32);
        }
        image.data.iter_mut().skip(c).step_by(3).for_each(|v| *v = lut[*v as usize]);
    }
}

/// Geometric op: each output pixel samples (bilinearly) the source point that
/// `source_of(x, y)` gives; both in pixel units relative to the image centre. Points
/// outside the image read `fill`.
fn warp(image: &mut RgbImage, fill: [u8; 3], source_of: impl Fn(f32, f32) -> (f32, f32)) {
    let (w, h) = (image.width, image.height);
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let src = image.data.clone();
    let read = |x: i64, y: i64, c: usize| -> f32 {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            fill[c] as f32
        } else {
            src[3 * (y as usize * w + x as usize) + c] as f32
        }
    };
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = source_of(x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            // Back to pixel-index coordinates (pixel i's centre at i).
            let (fx, fy) = (sx + cx - 0.5, sy + cy - 0.5);
            let (x0, y0) = (fx.floor(), fy.floor());
            let (ax, ay) = (fx - x0, fy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            for c in 0..3 {
                let top = read(x0, y0, c) * (1.0 - ax) + read(x0 + 1, y0, c) * ax;
                let bottom = read(x0, y0 + 1, c) * (1.0 - ax) + read(x0 + 1, y0 + 1, c) * ax;
                image.data[3 * (y * w + x) + c] = to_u8(top * (1.0 - ay) + bottom * ay);
            }
        }
    }
}

/// How a batch was mixed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mix {
    /// Weight of each sample's own label (1 = unmixed); for cutmix, corrected to the
    /// share of the image the pasted box did not cover.
    pub lam: f32,
    /// The pasted box (rows y0..y1, columns x0..x1) when cutmix was used.
    pub cutmix: Option<(usize, usize, usize, usize)>,
}

/// Batch-level mixup / cutmix (timm's `Mixup`, batch mode): with probability `mix_prob`
/// the batch is mixed with its reverse (sample i with sample B−1−i), by cutmix with
/// probability `switch_prob` (when both are enabled) or mixup otherwise, lam ~ Beta(α, α).
/// `images` is [B, 3, R, R] and is mixed in place; returns the soft targets [B, K] —
/// lam · smooth(y_i) + (1 − lam) · smooth(y_{B−1−i}), where smooth puts 1 − s + s/K on the
/// label and s/K elsewhere — and what was done.
pub fn mix_batch(
    images: &mut [f32],
    labels: &[u32],
    classes: usize,
    config: &AugmentConfig,
    rng: &mut ChaCha8Rng,
) -> (Vec<f32>, Mix) {
    let b = labels.len();
    let r = config.resolution;
    let image_len = 3 * r * r;
    assert_eq!(images.len(), b * image_len, "images must be [B, 3, R, R]");
    let mut mix = Mix { lam: 1.0, cutmix: None };
    if config.mixing() && rng.random::<f32>() < config.mix_prob {
        let use_cutmix = match (config.mixup_alpha > 0.0, config.cutmix_alpha > 0.0) {
            (true, true) => rng.random::<f32>() < config.switch_prob,
            (false, true) => true,
            _ => false,
        };
        let alpha = if use_cutmix { config.cutmix_alpha } else { config.mixup_alpha };
        let beta = Beta::new(alpha as f64, alpha as f64).expect("alpha validated positive");
        let lam = beta.sample(rng) as f32;
        if use_cutmix {
            let (y0, y1, x0, x1) = cutmix_box(r, lam, rng);
            for i in 0..b / 2 {
                let (head, tail) = images.split_at_mut((b - 1 - i) * image_len);
                let (a, partner) = (&mut head[i * image_len..(i + 1) * image_len], &mut tail[..image_len]);
                for c in 0..3 {
                    for y in y0..y1 {
                        let row = (c * r + y) * r;
                        a[row + x0..row + x1].swap_with_slice(&mut partner[row + x0..row + x1]);
                    }
                }
            }
            let pasted = ((y1 - y0) * (x1 - x0)) as f32 / (r * r) as f32;
            mix = Mix { lam: 1.0 - pasted, cutmix: Some((y0, y1, x0, x1)) };
        } else {
            for i in 0..b / 2 {
                let (head, tail) = images.split_at_mut((b - 1 - i) * image_len);
                let (a, partner) = (&mut head[i * image_len..(i + 1) * image_len], &mut tail[..image_len]);
                for (u, v) in a.iter_mut().zip(partner.iter_mut()) {
                    (*u, *v) = (lam * *u + (1.0 - lam) * *v, lam * *v + (1.0 - lam) * *u);
                }
            }
            mix = Mix { lam, cutmix: None };
        }
    }
    let off = config.smoothing / classes as f32;
    let on = 1.0 - config.smoothing + off;
    let mut targets = vec![off; b * classes]; // [B, K]
    for (i, &label) in labels.iter().enumerate() {
        let partner = labels[b - 1 - i];
        targets[i * classes + label as usize] += mix.lam * (on - off);
        targets[i * classes + partner as usize] += (1.0 - mix.lam) * (on - off);
    }
    (targets, mix)
}

/// Cutmix box of area about (1 − lam) · R² centred at a uniform pixel and clipped to the
/// image: (y0, y1, x0, x1).
fn cutmix_box(r: usize, lam: f32, rng: &mut ChaCha8Rng) -> (usize, usize, usize, usize) {
    let cut = (r as f32 * (1.0 - lam).max(0.0).sqrt()) as usize;
    let (cy, cx) = (rng.random_range(0..r), rng.random_range(0..r));
    let span = |c: usize| (c.saturating_sub(cut / 2), (c + cut / 2).min(r));
    let ((y0, y1), (x0, x1)) = (span(cy), span(cx));
    (y0, y1, x0, x1)
}

#[cfg(test)]
mod tests;
