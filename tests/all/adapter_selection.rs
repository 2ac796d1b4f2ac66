//! `FAKEQUANT_BACKEND` and `FAKEQUANT_ADAPTER` steer the choice of adapter; bad values are errors.
//!
//! The checks change the process environment, which is not safe while other tests of this binary
//! run on other threads (the library, wgpu and the drivers read it, the drivers through C's
//! `getenv`, which no Rust lock guards). So `environment_selects_and_rejects_adapters` runs them in
//! a child process of this test binary, alone, with the variables set on that child only; the
//! process running the other tests never changes its environment.

use std::process::Command;

use fakequant::{BestBackend, Error, GpuContext};

/// Set on the child process only; the checks refuse to run in a process without it.
const CHILD_MARKER: &str = "FAKEQUANT_TEST_ADAPTER_SELECTION_CHILD";

#[test]
fn environment_selects_and_rejects_adapters() {
    // The libtest name of the child test: this module's path without the crate name.
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, rest)| rest);
    let name = format!("{module}::environment_checks_in_a_child_process");
    let output = Command::new(std::env::current_exe().unwrap())
        .args([name.as_str(), "--exact", "--ignored", "--test-threads=1"])
        .arg("--nocapture")
        .env(CHILD_MARKER, "1")
        .env_remove("FAKEQUANT_ADAPTER")
        .output()
        .expect("the test binary runs itself");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child process failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // It ran exactly the one test (a renamed test would otherwise pass by running nothing).
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the child process did not run {name}:\n{stdout}\n{stderr}"
    );
}

/// The checks themselves; run by `environment_selects_and_rejects_adapters` in a child process
/// (ignored in an ordinary run, and a no-op when `--include-ignored` runs it among other tests).
#[test]
#[ignore = "run in a child process by environment_selects_and_rejects_adapters"]
fn environment_checks_in_a_child_process() {
    if std::env::var_os(CHILD_MARKER).is_none() {
        eprintln!(
            "skipped: changes the environment; run by environment_selects_and_rejects_adapters"
        );
        return;
    }
    // SAFETY-free in edition 2021; this process runs this test alone (--exact, one thread).
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

    // The CPU backend: named alone, BestBackend picks it and GpuContext refuses it by name;
    // combined with GPU backends it is an error.
    std::env::remove_var("FAKEQUANT_ADAPTER");
    std::env::set_var("FAKEQUANT_BACKEND", "cpu");
    assert!(matches!(BestBackend::select(), Ok(BestBackend::Cpu(_))));
    let err = GpuContext::new().unwrap_err();
    assert!(err.to_string().contains("CPU backend"), "{err}");
    std::env::set_var("FAKEQUANT_BACKEND", "cpu,vulkan");
    assert!(
        matches!(
            BestBackend::select(),
            Err(Error::InvalidEnvironment {
                name: "FAKEQUANT_BACKEND",
                ..
            })
        ),
        "cpu combined with a GPU backend"
    );
    // Naming a GPU backend reaches the software GPUs; with nothing named, a machine without a
    // hardware adapter gets the CPU backend.
    std::env::set_var("FAKEQUANT_BACKEND", "vulkan,gl");
    if !all.is_empty() {
        assert!(matches!(BestBackend::select(), Ok(BestBackend::Gpu(_))));
    }
    std::env::remove_var("FAKEQUANT_BACKEND");
    let hardware = GpuContext::adapters()
        .unwrap()
        .iter()
        .any(|a| a.get_info().device_type != wgpu::DeviceType::Cpu);
    match BestBackend::select().unwrap() {
        BestBackend::Gpu(ctx) => assert!(hardware, "{} chosen", ctx.adapter_name()),
        BestBackend::Cpu(_) => assert!(!hardware),
    }
}
