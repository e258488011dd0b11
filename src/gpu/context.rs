//! Adapter selection and the device: [`GpuContext`].

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::gpu::pipeline::{Kernel, KernelSpec, PipelineCache};
use crate::gpu::pool::BufferPool;
use crate::{Error, Result};

/// How to choose the adapter. Defaults: every backend (or `WGPU_BACKEND`), the best
/// adapter by type (discrete > integrated > virtual > CPU).
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// `vulkan`, `metal`, `dx12`, `gl` or `webgpu`; overrides `WGPU_BACKEND`.
    pub backend: Option<String>,
    /// Case-insensitive substring of the adapter name (`autoprog info` lists them).
    pub adapter: Option<String>,
    /// A data-parallel run's rank on this machine: with no `adapter`, the adapters of the
    /// best type are shared out, rank i taking the i-th (modulo their number).
    pub local_rank: Option<usize>,
}

/// What was chosen and what it offers, for reports and for kernel-variant selection.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub features: Vec<String>,
    /// The optional features the device was opened with (empty before a device exists).
    pub enabled_features: Vec<String>,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_immediate_size: u32,
    /// Whether shaders can use f16 (`SHADER_F16`: mixed precision, `--precision f16`).
    pub shader_f16: bool,
    /// The cooperative-matrix (tensor-core) shapes the adapter reports, as `MxNxK A/B->C`
    /// (Vulkan adapters with `VK_KHR_cooperative_matrix`; none elsewhere).
    pub cooperative_matrix: Vec<String>,
}

impl AdapterSummary {
    pub fn from_adapter(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        AdapterSummary {
            name: info.name,
            backend: format!("{:?}", info.backend).to_lowercase(),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver,
            driver_info: info.driver_info,
            features: features.iter_names().map(|(name, _)| name.to_lowercase()).collect(),
            enabled_features: Vec::new(),
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            max_immediate_size: limits.max_immediate_size,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            cooperative_matrix: adapter
                .cooperative_matrix_properties()
                .iter()
                .map(|p| format!("{}x{}x{} {:?}->{:?}", p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type))
                .collect(),
        }
    }

    /// The adapter's name, or a description where the platform hides it (browsers do).
    pub fn display_name(&self) -> String {
        if self.name.is_empty() {
            // Browsers hide the adapter's name; what they tell (vendor, architecture) is kept.
            let backend = if self.backend.eq_ignore_ascii_case("browserwebgpu") { "WebGPU" } else { &self.backend };
            let told: Vec<&str> = [&self.device_type, &self.driver, &self.driver_info]
                .into_iter()
                .map(String::as_str)
                .filter(|s| !s.is_empty())
                .collect();
            format!("an unnamed {backend} adapter ({})", told.join(", "))
        } else {
            self.name.clone()
        }
    }

    /// Whether this is a CPU implementation (lavapipe, llvmpipe, SwiftShader, WARP).
    pub fn is_cpu(&self) -> bool {
        self.device_type == "Cpu"
    }

    /// A short file-name-safe key that identifies the adapter and driver, for caches.
    pub fn cache_key(&self) -> String {
        let raw = format!("{}-{}-{}", self.backend, self.name, self.driver_info);
        raw.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
    }
}

/// Ranks adapters: discrete > integrated > virtual > CPU > other.
fn type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// The order adapters are preferred in: best type first; among equals, native APIs before GL.
fn preference(adapter: &wgpu::Adapter) -> (u8, bool) {
    let info = adapter.get_info();
    (type_rank(info.device_type), info.backend == wgpu::Backend::Gl)
}

/// Optional features used when the adapter has them.
const WANTED_FEATURES: wgpu::Features = wgpu::Features::TIMESTAMP_QUERY
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::SHADER_F16)
    .union(wgpu::Features::PIPELINE_CACHE);

/// The cooperative-matrix shape the matmul's tensor-core variant is written for: 16x16x16
/// tiles, f16 inputs, f32 accumulators (the only square shape with f16 inputs that naga
/// can express and that NVIDIA and AMD Vulkan drivers report).
fn has_coop_f16_16(adapter: &wgpu::Adapter) -> bool {
    adapter.cooperative_matrix_properties().iter().any(|p| {
        (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
            && p.ab_type == wgpu::CooperativeScalarType::F16
            && p.cr_type == wgpu::CooperativeScalarType::F32
    })
}

/// Whether to open the device with cooperative matrices: the adapter has the shape above,
/// f16 shaders and subgroups of one fixed size (the kernel counts its subgroups from it),
/// and `AUTOPROG_COOPMAT` is not `0` (the feature is experimental in wgpu: a way out).
fn wants_cooperative_matrix(adapter: &wgpu::Adapter) -> bool {
    let info = adapter.get_info();
    let needed =
        wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16;
    let opted_out = std::env::var("AUTOPROG_COOPMAT").is_ok_and(|v| v == "0");
    !opted_out
        && info.device_type != wgpu::DeviceType::Cpu
        && adapter.features().contains(needed)
        && has_coop_f16_16(adapter)
        && info.subgroup_min_size == info.subgroup_max_size
        && info.subgroup_min_size > 0
}

/// Instance, adapter, device and queue, plus the caches shared by every kernel.
pub struct GpuContext {
    pub instance: wgpu::Instance,
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub summary: AdapterSummary,
    pub(crate) pipelines: PipelineCache,
    pub(crate) pool: Arc<BufferPool>,
    pub(crate) uniform_pool: Mutex<Vec<wgpu::Buffer>>,
    errors: Arc<Mutex<Vec<String>>>,
    /// State that kernels keep per context (matmul's tuning), by type.
    kernel_state: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    placeholders: std::sync::OnceLock<[crate::Tensor; 2]>,
}

pub(crate) fn parse_backend(name: &str) -> Result<wgpu::Backends> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => wgpu::Backends::VULKAN,
        "metal" | "mtl" => wgpu::Backends::METAL,
        "dx12" | "d3d12" => wgpu::Backends::DX12,
        "gl" | "gles" | "opengl" => wgpu::Backends::GL,
        "webgpu" | "browser" => wgpu::Backends::BROWSER_WEBGPU,
        other => return Err(Error::UnknownBackend(other.to_string())),
    })
}

