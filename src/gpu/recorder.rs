//! Command recording: many dispatches into one encoder, submitted once.
//!
//! Each recorded dispatch runs in its own compute pass so that, when timing is on, every
//! dispatch gets a begin and end GPU timestamp. A capturing recorder
//! ([`GpuContext::capture`]) records into a [`Plan`] instead, which later submissions replay
//! ([`Recorder::replay`]): one compute pass per run of dispatches, no bind group or
//! parameter block made again.

use std::sync::Arc;

use bytemuck::Pod;

use crate::gpu::plan::{Plan, PlanBuilder, PlannedDispatch, Segment, Transfer};
use crate::gpu::{Access, GpuContext, Kernel, Tensor};
use crate::{Error, Result};

/// Size of every uniform block; params structs must fit.
const UNIFORM_BYTES: u64 = 256;
/// Timestamp pairs recorded per submission at most; later dispatches go untimed.
const MAX_TIMED: u32 = 1024;

struct Timer {
    queries: wgpu::QuerySet,
    labels: Vec<String>,
}

/// Per-dispatch GPU times of one submission, in milliseconds.
#[derive(Clone, Debug, Default)]
pub struct Timing {
    pub passes: Vec<(String, f64)>,
}

impl Timing {
    pub fn total_ms(&self) -> f64 {
        self.passes.iter().map(|(_, ms)| ms).sum()
    }

    /// Time per kernel, summed over its dispatches, slowest first: (label, ms, dispatches).
    pub fn by_kernel(&self) -> Vec<(String, f64, usize)> {
        let mut totals: Vec<(String, f64, usize)> = Vec::new();
        for (label, ms) in &self.passes {
            match totals.iter_mut().find(|(l, _, _)| l == label) {
                Some(entry) => {
                    entry.1 += ms;
                    entry.2 += 1;
                }
                None => totals.push((label.clone(), *ms, 1)),
            }
        }
        totals.sort_by(|a, b| b.1.total_cmp(&a.1));
        totals
    }
}

/// Records dispatches for one submission.
pub struct Recorder<'a> {
    ctx: &'a GpuContext,
    encoder: Option<wgpu::CommandEncoder>,
    uniforms: Vec<wgpu::Buffer>,
    /// Scratch tensors of recorded dispatches, held until the recorder drops (after submit).
    kept: Vec<Tensor>,
    /// Plans replayed into this recorder, held (with their tensors) until it drops.
    replayed: Vec<Arc<Plan>>,
    timer: Option<Timer>,
    /// Set while capturing a plan: dispatches, copies and clears go there, not to `encoder`.
    capture: Option<PlanBuilder>,
}

