//! Every WGSL file in `shaders/` parses and validates with naga, without an adapter.

use std::path::Path;

fn validate(name: &str, source: &str) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
}

#[test]
fn every_shader_file_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let kernels = fakequant::gpu::kernel_sources();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".wgsl"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected the shader files, found {files:?}"
    );
    for file in &files {
        let source = std::fs::read_to_string(dir.join(file)).unwrap();
        // Each file is part of a kernel source the library compiles (no stale shader).
        assert!(
            kernels.iter().any(|(_, k)| k.contains(&source)),
            "{file} is not part of any kernel source the library builds"
        );
    }
    // The helper library validates on its own; kernel files validate as composed.
    validate(
        "exact_f32.wgsl",
        &std::fs::read_to_string(dir.join("exact_f32.wgsl")).unwrap(),
    );
    for (name, source) in &kernels {
        validate(name, source);
    }
}
