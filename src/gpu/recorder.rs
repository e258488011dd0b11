//! Command recording: many dispatches into one encoder, submitted once.
//!
//! Each dispatch runs in its own compute pass so that, when timing is on, every
//! dispatch gets a begin and end GPU timestamp.

use bytemuck::Pod;

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
    timer: Option<Timer>,
}

impl GpuContext {
    /// A new recorder; nothing runs until [`GpuContext::submit`].
    pub fn recorder(&self, label: &str) -> Recorder<'_> {
        Recorder {
            ctx: self,
            encoder: Some(self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })),
            uniforms: Vec::new(),
            kept: Vec::new(),
            timer: None,
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
        let encoder = rec.encoder.take().expect("recorder submitted once");
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
        let uniform = self.ctx.uniform_buffer();
        self.ctx.queue.write_buffer(&uniform, 0, bytes);
        let mut t = tensors.iter();
        let entries: Vec<_> = kernel
            .bindings
            .iter()
            .enumerate()
            .map(|(i, access)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: match access {
                    Access::Uniform => uniform.as_entire_binding(),
                    _ => t.next().expect("counted").binding(),
                },
            })
            .collect();
        let bind_group = self.ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&kernel.label),
            layout: &kernel.layout,
            entries: &entries,
        });
        let encoder = self.encoder.as_mut().expect("recorder not yet submitted");
        let timestamp_writes = match &mut self.timer {
            Some(timer) if (timer.labels.len() as u32) < MAX_TIMED => {
                let i = timer.labels.len() as u32;
                timer.labels.push(kernel.label.clone());
                Some(wgpu::ComputePassTimestampWrites {
                    query_set: &timer.queries,
                    beginning_of_pass_write_index: Some(2 * i),
                    end_of_pass_write_index: Some(2 * i + 1),
                })
            }
            _ => None,
        };
        {
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(&kernel.label), timestamp_writes });
            pass.set_pipeline(&kernel.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        self.uniforms.push(uniform);
        Ok(())
    }

    /// Holds a scratch tensor until this recorder drops. Its buffer would otherwise return
    /// to the pool at once, and an upload into a reuse of it (queue writes run before the
    /// not-yet-submitted commands) could overwrite it before the recorded dispatches read it.
    pub fn keep(&mut self, t: Tensor) {
        self.kept.push(t);
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
        self.encoder().copy_buffer_to_buffer(src.buffer(), src.offset(), dst.buffer(), dst.offset(), bytes);
        Ok(())
    }

    /// Records a copy of `src` into the start of a MAP_READ staging buffer.
    pub(crate) fn copy_to_staging(&mut self, src: &Tensor, staging: &wgpu::Buffer) {
        self.copy_to_staging_at(src, staging, 0);
    }

    /// Records a copy of `src` into `staging` at byte `offset`.
    pub(crate) fn copy_to_staging_at(&mut self, src: &Tensor, staging: &wgpu::Buffer, offset: u64) {
        self.encoder().copy_buffer_to_buffer(src.buffer(), src.offset(), staging, offset, src.bytes());
    }

    /// Records zero-filling `t`.
    pub fn clear(&mut self, t: &Tensor) {
        self.encoder().clear_buffer(t.buffer(), t.offset(), Some(t.bytes()));
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        // Submitted or abandoned, the uniform blocks go back to the pool.
        let uniforms = std::mem::take(&mut self.uniforms);
        self.ctx.uniform_pool.lock().expect("uniform lock").extend(uniforms);
    }
}
