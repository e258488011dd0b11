//! Tensors: a pooled buffer, a byte offset into it, a shape and an element type: f32
//! (4 bytes; also u32 where a kernel documents it: labels, masks) or f16 (2 bytes, for
//! mixed-precision storage; the host always sees f32).

use std::sync::Arc;

use crate::gpu::pool::PooledBuffer;
use crate::gpu::{Element, GpuContext};
use crate::{Error, Result};

/// Bytes a tensor of `numel` elements occupies: bindings cannot be empty and their size
/// must be a multiple of 4, so an odd count of f16 values is padded.
fn storage_bytes(numel: usize, element: Element) -> u64 {
    (numel.max(1) * element.bytes()).next_multiple_of(4) as u64
}

/// A dense row-major tensor living in a GPU buffer.
#[derive(Clone)]
pub struct Tensor {
    buf: Arc<PooledBuffer>,
    offset: u64,
    shape: Vec<usize>,
    element: Element,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.element {
            Element::F32 => write!(f, "Tensor{:?}", self.shape),
            Element::F16 => write!(f, "Tensor{:?}<f16>", self.shape),
        }
    }
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn element(&self) -> Element {
        self.element
    }
    /// Bytes bound for this tensor (see [`storage_bytes`]).
    pub fn bytes(&self) -> u64 {
        storage_bytes(self.numel(), self.element)
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
        Ok(Tensor { shape: shape.to_vec(), ..self.clone() })
    }
    /// A view of `shape` starting `elem_offset` elements in. The byte offset must meet
    /// the adapter's storage offset alignment (see [`GpuContext::arena_align`]).
    pub fn view(&self, elem_offset: usize, shape: &[usize]) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if elem_offset + numel > self.numel() {
            return Err(Error::shape("view", format!("{shape:?} at element {elem_offset} overruns {:?}", self.shape)));
        }
        let offset = self.offset + (elem_offset * self.element.bytes()) as u64;
        Ok(Tensor { offset, shape: shape.to_vec(), ..self.clone() })
    }
}

/// The storage-buffer offset alignment every WebGPU adapter accepts (the limit's default;
/// adapters may only lower it).
pub const PORTABLE_OFFSET_ALIGN: u64 = 256;

/// The storage buffers per shader stage that every WebGPU adapter offers (the limit's
/// default); no kernel binds more, whatever the adapter allows.
pub const PORTABLE_STORAGE_BUFFERS: usize = 8;

impl GpuContext {
    /// The byte alignment of every storage binding's offset: the adapter's
    /// `min_storage_buffer_offset_alignment`, and at least WebGPU's portable 256 bytes, so that
    /// layouts (and the check of every binding) are the same on every adapter and a view that
    /// a browser would refuse fails on lavapipe's tests too.
    pub fn offset_align(&self) -> u64 {
        (self.limits().min_storage_buffer_offset_alignment as u64).max(PORTABLE_OFFSET_ALIGN)
    }

    /// Element alignment for views bound as storage: [`GpuContext::offset_align`] counted in
    /// f16 elements, so that the same element offsets are aligned in an f32 arena and in its
    /// f16 copy (mixed precision reads weights from one).
    pub fn arena_align(&self) -> usize {
        self.offset_align() as usize / Element::F16.bytes()
    }

    /// An uninitialised f32 tensor from the pool; `label` names it in GPU debuggers.
    pub fn empty(&self, shape: &[usize], label: &str) -> Result<Tensor> {
        self.empty_as(shape, Element::F32, label)
    }

    /// An uninitialised tensor of `element`s from the pool.
    pub fn empty_as(&self, shape: &[usize], element: Element, label: &str) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        let bytes = storage_bytes(numel, element);
        self.check_binding(&format!("tensor {label} {shape:?}"), bytes)?;
        let buffer = self.pool.take(&self.device, bytes, label);
        let buf = Arc::new(PooledBuffer::new(buffer, self.pool.clone()));
        Ok(Tensor { buf, offset: 0, shape: shape.to_vec(), element })
    }

    /// A tensor filled with `data` (f32).
    pub fn upload(&self, data: &[f32], shape: &[usize], label: &str) -> Result<Tensor> {
        self.upload_as(data, shape, Element::F32, label)
    }

    /// A tensor of `element`s filled with `data`, converted (f16: rounded to nearest).
    pub fn upload_as(&self, data: &[f32], shape: &[usize], element: Element, label: &str) -> Result<Tensor> {
        self.upload_bytes(&element.encode(data), data.len(), shape, element, label)
    }

    /// A tensor filled with `data` (u32: labels, masks, indices).
    pub fn upload_u32(&self, data: &[u32], shape: &[usize], label: &str) -> Result<Tensor> {
        self.upload_bytes(bytemuck::cast_slice(data), data.len(), shape, Element::F32, label)
    }

    fn upload_bytes(&self, bytes: &[u8], len: usize, shape: &[usize], element: Element, label: &str) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if numel != len {
            return Err(Error::shape("upload", format!("{label}: {len} values for shape {shape:?}")));
        }
        let t = self.empty_as(shape, element, label)?;
        self.write_padded(&t, bytes);
        Ok(t)
    }

    /// Writes `bytes` at the start of `t`, padded to the 4-byte multiple queue writes need.
    fn write_padded(&self, t: &Tensor, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if bytes.len().is_multiple_of(4) {
            self.queue.write_buffer(t.buffer(), t.offset(), bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4), 0);
            self.queue.write_buffer(t.buffer(), t.offset(), &padded);
        }
    }

    /// Overwrites a tensor's contents from the host (converted to its element type).
    pub fn write(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        if data.len() != t.numel() {
            return Err(Error::shape("write", format!("{} values into {:?}", data.len(), t.shape())));
        }
        self.write_padded(t, &t.element.encode(data));
        Ok(())
    }

    /// Overwrites a u32 tensor (labels, masks) with `data`.
    pub fn write_u32(&self, t: &Tensor, data: &[u32]) -> Result<()> {
        if data.len() != t.numel() || t.element != Element::F32 {
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

    /// Copies a tensor back to the host as f32 (f16 tensors are widened exactly).
    pub async fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(t).await?;
        Ok(t.element.decode(&bytes))
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
        let mut bytes = self.map_read(&staging, None, &format!("{t:?}")).await?;
        self.take_error("readback")?;
        // An empty tensor still copies one padding element (bindings cannot be empty).
        bytes.truncate(t.numel() * t.element.bytes());
        Ok(bytes)
    }

    /// Maps a MAP_READ buffer and copies its contents out. The one readback path for
    /// native (poll the device: until `after`, the submission that filled the buffer, has
    /// finished, or else all work submitted so far) and web (the browser resolves the promise).
    pub(crate) async fn map_read(
        &self,
        staging: &wgpu::Buffer,
        after: Option<wgpu::SubmissionIndex>,
        what: &str,
    ) -> Result<Vec<u8>> {
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        #[cfg(web)]
        let _ = after;
        #[cfg(native)]
        self.device
            .poll(wgpu::PollType::Wait { submission_index: after, timeout: None })
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
