//! The main job: quantization-aware training of a small network on real data (the 8x8 digits),
//! end to end, with every fake-quant, observer, straight-through and LSQ operation on the GPU.
//!
//! `cargo run --release --example qat_digits` (add `--reference` to run the same training on the
//! CPU reference instead: since the library is bit-exact, both runs print the same table and the
//! same weight digest; `--short` runs a shortened schedule).

mod qat;

/// int8 is the seed's recipe (and loses nothing on this small network); int4 neither; at int3
/// calibration alone loses accuracy visibly, and QAT recovers it.
const WIDTHS: [u32; 3] = [8, 4, 3];

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    for a in &args {
        if a != "--reference" && a != "--short" {
            return Err(format!("unknown argument {a:?} (use --reference and/or --short)").into());
        }
    }
    let short = args.iter().any(|a| a == "--short");
    let mut ops: Box<dyn qat::QuantOps> = if args.iter().any(|a| a == "--reference") {
        Box::new(qat::ReferenceOps::default())
    } else {
        Box::new(qat::GpuOps::new(fakequant::GpuContext::new()?))
    };
    let start = Instant::now();
    let mut reports = Vec::new();
    for bits in WIDTHS {
        let options = if short {
            qat::Options::short(bits)
        } else {
            qat::Options::full(bits)
        };
        println!("== int{bits} ==");
        reports.push(qat::run(&options, ops.as_mut(), &mut |line| {
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
