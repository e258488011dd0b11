//! A pool of storage buffers reused across steps, bucketed by rounded size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Usages every tensor buffer carries: bound as storage, filled by uploads and copies,
/// copied out for readback.
pub(crate) const TENSOR_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// Idle buffers by size bucket. Buffers return here when the last [`crate::Tensor`]
/// referring to them is dropped.
#[derive(Default)]
pub struct BufferPool {
    free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    /// Bytes of every buffer created and not yet released by [`BufferPool::trim`], idle or
    /// on loan: the device memory tensors hold. Buffers are only released by a trim, so
    /// this is also the peak since the last one.
    allocated: AtomicU64,
}

/// Rounds up to one of four steps per power of two (at most 25 % waste), minimum 256 B.
pub(crate) fn bucket(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    let pow = 63 - bytes.leading_zeros() as u64; // floor(log2)
    let base = 1u64 << pow;
    if base == bytes {
        return bytes;
    }
    let quarter = (base / 4).max(1);
    bytes.div_ceil(quarter) * quarter
}

impl BufferPool {
    pub(crate) fn take(&self, device: &wgpu::Device, bytes: u64, label: &str) -> wgpu::Buffer {
        let size = bucket(bytes);
        if let Some(buf) = self.free.lock().expect("pool lock").get_mut(&size).and_then(Vec::pop) {
            return buf;
        }
        self.allocated.fetch_add(size, Ordering::Relaxed);
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: TENSOR_USAGE,
            mapped_at_creation: false,
        })
    }

    /// Bytes of tensor buffers held on the device (see `allocated`).
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    pub(crate) fn give(&self, buffer: wgpu::Buffer) {
        self.free.lock().expect("pool lock").entry(buffer.size()).or_default().push(buffer);
    }

    /// (idle buffers, idle bytes).
    pub fn stats(&self) -> (usize, u64) {
        let free = self.free.lock().expect("pool lock");
        let count = free.values().map(Vec::len).sum();
        let bytes = free.iter().map(|(size, v)| size * v.len() as u64).sum();
        (count, bytes)
    }

    /// Releases every idle buffer to the driver.
    pub fn trim(&self) {
        let mut free = self.free.lock().expect("pool lock");
        let released: u64 = free.iter().map(|(size, v)| size * v.len() as u64).sum();
        self.allocated.fetch_sub(released, Ordering::Relaxed);
        free.clear();
    }
}

/// A buffer on loan from the pool; goes back on drop.
pub(crate) struct PooledBuffer {
    pub(crate) buffer: wgpu::Buffer,
    pool: Arc<BufferPool>,
}

impl PooledBuffer {
    pub(crate) fn new(buffer: wgpu::Buffer, pool: Arc<BufferPool>) -> Self {
        PooledBuffer { buffer, pool }
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        self.pool.give(self.buffer.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn buckets_round_up_by_at_most_a_quarter() {
        assert_eq!(bucket(1), 256);
        assert_eq!(bucket(1024), 1024);
        assert_eq!(bucket(1025), 1280);
        assert_eq!(bucket(1700), 1792);
        for bytes in [300u64, 5000, 123_457, 9_999_999] {
            let b = bucket(bytes);
            assert!(b >= bytes && (b as f64) <= bytes as f64 * 1.25 + 1.0, "{bytes} -> {b}");
        }
    }
}
