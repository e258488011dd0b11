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
}

/// Why one sample could not be loaded (a corrupt or unreadable file).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct LoadError {
    /// The sample, as the data source names it (a file path, `cifar:data_batch_1.bin#17`).
    pub what: String,
    pub reason: String,
}
