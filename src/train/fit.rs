//! What a new run on a user's images chooses from them, shared by `autoprog train --data` and
//! the page's picked folders: random flips (by a probe of the training images) and the epochs
//! (the preset's budget of steps spread over the data). Each returns the line that says what
//! it chose and why; the host adds how to override it (a flag, a form field).

use super::config::{TrainConfig, MAX_EPOCH_STRETCH};
use crate::data::{probe_mirroring, FlipAdvice, MirrorProbe, Source};

/// The images the flip probe samples: the same for every seed of a sweep, so that seeds
/// never train with different augmentations.
const MIRROR_PROBE_SEED: u64 = 0x6d69_7272_6f72;

/// Flips as the probe of `train` advises: off where mirrored images are classified clearly
/// worse than the originals (digits, text). Returns the advice and the line on what was
/// measured and chosen; `None` (no probe) where the config already has flips off.
pub fn fit_flips(config: &mut TrainConfig, train: &dyn Source) -> Option<(FlipAdvice, String)> {
    if !config.augment.hflip {
        return None;
    }
    let probe = probe_mirroring(train, MIRROR_PROBE_SEED);
    config.augment.hflip = probe.advice() != FlipAdvice::Avoid;
    Some((probe.advice(), flips_line(&probe)))
}

/// The line on random horizontal flips: what the probe measured and what it chose.
fn flips_line(probe: &MirrorProbe) -> String {
    let measured = format!(
        "a nearest-class-mean probe of {} training images classifies {:.1}% of them and {:.1}% of their mirror \
         images (chance {:.1}%)",
        probe.scored,
        100.0 * probe.accuracy,
        100.0 * probe.mirrored_accuracy,
        100.0 * probe.chance
    );
    match probe.advice() {
        FlipAdvice::Avoid => format!("flips: off: {measured}, so a flip draws another class, as with digits or text"),
        FlipAdvice::Keep => format!("flips: on: {measured}, so mirroring keeps the class"),
        FlipAdvice::Unsure => format!(
            "flips: on (the preset's): {measured}, too close to chance to tell whether mirroring keeps the class \
             (too few images, or classes alike in thumbnails)"
        ),
    }
}

/// Spreads the preset's steps over `train_images` ([`TrainConfig::spread_over`]), validating
/// every `validate_every` epochs where given; returns the line on the run's length, its
/// parenthesis left open for the host's override hint (`; --epochs overrides)`).
pub fn fit_epochs(
    config: &mut TrainConfig,
    train_images: usize,
    validate_every: Option<usize>,
) -> anyhow::Result<String> {
    let preset_epochs = config.recipe.epochs;
    config.spread_over(train_images)?;
    if let Some(every) = validate_every {
        config.recipe.validate_every = every;
    }
    Ok(epochs_line(config, preset_epochs, train_images))
}

/// The line on the run's length: the preset's epochs, or how many more the data's size gave it.
fn epochs_line(config: &TrainConfig, preset_epochs: usize, train_images: usize) -> String {
    let (epochs, preset) = (config.recipe.epochs, &config.preset);
    if epochs <= preset_epochs {
        return format!("epochs: {epochs} (the {preset} preset's");
    }
    let validated = match config.recipe.validate_every {
        1 => String::new(),
        every => format!(", and it validates every {every} epochs, {} times in all", epochs.div_ceil(every)),
    };
    let capped = if epochs == MAX_EPOCH_STRETCH * preset_epochs {
        format!(", at most {MAX_EPOCH_STRETCH} times its epochs")
    } else {
        String::new()
    };
    format!(
        "epochs: {epochs} (the {preset} preset's {preset_epochs} epochs of {} images, spread over the {train_images} \
         training images{capped}; its warmup and searches lengthen alike{validated}",
        config.data.train_images
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epochs_line_says_how_the_preset_spreads_over_the_data() {
        let quick = TrainConfig::preset("quick").unwrap();
        let line = |images: usize, every: Option<usize>| fit_epochs(&mut quick.clone(), images, every).unwrap();
        assert_eq!(
            line(8000, None),
            "epochs: 8 (the quick preset's 4 epochs of 15000 images, spread over the 8000 training images; its \
             warmup and searches lengthen alike, and it validates every 2 epochs, 4 times in all"
        );
        assert!(line(8000, Some(3)).ends_with("alike, and it validates every 3 epochs, 3 times in all"));
        assert!(
            line(100, None).starts_with("epochs: 80 (") && line(100, None).contains("at most 20 times its epochs;")
        );
        assert_eq!(line(50_000, None), "epochs: 4 (the quick preset's");
    }

    #[test]
    fn the_flips_line_says_what_the_probe_measured_and_chose() {
        let probe = |mirrored_accuracy| MirrorProbe {
            scored: 500,
            accuracy: 0.8,
            mirrored_accuracy,
            chance: 0.1,
            discordant: 0,
        };
        let digits = flips_line(&probe(0.45));
        assert!(digits.starts_with("flips: off: a nearest-class-mean probe of 500 training images classifies 80.0%"));
        assert!(digits.ends_with(
            "45.0% of their mirror images (chance 10.0%), so a flip draws another class, as with digits or text"
        ));
        assert!(flips_line(&probe(0.79)).ends_with("so mirroring keeps the class"));
    }
}
