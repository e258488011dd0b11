//! Training data on the native side: dataset sources (the built-in procedural set, image
//! folders, CIFAR-10 binary, MNIST IDX) and the prefetching batch loader on worker threads
//! (the augmentation itself lives in the core, `autoprog::data::augment`).
//!
//! Every source hands out 8-bit RGB images by index; [`open`] detects the format of a
//! folder. The [`loader`] turns a source and an epoch's order into normalised NCHW batches,
//! deterministically from (seed, epoch) whatever the number of worker threads.

pub(crate) mod cifar;
mod folder;
pub mod loader;
pub(crate) mod mnist;
#[cfg(test)]
pub(crate) mod testutil;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use autoprog::data::RgbImage;
pub use autoprog::data::{split_train_val, ProceduralSource, Source};
use autoprog::data::{Procedural, Split};
use thiserror::Error;

pub use autoprog::data::{AugmentConfig, LoadError};
pub use cifar::Cifar10;
pub use folder::ImageFolder;
pub use loader::{skipped_with_warnings, Loader, Skipped};
pub use mnist::Mnist;

/// The formats [`open`] understands, for messages.
const FORMATS: &str = "train/<class>/ images, CIFAR-10 .bin files or MNIST IDX files";

/// Everything that can go wrong while opening a dataset or building batches.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("`{}` does not exist; pass --data to a dataset folder ({FORMATS})", path.display())]
    Missing { path: PathBuf },

    #[error("`{}` is a file; pass --data to the folder that holds the dataset ({FORMATS})", path.display())]
    NotAFolder { path: PathBuf },

    #[error("`{}` is empty; put a dataset there ({FORMATS}) or pass --data to another folder", path.display())]
    EmptyFolder { path: PathBuf },

    #[error(
        "`{}` has no class folders (expected {FORMATS}); pass --data to a folder in one of these formats",
        path.display()
    )]
    UnknownLayout { path: PathBuf },

    #[error("class folder `{}` has no images (png, jpg, ...); add images to it or remove it", path.display())]
    EmptyClass { path: PathBuf },

    #[error("`{}`: {detail}", path.display())]
    BadLayout { path: PathBuf, detail: String },

    #[error(
        "`{}` is not a CIFAR-10 file ({detail}); use the binary version of CIFAR-10 (cifar-10-batches-bin)",
        path.display()
    )]
    NotCifar { path: PathBuf, detail: String },

    #[error(
        "`{}` is not an MNIST IDX file ({detail}); use the original files (train-images-idx3-ubyte, ...)",
        path.display()
    )]
    NotMnist { path: PathBuf, detail: String },

    #[error("could not read `{}`: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// A batch or setting the core refused (an unfillable batch, a bad `--val-split`).
    #[error(transparent)]
    Core(#[from] autoprog::Error),

    #[error("a data loader worker panicked while building batch {batch}: {detail}")]
    WorkerPanic { batch: usize, detail: String },
}

impl DataError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io { path: path.to_path_buf(), source }
    }
}

/// Largest image side `decode_image` accepts: beyond any photo a ViT is trained on, and it
/// refuses a small file whose header claims a huge canvas before the canvas is allocated.
const MAX_IMAGE_SIDE: u32 = 16384;
/// Most memory one decode may take (the decoders honour it for their output and buffers):
/// a 24-megapixel photo in 16-bit RGBA fits.
const MAX_DECODE_BYTES: u64 = 256 << 20;

/// Decodes the bytes of image file `name` (PNG, JPEG, GIF, BMP, TIFF, WebP, PNM, TGA, ICO,
/// QOI; the format from the content where it tells, so a PNG named .jpg still loads, else
/// from the extension) into 8-bit RGB: grayscale, alpha and 16-bit images all become RGB8
/// (alpha dropped). Every dataset and `predict` decode through here.
pub fn decode_image(bytes: &[u8], name: &Path) -> Result<RgbImage, String> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes));
    if let Ok(format) = image::ImageFormat::from_path(name) {
        reader.set_format(format);
    }
    let mut reader = reader.with_guessed_format().map_err(|e| e.to_string())?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let rgb = reader.decode().map_err(|e| e.to_string())?.into_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    RgbImage::new(width, height, rgb.into_raw()).map_err(|_| "the image has no pixels".to_string())
}

