//! Every WGSL file parses and validates with naga (the compiler wgpu uses).

#[test]
fn every_shader_validates() {
    for shader in autoprog::kernels::shaders() {
        let module = naga::front::wgsl::parse_str(shader.source)
            .unwrap_or_else(|e| panic!("{}.wgsl: {}", shader.name, e.emit_to_string(shader.source)));
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}.wgsl: {}", shader.name, e.emit_to_string(shader.source)));
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