impl GpuContext {
    /// A new recorder; nothing runs until [`GpuContext::submit`].
    pub fn recorder(&self, label: &str) -> Recorder<'_> {
        Recorder {
            ctx: self,
            encoder: Some(self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })),
            uniforms: Vec::new(),
            kept: Vec::new(),
            replayed: Vec::new(),
            timer: None,
            capture: None,
        }
    }

    /// A recorder that captures a [`Plan`] ([`Recorder::into_plan`]) instead of commands to
    /// submit. Whatever the recording code writes to tensors directly (uploads) is not part of
    /// the plan.
    pub fn capture(&self, label: &str) -> Recorder<'_> {
        Recorder {
            ctx: self,
            encoder: None,
            uniforms: Vec::new(),
            kept: Vec::new(),
            replayed: Vec::new(),
            timer: None,
            capture: Some(PlanBuilder::new(label)),
        }
    }

    /// A recorder that times every dispatch with GPU timestamps, when the adapter has
    /// them (see [`GpuContext::submit_timed`]).
    pub fn timed_recorder(&self, label: &str) -> Recorder<'_> {
        let mut rec = self.recorder(label);
        if self.has(wgpu::Features::TIMESTAMP_QUERY) {
            rec.timer = Some(Timer {
                queries: self.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: MAX_TIMED * 2,
                }),
                labels: Vec::new(),
            });
        }
        rec
    }

    fn uniform_buffer(&self) -> wgpu::Buffer {
        if let Some(buf) = self.uniform_pool.lock().expect("uniform lock").pop() {
            return buf;
        }
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: UNIFORM_BYTES,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Submits everything recorded. Uniform blocks go back to the pool: a later
    /// `write_buffer` to them is ordered after this submission by the queue.
    pub fn submit(&self, rec: Recorder<'_>) -> Result<()> {
        self.submit_indexed(rec).map(|_| ())
    }

    /// [`GpuContext::submit`], returning the submission's index (to wait for it alone).
    pub fn submit_indexed(&self, mut rec: Recorder<'_>) -> Result<wgpu::SubmissionIndex> {
        let Some(encoder) = rec.encoder.take() else {
            return Err(Error::invalid("submit", "a capturing recorder makes a plan (into_plan), nothing to submit"));
        };
        let index = self.queue.submit([encoder.finish()]);
        // `rec` drops here and returns its uniform blocks to the pool.
        drop(rec);
        self.take_error("submit")?;
        Ok(index)
    }

    /// Submits and returns per-dispatch GPU times (empty without timestamp support).
    pub async fn submit_timed(&self, mut rec: Recorder<'_>) -> Result<Timing> {
        let Some(timer) = rec.timer.take() else {
            self.submit(rec)?;
            return Ok(Timing::default());
        };
        let count = timer.labels.len() as u32 * 2;
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps.resolve"),
            size: (count.max(1) * 8) as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps.read"),
            size: resolve.size(),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if count > 0 {
            rec.encoder().resolve_query_set(&timer.queries, 0..count, &resolve, 0);
            rec.encoder().copy_buffer_to_buffer(&resolve, 0, &staging, 0, resolve.size());
        }
        self.submit(rec)?;
        let bytes = self.map_read(&staging, None, "timestamps").await?;
        let ticks: &[u64] = bytemuck::cast_slice(&bytes);
        let period_ns = self.queue.get_timestamp_period() as f64;
        let passes = timer
            .labels
            .into_iter()
            .enumerate()
            .map(|(i, label)| {
                let ns = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period_ns;
                (label, ns / 1e6)
            })
            .collect();
        Ok(Timing { passes })
    }
}

