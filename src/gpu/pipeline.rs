//! Shaders, compiled kernels and the pipeline cache.
//!
//! A [`Kernel`] is one WGSL entry point compiled with explicit bindings (inputs, outputs,
//! uniform, in that order) and optional specialisation: override constants, and
//! `const` declarations rewritten before compilation (for values WGSL needs at shader
//! creation, such as register-tile array sizes). Kernels are built once and cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::gpu::Element;
use crate::{Error, Result};

/// A WGSL source file of one kernel family.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

/// How an entry point uses a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
    Uniform,
}

/// Everything that identifies a compiled kernel.
#[derive(Clone, Debug)]
pub struct KernelSpec<'a> {
    pub shader: Shader,
    pub entry: &'a str,
    pub bindings: &'a [Access],
    /// `const NAME ... = value;` declarations to rewrite, as (NAME, value).
    pub consts: &'a [(&'a str, String)],
    /// Generated WGSL appended to the specialised source (e.g. unrolled entry points).
    pub generated: Option<Generated<'a>>,
    /// The element type of each storage binding, in order; empty: all f32 (4-byte words).
    /// Dispatch refuses a tensor of another type. Any f16 compiles the source with
    /// `enable f16;`, which needs the device's `SHADER_F16`.
    pub elements: &'a [Element],
}

/// WGSL generated for one variant of a shader. Only its name enters the cache key, and
/// the generator runs only when the pipeline is first built: writing out a fully unrolled
/// kernel on every dispatch would cost more host time than recording it.
#[derive(Clone, Copy)]
pub struct Generated<'a> {
    /// Identifies the generated code among the shader's variants.
    pub name: &'a str,
    pub source: &'a dyn Fn() -> String,
    /// WGSL extensions the generated code needs beyond f16 (e.g.
    /// `wgpu_cooperative_matrix`), written as `enable` directives at the top.
    pub enables: &'a [&'a str],
}

impl std::fmt::Debug for Generated<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Generated({})", self.name)
    }
}

impl<'a> KernelSpec<'a> {
    /// An entry point compiled as written, without specialisation.
    pub fn new(shader: Shader, entry: &'a str, bindings: &'a [Access]) -> Self {
        KernelSpec { shader, entry, bindings, consts: &[], generated: None, elements: &[] }
    }

    /// The same entry point with `const` declarations rewritten (see [`specialise`]).
    pub fn with_consts(self, consts: &'a [(&'a str, String)]) -> Self {
        KernelSpec { consts, ..self }
    }

    /// The same entry point with its storage bindings' element types (see [`KernelSpec::elements`]).
    pub fn with_elements(self, elements: &'a [Element]) -> Self {
        KernelSpec { elements, ..self }
    }

    /// The element type storage binding `i` must have.
    fn element(&self, i: usize) -> Element {
        self.elements.get(i).copied().unwrap_or_default()
    }
}

/// A compiled compute pipeline and the bind-group layout it expects.
pub struct Kernel {
    pub label: String,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub bindings: Vec<Access>,
    /// The element type of each storage binding (see [`KernelSpec::elements`]).
    pub elements: Vec<Element>,
}

pub(crate) struct PipelineCache {
    kernels: Mutex<HashMap<String, Arc<Kernel>>>,
    driver_cache: Option<wgpu::PipelineCache>,
}

/// Rewrites `const NAME: T = old;` (or `const NAME = old;`) to the given value, or the
/// type of `alias NAME = old;` (for kernels whose element type depends on the shape).
/// Panics when a name is missing: the shader and its binding disagree, a programmer error.
pub fn specialise(source: &str, consts: &[(&str, String)]) -> String {
    let mut out = source.to_string();
    for (name, value) in consts {
        let start = out
            .find(&format!("const {name}:"))
            .or_else(|| out.find(&format!("const {name} ")))
            .or_else(|| out.find(&format!("alias {name} ")))
            .unwrap_or_else(|| panic!("shader has no `const {name}` to specialise"));
        let eq = start + out[start..].find('=').expect("const has a value");
        let end = eq + out[eq..].find(';').expect("const ends with ;");
        out.replace_range(eq + 1..end, &format!(" {value}"));
    }
    out
}

