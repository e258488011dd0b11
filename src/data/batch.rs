//! What a data pipeline hands the training loop: batches of normalised images with their
//! labels, and the samples it had to leave out.

/// One batch of images, as the loader built it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// Position of the batch in the epoch (0, 1, ...).
    pub index: usize,
    /// Side R of the images.
    pub resolution: usize,
    /// [B, 3, R, R], normalised.
    pub images: Vec<f32>,
    /// [B] class labels (before mixing: for accuracy, not for the loss when `targets` is set).
    pub labels: Vec<u32>,
    /// [B, K] soft targets (mixup / cutmix and label smoothing applied) for training
    /// batches when the config mixes or smooths; `None` otherwise: use `labels`.
    pub targets: Option<Vec<f32>>,
}

impl Batch {
    /// Number of samples B.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The part of the batch that `shard` trains (images, labels and targets alike).
    pub fn shard(self, shard: Shard) -> Batch {
        if shard.ranks == 1 {
            return self;
        }
        let rows = shard.rows(self.len());
        let image_len = self.images.len() / self.len().max(1);
        let classes = self.targets.as_ref().map_or(0, |t| t.len() / self.len().max(1));
        Batch {
            index: self.index,
            resolution: self.resolution,
            images: self.images[rows.start * image_len..rows.end * image_len].to_vec(),
            labels: self.labels[rows.clone()].to_vec(),
            targets: self.targets.map(|t| t[rows.start * classes..rows.end * classes].to_vec()),
        }
    }
}

/// Which part of every batch one process of a data-parallel run reads: `rank` of `ranks`
/// takes the `rank`-th of `ranks` equal, contiguous slices, so that the ranks together
/// train exactly the batch a single process would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub ranks: usize,
}

impl Shard {
    /// The whole batch: a run in one process.
    pub const WHOLE: Shard = Shard { rank: 0, ranks: 1 };

    /// This shard's rows of a batch of `len` rows.
    pub fn rows(&self, len: usize) -> std::ops::Range<usize> {
        len * self.rank / self.ranks..len * (self.rank + 1) / self.ranks
    }
}

impl Default for Shard {
    fn default() -> Self {
        Shard::WHOLE
    }
}

/// Why one sample could not be loaded (a corrupt or unreadable file).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct LoadError {
    /// The sample, as the data source names it (a file path, `cifar:data_batch_1.bin#17`).
    pub what: String,
    pub reason: String,
}
