//! MNIST-style IDX files (MNIST, Fashion-MNIST, KMNIST): `train-images-idx3-ubyte`,
//! `train-labels-idx1-ubyte` and the `t10k-` pair for val, raw or gzipped. Grayscale
//! pixels are repeated into RGB. The files are small, so they are read whole.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DataError, LoadError, RgbImage, Source};

const IMAGES_MAGIC: u32 = 2051;
const LABELS_MAGIC: u32 = 2049;

/// The folder holding the IDX files: `root` itself or torchvision's `raw/` or `MNIST/raw/`.
pub(super) fn find(root: &Path) -> Option<PathBuf> {
    [root.to_path_buf(), root.join("raw"), root.join("MNIST").join("raw")]
        .into_iter()
        .find(|dir| ["train", "t10k"].iter().any(|prefix| idx_file(dir, prefix, "images-idx3-ubyte").is_some()))
}

/// `dir/{prefix}-{kind}` in any of its usual spellings: `.gz` or not, and with a dot
/// instead of the last dash (`train-images.idx3-ubyte`, as some mirrors name them).
fn idx_file(dir: &Path, prefix: &str, kind: &str) -> Option<PathBuf> {
    let dotted = kind.replacen("-idx", ".idx", 1);
    [format!("{prefix}-{kind}"), format!("{prefix}-{dotted}")]
        .into_iter()
        .flat_map(|name| [dir.join(&name), dir.join(format!("{name}.gz"))])
        .find(|p| p.is_file())
}

/// One split of an IDX dataset in memory.
pub struct Mnist {
    classes: Vec<String>,
    images_path: PathBuf,
    /// [N, H, W] grayscale pixels.
    pixels: Vec<u8>,
    labels: Vec<u8>,
    height: usize,
    width: usize,
}

impl Mnist {
    /// Reads the (train, val) splits from `dir`; val is `None` when the `t10k-` files are
    /// absent. Classes are the digits 0-9 (more if the labels go higher).
    pub fn open(dir: &Path) -> Result<(Mnist, Option<Mnist>), DataError> {
        let train = Mnist::read(dir, "train")?.ok_or_else(|| DataError::BadLayout {
            path: dir.to_path_buf(),
            detail: "has MNIST test files (t10k-*) but no training files (train-images-idx3-ubyte, \
                     train-labels-idx1-ubyte); add them"
                .into(),
        })?;
        let val = Mnist::read(dir, "t10k")?;
        let max_label = train.labels.iter().chain(val.iter().flat_map(|v| &v.labels)).copied().max().unwrap_or(0);
        let classes: Vec<String> = (0..=(max_label as usize).max(9)).map(|d| d.to_string()).collect();
        let with_classes = |mut split: Mnist| {
            split.classes = classes.clone();
            split
        };
        Ok((with_classes(train), val.map(with_classes)))
    }

    /// Reads the `prefix` split, or `None` when its images file is absent.
    fn read(dir: &Path, prefix: &str) -> Result<Option<Mnist>, DataError> {
        let Some(images_path) = idx_file(dir, prefix, "images-idx3-ubyte") else {
            return Ok(None);
        };
        let labels_path = idx_file(dir, prefix, "labels-idx1-ubyte").ok_or_else(|| DataError::BadLayout {
            path: images_path.clone(),
            detail: format!("has no labels file beside it; add {prefix}-labels-idx1-ubyte (or .gz)"),
        })?;
        let bad_images = |detail: String| DataError::NotMnist { path: images_path.clone(), detail };
        let bad_labels = |detail: String| DataError::NotMnist { path: labels_path.clone(), detail };
        let (pixels, height, width) = parse_images(&read_maybe_gzipped(&images_path)?).map_err(bad_images)?;
        let labels = parse_labels(&read_maybe_gzipped(&labels_path)?).map_err(bad_labels)?;
        let count = pixels.len() / (height * width);
        if labels.len() != count {
            return Err(DataError::BadLayout {
                path: labels_path.clone(),
                detail: format!(
                    "holds {} labels but `{}` holds {count} images; the counts must match",
                    labels.len(),
                    images_path.display()
                ),
            });
        }
        Ok(Some(Mnist { classes: Vec::new(), images_path, pixels, labels, height, width }))
    }
}

/// The pixels [N, H, W] and (H, W) of an IDX images file's bytes (a header of sizes, then
/// the pixels). The sizes are multiplied with overflow checks and must match the bytes
/// that follow exactly, so nothing is allocated beyond what the file holds.
pub(crate) fn parse_images(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize), String> {
    let header = idx_header(bytes, IMAGES_MAGIC, 3)?;
    let (count, height, width) = (header[0], header[1], header[2]);
    let body = &bytes[16..];
    let needed = count.checked_mul(height).and_then(|n| n.checked_mul(width));
    if needed != Some(body.len()) || height == 0 || width == 0 {
        let needed = needed.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
        return Err(format!(
            "header says {count} images of {height}x{width}, which needs {needed} bytes of pixels, but {} follow",
            body.len()
        ));
    }
    Ok((body.to_vec(), height, width))
}

