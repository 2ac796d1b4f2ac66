//! The end-to-end QAT example (`examples/qat_digits`) on a shortened schedule: the GPU runs, the
//! CPU backend's run and the CPU-reference run must end with bit-identical weights and scales and identical tables, because
//! every library operation in it is bit-exact.

use crate::common;

#[allow(dead_code)]
#[path = "../../examples/qat_digits/qat.rs"]
mod qat;

#[test]
fn gpu_and_reference_training_runs_agree_bit_for_bit() {
    fn run<B: fakequant::Backend>(backend: B) -> Vec<qat::Report> {
        let mut ops = qat::Ops::new(backend);
        [8, 3]
            .into_iter()
            .map(|bits| qat::run(&qat::Options::short(bits), &mut ops, &mut |_| {}).unwrap())
            .collect()
    }
    let reference = run(fakequant::Reference);
    // The schedule is short, but training happened: the reports hold real accuracies.
    assert!(
        reference[0].float_accuracy > 0.5,
        "{}",
        qat::table(&reference)
    );
    let cpu = run(fakequant::Cpu::new().unwrap());
    assert_eq!(cpu, reference, "reports differ on the CPU backend");
    for ctx in common::contexts() {
        let gpu = run(ctx.clone());
        assert_eq!(
            qat::digest(&gpu),
            qat::digest(&reference),
            "weight digests differ on {}",
            ctx.adapter_name()
        );
        // Every weight, scale and accuracy, compared exactly.
        assert_eq!(gpu, reference, "reports differ on {}", ctx.adapter_name());
        assert_eq!(qat::table(&gpu), qat::table(&reference));
    }
}
