//! Test fixtures: self-deleting temp folders and small encoded images.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh folder under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("autoprog-data-{tag}-{}-{unique}", std::process::id()));
        // A leftover from a crashed run with the same pid would otherwise leak into the test.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `width` × `height` RGB gradient whose colour depends on `seed`.
pub fn gradient(width: u32, height: u32, seed: u8) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 255 / width.max(1)) as u8, (y * 255 / height.max(1)) as u8, seed])
    })
}

/// Writes `image` to `path`, the format chosen by the extension.
pub fn save(path: &Path, image: &image::DynamicImage) {
    std::fs::create_dir_all(path.parent().expect("file in a folder")).expect("mkdir");
    image.save(path).expect("encode fixture image");
}

/// train/{cat,dog} and val/{cat,dog} with PNG and JPEG files of different sizes, a
/// grayscale PNG, a corrupt and a truncated PNG, plus files that must be skipped.
pub fn image_folder_fixture(dir: &TempDir) -> PathBuf {
    let root = dir.path().join("pets");
    for split in ["train", "val"] {
        let base = root.join(split);
        save(&base.join("cat/a.png"), &gradient(20, 16, 1).into());
        save(&base.join("cat/b.jpg"), &gradient(9, 13, 2).into());
        save(&base.join("dog/c.PNG"), &gradient(32, 32, 3).into());
        let gray = image::GrayImage::from_fn(10, 10, |x, _| image::Luma([(x * 20) as u8]));
        save(&base.join("dog/gray.png"), &gray.into());
    }
    let train = root.join("train");
    std::fs::write(train.join("cat/broken.png"), b"this is not a png").expect("write fixture");
    let mut png = Vec::new();
    gradient(16, 16, 9).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("encode fixture");
    std::fs::write(train.join("dog/truncated.png"), &png[..png.len() / 2]).expect("write fixture");
    std::fs::write(train.join("dog/notes.txt"), b"not an image").expect("write fixture");
    std::fs::write(train.join("cat/.hidden.png"), b"hidden").expect("write fixture");
    std::fs::create_dir_all(train.join(".cache")).expect("mkdir");
    root
}

/// `bytes` gzipped, as an `.gz` file of them holds them.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}
