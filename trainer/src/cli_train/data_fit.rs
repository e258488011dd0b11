//! What a new run chooses from its data, and the first lines that say so: flips (by a probe
//! of the training images), the epochs (a preset's budget of steps spread over the data) and
//! the resolution (the preset's, with what the images' own size would cost). Every choice
//! gives way to a flag or a config file.

use autoprog::data::FlipAdvice;
use autoprog::model::VitConfig;
use autoprog::train::fit::{fit_epochs, fit_flips};
use autoprog::train::TrainConfig;

use super::TrainArgs;
use crate::data::{Dataset, Format};

/// Fits a new run's configuration to its data where the command line and the config file
/// left the choice open; `announce`: print what was chosen and why.
pub(super) fn fit_to_data(
    args: &TrainArgs,
    config: &mut TrainConfig,
    dataset: &Dataset,
    announce: bool,
) -> anyhow::Result<()> {
    // Flips follow the data unless the command line or a config file chose: never on
    // MNIST (mirrored digits are other digits), the presets' on the built-in set (they
    // are tuned for it), else as the probe of the training images advises.
    match dataset.format {
        _ if args.no_hflip || args.hflip => {}
        Format::Mnist => config.augment.hflip = false,
        _ if args.config.is_some() => {}
        Format::Procedural => {}
        _ => {
            if let Some((advice, line)) = fit_flips(config, dataset.train.as_ref()).filter(|_| announce) {
                let hint =
                    if advice == FlipAdvice::Avoid { "--hflip forces them" } else { "--no-hflip turns them off" };
                eprintln!("{line}; {hint}");
            }
        }
    }
    if dataset.format == Format::Procedural {
        return Ok(());
    }
    if args.epochs.is_none() && args.config.is_none() {
        let line = fit_epochs(config, dataset.train.len(), args.validate_every)?;
        let hint = if config.recipe.validate_every > 1 {
            "--epochs and --validate-every override"
        } else {
            "--epochs overrides"
        };
        if announce {
            eprintln!("{line}; {hint})");
        }
    }
    if announce {
        let native = NativeSize::sample(dataset.train.as_ref());
        let (source, chosen) = resolution_source(args, &config.preset);
        eprintln!("{}", resolution_line(&config.model, native, &source, !chosen));
    }
    Ok(())
}

/// The size of a dataset's training images, from a sample of them.
#[derive(Clone, Copy, Debug, PartialEq)]
struct NativeSize {
    /// Median width and height of the sampled images.
    width: usize,
    height: usize,
    /// Whether the sampled images are not all of one size.
    varied: bool,
}

/// Images [`NativeSize::sample`] decodes: spread over the whole set, few enough to cost
/// nothing next to an epoch.
const SIZE_SAMPLE: usize = 16;

impl NativeSize {
    /// The median size of up to [`SIZE_SAMPLE`] images spread evenly over `source`
    /// (images that fail to load are left out); `None` when none loads.
    fn sample(source: &dyn autoprog::data::Source) -> Option<NativeSize> {
        let len = source.len();
        let picks = SIZE_SAMPLE.min(len);
        let sizes: Vec<(usize, usize)> = (0..picks)
            .filter_map(|k| source.load(k * len / picks).ok())
            .map(|image| (image.width, image.height))
            .collect();
        let median = |mut v: Vec<usize>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        let first = *sizes.first()?;
        Some(NativeSize {
            width: median(sizes.iter().map(|s| s.0).collect()),
            height: median(sizes.iter().map(|s| s.1).collect()),
            varied: sizes.iter().any(|&s| s != first),
        })
    }
}

