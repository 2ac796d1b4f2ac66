//! `FAKEQUANT_BACKEND` and `FAKEQUANT_ADAPTER` steer the choice of adapter; bad values are errors.
//! (Its own test binary: it changes the process environment.)

use fakequant::{Error, GpuContext};

#[test]
fn environment_selects_and_rejects_adapters() {
    // SAFETY-free in edition 2021; this binary has a single test, so nothing reads concurrently.
    std::env::remove_var("FAKEQUANT_ADAPTER");
    std::env::set_var("FAKEQUANT_BACKEND", "no-such-backend");
    // A malformed variable is reported as such, not as a missing adapter.
    for result in [
        GpuContext::adapters().map(|_| ()),
        GpuContext::new().map(|_| ()),
    ] {
        assert!(
            matches!(
                result,
                Err(Error::InvalidEnvironment { name: "FAKEQUANT_BACKEND", ref value, .. })
                    if value == "no-such-backend"
            ),
            "{result:?}"
        );
    }

    std::env::set_var("FAKEQUANT_BACKEND", "vulkan,gl");
    let all = GpuContext::adapters().unwrap();
    std::env::set_var("FAKEQUANT_ADAPTER", "definitely not an adapter name");
    assert!(GpuContext::adapters().unwrap().is_empty());
    let err = GpuContext::new().unwrap_err();
    assert!(
        err.to_string().contains("no compute-capable adapter"),
        "{err}"
    );
    if let Some(first) = all.first() {
        let name = first.get_info().name;
        std::env::set_var("FAKEQUANT_ADAPTER", name.to_uppercase());
        let chosen = GpuContext::adapters().unwrap();
        // A substring match: other adapters whose names contain this one are chosen too (on an
        // NVIDIA machine the GL adapter's "NVIDIA H200/PCIe/SSE2" contains Vulkan's "NVIDIA H200").
        assert!(
            chosen.iter().all(|a| a
                .get_info()
                .name
                .to_lowercase()
                .contains(&name.to_lowercase())),
            "substring match is case-insensitive"
        );
        assert!(!chosen.is_empty());
    }
}