/// The labels of an IDX labels file's bytes.
pub(crate) fn parse_labels(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let count = idx_header(bytes, LABELS_MAGIC, 1)?[0];
    let labels = &bytes[8..];
    if labels.len() != count {
        return Err(format!("header says {count} labels but {} follow", labels.len()));
    }
    Ok(labels.to_vec())
}

/// How much larger than its compressed file an inflated IDX file may be. Real image sets
/// compress 2-10x (MNIST's training images: 4.8x); deflate's limit is about 1000x, which
/// only constructed files (gzip bombs) reach.
const MAX_GZIP_RATIO: usize = 64;
/// Small files compress less well and are harmless: any gzip may inflate to this much.
const MIN_GZIP_LIMIT: usize = 16 << 20;

/// The whole file, inflated when it starts with the gzip magic.
fn read_maybe_gzipped(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    inflate_bounded(&raw).map_err(|detail| DataError::NotMnist { path: path.to_path_buf(), detail })
}

/// Inflates gzip bytes, giving up (without holding more) once the output would pass
/// `MAX_GZIP_RATIO` times the input or `MIN_GZIP_LIMIT`, whichever is larger.
pub(crate) fn inflate_bounded(gz: &[u8]) -> Result<Vec<u8>, String> {
    let limit = gz.len().saturating_mul(MAX_GZIP_RATIO).max(MIN_GZIP_LIMIT);
    let mut inflated = Vec::new();
    let mut decoder = flate2::read::GzDecoder::new(gz).take(limit as u64 + 1);
    decoder.read_to_end(&mut inflated).map_err(|e| format!("its gzip data is damaged ({e})"))?;
    if inflated.len() > limit {
        return Err(format!(
            "it inflates to more than {} MiB, over {MAX_GZIP_RATIO}x its compressed size, which no real image set \
             does (a gzip bomb?); if it really is that large, gunzip it and use the raw file",
            limit >> 20
        ));
    }
    Ok(inflated)
}

