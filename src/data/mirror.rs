//! Whether mirroring an image keeps its class, measured on the data: the default of random
//! horizontal flips for data nobody tuned a preset for. A nearest-class-mean classifier of
//! small thumbnails is fitted on half of a sample of the training images and scored on the
//! other half, once as the images are and once mirrored. Where the mirrored images are told
//! apart as well as the originals (photos of things that face either way, the built-in
//! shapes at random rotations), a flip is another plausible image of the same class; where
//! they are told apart clearly worse (digits, letters, arrows), a flip draws another shape.

use super::{epoch_order, preprocess, Source};

/// Thumbnail side in pixels: enough to tell a 3 from an ε, cheap for any image size.
const THUMBNAIL: usize = 16;

/// Images a probe decodes at most (half to fit the class means, half to score).
pub const PROBE_IMAGES: usize = 1000;

/// What [`probe_mirroring`] measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MirrorProbe {
    /// Images scored (the other half of the sample fitted the class means).
    pub scored: usize,
    /// Accuracy of the nearest class mean on the scored images, and on their mirror images.
    pub accuracy: f64,
    pub mirrored_accuracy: f64,
    /// The share of the commonest class in the fitted half: what always guessing it scores.
    pub chance: f64,
    /// Scored images that exactly one of the two got right (the paired test's evidence).
    pub discordant: usize,
}

/// The probe's advice on random horizontal flips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlipAdvice {
    /// Mirrored images are classified as well as the originals, within the noise.
    Keep,
    /// Mirrored images are classified clearly worse: mirroring changes the class.
    Avoid,
    /// The probe cannot tell the classes apart from thumbnails: it has no evidence.
    Unsure,
}

impl MirrorProbe {
    /// [`FlipAdvice::Avoid`] when mirroring costs the probe more than three standard errors
    /// of the paired difference and more than a tenth of its skill above chance (so that a
    /// slight bias of a large sample, such as more left-facing horses, keeps flips);
    /// [`FlipAdvice::Unsure`] when the probe is not four standard errors above chance.
    pub fn advice(&self) -> FlipAdvice {
        let n = self.scored.max(1) as f64;
        let skill = self.accuracy - self.chance;
        if self.scored == 0 || skill <= 4.0 * (self.chance * (1.0 - self.chance) / n).sqrt() {
            return FlipAdvice::Unsure;
        }
        let drop = self.accuracy - self.mirrored_accuracy;
        let standard_error = (self.discordant as f64).sqrt() / n;
        if drop > 3.0 * standard_error && drop > 0.1 * skill {
            FlipAdvice::Avoid
        } else {
            FlipAdvice::Keep
        }
    }
}

/// Probes `source` with up to [`PROBE_IMAGES`] of its images, chosen by `seed`; images that
/// fail to load or whose label names no class are left out.
pub fn probe_mirroring(source: &dyn Source, seed: u64) -> MirrorProbe {
    let classes = source.classes().len().max(1);
    let sample: Vec<usize> = epoch_order(source.len(), seed, 0).into_iter().take(PROBE_IMAGES).collect();
    let thumbnails: Vec<(Vec<f32>, usize)> = sample
        .iter()
        .filter_map(|&i| {
            let label = source.label(i) as usize;
            if label >= classes {
                return None;
            }
            let image = source.load(i).ok()?;
            Some((standardised(preprocess(&image, THUMBNAIL, [0.0; 3], [1.0; 3])), label))
        })
        .collect();
    let (fit, scored): (Vec<_>, Vec<_>) = thumbnails.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let features = 3 * THUMBNAIL * THUMBNAIL;
    let mut means = vec![vec![0.0f64; features]; classes];
    let mut counts = vec![0usize; classes];
    for (_, (x, label)) in &fit {
        counts[*label] += 1;
        means[*label].iter_mut().zip(x).for_each(|(m, &v)| *m += v as f64);
    }
    for (mean, &count) in means.iter_mut().zip(&counts) {
        mean.iter_mut().for_each(|m| *m /= count.max(1) as f64);
    }
    let nearest = |x: &[f32]| -> usize {
        let distance = |c: usize| means[c].iter().zip(x).map(|(m, &v)| (m - v as f64).powi(2)).sum::<f64>();
        let fitted = (0..classes).filter(|&c| counts[c] > 0).map(|c| (distance(c), c));
        fitted.min_by(|a, b| a.0.total_cmp(&b.0)).map_or(0, |(_, c)| c)
    };
    let (mut right, mut mirrored_right, mut discordant) = (0usize, 0usize, 0usize);
    for (_, (x, label)) in &scored {
        let plain = nearest(x) == *label;
        let mirrored = nearest(&mirrored(x)) == *label;
        right += plain as usize;
        mirrored_right += mirrored as usize;
        discordant += (plain != mirrored) as usize;
    }
    let n = scored.len().max(1) as f64;
    let commonest = counts.iter().max().copied().unwrap_or(0) as f64;
    MirrorProbe {
        scored: scored.len(),
        accuracy: right as f64 / n,
        mirrored_accuracy: mirrored_right as f64 / n,
        chance: commonest / fit.len().max(1) as f64,
        discordant,
    }
}

