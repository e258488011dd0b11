//! Tests of the augmentation transforms and of mixing.

use rand_chacha::rand_core::SeedableRng;

use super::*;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A 23 × 17 image with distinct, varied pixels.
fn pattern() -> RgbImage {
    let (w, h) = (23, 17);
    let data = (0..w * h).flat_map(|i| [(i * 7 % 256) as u8, (i * 13 % 251) as u8, (i / w * 15) as u8]).collect();
    RgbImage { width: w, height: h, data }
}

#[test]
fn data_augment_eval_transform_of_a_constant_is_the_normalised_constant() {
    let config = AugmentConfig::none(8);
    for (w, h) in [(8, 8), (3, 5), (40, 19)] {
        let out = eval_transform(&RgbImage::filled(w, h, [51, 102, 204]), &config);
        assert_eq!(out.len(), 3 * 8 * 8);
        for c in 0..3 {
            let expected = ([0.2, 0.4, 0.8][c] - config.mean[c]) / config.std[c];
            assert!(out[c * 64..(c + 1) * 64].iter().all(|v| (v - expected).abs() < 1e-5), "channel {c}");
        }
    }
}

#[test]
fn data_augment_random_resized_crop_stays_inside_and_in_range() {
    let mut rng = rng(1);
    for (w, h) in [(23, 17), (5, 40), (64, 3), (1, 1)] {
        for _ in 0..200 {
            let b = random_resized_crop_box(w, h, (0.08, 1.0), CROP_RATIO, &mut rng);
            assert!(b.width >= 1 && b.height >= 1 && b.x + b.width <= w && b.y + b.height <= h, "{b:?} in {w}x{h}");
        }
    }
    // Very elongated images fall back to the centred crop of the extreme ratio.
    let b = random_resized_crop_box(100, 2, (0.9, 1.0), CROP_RATIO, &mut rng);
    assert_eq!(b, CropBox { x: 48, y: 0, width: 3, height: 2 });
    let image = pattern();
    let b = random_resized_crop_box(image.width, image.height, (0.35, 1.0), CROP_RATIO, &mut rng);
    let unit = normalize(&resize(&image, b, 12, 12), [0.0; 3], [1.0; 3]);
    assert_eq!(unit.len(), 3 * 12 * 12);
    assert!(unit.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn data_augment_hflip_twice_is_identity() {
    let image = pattern();
    let mut flipped = image.clone();
    hflip(&mut flipped);
    assert_eq!(flipped.pixel(0, 4), image.pixel(22, 4));
    assert_ne!(flipped, image);
    hflip(&mut flipped);
    assert_eq!(flipped, image);
}

#[test]
fn data_augment_ops_behave() {
    let image = pattern();
    let fill = [9, 9, 9];
    let at = |op: Op, magnitude: u32, sign: f32| {
        let mut out = image.clone();
        apply_op(&mut out, op, magnitude, sign, fill);
        out
    };
    // Magnitude 0 leaves every op but the histogram ones as the identity.
    for op in OPS.into_iter().filter(|op| !matches!(op, Op::AutoContrast | Op::Equalize)) {
        assert_eq!(at(op, 0, 1.0), image, "{op:?} at magnitude 0");
    }
    // Translating a 20-wide image by 45 % moves pixels 9 columns and fills the uncovered ones.
    let wide = RgbImage { width: 20, height: 3, data: (0..180).map(|i| (i * 3 % 256) as u8).collect() };
    let mut shifted = wide.clone();
    apply_op(&mut shifted, Op::TranslateX, 30, 1.0, fill);
    for x in 0..20 {
        let expected = if x < 9 { fill } else { wide.pixel(x - 9, 1) };
        let got = shifted.pixel(x, 1);
        assert!((0..3).all(|c| got[c].abs_diff(expected[c]) <= 1), "x {x}: {got:?} vs {expected:?}");
    }
    let solarized = at(Op::Solarize, 30, 1.0);
    assert!(solarized.data.iter().zip(&image.data).all(|(s, v)| *s == 255 - v));
    let posterized = at(Op::Posterize, 30, 1.0);
    assert!(posterized.data.iter().all(|v| v & 0x0f == 0));
    let dark = at(Op::Brightness, 30, -1.0);
    assert!(dark.data.iter().zip(&image.data).all(|(d, v)| *d == to_u8(0.1 * *v as f32)));
    let gray = at(Op::Color, 30, -1.0);
    assert!(gray.data.chunks_exact(3).all(|p| p[0].abs_diff(p[1]) <= 26 && p[1].abs_diff(p[2]) <= 26));
    let contrast = at(Op::AutoContrast, 0, 1.0);
    for c in 0..3 {
        let channel: Vec<u8> = contrast.data.iter().skip(c).step_by(3).copied().collect();
        assert_eq!((channel.iter().min(), channel.iter().max()), (Some(&0), Some(&255)), "channel {c}");
    }
    let equalized = at(Op::Equalize, 0, 1.0);
    assert_eq!(equalized.data.iter().max(), Some(&255));
    // Rotation turns about the centre: the centre pixel stays, the corners get the fill.
    let mut square = RgbImage::filled(9, 9, [10, 20, 30]);
    let centre = 3 * (4 * 9 + 4);
    square.data[centre..centre + 3].copy_from_slice(&[200, 100, 50]);
    let rotated = {
        let mut out = square.clone();
        apply_op(&mut out, Op::Rotate, 30, 1.0, fill);
        out
    };
    assert_eq!(rotated.pixel(4, 4), [200, 100, 50]);
    assert_eq!(rotated.pixel(0, 0), fill);
    for op in [Op::Sharpness, Op::Contrast, Op::ShearX, Op::ShearY, Op::TranslateY] {
        assert_ne!(at(op, 30, 1.0), image, "{op:?} at magnitude 30 changes the image");
    }
}

#[test]
fn data_augment_train_transform_is_deterministic_per_rng() {
    let config = AugmentConfig { resolution: 12, erase_prob: 1.0, ..AugmentConfig::default() };
    config.validate().expect("valid");
    let image = pattern();
    let a = train_transform(&image, &config, &mut rng(5));
    assert_eq!(a.len(), 3 * 12 * 12);
    assert_eq!(a, train_transform(&image, &config, &mut rng(5)));
    assert_ne!(a, train_transform(&image, &config, &mut rng(6)));
    assert!(a.iter().all(|v| v.is_finite()));
}

#[test]
fn data_augment_random_erase_fills_one_box_with_noise() {
    let (h, w) = (16, 16);
    let mut chw = vec![7.0f32; 3 * h * w];
    random_erase(&mut chw, h, w, &mut rng(3));
    let erased = chw.iter().filter(|&&v| v != 7.0).count() / 3;
    assert!((5..=(h * w / 3 + 8)).contains(&erased), "erased {erased} pixels");
}

#[test]
fn data_augment_mixup_targets_sum_to_one_and_follow_lam() {
    let (b, r, k) = (5, 4, 6);
    let labels = [0u32, 1, 2, 3, 4];
    let images: Vec<f32> = (0..b * 3 * r * r).map(|i| (i / (3 * r * r)) as f32).collect(); // image i is all i
    let mixup =
        AugmentConfig { resolution: r, mix_prob: 1.0, cutmix_alpha: 0.0, smoothing: 0.1, ..AugmentConfig::default() };
    let mut mixed = images.clone();
    let (targets, mix) = mix_batch(&mut mixed, &labels, k, &mixup, &mut rng(11));
    assert!(mix.cutmix.is_none() && mix.lam > 0.0 && mix.lam < 1.0);
    let (off, on) = (0.1 / k as f32, 0.9 + 0.1 / k as f32);
    for i in 0..b {
        let row = &targets[i * k..(i + 1) * k];
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "row {i}");
        let partner = b - 1 - i;
        if partner != i {
            assert!((row[labels[i] as usize] - (off + mix.lam * (on - off))).abs() < 1e-6);
            assert!((row[labels[partner] as usize] - (off + (1.0 - mix.lam) * (on - off))).abs() < 1e-6);
        }
        let expected = mix.lam * i as f32 + (1.0 - mix.lam) * partner as f32;
        assert!(mixed[i * 3 * r * r..(i + 1) * 3 * r * r].iter().all(|v| (v - expected).abs() < 1e-5), "image {i}");
    }

    let cutmix = AugmentConfig { mixup_alpha: 0.0, cutmix_alpha: 1.0, ..mixup.clone() };
    let mut pasted_any = false;
    for seed in 0..20 {
        let mut cut = images.clone();
        let (targets, mix) = mix_batch(&mut cut, &labels, k, &cutmix, &mut rng(seed));
        let (y0, y1, x0, x1) = mix.cutmix.expect("cutmix chosen");
        let pasted = (y1 - y0) * (x1 - x0);
        pasted_any |= pasted > 0;
        assert!((mix.lam - (1.0 - pasted as f32 / (r * r) as f32)).abs() < 1e-6);
        // Image 0 holds image 4's values (4.0) exactly in the box, in every channel.
        let from_partner = cut[..3 * r * r].iter().filter(|&&v| v == 4.0).count();
        assert_eq!(from_partner, 3 * pasted);
        assert!(targets.chunks_exact(k).all(|row| (row.iter().sum::<f32>() - 1.0).abs() < 1e-5));
        let expected = off + mix.lam * (on - off);
        assert!((targets[labels[0] as usize] - expected).abs() < 1e-6);
    }
    assert!(pasted_any, "some seed pastes a box");

    let off_config = AugmentConfig { mix_prob: 0.0, ..mixup };
    let mut unmixed = images.clone();
    let (targets, mix) = mix_batch(&mut unmixed, &labels, k, &off_config, &mut rng(13));
    assert_eq!((mix.lam, unmixed), (1.0, images));
    assert!((targets[0] - on).abs() < 1e-6 && (targets[1] - off).abs() < 1e-6);
}

#[test]
fn data_augment_config_validates_and_round_trips() {
    assert!(AugmentConfig::default().validate().is_ok());
    assert!(AugmentConfig::none(16).validate().is_ok());
    assert!(!AugmentConfig::none(16).soft_targets() && AugmentConfig::default().soft_targets());
    let bad = AugmentConfig { randaug_magnitude: 31, ..AugmentConfig::default() };
    assert!(bad.validate().expect_err("rejected").to_string().contains("magnitude 31 must be at most 30"));
    let bad = AugmentConfig { mix_prob: 1.5, ..AugmentConfig::default() };
    assert!(bad.validate().expect_err("rejected").to_string().contains("mix_prob 1.5"));
    let json = serde_json::to_string(&AugmentConfig::default()).expect("serialisable");
    assert_eq!(serde_json::from_str::<AugmentConfig>(&json).expect("parses"), AugmentConfig::default());
    let partial: AugmentConfig = serde_json::from_str(r#"{"resolution": 64, "hflip": false}"#).expect("parses");
    assert_eq!(partial, AugmentConfig { resolution: 64, hflip: false, ..AugmentConfig::default() });
}