/// Checks the big-endian magic number and returns the `dims` sizes that follow it.
fn idx_header(bytes: &[u8], magic: u32, dims: usize) -> Result<Vec<usize>, String> {
    let word = |i: usize| bytes.get(4 * i..4 * i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let found = word(0).ok_or_else(|| format!("{} bytes is too short for a header", bytes.len()))?;
    if found != magic {
        return Err(format!("magic number {found}, expected {magic}"));
    }
    (1..=dims)
        .map(|i| word(i).map(|w| w as usize).ok_or_else(|| format!("{} bytes is too short for a header", bytes.len())))
        .collect()
}

impl Source for Mnist {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn label(&self, index: usize) -> u32 {
        self.labels[index] as u32
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn load(&self, index: usize) -> Result<RgbImage, LoadError> {
        let plane = self.height * self.width;
        let gray = &self.pixels[index * plane..(index + 1) * plane]; // [H, W]
        let data = gray.iter().flat_map(|&v| [v, v, v]).collect(); // [H, W, 3]
        Ok(RgbImage { width: self.width, height: self.height, data })
    }

    fn describe(&self, index: usize) -> String {
        format!("{}#{index}", self.images_path.display())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::testutil::{gzip, TempDir};
    use super::super::{open, Format};
    use super::*;

    fn images_file(count: usize, side: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for word in [IMAGES_MAGIC, count as u32, side as u32, side as u32] {
            bytes.extend_from_slice(&word.to_be_bytes());
        }
        // Image i is a ramp: pixel (x, y) = i + x + y.
        for i in 0..count {
            for y in 0..side {
                bytes.extend((0..side).map(|x| (i + x + y) as u8));
            }
        }
        bytes
    }

    fn labels_file(labels: &[u8]) -> Vec<u8> {
        let mut bytes = LABELS_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        bytes.extend_from_slice(labels);
        bytes
    }

    /// Raw train files (4 images of 6×6) and gzipped test files (2 images).
    fn write_mnist(dir: &Path) {
        std::fs::create_dir_all(dir).expect("mkdir");
        let write = |name: &str, bytes: Vec<u8>| std::fs::write(dir.join(name), bytes).expect("write fixture");
        write("train-images-idx3-ubyte", images_file(4, 6));
        write("train-labels-idx1-ubyte", labels_file(&[3, 1, 4, 1]));
        write("t10k-images-idx3-ubyte.gz", gzip(&images_file(2, 6)));
        write("t10k-labels-idx1-ubyte.gz", gzip(&labels_file(&[5, 9])));
    }

    #[test]
    fn data_mnist_reads_raw_and_gzipped_files() {
        let dir = TempDir::new("mnist");
        write_mnist(&dir.path().join("raw"));
        let dataset = open(dir.path()).expect("valid MNIST folder");
        assert_eq!(dataset.format, Format::Mnist);
        assert_eq!(dataset.classes(), ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
        let train = &dataset.train;
        assert_eq!((train.len(), train.label(2)), (4, 4));
        let image = train.load(2).expect("in-memory records load");
        assert_eq!((image.width, image.height), (6, 6));
        assert_eq!(image.pixel(3, 1), [6, 6, 6]);
        assert!(train.describe(2).ends_with("train-images-idx3-ubyte#2"));
        let val = dataset.val.expect("t10k files present");
        assert_eq!((val.len(), val.label(1)), (2, 9));
        assert_eq!(val.load(1).expect("loads").pixel(0, 0), [1, 1, 1]);
    }

    #[test]
    fn data_mnist_rejects_bad_magic_counts_and_sizes() {
        let dir = TempDir::new("mnist-bad");
        write_mnist(dir.path());
        let images = dir.path().join("train-images-idx3-ubyte");
        let labels = dir.path().join("train-labels-idx1-ubyte");

        std::fs::write(&labels, labels_file(&[1, 2, 3])).expect("write fixture");
        let err = open(dir.path()).err().expect("count mismatch").to_string();
        assert!(err.contains("holds 3 labels but") && err.contains("holds 4 images"), "{err}");

        std::fs::write(&labels, images_file(4, 6)).expect("write fixture");
        let err = open(dir.path()).err().expect("bad magic").to_string();
        assert_eq!(
            err,
            format!(
                "`{}` is not an MNIST IDX file (magic number 2051, expected 2049); use the original files \
                 (train-images-idx3-ubyte, ...)",
                labels.display()
            )
        );

        let mut truncated = images_file(4, 6);
        truncated.truncate(100);
        std::fs::write(&images, truncated).expect("write fixture");
        let err = open(dir.path()).err().expect("truncated").to_string();
        assert!(err.contains("needs 144 bytes of pixels, but 84 follow"), "{err}");

        std::fs::remove_file(&labels).expect("rm");
        let err = open(dir.path()).err().expect("no labels").to_string();
        assert!(err.contains("has no labels file beside it"), "{err}");
    }

    #[test]
    fn data_mnist_header_sizes_that_overflow_are_errors() {
        // 2^32 - 1 images of (2^32 - 1)^2 pixels: the product overflows 64 bits.
        let mut bytes = Vec::new();
        for word in [IMAGES_MAGIC, u32::MAX, u32::MAX, u32::MAX] {
            bytes.extend_from_slice(&word.to_be_bytes());
        }
        bytes.extend_from_slice(&[0; 64]);
        let err = parse_images(&bytes).unwrap_err();
        assert!(err.contains("needs more than 2^64 bytes") && err.contains("but 64 follow"), "{err}");
        // A zero side is refused even though no pixels are then exactly what follows.
        let mut bytes = Vec::new();
        for word in [IMAGES_MAGIC, 1 << 16, 1 << 16, 0] {
            bytes.extend_from_slice(&word.to_be_bytes());
        }
        assert!(parse_images(&bytes).unwrap_err().contains("65536x0"));
        let err = parse_labels(&[0, 0, 8, 1, 0xff, 0xff, 0xff, 0xff, 7]).unwrap_err();
        assert!(err.contains("4294967295 labels but 1 follow"), "{err}");
    }

    #[test]
    fn data_mnist_gzip_bombs_are_refused_after_a_bounded_read() {
        // 256 MiB of zeros behind a valid header compress to about 250 KiB.
        let mut header = Vec::new();
        for word in [IMAGES_MAGIC, 1 << 18, 32, 32] {
            header.extend_from_slice(&word.to_be_bytes());
        }
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&header).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            encoder.write_all(&zeros).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let err = inflate_bounded(&bomb).unwrap_err();
        assert!(err.contains("gzip bomb") && err.contains("gunzip"), "{err}");
        // Damaged gzip data is an error too, not a panic.
        let err = inflate_bounded(&bomb[..bomb.len() / 2]).unwrap_err();
        assert!(err.contains("damaged") || err.contains("gzip bomb"), "{err}");
        assert_eq!(inflate_bounded(&gzip(&images_file(2, 6))).unwrap(), images_file(2, 6));
    }
}