impl GpuContext {
    /// The compiled kernel for `spec`, built on first use.
    pub fn kernel(&self, spec: &KernelSpec<'_>) -> Result<Arc<Kernel>> {
        self.pipelines.kernel(&self.device, spec, |op| self.take_error(op))
    }

    /// Number of distinct pipelines compiled so far (to check that sub-networks reuse them).
    pub fn pipeline_count(&self) -> usize {
        self.pipelines.len()
    }

    /// The state of type `T` that a kernel family keeps for this context (created on first
    /// use), so that the context need not know every kernel's needs.
    pub fn state<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut states = self.kernel_state.lock().expect("kernel state lock");
        let state = states.entry(TypeId::of::<T>()).or_insert_with(|| Arc::new(T::default()));
        state.clone().downcast::<T>().expect("states are stored under their own type")
    }

    fn backends(opts: &ContextOptions) -> Result<wgpu::Backends> {
        match &opts.backend {
            Some(name) => parse_backend(name),
            None => Ok(wgpu::Backends::all().with_env()),
        }
    }

    fn instance(backends: wgpu::Backends) -> wgpu::Instance {
        wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
        })
    }

    /// Every adapter the chosen backends offer, best first.
    pub async fn adapters(opts: &ContextOptions) -> Result<Vec<wgpu::Adapter>> {
        let backends = Self::backends(opts)?;
        let instance = Self::instance(backends);
        Ok(Self::enumerate(&instance, backends).await)
    }

    async fn enumerate(instance: &wgpu::Instance, backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
        #[cfg(native)]
        let mut adapters = instance.enumerate_adapters(backends).await;
        #[cfg(web)]
        let mut adapters: Vec<wgpu::Adapter> = {
            let _ = backends;
            instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    ..Default::default()
                })
                .await
                .into_iter()
                .collect()
        };
        // Best type first; among equals, native APIs before GL (stable otherwise).
        adapters.sort_by_key(preference);
        adapters
    }

    /// Picks an adapter as `opts` says and opens a device with the adapter's real limits
    /// and every optional feature it has that the kernels can use.
    pub async fn new(opts: &ContextOptions) -> Result<Self> {
        let backends = Self::backends(opts)?;
        let instance = Self::instance(backends);
        let adapters = Self::enumerate(&instance, backends).await;
        let backend_note = match &opts.backend {
            Some(b) => format!(" for backend {b}"),
            None => std::env::var("WGPU_BACKEND").map(|b| format!(" for WGPU_BACKEND={b}")).unwrap_or_default(),
        };
        if adapters.is_empty() {
            return Err(Error::NoAdapter { backends: backend_note });
        }
        let adapter = match &opts.adapter {
            None => {
                // The same GPU through GL is not another GPU: only the first kind counts.
                let best = preference(&adapters[0]);
                let mut peers: Vec<_> = adapters.into_iter().filter(|a| preference(a) == best).collect();
                let nth = opts.local_rank.unwrap_or(0) % peers.len();
                peers.swap_remove(nth)
            }
            Some(wanted) => {
                let needle = wanted.to_lowercase();
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&needle))
                    .ok_or_else(|| Error::AdapterNotFound { wanted: wanted.clone(), available: names.join(", ") })?
            }
        };
        Self::from_adapter(instance, adapter).await
    }

    /// Opens the device on a given adapter.
    pub async fn from_adapter(instance: wgpu::Instance, adapter: wgpu::Adapter) -> Result<Self> {
        let cooperative = wants_cooperative_matrix(&adapter);
        let mut features = adapter.features() & WANTED_FEATURES;
        features.set(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX, cooperative);
        // wgpu asks for a token to enable an experimental feature.
        #[allow(unsafe_code, reason = "wgpu's token for an experimental feature is an unsafe fn")]
        // SAFETY: only cooperative matrices are experimental here, and only the matmul's
        // cooperative variant uses them: with the shape the adapter reports (16x16x16,
        // f16 -> f32), in uniform control flow, on whole subgroups. `AUTOPROG_COOPMAT=0`
        // leaves the feature off.
        let experimental_features = if cooperative {
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let descriptor = |required_features, experimental_features| wgpu::DeviceDescriptor {
            label: Some("autoprog"),
            required_features,
            required_limits: adapter.limits(),
            experimental_features,
            ..Default::default()
        };
        let opened = match adapter.request_device(&descriptor(features, experimental_features)).await {
            // An experimental feature should not cost the user the device.
            Err(e) if cooperative => {
                log::warn!("opening the device with cooperative matrices failed ({e}); opening it without them");
                features.remove(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
                adapter.request_device(&descriptor(features, wgpu::ExperimentalFeatures::disabled())).await
            }
            other => other,
        };
        let summary = AdapterSummary {
            enabled_features: features.iter_names().map(|(name, _)| name.to_lowercase()).collect(),
            ..AdapterSummary::from_adapter(&adapter)
        };
        let (device, queue) =
            opened.map_err(|e| Error::RequestDevice { adapter: summary.name.clone(), reason: e.to_string() })?;
        // Validation errors are collected rather than panicking, and surface as
        // `Error::Gpu` from the next submit, readback or kernel build.
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().expect("error lock").push(e.to_string());
        }));
        let pipelines = PipelineCache::new(&device, features.contains(wgpu::Features::PIPELINE_CACHE));
        Ok(GpuContext {
            instance,
            adapter,
            device,
            queue,
            summary,
            pipelines,
            pool: Arc::new(BufferPool::default()),
            uniform_pool: Mutex::new(Vec::new()),
            errors,
            kernel_state: Mutex::default(),
            placeholders: Default::default(),
        })
    }

    /// Native convenience: [`GpuContext::new`] blocking on the current thread.
    #[cfg(native)]
    pub fn new_blocking(opts: &ContextOptions) -> Result<Self> {
        pollster::block_on(Self::new(opts))
    }

    /// The adapter's limits as requested for the device.
    pub fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }

    /// Whether the device was opened with `feature`.
    pub fn has(&self, feature: wgpu::Features) -> bool {
        self.device.features().contains(feature)
    }

    /// Whether the device runs kernels that store f16 (`SHADER_F16`).
    pub fn has_f16(&self) -> bool {
        self.has(wgpu::Features::SHADER_F16)
    }

    /// The subgroup size the cooperative-matrix matmul is generated for, where the device
    /// was opened with cooperative matrices (16x16x16 f16 -> f32 tiles); `None` elsewhere.
    pub fn cooperative_matrix_subgroup(&self) -> Option<u32> {
        self.has(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX).then_some(self.summary.subgroup_min_size)
    }

    /// Fails with a clear message if `bytes` cannot be bound as one storage buffer.
    pub fn check_binding(&self, what: &str, bytes: u64) -> Result<()> {
        let limit = self.limits().max_storage_buffer_binding_size.min(self.limits().max_buffer_size);
        if bytes > limit {
            return Err(Error::BindingTooLarge { what: what.to_string(), bytes, limit });
        }
        Ok(())
    }

    /// A one-element tensor to bind where a kernel's optional input (`writable = false`)
    /// or output (`writable = true`) is unused. Created once; the two never alias.
    pub fn placeholder(&self, writable: bool) -> Result<crate::Tensor> {
        if self.placeholders.get().is_none() {
            let pair = [self.zeros(&[1], "unused.read")?, self.zeros(&[1], "unused.write")?];
            let _ = self.placeholders.set(pair);
        }
        Ok(self.placeholders.get().expect("just set")[writable as usize].clone())
    }

    /// Whether `t` is one of the [`GpuContext::placeholder`]s.
    pub(crate) fn is_placeholder(&self, t: &crate::Tensor) -> bool {
        self.placeholders.get().is_some_and(|pair| pair.iter().any(|p| p.same_buffer(t)))
    }

    /// Returns the first GPU validation error raised since the last call, if any.
    pub fn take_error(&self, op: &str) -> Result<()> {
        let mut errors = self.errors.lock().expect("error lock");
        if errors.is_empty() {
            return Ok(());
        }
        let detail = errors.drain(..).collect::<Vec<_>>().join("\n");
        Err(Error::Gpu { op: op.to_string(), detail })
    }

    /// Blocks (native) until the queue is idle; a no-op on the web, where the browser
    /// drives completion.
    pub fn wait_idle(&self) {
        #[cfg(native)]
        let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
    }

    /// Buffers currently pooled and bytes held by them, for leak checks across stages.
    pub fn pool_stats(&self) -> (usize, u64) {
        self.pool.stats()
    }

    /// Bytes of device memory that tensors hold (on loan or idle in the pool): after a
    /// [`GpuContext::trim_pool`], the peak of what the tensors created since needed at once.
    pub fn tensor_bytes(&self) -> u64 {
        self.pool.allocated_bytes()
    }

    /// Drops every idle pooled buffer (for example when a model is re-planned).
    pub fn trim_pool(&self) {
        self.pool.trim()
    }
}