/// Which format a dataset was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Procedural,
    ImageFolder,
    Cifar10,
    Mnist,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Procedural => "procedural",
            Format::ImageFolder => "image folder",
            Format::Cifar10 => "CIFAR-10",
            Format::Mnist => "MNIST",
        })
    }
}

/// A dataset's train and (when it has one) val source.
#[derive(Clone)]
pub struct Dataset {
    pub format: Format,
    pub train: Arc<dyn Source>,
    pub val: Option<Arc<dyn Source>>,
}

impl Dataset {
    /// The built-in procedural dataset with `train_count` and `val_count` images.
    pub fn procedural(data: Procedural, train_count: usize, val_count: usize) -> Self {
        Dataset {
            format: Format::Procedural,
            train: Arc::new(ProceduralSource::new(data, Split::Train, train_count)),
            val: Some(Arc::new(ProceduralSource::new(data, Split::Val, val_count))),
        }
    }

    /// Holds out a seeded `fraction` of the train samples as val (`--val-split`). A val
    /// split the dataset ships with is replaced: the held-out part serves as val instead.
    pub fn with_val_split(self, fraction: f64, seed: u64) -> Result<Self, DataError> {
        let (train, val) = split_train_val(self.train, fraction, seed)?;
        Ok(Dataset { format: self.format, train: Arc::new(train), val: Some(Arc::new(val)) })
    }

    pub fn classes(&self) -> &[String] {
        self.train.classes()
    }

    /// One line for logs: "CIFAR-10: 50000 train, 10000 val images, 10 classes".
    pub fn summary(&self) -> String {
        let val = self.val.as_ref().map_or_else(|| "no val".to_string(), |v| format!("{} val", v.len()));
        format!("{}: {} train, {val} images, {} classes", self.format, self.train.len(), self.classes().len())
    }
}

/// Opens the dataset in folder `path`, detecting its format: CIFAR-10 binary batches,
/// then MNIST IDX files, then class folders (`train/<class>/`, `val/<class>/`, or class
/// folders directly under `path`, which gives a train split only).
pub fn open(path: &Path) -> Result<Dataset, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing { path: path.to_path_buf() },
        _ => DataError::io(path, e),
    })?;
    if !meta.is_dir() {
        return Err(DataError::NotAFolder { path: path.to_path_buf() });
    }
    if let Some(dir) = cifar::find(path) {
        let (train, val) = Cifar10::open(&dir)?;
        return Ok(Dataset { format: Format::Cifar10, train: Arc::new(train), val: val.map(|v| Arc::new(v) as _) });
    }
    if let Some(dir) = mnist::find(path) {
        let (train, val) = Mnist::open(&dir)?;
        return Ok(Dataset { format: Format::Mnist, train: Arc::new(train), val: val.map(|v| Arc::new(v) as _) });
    }
    let (train, val) = ImageFolder::open(path)?;
    Ok(Dataset { format: Format::ImageFolder, train: Arc::new(train), val: val.map(|v| Arc::new(v) as _) })
}

