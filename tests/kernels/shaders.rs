//! Every WGSL file parses and validates with naga (the compiler wgpu uses).

fn validate(name: &str, source: &str) {
    let module =
        naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
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
fn every_shader_file_is_registered() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let registered: Vec<_> = autoprog::kernels::shaders().iter().map(|s| s.name).collect();
    for entry in std::fs::read_dir(dir).expect("shaders/") {
        let path = entry.expect("entry").path();
        let stem = path.file_stem().and_then(|s| s.to_str()).expect("name").to_string();
        assert!(registered.contains(&stem.as_str()), "shaders/{stem}.wgsl is not listed in kernels::shaders()");
    }
}
