//! The GPU runtime: adapter choice, device, tensors, buffer pool, pipeline cache,
//! command recording and replayed plans, readback, the timestamp profiler and [`timing`] of recorded work.
//!
//! One [`GpuContext`] is built at an entry point and passed by reference everywhere.

mod context;
mod element;
mod pipeline;
mod plan;
mod pool;
mod readback;
mod recorder;
mod tensor;
pub mod timing;

pub use context::{AdapterSummary, ContextOptions, GpuContext};
pub use element::Element;
pub use pipeline::{specialise, Access, Generated, Kernel, KernelSpec, Shader};
pub use plan::{Owner, Plan, Watch};
pub use pool::BufferPool;
pub use readback::{PendingRead, ReadbackRing};
pub use recorder::{Recorder, Timing};
pub use tensor::{Tensor, PORTABLE_OFFSET_ALIGN, PORTABLE_STORAGE_BUFFERS};

/// Largest workgroup count per grid dimension that every WebGPU adapter accepts.
pub const MAX_GROUPS_PER_DIM: u32 = 65_535;

/// Spreads `groups` workgroups over x and y so that neither exceeds the per-dimension
/// limit. Shaders recover the linear index as `wg.x + wg.y * nwg.x`.
pub fn grid_1d(groups: u32) -> [u32; 3] {
    if groups <= MAX_GROUPS_PER_DIM {
        [groups.max(1), 1, 1]
    } else {
        let y = groups.div_ceil(MAX_GROUPS_PER_DIM);
        [groups.div_ceil(y), y, 1]
    }
}
