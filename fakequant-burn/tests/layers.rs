//! The QAT layers against the reference: each mode's output is burn's own linear/conv2d on the
//! reference's fake-quantized input and weight (the same burn kernel on the same bits), the
//! observers' states equal the reference's, LSQ starts from the calibrated qparams, and a record
//! saved, loaded and restored resumes bit for bit.

#[path = "../../tests/all/common/mod.rs"]
mod common;

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};
use common::Rng;
use fakequant::reference::lsq::Lsq;
use fakequant::reference::observer::Observer;
use fakequant::{GpuContext, Granularity, Mode};
use fakequant_burn::{QConfig, QatConv2d, QatDevice, QatLinear, QatModule};

fn devices() -> Vec<QatDevice> {
    let adapters = GpuContext::adapters().unwrap_or_default();
    if adapters.is_empty() {
        assert!(
            !std::env::var("FAKEQUANT_REQUIRE_GPU").is_ok_and(|v| v == "1"),
            "FAKEQUANT_REQUIRE_GPU=1 but no adapter was found"
        );
        eprintln!("note: no GPU adapter present; skipped");
    }
    adapters
        .iter()
        .map(|a| QatDevice::from_adapter(a).unwrap())
        .collect()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn tensor<const D: usize>(v: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// `layer`'s state synced and saved as a burn record in a temporary file (burn reads a record's
/// tensors lazily: the caller removes the file when done with what it loaded).
fn checkpoint(layer: &QatLinear, name: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("fakequant-burn-{name}-{}.bpk", std::process::id()));
    layer
        .clone()
        .sync_state()
        .unwrap()
        .into_record()
        .save(&path)
        .unwrap();
    path
}

const MODES: [Mode; 5] = [
    Mode::Calibrate,
    Mode::Calibrate,
    Mode::Qat,
    Mode::Qat,
    Mode::Frozen,
];

#[test]
fn qat_linear_with_statistics_follows_the_reference_and_resumes_from_a_record() {
    let mut rng = Rng::new(53);
    for qat in devices() {
        let device = qat.autodiff();
        let (d_in, d_out, batch) = (33usize, 7usize, 5usize);
        let float = LinearConfig::new(d_in, d_out).init(&device);
        let qconfig = QConfig::statistics_int8();
        let mut layer = QatLinear::prepare(&qat, float.clone(), &qconfig).unwrap();
        let weight = values(float.weight.val());
        let bias = float.bias.as_ref().map(|b| b.val());
        let mut ref_w = Observer::new(
            qconfig
                .weight
                .clone()
                .with_granularity(Granularity::per_channel(1)),
            &[d_in, d_out],
        )
        .unwrap();
        let mut ref_x = Observer::new(qconfig.input.clone(), &[batch, d_in]).unwrap();
        let step = |layer: QatLinear,
                    mode: Mode,
                    rng: &mut Rng,
                    ref_w: &mut Observer,
                    ref_x: &mut Observer| {
            let layer = layer.with_mode(mode);
            let x = common::random_data(rng, batch * d_in, 0, 0.05);
            let xq = ref_x.step(&x, &[batch, d_in], mode).unwrap().y;
            let wq = ref_w.step(&weight, &[d_in, d_out], mode).unwrap().y;
            let got = values(layer.forward(tensor(x, [batch, d_in], &device)).unwrap());
            let want = values(linear(
                tensor(xq, [batch, d_in], &device),
                tensor(wq, [d_in, d_out], &device),
                bias.clone(),
            ));
            assert_eq!(bits(&got), bits(&want), "{mode:?}");
            assert_eq!(
                &layer.weight_quant.observer().state().unwrap(),
                ref_w.state()
            );
            assert_eq!(
                &layer.input_quant.observer().state().unwrap(),
                ref_x.state()
            );
            layer
        };
        for mode in MODES {
            layer = step(layer, mode, &mut rng, &mut ref_w, &mut ref_x);
        }

        // Checkpoint, then resume in a fresh layer: the same state, the same next step.
        let path = checkpoint(&layer, "linear");
        let resumed = QatLinear::prepare(&qat, float.clone(), &qconfig)
            .unwrap()
            .load_record(burn::store::ModuleRecord::load(&path).unwrap());
        resumed.restore_state().unwrap();
        assert_eq!(
            resumed.weight_quant.observer().state().unwrap(),
            layer.weight_quant.observer().state().unwrap()
        );
        assert_eq!(
            resumed.input_quant.observer().state().unwrap(),
            layer.input_quant.observer().state().unwrap()
        );
        let mut ref_w2 = ref_w.clone();
        let mut ref_x2 = ref_x.clone();
        let (mut rng1, mut rng2) = (Rng::new(99), Rng::new(99));
        step(layer, Mode::Qat, &mut rng1, &mut ref_w, &mut ref_x);
        step(resumed, Mode::Qat, &mut rng2, &mut ref_w2, &mut ref_x2);
        // (burn reads a record's tensors from the file lazily: removed only now.)
        std::fs::remove_file(&path).ok();
    }
}

#[test]
fn qat_linear_with_lsq_starts_from_calibration_and_learns_as_the_reference() {
    let mut rng = Rng::new(59);
    for qat in devices() {
        let device = qat.autodiff();
        let (d_in, d_out, batch) = (40usize, 6usize, 8usize);
        let float = LinearConfig::new(d_in, d_out).init(&device);
        let qconfig = QConfig::lsq_int8();
        let (lsq_w, lsq_x) = qconfig.learned.clone().unwrap();
        let lsq_w = lsq_w.with_granularity(Granularity::per_channel(1));
        let mut layer = QatLinear::prepare(&qat, float.clone(), &qconfig).unwrap();
        for _ in 0..2 {
            let x = common::random_data(&mut rng, batch * d_in, 0, 0.05);
            layer = layer.with_mode(Mode::Calibrate);
            let _ = values(layer.forward(tensor(x, [batch, d_in], &device)).unwrap());
        }
        let mut layer = layer.start_learning().unwrap().with_mode(Mode::Qat);
        let calibrated_w = layer.weight_quant.observer().state().unwrap();
        let calibrated_x = layer.input_quant.observer().state().unwrap();
        let scale_w = values(layer.weight_quant.scale.as_ref().unwrap().val());
        let zp_x = values(layer.input_quant.zero_point.as_ref().unwrap().val());
        assert_eq!(bits(&scale_w), bits(&calibrated_w.scales));
        assert_eq!(
            zp_x,
            calibrated_x
                .zero_points
                .iter()
                .map(|&z| z as f32)
                .collect::<Vec<_>>()
        );

        let mut optimizer = SgdConfig::new().init();
        for step in 0..2 {
            let params = |q: &fakequant_burn::QatQuantizer| {
                (
                    values(q.scale.as_ref().unwrap().val()),
                    values(q.zero_point.as_ref().unwrap().val()),
                )
            };
            let (sw, zw) = params(&layer.weight_quant);
            let (sx, zx) = params(&layer.input_quant);
            let x = common::random_data(&mut rng, batch * d_in, 0, 0.05);
            let xq = Lsq::new(lsq_x.clone(), &sx, &zx)
                .unwrap()
                .forward(&x, &[batch, d_in])
                .unwrap()
                .y;
            let current_w = values(layer.linear.weight.val());
            let wq = Lsq::new(lsq_w.clone(), &sw, &zw)
                .unwrap()
                .forward(&current_w, &[d_in, d_out])
                .unwrap()
                .y;
            let y = layer.forward(tensor(x, [batch, d_in], &device)).unwrap();
            let want = linear(
                tensor(xq, [batch, d_in], &device),
                tensor(wq, [d_in, d_out], &device),
                layer.linear.bias.as_ref().map(|b| b.val()),
            );
            assert_eq!(bits(&values(y.clone())), bits(&values(want)), "step {step}");
            let grads = GradientsParams::from_grads(y.powi_scalar(2).mean().backward(), &layer);
            let before = values(layer.weight_quant.scale.as_ref().unwrap().val());
            layer = optimizer.step(0.1, layer, grads);
            let after = values(layer.weight_quant.scale.as_ref().unwrap().val());
            assert_ne!(
                bits(&before),
                bits(&after),
                "the optimizer moved the weight scales"
            );
        }

        // The learned parameters are in the record.
        let path = checkpoint(&layer, "lsq");
        let resumed = QatLinear::prepare(&qat, float.clone(), &qconfig)
            .unwrap()
            .start_learning()
            .unwrap()
            .load_record(burn::store::ModuleRecord::load(&path).unwrap())
            .with_mode(Mode::Qat);
        resumed.restore_state().unwrap();
        let x = common::random_data(&mut rng, batch * d_in, 0, 0.05);
        let a = values(
            layer
                .forward(tensor(x.clone(), [batch, d_in], &device))
                .unwrap(),
        );
        let b = values(resumed.forward(tensor(x, [batch, d_in], &device)).unwrap());
        assert_eq!(bits(&a), bits(&b));
        std::fs::remove_file(&path).ok();
    }
}

#[test]
fn qat_conv2d_follows_the_reference_in_every_mode() {
    let mut rng = Rng::new(61);
    for qat in devices() {
        let device = qat.autodiff();
        let conv = Conv2dConfig::new([3, 4], [3, 3])
            .with_padding(PaddingConfig2d::Same)
            .init(&device);
        let qconfig = QConfig::statistics_int8();
        let mut layer = QatConv2d::prepare(&qat, conv.clone(), &qconfig).unwrap();
        let wshape = [4usize, 3, 3, 3];
        let xshape = [2usize, 3, 9, 9];
        let weight = values(conv.weight.val());
        let mut ref_w = Observer::new(qconfig.weight.clone(), &wshape).unwrap();
        let mut ref_x = Observer::new(qconfig.input.clone(), &xshape).unwrap();
        for mode in MODES {
            layer = layer.with_mode(mode);
            let n: usize = xshape.iter().product();
            let x = common::random_data(&mut rng, n, 0, 0.05);
            let xq = ref_x.step(&x, &xshape, mode).unwrap().y;
            let wq = ref_w.step(&weight, &wshape, mode).unwrap().y;
            let got = values(layer.forward(tensor(x, xshape, &device)).unwrap());
            let want = values(conv2d(
                tensor(xq, xshape, &device),
                tensor(wq, wshape, &device),
                conv.bias.as_ref().map(|b| b.val()),
                ConvOptions::new_with_padding([1, 1], [(1, 1), (1, 1)], [1, 1], 1),
            ));
            assert_eq!(bits(&got), bits(&want), "{mode:?}");
        }
    }
}
