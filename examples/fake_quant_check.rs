//! Fake-quantizes a tensor on the GPU, per-tensor and per-channel, and checks every output bit and
//! mask bit against the CPU reference. Exits non-zero on any difference.
//!
//! `cargo run --release --example fake_quant_check`

use fakequant::{reference, FakeQuant, GpuContext, QuantParams, QuantRange};

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
        let gpu = ctx.fake_quant(op, &x, &shape, true)?;
        let elapsed = start.elapsed();
        let cpu = reference::fake_quant(op, &x, &shape, true)?;
        let bad = gpu
            .y
            .iter()
            .zip(&cpu.y)
            .filter(|(g, c)| g.to_bits() != c.to_bits())
            .count();
        let mask_equal = gpu.mask == cpu.mask;
        let clipped = cpu
            .mask
            .as_ref()
            .map_or(0, |m| m.len() - m.to_bools().iter().filter(|&&b| b).count());
        println!(
            "{name}: {n} elements, {bad} output mismatches, mask {}, {clipped} clipped, {:.1} ms (upload + kernel + read-back)",
            if mask_equal { "identical" } else { "DIFFERS" },
            elapsed.as_secs_f64() * 1e3
        );
        mismatches += bad + usize::from(!mask_equal);
    }
    if mismatches > 0 {
        return Err(
            format!("{mismatches} differences between the GPU and the CPU reference").into(),
        );
    }
    println!("GPU and CPU reference agree bit for bit");
    Ok(())
}
