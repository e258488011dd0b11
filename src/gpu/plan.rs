//! Recorded plans: the dispatches, copies and clears of a pass (a training step of one
//! sub-network, say) with their bind groups and parameters built once, replayed into later
//! submissions without running the code that recorded them (see [`crate::Recorder::replay`]).
//!
//! A plan holds every tensor it binds, so its buffers cannot go back to the pool and be
//! handed to another tensor while it lives: a plan never computes on storage that has
//! changed owner. Whoever caches plans keys them by what they bound (and drops them with
//! it); values that change from step to step belong in a tensor the step writes, not in a
//! plan's parameters.

use std::sync::Arc;

use crate::gpu::Tensor;

/// Uniform blocks per page of a plan's parameter buffer.
const SLOTS_PER_PAGE: u64 = 64;

/// One recorded dispatch.
pub(super) struct PlannedDispatch {
    pub(super) label: String,
    pub(super) pipeline: wgpu::ComputePipeline,
    pub(super) bind_group: wgpu::BindGroup,
    pub(super) groups: [u32; 3],
}

/// A buffer-to-buffer command, which runs between compute passes.
pub(super) enum Transfer {
    Copy { src: wgpu::Buffer, src_offset: u64, dst: wgpu::Buffer, dst_offset: u64, bytes: u64 },
    Clear { buffer: wgpu::Buffer, offset: u64, bytes: u64 },
}

/// Consecutive dispatches share one compute pass when replayed; a transfer ends it.
pub(super) enum Segment {
    Dispatches(Vec<PlannedDispatch>),
    Transfer(Transfer),
}

/// A recorded pass, ready to replay (see the module doc).
pub struct Plan {
    pub(super) label: String,
    pub(super) segments: Vec<Segment>,
    /// Every tensor the plan binds or copies, and its scratch tensors: held, never read.
    _held: Vec<Tensor>,
    /// The parameter blocks of the dispatches, [`SLOTS_PER_PAGE`] to a buffer.
    _pages: Vec<wgpu::Buffer>,
}

impl Plan {
    /// Dispatches in the plan.
    pub fn dispatches(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Dispatches(d) => d.len(),
                Segment::Transfer(_) => 0,
            })
            .sum()
    }

    /// What the plan records (the recorder's label).
    pub fn label(&self) -> &str {
        &self.label
    }
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plan({}, {} dispatches)", self.label, self.dispatches())
    }
}

/// A plan being captured by a recorder.
pub(super) struct PlanBuilder {
    label: String,
    segments: Vec<Segment>,
    held: Vec<Tensor>,
    pages: Vec<wgpu::Buffer>,
    /// Parameter blocks of the last page, written when the page is full or the plan ends.
    staged: Vec<u8>,
}

impl PlanBuilder {
    pub(super) fn new(label: &str) -> PlanBuilder {
        PlanBuilder {
            label: label.into(),
            segments: Vec::new(),
            held: Vec::new(),
            pages: Vec::new(),
            staged: Vec::new(),
        }
    }

    /// The buffer and byte offset of the next parameter block, `slot_bytes` long; `params`
    /// are staged there.
    pub(super) fn uniform_slot(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        slot_bytes: u64,
        params: &[u8],
    ) -> (wgpu::Buffer, u64) {
        let page_bytes = SLOTS_PER_PAGE * slot_bytes;
        if self.pages.is_empty() || self.staged.len() as u64 == page_bytes {
            self.flush(queue);
            self.pages.push(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("plan.params"),
                size: page_bytes,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let offset = self.staged.len() as u64;
        self.staged.extend_from_slice(params);
        self.staged.resize((offset + slot_bytes) as usize, 0);
        (self.pages.last().expect("a page was made").clone(), offset)
    }

    /// Writes the staged parameter blocks into the last page.
    fn flush(&mut self, queue: &wgpu::Queue) {
        if let Some(page) = self.pages.last() {
            if !self.staged.is_empty() {
                queue.write_buffer(page, 0, &self.staged);
            }
        }
        self.staged.clear();
    }

    /// Appends a dispatch and holds the tensors it binds.
    pub(super) fn dispatch(&mut self, dispatch: PlannedDispatch, tensors: &[&Tensor]) {
        self.held.extend(tensors.iter().map(|&t| t.clone()));
        match self.segments.last_mut() {
            Some(Segment::Dispatches(run)) => run.push(dispatch),
            _ => self.segments.push(Segment::Dispatches(vec![dispatch])),
        }
    }

    /// Appends a transfer and holds the tensors it touches.
    pub(super) fn transfer(&mut self, transfer: Transfer, tensors: &[&Tensor]) {
        self.held.extend(tensors.iter().map(|&t| t.clone()));
        self.segments.push(Segment::Transfer(transfer));
    }

    /// Holds a scratch tensor for the plan's lifetime.
    pub(super) fn hold(&mut self, t: Tensor) {
        self.held.push(t);
    }

    pub(super) fn finish(mut self, queue: &wgpu::Queue) -> Arc<Plan> {
        self.flush(queue);
        Arc::new(Plan { label: self.label, segments: self.segments, _held: self.held, _pages: self.pages })
    }
}

/// An identity shared by clones, for whoever caches plans: a plan cache keeps a [`Watch`]
/// of the owners of what a plan bound (a model, its activations) and drops the plan once
/// an owner is gone or replaced.
#[derive(Clone, Debug, Default)]
pub struct Owner(Arc<()>);

impl Owner {
    pub fn watch(&self) -> Watch {
        Watch(Arc::downgrade(&self.0))
    }
}

/// A weak reference to an [`Owner`]: it never keeps the owner alive, and no other owner
/// takes its identity while it exists.
#[derive(Clone, Debug)]
pub struct Watch(std::sync::Weak<()>);

impl Watch {
    /// Whether the owner still exists.
    pub fn alive(&self) -> bool {
        self.0.strong_count() > 0
    }

    /// Whether both watch the same owner.
    pub fn same(&self, other: &Watch) -> bool {
        std::sync::Weak::ptr_eq(&self.0, &other.0)
    }
}
