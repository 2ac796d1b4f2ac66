//! The Rust declarations of every family checked against the WGSL as naga reads it: each entry
//! point's binding struct names exactly the storage variables the entry point uses, with their
//! binding numbers and access modes; each mirrored struct has the WGSL struct's size and field
//! offsets. So the two copies cannot drift apart.

use std::collections::BTreeMap;

use wgpu::naga;

use super::{Access, FamilyDecl};

fn module(source: &str) -> naga::Module {
    naga::front::wgsl::parse_str(source).expect("the shader parses (see shaders::tests)")
}

/// The global variables an entry point uses, directly or through the functions it calls, with
/// how it uses them.
fn globals_used(
    module: &naga::Module,
    entry_point: &str,
) -> BTreeMap<naga::Handle<naga::GlobalVariable>, naga::valid::GlobalUse> {
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(module)
    .expect("the shader validates");
    let (index, _) = module
        .entry_points
        .iter()
        .enumerate()
        .find(|(_, e)| e.name == entry_point)
        .unwrap_or_else(|| panic!("no entry point {entry_point}"));
    let function_info = info.get_entry_point(index);
    module
        .global_variables
        .iter()
        .filter(|(handle, _)| !function_info[*handle].is_empty())
        .map(|(handle, _)| (handle, function_info[handle]))
        .collect()
}

fn families() -> Vec<FamilyDecl> {
    crate::gpu::FAMILIES.iter().map(|f| f()).collect()
}

#[test]
fn every_binding_struct_matches_its_entry_point() {
    let mut checked = 0;
    for family in families() {
        for decl in &family.entry_points {
            let module = module(&decl.shader.source());
            let mut used: BTreeMap<u32, (String, Access)> = BTreeMap::new();
            for (handle, usage) in globals_used(&module, decl.entry_point) {
                let var = &module.global_variables[handle];
                // Workgroup and private variables are not bindings.
                let Some(binding) = var.binding.as_ref() else {
                    continue;
                };
                assert_eq!(binding.group, 0);
                let access = match var.space {
                    naga::AddressSpace::Uniform => {
                        assert_eq!(binding.binding, 0, "the uniform sits at binding 0");
                        continue;
                    }
                    naga::AddressSpace::Storage { access } => {
                        let writes = usage.intersects(
                            naga::valid::GlobalUse::WRITE | naga::valid::GlobalUse::ATOMIC,
                        );
                        match (access.contains(naga::StorageAccess::STORE), writes) {
                            (false, _) => Access::Read,
                            (true, false) => Access::Input,
                            (true, true) => Access::ReadWrite,
                        }
                    }
                    other => panic!("{}: unexpected address space {other:?}", decl.entry_point),
                };
                used.insert(
                    binding.binding,
                    (var.name.clone().unwrap_or_default(), access),
                );
            }
            let declared: BTreeMap<u32, (String, Access)> = decl
                .slots
                .iter()
                .map(|s| (s.binding, (s.name.to_string(), s.access)))
                .collect();
            assert_eq!(
                declared.len(),
                decl.slots.len(),
                "{}: a binding number is declared twice",
                decl.entry_point
            );
            assert_eq!(
                declared, used,
                "{} of {}: the Rust binding struct (left) and the WGSL (right) disagree",
                decl.entry_point, decl.shader.name
            );
            checked += 1;
        }
    }
    assert!(checked >= 13, "only {checked} entry points were declared");
}

#[test]
fn every_mirrored_struct_matches_its_wgsl_layout() {
    let mut checked = 0;
    for family in families() {
        for decl in &family.structs {
            let module = module(&decl.shader.source());
            let ty = module
                .types
                .iter()
                .find(|(_, t)| t.name.as_deref() == Some(decl.wgsl_name))
                .unwrap_or_else(|| panic!("no WGSL struct {}", decl.wgsl_name))
                .1;
            let naga::TypeInner::Struct { members, span } = &ty.inner else {
                panic!("{} is not a struct", decl.wgsl_name)
            };
            assert_eq!(
                decl.size, *span as usize,
                "size of {} in Rust and in WGSL",
                decl.wgsl_name
            );
            let wgsl: Vec<(String, usize)> = members
                .iter()
                .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
                .collect();
            let rust: Vec<(String, usize)> = decl
                .fields
                .iter()
                .map(|&(n, o)| (n.to_string(), o))
                .collect();
            assert_eq!(
                rust, wgsl,
                "fields of {} in Rust (left) and WGSL (right)",
                decl.wgsl_name
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} structs were declared");
}
