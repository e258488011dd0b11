//! Every WGSL file parses and validates with naga (the compiler wgpu uses).

fn validate(name: &str, source: &str) {
    validate_with(name, source, naga::valid::Capabilities::empty());
}

fn validate_with(name: &str, source: &str, capabilities: naga::valid::Capabilities) {
    let module =
        naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
}

/// `source` with every storage-type alias (all but `Lane`, the f32 type rows are computed
/// in) set to f16, as the kernels specialise it for f16 storage.
fn with_f16_storage(source: &str) -> String {
    let lines = source.lines().map(|line| {
        let storage_alias = line.starts_with("alias ") && !line.starts_with("alias Lane ");
        if storage_alias {
            line.replace("f32", "f16")
        } else {
            line.to_string()
        }
    });
    format!("enable f16;\n{}\n", lines.collect::<Vec<_>>().join("\n"))
}

#[test]
fn every_shader_validates() {
    // Capabilities::empty(): the kernels must not need anything beyond core WGSL, so
    // they run on every adapter including browsers.
    for shader in autoprog::kernels::shaders() {
        validate(&format!("{}.wgsl", shader.name), shader.source);
    }
}

#[test]
fn generated_matmul_kernels_validate() {
    for (name, source) in autoprog::kernels::matmul::generated_sources() {
        validate(&name, &source);
    }
}

#[test]
fn cooperative_matmul_kernels_validate_and_translate_to_spirv() {
    // No adapter on a development machine or in CI has cooperative matrices, so these
    // kernels are checked here as far as a compiler can: naga validates them with the
    // capabilities the device would be opened with, and its SPIR-V writer (what wgpu's
    // Vulkan backend runs) must emit them with the CooperativeMatrixKHR capability.
    use naga::valid::Capabilities;
    let capabilities = Capabilities::SHADER_FLOAT16 | Capabilities::COOPERATIVE_MATRIX | Capabilities::SUBGROUP;
    let sources = autoprog::kernels::matmul::cooperative_sources();
    assert_eq!(sources.len(), 12, "two tile shapes x three layouts x two output types");
    for (name, source) in sources {
        let module =
            naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&source)));
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&source)));
        // SPIR-V 1.6: what wgpu writes for Vulkan 1.3 devices.
        let options = naga::back::spv::Options { lang_version: (1, 6), ..Default::default() };
        let words = naga::back::spv::write_vec(&module, &info, &options, None)
            .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e}"));
        // OpCapability (opcode 17, two words) CooperativeMatrixKHR (6022).
        let capability = words.windows(2).any(|w| w == [(2 << 16) | 17, 6022]);
        assert!(capability, "{name}: the SPIR-V does not declare CooperativeMatrixKHR");
        // Without cooperative matrices the same source must be refused, or the capability
        // check above would prove nothing.
        let without = capabilities - Capabilities::COOPERATIVE_MATRIX;
        let refused = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), without).validate(&module);
        assert!(refused.is_err(), "{name}: validates without the cooperative-matrix capability");
    }
}

#[test]
fn every_shader_validates_with_f16_storage() {
    // Only the f16 extension itself: no other capability may creep in with it.
    let f16 = naga::valid::Capabilities::SHADER_FLOAT16;
    let mut with_aliases = 0;
    for shader in autoprog::kernels::shaders() {
        let source = with_f16_storage(shader.source);
        with_aliases += usize::from(source.contains("= f16;") || source.contains("vec4<f16>;"));
        validate_with(&format!("{}.wgsl with f16 storage", shader.name), &source, f16);
    }
    for (name, source) in autoprog::kernels::matmul::generated_sources() {
        validate_with(&format!("{name} with f16 storage"), &with_f16_storage(&source), f16);
    }
    // Every family that stores activations has a storage alias (the optimizer keeps f32
    // master weights and moments; common.wgsl is a library).
    let families = autoprog::kernels::shaders().len();
    assert_eq!(with_aliases, families - 2, "a kernel family lost its storage-type alias");
}

#[test]
fn every_shader_file_is_registered() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let registered: Vec<_> = autoprog::kernels::shaders().iter().map(|s| s.name).collect();
    for entry in std::fs::read_dir(dir).expect("shaders/") {
        let path = entry.expect("entry").path();
        let stem = path.file_stem().and_then(|s| s.to_str()).expect("name").to_string();
        assert!(registered.contains(&stem.as_str()), "shaders/{stem}.wgsl is not listed in kernels::shaders()");
    }
}
