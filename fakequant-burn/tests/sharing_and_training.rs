//! The device shared in burn's direction (the library on burn's device), and the LSQ parameters
//! as burn module parameters that burn's optimizer updates with the kernels' gradients.

#[path = "../../tests/all/common/mod.rs"]
mod common;

use burn::backend::wgpu::graphics::{OpenGl, Vulkan};
use burn::backend::wgpu::WgpuDevice;
use burn::module::{Module, Param};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Tensor, TensorData};
use common::Rng;
use fakequant::{reference, FakeQuant, GpuContext, QuantParams, QuantRange};
use fakequant_burn::{FakeQuantizer, LsqQuantizer, QatDevice};

fn require_gpu() -> bool {
    std::env::var("FAKEQUANT_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// burn sets its default device up on the graphics API that FAKEQUANT_BACKEND names (burn's own
/// choice when unset), and the library joins it: the kernels then run on burn's tensors.
#[test]
fn the_library_runs_on_the_device_burn_set_up() {
    if GpuContext::adapters().map_or(true, |a| a.is_empty()) {
        assert!(
            !require_gpu(),
            "FAKEQUANT_REQUIRE_GPU=1 but no adapter was found"
        );
        eprintln!("note: no GPU adapter present; skipped");
        return;
    }
    let device = WgpuDevice::default();
    let qat = match std::env::var("FAKEQUANT_BACKEND").as_deref() {
        Ok("gl") => QatDevice::from_burn_with_api::<OpenGl>(&device),
        Ok("vulkan") => QatDevice::from_burn_with_api::<Vulkan>(&device),
        _ => QatDevice::from_burn(&device),
    }
    .expect("the library on burn's device");
    eprintln!("burn set up: {}", qat.context().adapter_name());
    let op = FakeQuant::new(
        QuantRange::signed(8).unwrap(),
        QuantParams::per_tensor(0.1, -2),
    )
    .unwrap();
    let fq = FakeQuantizer::new(&qat, &op).unwrap();
    let mut rng = Rng::new(41);
    let x = common::random_data(&mut rng, 4096, 1, 0.1);
    let want = reference::fake_quant(&op, &x, &[4096]).unwrap();
    let xt = Tensor::<1>::from_data(TensorData::new(x, [4096]), &qat.autodiff());
    assert_eq!(bits(&values(fq.forward(xt).unwrap())), bits(&want.y));
}

/// A module holding LSQ's learnable scale and zero point as burn parameters.
#[derive(Module, Debug)]
struct LearnedRange {
    scale: Param<Tensor<1>>,
    zero_point: Param<Tensor<1>>,
}

#[test]
fn an_optimizer_step_moves_the_lsq_parameters_by_the_reference_gradients() {
    use fakequant::{reference::lsq::Lsq, Granularity, LsqConfig};
    let adapters = GpuContext::adapters().unwrap_or_default();
    assert!(
        !(adapters.is_empty() && require_gpu()),
        "FAKEQUANT_REQUIRE_GPU=1 but no adapter"
    );
    let mut rng = Rng::new(43);
    for adapter in &adapters {
        let qat = QatDevice::from_adapter(adapter).unwrap();
        let device = qat.autodiff();
        let config = LsqConfig::new(
            QuantRange::unsigned(8).unwrap(),
            Granularity::per_channel(0),
        )
        .unwrap();
        let shape = [3usize, 257];
        let n = shape[0] * shape[1];
        let lsq = LsqQuantizer::new(&qat, &config, 3).unwrap();
        let mut scales: Vec<f32> = vec![0.02, 0.05, 0.11];
        let mut zero_points: Vec<f32> = vec![120.0, 3.5, 250.0];
        let mut module = LearnedRange {
            scale: Param::from_tensor(Tensor::from_data(
                TensorData::new(scales.clone(), [3]),
                &device,
            )),
            zero_point: Param::from_tensor(Tensor::from_data(
                TensorData::new(zero_points.clone(), [3]),
                &device,
            )),
        };
        let mut optimizer = SgdConfig::new().init();
        let lr = 0.01;
        for step in 0..3 {
            let x = common::random_data(&mut rng, n, step, 0.05);
            let dy: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let reference = Lsq::new(config.clone(), &scales, &zero_points).unwrap();
            let want = reference.backward(&x, &dy, &shape).unwrap();

            let xt = Tensor::<2>::from_data(TensorData::new(x, shape), &device);
            let dyt = Tensor::<2>::from_data(TensorData::new(dy, shape), &device);
            let y = lsq
                .forward(xt, module.scale.val(), module.zero_point.val())
                .unwrap();
            let grads = (y * dyt).sum().backward();
            let grads = GradientsParams::from_grads(grads, &module);
            module = optimizer.step(lr, module, grads);
            // burn's SGD: p - g * lr, two correctly rounded f32 operations (the software GPUs do
            // not fuse them).
            for (p, g) in scales.iter_mut().zip(&want.dscale) {
                *p -= *g * lr as f32;
            }
            for (p, g) in zero_points.iter_mut().zip(&want.dzero_point) {
                *p -= *g * lr as f32;
            }
            assert_eq!(
                bits(&values(module.scale.val())),
                bits(&scales),
                "scale after step {step}"
            );
            assert_eq!(
                bits(&values(module.zero_point.val())),
                bits(&zero_points),
                "zero point after step {step}"
            );
        }
    }
}