impl Recorder<'_> {
    /// The context this recorder belongs to.
    pub fn ctx(&self) -> &GpuContext {
        self.ctx
    }

    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.encoder.as_mut().expect("recorder not yet submitted")
    }

    /// Records `kernel` over `tensors` (in binding order) with `params` as its uniform.
    pub fn dispatch<P: Pod>(
        &mut self,
        kernel: &Kernel,
        tensors: &[&Tensor],
        params: &P,
        groups: [u32; 3],
    ) -> Result<()> {
        let storage = kernel.bindings.iter().filter(|a| **a != Access::Uniform).count();
        assert_eq!(tensors.len(), storage, "{}: wrong number of tensors", kernel.label);
        // Checked on every adapter, so that lavapipe's tests catch what a browser would refuse.
        assert!(
            storage <= super::tensor::PORTABLE_STORAGE_BUFFERS,
            "{}: {storage} storage buffers, more than every WebGPU adapter binds",
            kernel.label
        );
        let bytes = bytemuck::bytes_of(params);
        assert!(bytes.len() as u64 <= UNIFORM_BYTES, "{}: params too large", kernel.label);
        let limit = self.ctx.limits().max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > limit) {
            return Err(Error::invalid(
                "dispatch",
                format!("{} needs {groups:?} workgroups; the adapter allows {limit} per dimension", kernel.label),
            ));
        }
        // A tensor of another element type would be read as garbage. The context's
        // placeholders stand in for unused bindings of any type.
        for (i, (t, &want)) in tensors.iter().zip(&kernel.elements).enumerate() {
            if t.element() != want && !self.ctx.is_placeholder(t) {
                return Err(Error::invalid(
                    "dispatch",
                    format!("{}: binding {i} takes {want} but {t:?} holds {}", kernel.label, t.element()),
                ));
            }
        }
        // Every adapter accepts a binding at a multiple of 256 bytes; lavapipe accepts far less
        // and would hide a view that a browser refuses.
        let align = self.ctx.offset_align();
        if let Some((i, t)) = tensors.iter().enumerate().find(|(_, t)| t.offset() % align != 0) {
            return Err(Error::invalid(
                "dispatch",
                format!(
                    "{}: binding {i} starts at byte {} of its buffer, not a multiple of {align} (the storage offset \
                    alignment that every WebGPU adapter accepts); copy the view to a tensor of its own",
                    kernel.label,
                    t.offset()
                ),
            ));
        }
        // A written binding must not share its buffer with a read-only one (WebGPU forbids
        // mixing read-only and writable storage usage in one dispatch), nor overlap another
        // written one (a data race). Disjoint written views of one arena are fine: the
        // gradient arena takes dgamma and dbeta of a LayerNorm in one dispatch.
        for (i, a) in tensors.iter().enumerate() {
            for (j, b) in tensors.iter().enumerate().skip(i + 1) {
                let (wa, wb) = (kernel.bindings[i] == Access::ReadWrite, kernel.bindings[j] == Access::ReadWrite);
                let conflict = if wa && wb { a.overlaps(b) } else { (wa || wb) && a.same_buffer(b) };
                if conflict {
                    return Err(Error::invalid(
                        "dispatch",
                        format!(
                            "{}: bindings {i} and {j} share a buffer and one is written (over the same bytes, or \
                            beside a read-only binding)",
                            kernel.label
                        ),
                    ));
                }
            }
        }
        let (uniform, uniform_offset) = match &mut self.capture {
            Some(plan) => plan.uniform_slot(&self.ctx.device, &self.ctx.queue, UNIFORM_BYTES, bytes),
            None => {
                let uniform = self.ctx.uniform_buffer();
                self.ctx.queue.write_buffer(&uniform, 0, bytes);
                self.uniforms.push(uniform.clone());
                (uniform, 0)
            }
        };
        let mut t = tensors.iter();
        let entries: Vec<_> = kernel
            .bindings
            .iter()
            .enumerate()
            .map(|(i, access)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: match access {
                    Access::Uniform => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &uniform,
                        offset: uniform_offset,
                        size: wgpu::BufferSize::new(UNIFORM_BYTES),
                    }),
                    _ => t.next().expect("counted").binding(),
                },
            })
            .collect();
        let bind_group = self.ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&kernel.label),
            layout: &kernel.layout,
            entries: &entries,
        });
        match &mut self.capture {
            Some(plan) => {
                let (label, pipeline) = (kernel.label.clone(), kernel.pipeline.clone());
                plan.dispatch(PlannedDispatch { label, pipeline, bind_group, groups }, tensors);
            }
            None => self.encode_dispatch(&kernel.label, &kernel.pipeline, &bind_group, groups),
        }
        Ok(())
    }

    /// Encodes one dispatch in a compute pass of its own, timed when the recorder times.
    fn encode_dispatch(
        &mut self,
        label: &str,
        pipeline: &wgpu::ComputePipeline,
        bind_group: &wgpu::BindGroup,
        [x, y, z]: [u32; 3],
    ) {
        let encoder = self.encoder.as_mut().expect("recorder not yet submitted");
        let timestamp_writes = match &mut self.timer {
            Some(timer) if (timer.labels.len() as u32) < MAX_TIMED => {
                let i = timer.labels.len() as u32;
                timer.labels.push(label.to_string());
                Some(wgpu::ComputePassTimestampWrites {
                    query_set: &timer.queries,
                    beginning_of_pass_write_index: Some(2 * i),
                    end_of_pass_write_index: Some(2 * i + 1),
                })
            }
            _ => None,
        };
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(label), timestamp_writes });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(x, y, z);
    }

    /// Records `plan`'s commands: its dispatches in one compute pass per run between
    /// transfers (one pass per dispatch when timing, as [`Recorder::dispatch`]). The plan
    /// is held until this recorder drops.
    pub fn replay(&mut self, plan: &Arc<Plan>) -> Result<()> {
        if self.capture.is_some() {
            return Err(Error::invalid(
                "replay",
                format!("{plan:?} into a capturing recorder; replay it when recording"),
            ));
        }
        for segment in &plan.segments {
            match segment {
                Segment::Dispatches(run) if self.timer.is_some() => {
                    run.iter().for_each(|d| self.encode_dispatch(&d.label, &d.pipeline, &d.bind_group, d.groups))
                }
                Segment::Dispatches(run) => {
                    let mut pass = self.encoder().begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(plan.label()),
                        timestamp_writes: None,
                    });
                    for d in run {
                        pass.set_pipeline(&d.pipeline);
                        pass.set_bind_group(0, &d.bind_group, &[]);
                        let [x, y, z] = d.groups;
                        pass.dispatch_workgroups(x, y, z);
                    }
                }
                Segment::Transfer(transfer) => encode_transfer(self.encoder(), transfer),
            }
        }
        self.replayed.push(plan.clone());
        Ok(())
    }

    /// The plan a capturing recorder ([`GpuContext::capture`]) recorded.
    pub fn into_plan(mut self) -> Result<Arc<Plan>> {
        let Some(plan) = self.capture.take() else {
            return Err(Error::invalid(
                "into_plan",
                "this recorder records commands; make it with GpuContext::capture",
            ));
        };
        self.ctx.take_error("capturing a plan")?;
        Ok(plan.finish(&self.ctx.queue))
    }

    /// Records `transfer`, or adds it to the plan being captured (holding `tensors`).
    fn transfer(&mut self, transfer: Transfer, tensors: &[&Tensor]) {
        match &mut self.capture {
            Some(plan) => plan.transfer(transfer, tensors),
            None => encode_transfer(self.encoder(), &transfer),
        }
    }

    /// Holds a scratch tensor until this recorder drops. Its buffer would otherwise return
    /// to the pool at once, and an upload into a reuse of it (queue writes run before the
    /// not-yet-submitted commands) could overwrite it before the recorded dispatches read it.
    pub fn keep(&mut self, t: Tensor) {
        match &mut self.capture {
            Some(plan) => plan.hold(t),
            None => self.kept.push(t),
        }
    }

    /// Records a copy of `src` into `dst` (same element count).
    pub fn copy(&mut self, src: &Tensor, dst: &Tensor) -> Result<()> {
        if src.numel() != dst.numel() || src.element() != dst.element() {
            return Err(Error::shape("copy", format!("{src:?} into {dst:?}")));
        }
        // Buffer copies move whole 4-byte words: an odd count or offset of f16 values would
        // copy (or overwrite) a neighbour.
        let bytes = (src.numel() * src.element().bytes()) as u64;
        if !bytes.is_multiple_of(4) || !src.offset().is_multiple_of(4) || !dst.offset().is_multiple_of(4) {
            return Err(Error::invalid(
                "copy",
                format!(
                    "{src:?} into {dst:?}: GPU copies move 4-byte words, so an f16 copy needs an even element count \
                     and offset (an even model width)"
                ),
            ));
        }
        let copy = Transfer::Copy {
            src: src.buffer().clone(),
            src_offset: src.offset(),
            dst: dst.buffer().clone(),
            dst_offset: dst.offset(),
            bytes,
        };
        self.transfer(copy, &[src, dst]);
        Ok(())
    }

    /// Records a copy of `src` into the start of a MAP_READ staging buffer.
    pub(crate) fn copy_to_staging(&mut self, src: &Tensor, staging: &wgpu::Buffer) {
        self.copy_to_staging_at(src, staging, 0);
    }

    /// Records a copy of `src` into `staging` at byte `offset`.
    pub(crate) fn copy_to_staging_at(&mut self, src: &Tensor, staging: &wgpu::Buffer, offset: u64) {
        let copy = Transfer::Copy {
            src: src.buffer().clone(),
            src_offset: src.offset(),
            dst: staging.clone(),
            dst_offset: offset,
            bytes: src.bytes(),
        };
        self.transfer(copy, &[src]);
    }

    /// Records zero-filling `t`.
    pub fn clear(&mut self, t: &Tensor) {
        let clear = Transfer::Clear { buffer: t.buffer().clone(), offset: t.offset(), bytes: t.bytes() };
        self.transfer(clear, &[t]);
    }

    /// Records writing `data` into `t` at this point of the recording: the values go to a
    /// new tensor at once (queue writes land before the submission's commands) and are copied
    /// in order, so that a step recorded after another reads its own values. `t` is f32.
    pub fn write(&mut self, t: &Tensor, data: &[f32]) -> Result<()> {
        let staged = self.ctx.upload(data, t.shape(), "recorder.write")?;
        self.copy(&staged, t)?;
        self.keep(staged);
        Ok(())
    }
}

/// Encodes a buffer-to-buffer command.
fn encode_transfer(encoder: &mut wgpu::CommandEncoder, transfer: &Transfer) {
    match transfer {
        Transfer::Copy { src, src_offset, dst, dst_offset, bytes } => {
            encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *bytes)
        }
        Transfer::Clear { buffer, offset, bytes } => encoder.clear_buffer(buffer, *offset, Some(*bytes)),
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        // Submitted or abandoned, the uniform blocks go back to the pool.
        let uniforms = std::mem::take(&mut self.uniforms);
        self.ctx.uniform_pool.lock().expect("uniform lock").extend(uniforms);
    }
}
