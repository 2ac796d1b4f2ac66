//! The main job: quantization-aware training of a small network on real data (the 8x8 digits),
//! end to end, with every fake-quant, observer, straight-through and LSQ operation on the best
//! device: a hardware GPU, else the multi-threaded CPU backend (`FAKEQUANT_BACKEND` names one:
//! `cpu`, or `vulkan` / `gl` for the software GPUs).
//!
//! `cargo run --release --example qat_digits` (add `--reference` to run the same training on the
//! CPU reference instead: since the library is bit-exact, every run prints the same table and the
//! same weight digest; `--short` runs a shortened schedule; `--help` lists the options).

#[path = "../common/cli.rs"]
mod cli;
mod qat;

/// int8 is the seed's recipe (and loses nothing on this small network); int4 next to nothing; at
/// int3 calibration alone loses accuracy visibly, and QAT recovers part of it.
const WIDTHS: [u32; 3] = [8, 4, 3];

use std::time::Instant;

fn usage() -> String {
    format!(
        "\
Quantization-aware training of a 64-32-10 MLP on the 8x8 digits at int8, int4 and int3, every
quantization op on the best device (a hardware GPU, else the CPU backend); prints the accuracy
table, a digest of the final weights and the backend used.

Usage: cargo run --release --example qat_digits [-- OPTIONS]

Options:
  --reference  run every quantization op on the CPU reference instead (same table,
               same digest: the library is bit-exact; the variables below are then unused)
  --short      a shortened schedule (3 float epochs, 1 QAT epoch)
  -h, --help   print this help and exit

{}",
        cli::ENVIRONMENT
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = cli::Args::new(&usage());
    let (mut reference, mut short) = (false, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--reference" => reference = true,
            "--short" => short = true,
            _ => args.unknown(&arg),
        }
    }
    // The one line that picks the backend: the CPU reference, or the best device (a hardware
    // GPU, else the CPU backend; FAKEQUANT_BACKEND names one), same trait.
    if reference {
        return train(qat::Ops::new(fakequant::Reference), short);
    }
    match fakequant::BestBackend::select()? {
        fakequant::BestBackend::Gpu(ctx) => train(qat::Ops::new(ctx), short),
        fakequant::BestBackend::Cpu(cpu) => train(qat::Ops::new(cpu), short),
    }
}

fn train<B: fakequant::Backend>(mut ops: qat::Ops<B>, short: bool) -> qat::Result<()> {
    let start = Instant::now();
    let mut reports = Vec::new();
    for bits in WIDTHS {
        let options = if short {
            qat::Options::short(bits)
        } else {
            qat::Options::full(bits)
        };
        println!("== int{bits} ==");
        reports.push(qat::run(&options, &mut ops, &mut |line| {
            println!("[{:6.1} s] {line}", start.elapsed().as_secs_f64())
        })?);
    }
    println!();
    print!("{}", qat::table(&reports));
    println!();
    println!(
        "digest of the final weights and scales (every recipe and width): {:016x}",
        qat::digest(&reports)
    );
    println!(
        "backend: {}; total {:.1} s",
        ops.name(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
