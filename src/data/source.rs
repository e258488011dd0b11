//! Labelled images addressed by index ([`Source`]): the built-in procedural set, views of
//! another source ([`Subset`], e.g. a validation split), and the seeded random streams
//! every sample-level choice comes from, so that an epoch's order and augmentation are the
//! same wherever and on however many threads they are computed.

use std::sync::Arc;

use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{LoadError, Procedural, RgbImage, Split, CLASSES};
use crate::{Error, Result};

/// Independent random streams derived from one seed.
#[derive(Clone, Copy)]
pub enum Stream {
    Order = 1,
    Sample = 2,
    Mix = 3,
    ValSplit = 4,
}

/// SplitMix64's finaliser: spreads nearby inputs over the whole 64-bit range.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The RNG seed of item `index` of `stream` in `epoch`.
pub fn stream_seed(seed: u64, epoch: u64, stream: Stream, index: u64) -> u64 {
    splitmix(splitmix(splitmix(seed ^ splitmix(stream as u64)) ^ epoch) ^ index)
}

/// A seeded shuffle of 0..len, different for every epoch.
pub fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed, epoch, Stream::Order, 0));
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    order
}

/// A labelled image collection addressed by index. Implementations are shared by the
/// loader's worker threads, so `load` takes `&self` and does its own (lazy) I/O.
pub trait Source: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Label of sample `index`, without loading its image.
    fn label(&self, index: usize) -> u32;

    /// Class names in label order.
    fn classes(&self) -> &[String];

    /// Decodes sample `index`.
    fn load(&self, index: usize) -> Result<RgbImage, LoadError>;

    /// Names sample `index` for messages: a file path, or `data_batch_1.bin#17`-style for
    /// records inside a file.
    fn describe(&self, index: usize) -> String;
}

/// The built-in procedural dataset as a [`Source`]: `count` images of one split.
pub struct ProceduralSource {
    data: Procedural,
    split: Split,
    count: usize,
    classes: Vec<String>,
}

impl ProceduralSource {
    pub fn new(data: Procedural, split: Split, count: usize) -> Self {
        // `Procedural::image` clamps the class count the same way.
        let classes = CLASSES[..data.classes.clamp(2, CLASSES.len())].iter().map(|c| c.to_string()).collect();
        ProceduralSource { data, split, count, classes }
    }
}

impl Source for ProceduralSource {
    fn len(&self) -> usize {
        self.count
    }

    fn label(&self, index: usize) -> u32 {
        // Labels cycle through the classes (documented by `Procedural::image`).
        (index % self.classes.len()) as u32
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn load(&self, index: usize) -> Result<RgbImage, LoadError> {
        let (data, _) = self.data.image_rgb8(self.split, index as u64);
        let side = self.data.image_size.max(1);
        Ok(RgbImage { width: side, height: side, data })
    }

    fn describe(&self, index: usize) -> String {
        let split = match self.split {
            Split::Train => "train",
            Split::Val => "val",
        };
        format!("procedural:{split}#{index}")
    }
}

/// A view of some samples of another source, in the given index order.
pub struct Subset {
    source: Arc<dyn Source>,
    indices: Vec<usize>,
}

impl Subset {
    /// Panics when an index is out of range (a programmer error: callers derive them
    /// from `source.len()`).
    pub fn new(source: Arc<dyn Source>, indices: Vec<usize>) -> Self {
        assert!(indices.iter().all(|&i| i < source.len()), "subset index out of range");
        Subset { source, indices }
    }

    /// The indices into the underlying source, in this subset's order.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl Source for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn label(&self, index: usize) -> u32 {
        self.source.label(self.indices[index])
    }

    fn classes(&self) -> &[String] {
        self.source.classes()
    }

    fn load(&self, index: usize) -> Result<RgbImage, LoadError> {
        self.source.load(self.indices[index])
    }

    fn describe(&self, index: usize) -> String {
        self.source.describe(self.indices[index])
    }
}

/// Splits `source` into (train, val) subsets: a seeded random `fraction` of the samples
/// goes to val. Both keep the source's order, so folder-backed sources read in file order.
pub fn split_train_val(source: Arc<dyn Source>, fraction: f64, seed: u64) -> Result<(Subset, Subset)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::Config(format!("--val-split {fraction} must lie strictly between 0 and 1, e.g. 0.1")));
    }
    let n = source.len();
    let val_count = ((n as f64 * fraction).round() as usize).max(1);
    if val_count >= n {
        return Err(Error::Config(format!(
            "--val-split {fraction} leaves no training samples out of {n}; use a smaller fraction"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed, 0, Stream::ValSplit, 0));
    let mut in_val = vec![false; n];
    // Partial Fisher–Yates: the first `val_count` slots of a shuffled 0..n.
    let mut pool: Vec<usize> = (0..n).collect();
    for k in 0..val_count {
        let pick = rng.random_range(k..n);
        pool.swap(k, pick);
        in_val[pool[k]] = true;
    }
    let (val, train): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| in_val[i]);
    Ok((Subset::new(source.clone(), train), Subset::new(source, val)))
}
