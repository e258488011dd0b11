//! Readback without stalling: a small ring of staging buffers that a submission copies a
//! tensor into and that are mapped asynchronously, so the host picks a step's loss up a
//! step or two later instead of waiting for the GPU after every step. A full ring waits
//! for its oldest copy, which also bounds how far the host runs ahead of the GPU. And
//! [`PendingRead`]: a larger readback that the host collects later, waiting for its own
//! submission only (a data-parallel step sends the gradients of the last layers off while
//! the GPU still computes the first ones).

use std::collections::VecDeque;

use futures_channel::oneshot;

use crate::gpu::{Element, GpuContext, Recorder, Tensor};
use crate::{Error, Result};

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

struct Slot {
    buffer: wgpu::Buffer,
    /// Receives the map callback's result once the slot is submitted.
    mapped: Option<oneshot::Receiver<MapResult>>,
    /// The result, once received.
    done: Option<MapResult>,
}

/// A ring of staging buffers for reading small tensors (a loss, a few statistics) back
/// a few submissions later. Results come out in the order they were recorded, with the
/// caller's tag.
pub struct ReadbackRing {
    free: Vec<Slot>,
    /// Recorded but not yet submitted (map_async must follow the submission).
    recorded: Vec<(u64, Slot)>,
    /// Submitted and mapping, oldest first.
    pending: VecDeque<(u64, Slot)>,
    bytes: u64,
}

impl ReadbackRing {
    /// `slots` staging buffers of `elements` f32 each.
    pub fn new(ctx: &GpuContext, elements: usize, slots: usize) -> ReadbackRing {
        let bytes = (elements.max(1) * 4) as u64;
        let free = (0..slots.max(1))
            .map(|_| Slot {
                buffer: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback.ring"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                mapped: None,
                done: None,
            })
            .collect();
        ReadbackRing { free, recorded: Vec::new(), pending: VecDeque::new(), bytes }
    }

    /// Whether a slot is free for [`ReadbackRing::record`].
    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Records a copy of `t` (at most the ring's element count) into a free slot, tagged
    /// `tag`. Call [`ReadbackRing::wait_oldest`] first when no slot is free.
    pub fn record(&mut self, rec: &mut Recorder<'_>, t: &Tensor, tag: u64) -> Result<()> {
        if t.bytes() > self.bytes {
            return Err(Error::shape(
                "readback",
                format!("{:?} is larger than the ring's {} bytes", t.shape(), self.bytes),
            ));
        }
        let slot =
            self.free.pop().ok_or_else(|| Error::invalid("readback", "no free slot; wait for the oldest first"))?;
        rec.copy_to_staging(t, &slot.buffer);
        self.recorded.push((tag, slot));
        Ok(())
    }

    /// Starts mapping what was recorded; call right after submitting the recorder.
    pub fn submitted(&mut self) {
        for (tag, mut slot) in self.recorded.drain(..) {
            let (tx, rx) = oneshot::channel();
            slot.buffer.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
            slot.mapped = Some(rx);
            self.pending.push_back((tag, slot));
        }
    }

    /// Results that are ready, oldest first, without waiting.
    pub fn poll(&mut self, ctx: &GpuContext) -> Result<Vec<(u64, Vec<f32>)>> {
        #[cfg(native)]
        let _ = ctx.device.poll(wgpu::PollType::Poll);
        let mut out = Vec::new();
        while let Some((_, slot)) = self.pending.front_mut() {
            if slot.done.is_none() {
                match slot.mapped.as_mut().map(oneshot::Receiver::try_recv) {
                    Some(Ok(Some(result))) => slot.done = Some(result),
                    Some(Ok(None)) => break,
                    _ => slot.done = Some(Err(wgpu::BufferAsyncError)),
                }
            }
            out.push(self.take_front(ctx)?);
        }
        Ok(out)
    }

    /// Waits for the oldest pending result (native: blocks on the device; web: the browser
    /// resolves the mapping).
    pub async fn wait_oldest(&mut self, ctx: &GpuContext) -> Result<Option<(u64, Vec<f32>)>> {
        let Some((_, slot)) = self.pending.front_mut() else {
            return Ok(None);
        };
        if slot.done.is_none() {
            #[cfg(native)]
            ctx.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::Readback { what: "readback ring".into(), detail: e.to_string() })?;
            let rx = slot.mapped.take().expect("a pending slot has a receiver");
            // A dropped sender means the device was lost before the callback ran.
            slot.done = Some(rx.await.unwrap_or(Err(wgpu::BufferAsyncError)));
        }
        self.take_front(ctx).map(Some)
    }

    /// Waits for everything pending, oldest first.
    pub async fn drain(&mut self, ctx: &GpuContext) -> Result<Vec<(u64, Vec<f32>)>> {
        let mut out = Vec::new();
        while let Some(r) = self.wait_oldest(ctx).await? {
            out.push(r);
        }
        Ok(out)
    }

    fn take_front(&mut self, ctx: &GpuContext) -> Result<(u64, Vec<f32>)> {
        let (tag, mut slot) = self.pending.pop_front().expect("caller checked");
        let status = slot.done.take().expect("caller checked");
        slot.mapped = None;
        let what = || format!("readback of step {tag}");
        status.map_err(|e| Error::Readback { what: what(), detail: e.to_string() })?;
        let values: Vec<f32> = {
            let range = slot
                .buffer
                .get_mapped_range(..)
                .map_err(|e| Error::Readback { what: what(), detail: e.to_string() })?;
            bytemuck::cast_slice(&range).to_vec()
        };
        slot.buffer.unmap();
        self.free.push(slot);
        ctx.take_error("readback")?;
        Ok((tag, values))
    }
}

/// A readback started with a submission (see [`GpuContext::submit_and_read`]) and
/// collected with [`PendingRead::finish`].
pub struct PendingRead {
    staging: wgpu::Buffer,
    submission: wgpu::SubmissionIndex,
    what: String,
}

impl GpuContext {
    /// Submits everything recorded, with copies of `parts` (f32 tensors or views) one after
    /// another into a new staging buffer: the host collects the values later
    /// ([`PendingRead::finish`]), waiting for this submission alone.
    pub fn submit_and_read(&self, mut rec: Recorder<'_>, parts: &[Tensor], what: &str) -> Result<PendingRead> {
        if let Some(bad) = parts.iter().find(|p| p.element() != Element::F32) {
            return Err(Error::invalid("readback", format!("{bad:?} is not f32")));
        }
        let bytes: u64 = parts.iter().map(Tensor::bytes).sum();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback.parts"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut offset = 0;
        for part in parts {
            rec.copy_to_staging_at(part, &staging, offset);
            offset += part.bytes();
        }
        let submission = self.submit_indexed(rec)?;
        Ok(PendingRead { staging, submission, what: what.to_string() })
    }
}

impl PendingRead {
    /// The values, once the submission that copied them has finished (natively this waits
    /// for that submission, not for later ones).
    pub async fn finish(self, ctx: &GpuContext) -> Result<Vec<f32>> {
        let bytes = ctx.map_read(&self.staging, Some(self.submission), &self.what).await?;
        Ok(Element::F32.decode(&bytes))
    }
}