/// Where the model's resolution came from, for the run's resolution line, and whether the
/// user chose it (with `--image-size` or a config file).
fn resolution_source(args: &TrainArgs, preset: &str) -> (String, bool) {
    // The precedence of `base_config`: --image-size, then --model, then the config file.
    match (&args.image_size, &args.model, &args.config) {
        (Some(_), _, _) => ("--image-size".into(), true),
        (None, Some(model), _) if model.ends_with(".toml") => ("the model file's".into(), false),
        (None, Some(model), _) => (format!("the {model} model's"), false),
        (None, None, Some(_)) => ("the config file's".into(), true),
        (None, None, None) => (format!("the {preset} preset's"), false),
    }
}

/// The run's line on its input resolution: the images' own size against the model's
/// resolution and, when `advise` and small images are scaled down, the flag that keeps
/// their detail and what it costs. Nothing is changed: a preset's resolution is a compute
/// budget, and only the user knows whether detail or time matters more.
fn resolution_line(model: &VitConfig, native: Option<NativeSize>, source: &str, advise: bool) -> String {
    let r = model.image_size;
    let Some(n) = native else {
        return format!("resolution: {r} px ({source}); the size of the training images could not be read");
    };
    let size = if n.varied {
        format!("of several sizes (median {}×{} px)", n.width, n.height)
    } else {
        format!("{}×{} px", n.width, n.height)
    };
    let side = n.width.min(n.height);
    let own = side - side % model.patch_size;
    if side == r && !n.varied && n.width == n.height {
        format!("resolution: {r} px ({source}), the training images' own size")
    } else if advise && own > r && own <= 2 * r {
        let cost = model.train_flops_per_image(own, model.depth) / model.train_flops_per_image(r, model.depth);
        format!(
            "resolution: {r} px ({source}): the training images, {size}, are scaled down to it; --image-size {own} \
             keeps more of their detail for {cost:.1}× the compute per image"
        )
    } else {
        let how = if side > r {
            "scaled down"
        } else if n.width.max(n.height) < r {
            "scaled up"
        } else {
            "resized"
        };
        format!("resolution: {r} px ({source}): the training images, {size}, are {how} to it")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nano_at(image_size: usize) -> VitConfig {
        VitConfig { image_size, ..VitConfig::preset("nano", 10).unwrap() }
    }

    fn square(side: usize) -> Option<NativeSize> {
        Some(NativeSize { width: side, height: side, varied: false })
    }

    #[test]
    fn the_resolution_line_says_what_scaling_costs_and_keeps() {
        let quick = nano_at(24);
        // Digits at the quick preset's 24 px: the flag that keeps their 28 px, and its cost.
        let line = resolution_line(&quick, square(28), "the quick preset's", true);
        assert!(line.starts_with("resolution: 24 px (the quick preset's): the training images, 28×28 px"), "{line}");
        let cost = quick.train_flops_per_image(28, 6) / quick.train_flops_per_image(24, 6);
        assert!(cost > 1.2 && line.contains(&format!("--image-size 28 keeps more of their detail for {cost:.1}×")));
        // Chosen by the user, or far larger than the budget: no advice.
        let chosen = resolution_line(&quick, square(28), "--image-size", false);
        assert!(chosen.ends_with("28×28 px, are scaled down to it") && !chosen.contains("keeps"), "{chosen}");
        let photos = resolution_line(&quick, square(224), "the quick preset's", true);
        assert!(photos.ends_with("are scaled down to it"), "{photos}");
        // The patch grid rounds the suggestion down: 30 px at 4 px patches is 28.
        assert!(resolution_line(&quick, square(30), "x", true).contains("--image-size 28 "));
        assert_eq!(
            resolution_line(&quick, square(24), "x", true),
            "resolution: 24 px (x), the training images' own size"
        );
        assert!(resolution_line(&quick, square(16), "x", true).ends_with("16×16 px, are scaled up to it"));
        let varied = Some(NativeSize { width: 20, height: 30, varied: true });
        let line = resolution_line(&quick, varied, "x", true);
        assert!(line.contains("of several sizes (median 20×30 px), are resized to it"), "{line}");
        assert!(resolution_line(&quick, None, "x", true).contains("could not be read"));
    }
}