/// The thumbnail less its mean, scaled to unit length: brightness and contrast say nothing
/// about the class here.
fn standardised(mut x: Vec<f32>) -> Vec<f32> {
    let mean = x.iter().sum::<f32>() / x.len() as f32;
    x.iter_mut().for_each(|v| *v -= mean);
    let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
    x.iter_mut().for_each(|v| *v /= norm);
    x
}

/// A [3, T, T] thumbnail mirrored left to right.
fn mirrored(x: &[f32]) -> Vec<f32> {
    let mut out = x.to_vec();
    for row in out.chunks_exact_mut(THUMBNAIL) {
        row.reverse();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{LoadError, RgbImage};

    /// Two classes of 12 px images: a bar on the left or the right third, or (`symmetric`) a
    /// bar in the middle against one at both edges; a little noise from the index.
    struct Bars {
        symmetric: bool,
        classes: Vec<String>,
    }

    impl Source for Bars {
        fn len(&self) -> usize {
            400
        }
        fn label(&self, index: usize) -> u32 {
            (index % 2) as u32
        }
        fn classes(&self) -> &[String] {
            &self.classes
        }
        fn load(&self, index: usize) -> Result<RgbImage, LoadError> {
            let class = index % 2;
            let lit = |x: usize| match (self.symmetric, class) {
                (false, 0) => x < 4,
                (false, _) => x >= 8,
                (true, 0) => (4..8).contains(&x),
                (true, _) => !(2..10).contains(&x),
            };
            let mut data = Vec::with_capacity(12 * 12 * 3);
            for y in 0..12 {
                for x in 0..12 {
                    let noise = ((index * 31 + y * 7 + x * 13) % 40) as u8;
                    data.extend([if lit(x) { 200 + noise / 2 } else { noise }; 3]);
                }
            }
            Ok(RgbImage { width: 12, height: 12, data })
        }
        fn describe(&self, index: usize) -> String {
            format!("bars#{index}")
        }
    }

    fn bars(symmetric: bool) -> Bars {
        Bars { symmetric, classes: vec!["a".into(), "b".into()] }
    }

    #[test]
    fn mirrored_classes_are_avoided_and_symmetric_ones_kept() {
        // Left against right bars: every mirrored image is the other class.
        let sided = probe_mirroring(&bars(false), 1);
        assert_eq!((sided.scored, sided.accuracy, sided.mirrored_accuracy), (200, 1.0, 0.0), "{sided:?}");
        assert_eq!(sided.advice(), FlipAdvice::Avoid);
        // Middle against edges: mirroring changes nothing.
        let symmetric = probe_mirroring(&bars(true), 1);
        assert_eq!((symmetric.accuracy, symmetric.mirrored_accuracy), (1.0, 1.0), "{symmetric:?}");
        assert_eq!(symmetric.advice(), FlipAdvice::Keep);
    }

    #[test]
    fn the_built_in_shapes_keep_their_flips() {
        // Drawn at random rotations, a mirrored shape is another drawing of the same class.
        let data = crate::data::Procedural::default();
        let probe = probe_mirroring(&crate::data::ProceduralSource::new(data, crate::data::Split::Train, 2000), 0);
        assert_eq!(probe.scored, PROBE_IMAGES / 2);
        assert_eq!(probe.advice(), FlipAdvice::Keep, "{probe:?}");
    }

    #[test]
    fn advice_weighs_the_drop_against_noise_and_skill() {
        let probe = |accuracy, mirrored_accuracy, discordant| MirrorProbe {
            scored: 500,
            accuracy,
            mirrored_accuracy,
            chance: 0.1,
            discordant,
        };
        // 5 points lower with 100 discordant images: 3 SE is 6 points, within the noise.
        assert_eq!(probe(0.8, 0.75, 100).advice(), FlipAdvice::Keep);
        // 5 points lower with 25 discordant: 3 SE is 3 points, but a tenth of the skill is 7.
        assert_eq!(probe(0.8, 0.75, 25).advice(), FlipAdvice::Keep);
        // 30 points lower: mirroring changes the class.
        assert_eq!(probe(0.8, 0.5, 150).advice(), FlipAdvice::Avoid);
        // A probe at chance has no evidence either way.
        assert_eq!(probe(0.11, 0.02, 50).advice(), FlipAdvice::Unsure);
        assert_eq!(MirrorProbe { scored: 0, ..probe(0.0, 0.0, 0) }.advice(), FlipAdvice::Unsure);
    }
}
