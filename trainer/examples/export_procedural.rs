//! Writes the built-in procedural dataset as an ImageFolder of PNGs (`train/<class>/`,
//! `val/<class>/`), exactly the 8-bit images the trainer's loader sees, so that other
//! tools (PyTorch, for instance) can train on the same data.
//!
//!   cargo run --release --example export_procedural -- OUT_DIR [TRAIN] [VAL]

use autoprog::data::{Procedural, Split, CLASSES};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first() else {
        anyhow::bail!("usage: export_procedural OUT_DIR [TRAIN_IMAGES] [VAL_IMAGES]");
    };
    let count = |i: usize, default: u64| -> anyhow::Result<u64> {
        args.get(i).map_or(Ok(default), |s| s.parse().map_err(|e| anyhow::anyhow!("`{s}` is not a count: {e}")))
    };
    let data = Procedural::default();
    for (split, name, n) in [(Split::Train, "train", count(1, 20_000)?), (Split::Val, "val", count(2, 1000)?)] {
        for index in 0..n {
            let (rgb, label) = data.image_rgb8(split, index);
            let side = data.image_size;
            let dir = std::path::Path::new(out).join(name).join(CLASSES[label as usize]);
            std::fs::create_dir_all(&dir)?;
            image::RgbImage::from_raw(side as u32, side as u32, rgb)
                .expect("3 bytes per pixel")
                .save(dir.join(format!("{index:06}.png")))?;
        }
    }
    Ok(())
}
