//! Tensors: a pooled buffer, a byte offset into it and a shape. Element type is f32
//! unless a kernel documents u32 (labels, masks); both are 4 bytes.

use std::sync::Arc;

use crate::gpu::pool::PooledBuffer;
use crate::gpu::GpuContext;
use crate::{Error, Result};

/// A dense row-major tensor of 4-byte elements living in a GPU buffer.
#[derive(Clone)]
pub struct Tensor {
    buf: Arc<PooledBuffer>,
    offset: u64,
    shape: Vec<usize>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}", self.shape)
    }
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> u64 {
        (self.numel().max(1) * 4) as u64
    }
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buf.buffer
    }
    /// Byte offset of the first element in [`Tensor::buffer`].
    pub fn offset(&self) -> u64 {
        self.offset
    }
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buf.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.bytes()),
        })
    }
    /// Whether both tensors share storage (then they must not be bound together).
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }
    /// Whether both tensors share storage and their byte ranges intersect.
    pub fn overlaps(&self, other: &Tensor) -> bool {
        self.same_buffer(other)
            && self.offset < other.offset + other.bytes().max(4)
            && other.offset < self.offset + self.bytes().max(4)
    }
    /// Same storage, another shape with the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("cannot view {:?} ({} elements) as {shape:?}", self.shape, self.numel()),
            ));
        }
        Ok(Tensor { buf: self.buf.clone(), offset: self.offset, shape: shape.to_vec() })
    }
    /// A view of `shape` starting `elem_offset` elements in. The byte offset must meet
    /// the adapter's storage offset alignment (see [`GpuContext::arena_align`]).
    pub fn view(&self, elem_offset: usize, shape: &[usize]) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if elem_offset + numel > self.numel() {
            return Err(Error::shape("view", format!("{shape:?} at element {elem_offset} overruns {:?}", self.shape)));
        }
        Ok(Tensor { buf: self.buf.clone(), offset: self.offset + elem_offset as u64 * 4, shape: shape.to_vec() })
    }
}

/// The storage-buffer offset alignment every WebGPU adapter accepts (the limit's default;
/// adapters may only lower it).
pub const PORTABLE_OFFSET_ALIGN: u64 = 256;

/// The storage buffers per shader stage that every WebGPU adapter offers (the limit's
/// default); no kernel binds more, whatever the adapter allows.
pub const PORTABLE_STORAGE_BUFFERS: usize = 8;

impl GpuContext {
    /// Element alignment for views bound as storage: the adapter's
    /// `min_storage_buffer_offset_alignment`, and at least WebGPU's portable 256 bytes, so that
    /// layouts (and the check of every binding) are the same on every adapter and a view that
    /// a browser would refuse fails on lavapipe's tests too.
    pub fn arena_align(&self) -> usize {
        let bytes = (self.limits().min_storage_buffer_offset_alignment as u64).max(PORTABLE_OFFSET_ALIGN);
        bytes as usize / 4
    }

    /// An uninitialised tensor from the pool; `label` names it in GPU debuggers.
    pub fn empty(&self, shape: &[usize], label: &str) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        let bytes = (numel.max(1) * 4) as u64;
        self.check_binding(&format!("tensor {label} {shape:?}"), bytes)?;
        let buffer = self.pool.take(&self.device, bytes, label);
        Ok(Tensor { buf: Arc::new(PooledBuffer::new(buffer, self.pool.clone())), offset: 0, shape: shape.to_vec() })
    }

    /// A tensor filled with `data` (f32).
    pub fn upload(&self, data: &[f32], shape: &[usize], label: &str) -> Result<Tensor> {
        self.upload_bytes(bytemuck::cast_slice(data), data.len(), shape, label)
    }

    /// A tensor filled with `data` (u32: labels, masks, indices).
    pub fn upload_u32(&self, data: &[u32], shape: &[usize], label: &str) -> Result<Tensor> {
        self.upload_bytes(bytemuck::cast_slice(data), data.len(), shape, label)
    }

    fn upload_bytes(&self, bytes: &[u8], len: usize, shape: &[usize], label: &str) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if numel != len {
            return Err(Error::shape("upload", format!("{label}: {len} values for shape {shape:?}")));
        }
        let t = self.empty(shape, label)?;
        if !bytes.is_empty() {
            self.queue.write_buffer(t.buffer(), t.offset(), bytes);
        }
        Ok(t)
    }

    /// Overwrites a tensor's contents from the host.
    pub fn write(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        if data.len() != t.numel() {
            return Err(Error::shape("write", format!("{} values into {:?}", data.len(), t.shape())));
        }
        self.queue.write_buffer(t.buffer(), t.offset(), bytemuck::cast_slice(data));
        Ok(())
    }

    /// Overwrites a u32 tensor (labels, masks) with `data`.
    pub fn write_u32(&self, t: &Tensor, data: &[u32]) -> Result<()> {
        if data.len() != t.numel() {
            return Err(Error::shape("write", format!("{} values into {:?}", data.len(), t.shape())));
        }
        self.queue.write_buffer(t.buffer(), t.offset(), bytemuck::cast_slice(data));
        Ok(())
    }

    /// A zero-filled tensor.
    pub fn zeros(&self, shape: &[usize], label: &str) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        self.upload(&vec![0.0; numel], shape, label)
    }

    /// Copies a tensor back to the host as f32.
    pub async fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(t).await?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    /// Copies a tensor back to the host as u32.
    pub async fn read_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        let bytes = self.read_bytes(t).await?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    /// Native convenience for tests and tools: [`GpuContext::read`], blocking.
    #[cfg(native)]
    pub fn read_blocking(&self, t: &Tensor) -> Result<Vec<f32>> {
        pollster::block_on(self.read(t))
    }

    async fn read_bytes(&self, t: &Tensor) -> Result<Vec<u8>> {
        let size = t.bytes();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(t.buffer(), t.offset(), &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        let mut bytes = self.map_read(&staging, &format!("{t:?}")).await?;
        self.take_error("readback")?;
        // An empty tensor still copies one padding element (bindings cannot be empty).
        bytes.truncate(t.numel() * 4);
        Ok(bytes)
    }

    /// Maps a MAP_READ buffer and copies its contents out. The one readback path for
    /// native (poll the device) and web (the browser resolves the promise).
    pub(crate) async fn map_read(&self, staging: &wgpu::Buffer, what: &str) -> Result<Vec<u8>> {
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        #[cfg(native)]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Readback { what: what.to_string(), detail: e.to_string() })?;
        let mapped = rx.await.map_err(|_| Error::Readback {
            what: what.to_string(),
            detail: "the device was lost before the copy finished".into(),
        })?;
        mapped.map_err(|e| Error::Readback { what: what.to_string(), detail: e.to_string() })?;
        let bytes = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Readback { what: what.to_string(), detail: e.to_string() })?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }
}