impl PipelineCache {
    pub(crate) fn new(device: &wgpu::Device, use_driver_cache: bool) -> Self {
        // SAFETY: no data is passed in, so there is nothing to validate; the cache only
        // lets the driver reuse its compilation work within this process.
        #[allow(unsafe_code, reason = "wgpu marks pipeline caches unsafe for the data they load; none is loaded")]
        let driver_cache = use_driver_cache.then(|| unsafe {
            device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                label: Some("autoprog"),
                data: None,
                fallback: true,
            })
        });
        PipelineCache { kernels: Mutex::new(HashMap::new()), driver_cache }
    }
}

fn layout_entry(binding: u32, access: Access) -> wgpu::BindGroupLayoutEntry {
    let ty = match access {
        Access::Read => wgpu::BufferBindingType::Storage { read_only: true },
        Access::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
        Access::Uniform => wgpu::BufferBindingType::Uniform,
    };
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
        count: None,
    }
}

impl PipelineCache {
    /// The compiled kernel for `spec`, built on `device` on first use; `check` turns the
    /// device's pending validation error, if any, into an error naming the operation.
    pub(crate) fn kernel(
        &self,
        device: &wgpu::Device,
        spec: &KernelSpec<'_>,
        check: impl Fn(&str) -> Result<()>,
    ) -> Result<Arc<Kernel>> {
        let consts: Vec<String> = spec.consts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let generated = spec.generated.map(|g| format!("#{}", g.name)).unwrap_or_default();
        let storage = spec.bindings.iter().filter(|a| **a != Access::Uniform).count();
        let elements: Vec<Element> = (0..storage).map(|i| spec.element(i)).collect();
        let half = elements.contains(&Element::F16);
        let typed = if half { elements.iter().map(|e| e.wgsl()).collect::<Vec<_>>().join(",") } else { String::new() };
        let key = format!("{}::{}[{}]{generated}{typed}", spec.shader.name, spec.entry, consts.join(","));
        if let Some(k) = self.kernels.lock().expect("pipeline lock").get(&key) {
            return Ok(k.clone());
        }
        if half && !device.features().contains(wgpu::Features::SHADER_F16) {
            return Err(Error::missing_f16(format!("{key} (f16 storage)")));
        }
        let mut enable = if half { "enable f16;\n" } else { "" }.to_string();
        for extension in spec.generated.map(|g| g.enables).unwrap_or_default() {
            enable += &format!("enable {extension};\n");
        }
        let source = format!(
            "{enable}{}{}",
            specialise(spec.shader.source, spec.consts),
            spec.generated.map(|g| (g.source)()).unwrap_or_default()
        );
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(spec.shader.name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let entries: Vec<_> = spec.bindings.iter().enumerate().map(|(i, &a)| layout_entry(i as u32, a)).collect();
        let layout =
            device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(&key), entries: &entries });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&key),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&key),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(spec.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                // Kernels initialise the workgroup memory they read.
                zero_initialize_workgroup_memory: false,
                ..Default::default()
            },
            cache: self.driver_cache.as_ref(),
        });
        check(&format!("compiling {key}"))?;
        let kernel =
            Arc::new(Kernel { label: key.clone(), pipeline, layout, bindings: spec.bindings.to_vec(), elements });
        self.kernels.lock().expect("pipeline lock").insert(key, kernel.clone());
        Ok(kernel)
    }

    /// Number of distinct pipelines compiled so far.
    pub(crate) fn len(&self) -> usize {
        self.kernels.lock().expect("pipeline lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::specialise;

    #[test]
    fn specialise_rewrites_const_values() {
        let src = "const TM: u32 = 4u;\nconst WG = 64u;\nfn f() {}";
        let out = specialise(src, &[("TM", "8u".into()), ("WG", "16u".into())]);
        assert_eq!(out, "const TM: u32 = 8u;\nconst WG = 16u;\nfn f() {}");
    }

    #[test]
    fn specialise_rewrites_alias_types() {
        let src = "alias Lane = vec4<f32>;\nconst LANES: u32 = 4u;";
        let out = specialise(src, &[("Lane", "f32".into()), ("LANES", "1u".into())]);
        assert_eq!(out, "alias Lane = f32;\nconst LANES: u32 = 1u;");
    }
}
