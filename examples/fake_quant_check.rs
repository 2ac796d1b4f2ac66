//! Fake-quantizes a tensor on the GPU, per-tensor and per-channel, and runs observers through
//! calibration, QAT and frozen steps, checking every output bit, mask bit and state bit against the
//! CPU reference. Exits non-zero on any difference.
//!
//! `cargo run --release --example fake_quant_check` (no options; `--help` says so).

#[path = "common/cli.rs"]
mod cli;

use fakequant::{reference, FakeQuant, GpuContext, Mode, ObserverConfig, QuantParams, QuantRange};

fn usage() -> String {
    format!(
        "\
Fake-quantizes a tensor on the GPU (per-tensor and per-channel) and runs observers through
calibration, QAT and frozen steps, checking every output, mask and state bit against the CPU
reference; exits non-zero on any difference.

Usage: cargo run --release --example fake_quant_check [-- OPTIONS]

Options:
  -h, --help  print this help and exit

{}",
        cli::ENVIRONMENT
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = cli::Args::new(&usage());
    if let Some(arg) = args.next() {
        args.unknown(&arg);
    }
    let ctx = GpuContext::new()?;
    println!("adapter: {}", ctx.adapter_name());

    // A [64, 3, 32, 32] activation-like tensor from a fixed-seed generator (no dependency).
    let shape = [64usize, 3, 32, 32];
    let n: usize = shape.iter().product();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let x: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        })
        .collect();

    let per_tensor = FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(4.0 / 127.5, 0))?;
    let per_channel = FakeQuant::new(
        QuantRange::UINT8,
        QuantParams::per_channel(1, vec![0.02, 0.0313, 0.05], vec![128, 100, 0]),
    )?;
    let mut mismatches = 0usize;
    for (name, op) in [
        ("per-tensor int8", &per_tensor),
        ("per-channel uint8 axis 1", &per_channel),
    ] {
        let start = std::time::Instant::now();
        let gpu = ctx.fake_quant(op, &x, &shape)?;
        let elapsed = start.elapsed();
        let cpu = reference::fake_quant(op, &x, &shape)?;
        let bad = gpu
            .y
            .iter()
            .zip(&cpu.y)
            .filter(|(g, c)| g.to_bits() != c.to_bits())
            .count();
        let mask_equal = gpu.mask == cpu.mask;
        let clipped = cpu.mask.len() - cpu.mask.to_bools().iter().filter(|&&b| b).count();
        println!(
            "{name}: {n} elements, {bad} output mismatches, mask {}, {clipped} clipped, {:.1} ms (upload + kernel + read-back)",
            if mask_equal { "identical" } else { "DIFFERS" },
            elapsed.as_secs_f64() * 1e3
        );
        mismatches += bad + usize::from(!mask_equal);
    }

    // The statistics recipe: observers calibrate for a few steps, then QAT steps observe and
    // fake-quantize in one fused call; the state stays on the device between steps.
    let weights_shape = [64usize, 3, 4, 4];
    for (name, config, shape) in [
        (
            "observer per-tensor int8 (activations)",
            ObserverConfig::qat_activation_int8(),
            &shape[..],
        ),
        (
            "observer per-channel int8 axis 0 (weights)",
            ObserverConfig::qat_weight_int8(),
            &weights_shape[..],
        ),
    ] {
        let len: usize = shape.iter().product();
        let gpu = ctx.create_observer(&config, shape)?;
        let mut cpu = reference::observer::Observer::new(config, shape)?;
        let mut bad = 0usize;
        for (step, mode) in [
            Mode::Calibrate,
            Mode::Calibrate,
            Mode::Qat,
            Mode::Qat,
            Mode::Frozen,
        ]
        .into_iter()
        .enumerate()
        {
            let xs: Vec<f32> = x[..len]
                .iter()
                .map(|v| v * (1.0 + step as f32 * 0.25))
                .collect();
            let g = gpu.step(&xs, shape, mode)?;
            let c = cpu.step(&xs, shape, mode)?;
            bad +=
                g.y.iter()
                    .zip(&c.y)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
            bad += usize::from(g.mask != c.mask);
            bad += usize::from(gpu.read_state()? != *cpu.state());
        }
        let state = cpu.state();
        println!(
            "{name}: 5 steps (calibrate x2, QAT x2, frozen), {bad} mismatches in outputs, masks and state; scale[0] = {:e}, zero point[0] = {}",
            state.scales[0], state.zero_points[0]
        );
        mismatches += bad;
    }

    if mismatches > 0 {
        return Err(
            format!("{mismatches} differences between the GPU and the CPU reference").into(),
        );
    }
    println!("GPU and CPU reference agree bit for bit");
    Ok(())
}
