//! The trainer's file formats under damage: MNIST IDX (raw and gzip), CIFAR-10 records,
//! image files of every format we decode, and run configs. Each valid seed is damaged
//! thousands of times from a fixed seed; every result must be a value or a readable error,
//! never a panic, an abort or an allocation the input does not pay for.

use std::io::Cursor;
use std::path::PathBuf;

use autoprog::data::preprocess;

use crate::data::testutil::gzip;
use crate::data::{cifar, decode_image, mnist};
use autoprog::train::TrainConfig;

#[path = "../../tests/support/mutate.rs"]
mod mutate;
use mutate::Mutator;

fn assert_readable(error: &str, case: &str) {
    assert!(!error.trim().is_empty() && !error.contains("panicked"), "{case}: not a readable error: {error:?}");
}

/// An IDX file: big-endian magic and sizes, then the body.
fn idx(magic: u32, sizes: &[u32], body: &[u8]) -> Vec<u8> {
    let mut bytes: Vec<u8> = std::iter::once(magic).chain(sizes.iter().copied()).flat_map(u32::to_be_bytes).collect();
    bytes.extend_from_slice(body);
    bytes
}

#[test]
fn fuzzed_mnist_files_never_panic() {
    let pixels: Vec<u8> = (0..3 * 5 * 4).map(|i| (i * 7) as u8).collect();
    let images = idx(2051, &[3, 5, 4], &pixels);
    let labels = idx(2049, &[3], &[1, 7, 9]);
    let seeds = [images.clone(), labels.clone(), gzip(&images), gzip(&labels)];
    let mut mutator = Mutator::new(31);
    let mut cases = 0;
    for round in 0..2400 {
        let bytes = mutator.bytes(&seeds[round % seeds.len()]);
        // Gzipped seeds go through the bounded inflation first, as `open` does.
        let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
            match mnist::inflate_bounded(&bytes) {
                Ok(inflated) => inflated,
                Err(error) => {
                    assert_readable(&error, &format!("round {round}"));
                    cases += 1;
                    continue;
                }
            }
        } else {
            bytes
        };
        match mnist::parse_images(&bytes) {
            Ok((pixels, height, width)) => assert_eq!(pixels.len() % (height * width), 0),
            Err(error) => assert_readable(&error, &format!("round {round}")),
        }
        if let Err(error) = mnist::parse_labels(&bytes) {
            assert_readable(&error, &format!("round {round}"));
        }
        cases += 1;
    }
    eprintln!("{cases} fuzzed MNIST files");
}

#[test]
fn fuzzed_cifar_files_never_panic() {
    let record: Vec<u8> = std::iter::once(3).chain((0..3 * 32 * 32).map(|i| i as u8)).collect();
    let file = record.repeat(2);
    let mut mutator = Mutator::new(37);
    for round in 0..600 {
        let bytes = mutator.bytes(&file);
        if let Err(error) = cifar::check_records(&bytes, 10) {
            assert_readable(&error, &format!("round {round}"));
        }
    }
    eprintln!("600 fuzzed CIFAR-10 files");
}

/// A small image in every format the datasets decode, as files of it would hold it, with
/// a file name of its format.
fn encoded_images() -> Vec<(Vec<u8>, PathBuf)> {
    let rgb = image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 36) as u8, (y * 50) as u8, 90]));
    let rgba = image::DynamicImage::ImageRgba8(image::DynamicImage::ImageRgb8(rgb.clone()).to_rgba8());
    let gray16 = image::DynamicImage::ImageLuma16(image::DynamicImage::ImageRgb8(rgb.clone()).to_luma16());
    let rgb = image::DynamicImage::ImageRgb8(rgb);
    use image::ImageFormat::*;
    let cases = [
        (&rgb, Png),
        (&rgba, Png),
        (&gray16, Png),
        (&rgb, Jpeg),
        (&rgb, Bmp),
        (&rgba, Gif),
        (&rgb, Tiff),
        (&rgba, WebP),
        (&rgb, Pnm),
        (&rgb, Tga),
        (&rgba, Ico),
        (&rgb, Qoi),
    ];
    cases
        .into_iter()
        .map(|(image, format)| {
            let mut bytes = Cursor::new(Vec::new());
            image.write_to(&mut bytes, format).unwrap_or_else(|e| panic!("encode {format:?}: {e}"));
            (bytes.into_inner(), PathBuf::from(format!("image.{}", format.extensions_str()[0])))
        })
        .collect()
}

#[test]
fn fuzzed_image_files_never_panic() {
    let seeds = encoded_images();
    for (seed, name) in &seeds {
        let image = decode_image(seed, name).unwrap_or_else(|e| panic!("{}: {e}", name.display()));
        assert_eq!((image.width, image.height), (7, 5));
    }
    let mut mutator = Mutator::new(41);
    let (mut cases, mut decoded) = (0, 0);
    for round in 0..2400 {
        let (seed, name) = &seeds[round % seeds.len()];
        let bytes = mutator.bytes(seed);
        match decode_image(&bytes, name) {
            Ok(image) => {
                // What training's evaluation and `predict` do with a decoded image.
                preprocess(&image, 8, [0.5; 3], [0.25; 3]);
                decoded += 1;
            }
            Err(error) => assert_readable(&error, &format!("round {round} ({} bytes)", bytes.len())),
        }
        cases += 1;
    }
    eprintln!("{cases} fuzzed image files, {decoded} decoded");
}

#[test]
fn image_headers_that_claim_huge_canvases_are_refused_before_allocating() {
    // A PNG header claiming 100 000 × 100 000 pixels (30 GB of RGB) in a file of 60 bytes.
    let (mut png, name) = encoded_images().remove(0);
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    // With the header chunk's checksum made right again, only the size limit stops it.
    let mut crc = flate2::Crc::new();
    crc.update(&png[12..29]);
    png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    let error = decode_image(&png, &name).unwrap_err();
    assert_readable(&error, "huge PNG");
    assert!(error.contains("limit"), "{error}");
}

#[test]
fn fuzzed_run_configs_never_panic() {
    let seeds = [
        TrainConfig::preset("quick").unwrap().to_toml(),
        TrainConfig::preset("standard").unwrap().to_toml(),
        include_str!("../../configs/digits.toml").to_string(),
    ];
    let mut mutator = Mutator::new(43);
    let (mut cases, mut valid) = (0, 0);
    for round in 0..1800 {
        let text = mutator.text(&seeds[round % seeds.len()]);
        cases += 1;
        let config = match toml::from_str::<TrainConfig>(&text) {
            Ok(config) => config,
            Err(error) => {
                assert_readable(&error.to_string(), &format!("round {round}"));
                continue;
            }
        };
        // What `train` does with a config before it touches data or the GPU.
        match config.validate().and_then(|()| config.schedule()) {
            Ok(stages) => {
                assert!(!stages.is_empty());
                valid += 1;
            }
            Err(error) => assert_readable(&error.to_string(), &format!("round {round}")),
        }
    }
    eprintln!("{cases} fuzzed run configs, {valid} valid");
}
