//! What the criterion benches share: the adapter, the group settings and the input data.

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use fakequant::GpuContext;

#[path = "../../tests/all/common/rng.rs"]
mod rng;
use rng::Rng;

/// The context of `GpuContext::new` (steered by `FAKEQUANT_BACKEND` / `FAKEQUANT_ADAPTER`), or
/// `None` with a message when no adapter is present (benches are skipped, not failed).
pub fn context() -> Option<GpuContext> {
    match GpuContext::new() {
        Ok(ctx) => {
            eprintln!("adapter: {}", ctx.adapter_name());
            Some(ctx)
        }
        Err(e) => {
            eprintln!("no GPU adapter, GPU benches skipped: {e}");
            None
        }
    }
}

/// A group named `name/<adapter>`: 10 samples, 0.5 s warm-up, 3 s of measurement (each iteration
/// of the larger sizes takes a large fraction of a second on a software adapter).
pub fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
    ctx: &GpuContext,
) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(format!("{name}/{}", ctx.adapter_name()));
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_millis(500));
    group.measurement_time(std::time::Duration::from_secs(3));
    group
}

/// `n` values uniform in [-3, 3) from the tests' seeded generator, seeded with `seed`.
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.uniform(-3.0, 3.0)).collect()
}