/// Entries of `dir` that are not hidden, sorted by name, so listings are reproducible.
fn visible_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            entries.push(entry.path());
        }
    }
    entries.sort();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::testutil::TempDir;
    use autoprog::data::{epoch_order, PassConfig};

    use super::*;

    #[test]
    fn data_procedural_source_matches_the_core_dataset() {
        let data = Procedural { classes: 4, image_size: 12, seed: 7 };
        let dataset = Dataset::procedural(data, 20, 8);
        assert_eq!(dataset.format, Format::Procedural);
        assert_eq!(dataset.classes(), ["disc", "ring", "crescent", "triangle"]);
        assert_eq!(dataset.summary(), "procedural: 20 train, 8 val images, 4 classes");
        let train = &dataset.train;
        for i in [0, 5, 19] {
            let image = train.load(i).expect("procedural images always load");
            let (chw, label) = data.image(Split::Train, i as u64);
            assert_eq!(train.label(i), label);
            assert_eq!((image.width, image.height), (12, 12));
            // Pixel (x 3, y 2), green channel.
            let expected = (chw[12 * 12 + 2 * 12 + 3] * 255.0).round() as u8;
            assert_eq!(image.pixel(3, 2)[1], expected);
        }
        assert_eq!(train.describe(3), "procedural:train#3");
        assert_eq!(dataset.val.as_ref().map(|v| v.describe(1)), Some("procedural:val#1".into()));
    }

    #[test]
    fn data_val_split_is_seeded_disjoint_and_complete() {
        let dataset = Dataset::procedural(Procedural::default(), 50, 0);
        let source = dataset.train.clone();
        let (train, val) = split_train_val(source.clone(), 0.2, 3).expect("valid fraction");
        assert_eq!((train.len(), val.len()), (40, 10));
        let mut all: Vec<usize> = train.indices().iter().chain(val.indices()).copied().collect();
        all.sort();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
        let (_, again) = split_train_val(source.clone(), 0.2, 3).expect("valid fraction");
        assert_eq!(val.indices(), again.indices());
        let (_, other) = split_train_val(source.clone(), 0.2, 4).expect("valid fraction");
        assert_ne!(val.indices(), other.indices());
        assert_eq!(val.label(0), source.label(val.indices()[0]));
        assert_eq!(val.describe(0), source.describe(val.indices()[0]));

        let split = dataset.with_val_split(0.1, 0).expect("valid fraction");
        assert_eq!((split.train.len(), split.val.as_ref().map(|v| v.len())), (45, Some(5)));

        for bad in [0.0, 1.0, -0.5, f64::NAN] {
            let err = split_train_val(source.clone(), bad, 0).err().expect("rejected").to_string();
            assert!(err.contains("--val-split") && err.contains("between 0 and 1"), "{err}");
        }
        let tiny = Dataset::procedural(Procedural::default(), 1, 0).train;
        let err = split_train_val(tiny, 0.5, 0).err().expect("rejected").to_string();
        assert!(err.contains("leaves no training samples"), "{err}");
    }

    /// How the training loop is meant to drive the module: open, order, load, read the skips.
    #[test]
    fn data_training_loop_usage_through_the_public_api() {
        let dir = TempDir::new("usage");
        let root = testutil::image_folder_fixture(&dir);
        let dataset = open(&root).expect("valid dataset").with_val_split(0.25, 0).expect("valid fraction");
        let skipped = Skipped::with_warning(|_| {});
        let aug = AugmentConfig { resolution: 8, ..AugmentConfig::default() };
        let mut seen = 0;
        for epoch in 0..2 {
            let order = epoch_order(dataset.train.len(), 42, epoch);
            let config = PassConfig {
                batch: 2,
                aug: aug.clone(),
                train: true,
                seed: 42,
                epoch,
                skipped: skipped.clone(),
                ..PassConfig::default()
            };
            let loader = Loader::new(dataset.train.clone(), order, config, 2).expect("valid loader");
            let skips = loader.skipped();
            for batch in loader {
                let batch: loader::Batch = batch.expect("broken files are replaced");
                assert!(!batch.is_empty() && batch.targets.as_ref().map(Vec::len) == Some(batch.len() * 2));
                seen += batch.len();
            }
            assert!(skips.count() <= 2);
        }
        assert_eq!(seen, 2 * dataset.train.len());
        let val = dataset.val.expect("held-out split");
        assert!(!val.is_empty());
        let config = PassConfig { batch: 8, aug: AugmentConfig::none(8), ..PassConfig::default() };
        let batches: Vec<_> = Loader::new(val.clone(), (0..val.len()).collect(), config, 2).expect("valid").collect();
        assert_eq!(batches.len(), 1);
    }

    #[test]
    fn data_open_reports_missing_file_and_empty_paths() {
        let dir = TempDir::new("open-errors");
        let missing = dir.path().join("nope");
        let err = open(&missing).err().expect("missing").to_string();
        assert!(err.contains("nope` does not exist") && err.contains("--data"), "{err}");

        let file = dir.path().join("file.bin");
        std::fs::write(&file, b"x").expect("write fixture");
        let err = open(&file).err().expect("a file").to_string();
        assert!(err.contains("file.bin` is a file"), "{err}");

        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        let err = open(&empty).err().expect("empty").to_string();
        assert!(err.contains("empty` is empty"), "{err}");

        // Something there, but no dataset: the message lists the formats.
        std::fs::write(empty.join("notes.txt"), b"hello").expect("write fixture");
        let err = open(&empty).err().expect("no dataset").to_string();
        assert_eq!(
            err,
            format!(
                "`{}` has no class folders (expected train/<class>/ images, CIFAR-10 .bin files or MNIST IDX \
                 files); pass --data to a folder in one of these formats",
                empty.display()
            )
        );
    }
}
