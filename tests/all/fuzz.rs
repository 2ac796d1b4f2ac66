//! Fuzzing every level of the API: the reference itself, host slices, device tensors and
//! recording into a caller's encoder, with random shapes, offsets, lengths, element types,
//! parameters (scales and zero points anywhere, bit widths, axes, granularities) and aliasing.
//!
//! For every case a call returns `Ok` with the reference's bits (outputs, masks, observer states,
//! LSQ parameters and gradients) or returns `Err`; it never panics, aborts or hangs. Where a
//! documented rule makes the input invalid, `Err` is required; where the reference accepts the
//! input, the device may refuse it only as `TooLarge` (the one documented reason).
//!
//! Each case draws from its own seed, printed with the case's parameters on failure. To rerun one
//! case alone: `FAKEQUANT_FUZZ_CASE=<index> cargo test --test all <test name>`.

use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fakequant::reference::float_quant::fake_quant_float;
use fakequant::reference::histogram::HistogramObserver;
use fakequant::reference::{self, dynamic::Dynamic, lsq::Lsq, observer::Observer};
use fakequant::{
    Averaging, CalibrationMethod, DType, DispatchLimits, DynamicConfig, DynamicScheme, Element,
    ElementFormat, Error, FakeQuant, FloatQuantConfig, FloatScaling, GpuContext, GpuDynamic,
    GradScale, Granularity, HistogramConfig, HistogramDomain, LsqConfig, MinMax, Mode, MxScaleRule,
    ObserverConfig, ObserverState, PackedMask, QScheme, QuantParams, QuantRange, Rounding,
    TensorBinding,
};
use half::{bf16, f16};
use wgpu::util::DeviceExt;

use crate::common::{
    assert_bits_eq, assert_dynamic_eq, assert_mask_eq, assert_minmax_eq, assert_state_eq, contexts,
    Rng,
};

const SEED: u64 = 0xf022_5eed;
/// A case that takes this long is hung: the slowest ones take well under a second.
const STALL: Duration = Duration::from_secs(120);

// Cases per adapter (the reference's are CPU only). Sized so that the module stays well under a
// minute in a debug build on llvmpipe and lavapipe.
const REFERENCE_CASES: usize = 400;
const HOST_CASES: usize = 120;
const DEVICE_CASES: usize = 120;
const RECORD_CASES: usize = 120;
const ALIASING_CASES: usize = 60;

// ---------------------------------------------------------------------------------------------
// The harness: each case on a worker thread, inside catch_unwind, watched for progress.

/// What the running case has drawn so far: the failure message names it.
#[derive(Clone, Default)]
struct Case(Arc<Mutex<String>>);

impl Case {
    fn note(&self, what: impl std::fmt::Display) {
        if let Ok(mut s) = self.0.lock() {
            let _ = write!(s, "; {what}");
        }
    }

    fn set(&self, text: String) {
        if let Ok(mut s) = self.0.lock() {
            *s = text;
        }
    }

    fn text(&self) -> String {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

enum Progress {
    Finished(Option<String>),
    Done,
}

fn case_seed(name: &str, index: usize) -> u64 {
    // FNV-1a of the name: each test draws its own stream, stable across runs and platforms.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    SEED ^ h ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}

/// Runs `total` cases of `body` on a worker thread; case `i` draws from the seed of `i % period`
/// (the same case on every adapter). The test thread waits for progress: a case that does not
/// finish within `STALL` fails the test naming it, whatever it is stuck in.
fn run_cases(
    name: &'static str,
    period: usize,
    total: usize,
    body: impl Fn(usize, &mut Rng, &Case) + Send + 'static,
) {
    let only: Option<usize> = std::env::var("FAKEQUANT_FUZZ_CASE")
        .ok()
        .and_then(|v| v.parse().ok());
    let current = Case::default();
    let worker_case = current.clone();
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    std::thread::Builder::new()
        .name(format!("fuzz {name}"))
        .spawn(move || {
            for i in 0..total {
                if only.is_some_and(|o| o != i % period) {
                    continue;
                }
                let seed = case_seed(name, i % period);
                worker_case.set(format!("{name} case {} (seed {seed:#x})", i % period));
                let mut rng = Rng::new(seed);
                let outcome = catch_unwind(AssertUnwindSafe(|| body(i, &mut rng, &worker_case)));
                let failure = outcome
                    .err()
                    .map(|p| format!("{}\n    => {}", worker_case.text(), panic_message(&*p)));
                let _ = tx.send(Progress::Finished(failure));
            }
            let _ = tx.send(Progress::Done);
        })
        .expect("spawning the fuzz worker");
    let mut failures = Vec::new();
    let mut finished = 0usize;
    let mut deadline = Instant::now() + STALL;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Progress::Finished(failure)) => {
                finished += 1;
                deadline = Instant::now() + STALL;
                failures.extend(failure);
            }
            Ok(Progress::Done) => break,
            Err(RecvTimeoutError::Timeout) => panic!(
                "{name}: no case finished within {STALL:?}; hung in: {}",
                current.text()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("{name}: the worker thread died in: {}", current.text())
            }
        }
    }
    eprintln!(
        "{name}: {finished} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // How many cases failed for each reason (the message up to its first colon), so that one
    // known failure does not hide another.
    let mut reasons: Vec<(String, usize)> = Vec::new();
    // The first case of each reason, then the first few others.
    let mut shown: Vec<&String> = Vec::new();
    for f in &failures {
        let reason = f.split("=> ").nth(1).unwrap_or_default();
        let reason = reason.split(':').next().unwrap_or_default().to_string();
        match reasons.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, count)) => *count += 1,
            None => {
                reasons.push((reason, 1));
                shown.push(f);
            }
        }
    }
    for f in &failures {
        if shown.len() >= 12 {
            break;
        }
        if !shown.contains(&f) {
            shown.push(f);
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {finished} cases failed, by reason: {reasons:?}\n{}",
        failures.len(),
        shown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `cases` cases of `body` on every adapter, each on a context with random tuning knobs.
fn run_gpu_cases(name: &'static str, cases: usize, body: fn(&GpuContext, &mut Rng, &Case)) {
    // On the test thread: with FAKEQUANT_REQUIRE_GPU=1 a missing adapter fails here.
    let adapters = contexts().len();
    if adapters == 0 {
        eprintln!("note: no GPU adapter present; {name} is skipped");
        return;
    }
    run_cases(name, cases, adapters * cases, move |i, rng, case| {
        let all = contexts();
        let base = &all[i / cases];
        case.note(base.adapter_name());
        let ctx = tuned(base, rng, case);
        body(&ctx, rng, case);
    });
}

/// The same device with lowered dispatch limits (several bindings, the grid-stride loop) or
/// another wide-kernel or dynamic-run setting, some of the time: the results must not change.
fn tuned(base: &GpuContext, rng: &mut Rng, case: &Case) -> GpuContext {
    let mut ctx = base.clone();
    if rng.below(3) == 0 {
        let limits = DispatchLimits {
            max_binding_bytes: (1 << 18) * (1 + rng.below(2) as u64),
            max_workgroups: 1 + rng.below(3) as u32,
        };
        case.note(format!("{limits:?}"));
        ctx = ctx
            .with_dispatch_limits(limits)
            .expect("legal lowered limits");
    }
    if rng.below(3) == 0 {
        let groups = 1 + rng.below(4) as u32;
        case.note(format!("wide groups per thread {groups}"));
        ctx = ctx
            .with_wide_groups_per_thread(groups)
            .expect("legal setting");
    }
    if rng.below(3) == 0 {
        let run = 32 << rng.below(8);
        case.note(format!("dynamic run {run}"));
        ctx = ctx.with_dynamic_run(run).expect("legal setting");
    }
    ctx
}

// ---------------------------------------------------------------------------------------------
// Assertions.

fn variant(e: &Error) -> String {
    format!("{e:?}")
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_string()
}

fn expect_err<V>(what: &str, r: fakequant::Result<V>) {
    assert!(r.is_err(), "{what}: an invalid call returned Ok");
}

/// The device may refuse what the reference accepts only for size (`TooLarge`): `None` then.
fn device_ok<V>(what: &str, r: fakequant::Result<V>) -> Option<V> {
    match r {
        Ok(v) => Some(v),
        Err(Error::TooLarge { .. }) => None,
        Err(e) => panic!("{what}: the reference accepts this call but the device returned: {e}"),
    }
}

fn assert_elems_eq<T: Element>(what: &str, expected: &[T], got: &[T]) {
    assert_eq!(expected.len(), got.len(), "{what}: length");
    let bad: Vec<String> = (0..expected.len())
        .filter(|&i| expected[i].to_bits_u32() != got[i].to_bits_u32())
        .take(6)
        .map(|i| {
            format!(
                "[{i}] expected {:#x} got {:#x}",
                expected[i].to_bits_u32(),
                got[i].to_bits_u32()
            )
        })
        .collect();
    assert!(bad.is_empty(), "{what}: values differ: {}", bad.join(", "));
}

// ---------------------------------------------------------------------------------------------
// Drawing cases.

macro_rules! with_dtype {
    ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F16 => $f::<f16>($($arg),*),
            DType::Bf16 => $f::<bf16>($($arg),*),
        }
    };
}

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::Bf16];

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.below(items.len())]
}

fn other_dtype(rng: &mut Rng, dtype: DType) -> DType {
    let others: Vec<DType> = DTYPES.iter().copied().filter(|&d| d != dtype).collect();
    pick(rng, &others)
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Rank 0 to 4, dimensions mostly small, some 0, some long; at most `max` elements.
fn draw_shape(rng: &mut Rng, max: usize) -> Vec<usize> {
    loop {
        let rank = rng.below(5);
        let shape: Vec<usize> = (0..rank)
            .map(|_| match rng.below(16) {
                0 => 0,
                1 => 1 + rng.below(400),
                2..=5 => 1,
                6 => 32 + rng.below(3) - 1,
                _ => 1 + rng.below(12),
            })
            .collect();
        if numel(&shape) <= max {
            return shape;
        }
    }
}

/// Per tensor, an axis of the shape, or (rarely) one past it.
fn draw_axis(rng: &mut Rng, rank: usize) -> Option<usize> {
    match rng.below(10) {
        0..=3 => None,
        9 => Some(rank + rng.below(2)),
        _ if rank == 0 => None,
        _ => Some(rng.below(rank)),
    }
}

/// The divisors of `n` (none of 0).
fn divisors(n: usize) -> Vec<usize> {
    (1..=n).filter(|d| n.is_multiple_of(*d)).collect()
}

/// Per tensor, per channel (as [`draw_axis`]), per group or per token for `shape`. Groups are
/// mostly legal (the last axis longer than 1, a size that divides it), sometimes strided (an axis
/// followed by longer ones) or not legal: size 0, a size that does not divide the axis, an axis
/// past the shape.
fn draw_granularity(rng: &mut Rng, shape: &[usize]) -> Granularity {
    let rank = shape.len();
    match rng.below(16) {
        0..=9 => match draw_axis(rng, rank) {
            None => Granularity::PerTensor,
            Some(a) => Granularity::per_channel(a),
        },
        10..=12 => {
            // The last axis longer than 1 (or any axis of a shape of ones).
            let last = shape.iter().rposition(|&d| d > 1);
            let axis = match last {
                Some(a) => a,
                None if rank > 0 => rng.below(rank),
                None => 0,
            };
            let len = shape.get(axis).copied().unwrap_or(1);
            let size = match divisors(len).as_slice() {
                [] => 1 + rng.below(4),
                ds => pick(rng, ds),
            };
            Granularity::per_group(axis, size)
        }
        13 => {
            let axis = if rank > 0 && rng.below(5) != 0 {
                rng.below(rank)
            } else {
                rank + rng.below(2)
            };
            let len = shape.get(axis).copied().unwrap_or(4);
            let size = match rng.below(4) {
                0 => 0,
                1 => len + 1,
                2 => 2 + rng.below(len.max(2)),
                _ => 1 + rng.below(len.max(1)),
            };
            Granularity::per_group(axis, size)
        }
        _ => Granularity::PerToken,
    }
}

/// The documented layout rules, written out independently of the library: the number of
/// parameter sets of `len` values of `shape` under `granularity`, or the error the rules give
/// (checked in the documented order: length, axis, group).
fn model_channels(
    granularity: Granularity,
    shape: &[usize],
    len: usize,
) -> Result<usize, &'static str> {
    let n = numel(shape);
    if n != len {
        return Err("LengthMismatch");
    }
    let groups = |axis: usize, size: usize| {
        let Some(&len) = shape.get(axis) else {
            return Err("AxisOutOfRange");
        };
        if size == 0 || !len.is_multiple_of(size) {
            return Err("InvalidGroup");
        }
        Ok(n / size)
    };
    match granularity {
        Granularity::PerTensor => Ok(1),
        Granularity::PerChannel { axis } => shape.get(axis).copied().ok_or("AxisOutOfRange"),
        Granularity::PerGroup { axis, size } => groups(axis, size),
        Granularity::PerToken => match shape.last() {
            None => Ok(1),
            Some(&row) => groups(shape.len() - 1, row),
        },
        _ => unreachable!("a granularity the fuzz does not draw"),
    }
}

/// The elements before, in and after the groups of `granularity` on `shape` (outer, inner), when
/// the rules accept it: the device's one-pass kernel takes `outer == 1` and a power-of-two
/// `inner` from 32 to 4096.
fn model_outer_inner(granularity: Granularity, shape: &[usize]) -> (usize, usize) {
    match granularity {
        Granularity::PerTensor => (numel(shape), 1),
        Granularity::PerChannel { axis } => (numel(&shape[..axis]), numel(&shape[axis + 1..])),
        Granularity::PerGroup { size, .. } => (1, size),
        Granularity::PerToken => (1, shape.last().copied().unwrap_or(1)),
        _ => unreachable!("a granularity the fuzz does not draw"),
    }
}

/// Mostly the shape's length; sometimes one more or one less.
fn draw_len(rng: &mut Rng, n: usize) -> usize {
    match rng.below(12) {
        0 => n + 1,
        1 if n > 0 => n - 1,
        _ => n,
    }
}

fn legal_scale(s: f32) -> bool {
    s.is_normal() && s > 0.0 && (1.0f32 / s).is_normal()
}

fn draw_legal_scale(rng: &mut Rng) -> f32 {
    match rng.below(10) {
        0 => 2f32.powi(-126),
        1 => 2f32.powi(126),
        2 => 2f32.powi(rng.below(41) as i32 - 20),
        _ => 2f64.powf(rng.uniform(-24.0, 12.0) as f64) as f32,
    }
}

fn draw_illegal_scale(rng: &mut Rng) -> f32 {
    match rng.below(10) {
        0 => 0.0,
        1 => -0.0,
        2 => -draw_legal_scale(rng),
        3 => f32::from_bits(0x7fc0_0000 | rng.next_u32() & 0x803f_ffff),
        4 => f32::INFINITY,
        5 => f32::NEG_INFINITY,
        6 => f32::from_bits(1 + rng.next_u32() % 0x007f_ffff),
        7 => f32::MAX,
        8 => 2f32.powi(127),
        _ => f32::from_bits(0x7f80_0001),
    }
}

/// Any scale, for LSQ, which takes every value and clamps it.
fn draw_any_scale(rng: &mut Rng) -> f32 {
    match rng.below(4) {
        0 => draw_illegal_scale(rng),
        1 => rng.any_bits(),
        _ => draw_legal_scale(rng),
    }
}

/// A range from every constructor, with bit widths and bounds that are sometimes illegal; the
/// constructor's verdict is checked against the documented rule.
fn draw_range(rng: &mut Rng, case: &Case) -> Option<QuantRange> {
    let bits = rng.below(20) as u32;
    let fits = |qmin: i32, qmax: i32| {
        qmin < qmax && qmin >= -32768 && qmax <= 65535 && (qmax as i64 - qmin as i64) <= 65535
    };
    let (what, r, legal) = match rng.below(6) {
        0 => (
            format!("signed({bits})"),
            QuantRange::signed(bits),
            (2..=16).contains(&bits),
        ),
        1 => (
            format!("unsigned({bits})"),
            QuantRange::unsigned(bits),
            (2..=16).contains(&bits),
        ),
        2 => (
            format!("signed_narrow({bits})"),
            QuantRange::signed_narrow(bits),
            (2..=16).contains(&bits),
        ),
        3 => {
            let qmin = rng.below(80_000) as i32 - 40_000;
            let qmax = qmin + rng.below(70_000) as i32 - 100;
            (
                format!("new({qmin}, {qmax})"),
                QuantRange::new(qmin, qmax),
                fits(qmin, qmax),
            )
        }
        4 => {
            let qmin = -(rng.below(300) as i32);
            let qmax = rng.below(300) as i32;
            (
                format!("new({qmin}, {qmax})"),
                QuantRange::new(qmin, qmax),
                fits(qmin, qmax),
            )
        }
        _ => {
            let r = pick(
                rng,
                &[
                    QuantRange::INT8,
                    QuantRange::INT8_NARROW,
                    QuantRange::UINT8,
                    QuantRange::INT4,
                    QuantRange::UINT4,
                    QuantRange::INT16,
                ],
            );
            (format!("{r:?}"), Ok(r), true)
        }
    };
    case.note(format!("range {what}"));
    match r {
        Ok(r) => {
            assert!(legal, "{what}: an illegal range was accepted");
            Some(r)
        }
        Err(e) => {
            assert!(!legal, "{what}: a legal range was refused: {e}");
            assert!(
                matches!(
                    e,
                    Error::InvalidBitWidth { .. } | Error::InvalidRange { .. }
                ),
                "{what}: {e:?}"
            );
            None
        }
    }
}

/// A range that contains zero (observers, LSQ) most of the time.
fn draw_zero_range(rng: &mut Rng, case: &Case) -> Option<QuantRange> {
    if rng.below(8) == 0 {
        return draw_range(rng, case);
    }
    let bits = 2 + rng.below(15) as u32;
    let r = match rng.below(3) {
        0 => QuantRange::signed(bits),
        1 => QuantRange::unsigned(bits),
        _ => QuantRange::signed_narrow(bits),
    }
    .expect("2 to 16 bits");
    case.note(format!("range {r:?}"));
    Some(r)
}

fn draw_zero_point(rng: &mut Rng, range: QuantRange) -> i32 {
    let (qmin, qmax) = (range.qmin(), range.qmax());
    match rng.below(12) {
        0 => qmin - 1 - rng.below(5) as i32,
        1 => qmax + 1 + rng.below(5) as i32,
        2 => qmin,
        3 => qmax,
        _ => qmin + rng.below((qmax - qmin + 1) as usize) as i32,
    }
}

/// Learnable zero points take any f32: NaN, infinities, fractions, far outside the range.
fn draw_any_zero_point(rng: &mut Rng, range: QuantRange) -> f32 {
    match rng.below(10) {
        0 => f32::NAN,
        1 => pick(rng, &[f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30]),
        2 => rng.uniform(range.qmin() as f64 - 10.0, range.qmax() as f64 + 10.0),
        3 => (rng.below(40) as f32 - 20.0) + 0.5,
        4 => rng.any_bits(),
        _ => draw_zero_point(rng, range) as f32,
    }
}

fn draw_rounding(rng: &mut Rng) -> Rounding {
    pick(rng, &[Rounding::Reciprocal, Rounding::Quotient])
}

/// A fake-quant for `shape`: per tensor or per channel along a random axis, a random range, legal
/// scales and zero points with now and then an illegal one. `FakeQuant::new`'s verdict is
/// checked against the documented rules; `None` when it (rightly) refuses.
fn draw_op(rng: &mut Rng, case: &Case, shape: &[usize]) -> Option<(FakeQuant, Granularity)> {
    let range = draw_range(rng, case)?;
    let granularity = draw_granularity(rng, shape);
    let channels = match (
        granularity,
        model_channels(granularity, shape, numel(shape)),
    ) {
        (Granularity::PerTensor, _) => 1,
        (_, Ok(c)) if rng.below(10) != 0 => c,
        (_, Ok(c)) => c + 1,
        (_, Err(_)) => 1 + rng.below(4),
    };
    let mut scales: Vec<f32> = (0..channels).map(|_| draw_legal_scale(rng)).collect();
    let mut zero_points: Vec<i32> = (0..channels)
        .map(|_| range.qmin() + rng.below((range.qmax() - range.qmin() + 1) as usize) as i32)
        .collect();
    if channels > 0 && rng.below(6) == 0 {
        let c = rng.below(channels);
        scales[c] = draw_illegal_scale(rng);
    }
    if channels > 0 && rng.below(6) == 0 {
        let c = rng.below(channels);
        zero_points[c] = draw_zero_point(rng, range);
    }
    let legal = channels > 0
        && scales.iter().all(|&s| legal_scale(s))
        && zero_points
            .iter()
            .all(|&z| (range.qmin()..=range.qmax()).contains(&z));
    let params = match granularity {
        Granularity::PerTensor => QuantParams::per_tensor(scales[0], zero_points[0]),
        Granularity::PerChannel { axis } => {
            QuantParams::per_channel(axis, scales.clone(), zero_points.clone())
        }
        Granularity::PerGroup { axis, size } => {
            QuantParams::per_group(axis, size, scales.clone(), zero_points.clone())
        }
        g => QuantParams::new(g, scales.clone(), zero_points.clone()),
    };
    let rounding = draw_rounding(rng);
    case.note(format!(
        "{granularity:?}, {channels} channels, {rounding:?}"
    ));
    if channels <= 4 {
        case.note(format!(
            "scales {:?}, zero points {zero_points:?}",
            scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>()
        ));
    }
    match FakeQuant::new(range, params) {
        Ok(op) => {
            assert!(legal, "FakeQuant::new accepted illegal parameters");
            Some((op.with_rounding(rounding), granularity))
        }
        Err(e) => {
            assert!(!legal, "FakeQuant::new refused legal parameters: {e}");
            assert!(
                matches!(
                    e,
                    Error::InvalidScale { .. }
                        | Error::InvalidZeroPoint { .. }
                        | Error::ParamLengthMismatch { .. }
                ),
                "{e:?}"
            );
            None
        }
    }
}

/// The error the layout rules give for `len` values of `shape` with parameters for `params`
/// channels of `granularity` (`None`: no parameters to check), in the documented order (length,
/// axis, group, channel count).
fn layout_error(
    shape: &[usize],
    len: usize,
    granularity: Granularity,
    params: Option<usize>,
) -> Option<&'static str> {
    match model_channels(granularity, shape, len) {
        Err(e) => Some(e),
        Ok(c) if params.is_some_and(|p| p != c) => Some("ChannelCountMismatch"),
        Ok(_) => None,
    }
}

fn draw_value(rng: &mut Rng, scale: f32) -> f32 {
    match rng.below(12) {
        0 => rng.any_bits(),
        1 => pick(
            rng,
            &[
                0.0,
                -0.0,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
                f32::from_bits(0xff81_2345),
                f32::from_bits(1),
                f32::from_bits(0x807f_ffff),
                f32::MAX,
                -f32::MAX,
                65504.0,
                65520.0,
            ],
        ),
        2 => (rng.below(600) as f32 - 300.0) * 0.5 * scale,
        _ => rng.normal() * scale * 2f32.powi(rng.below(12) as i32),
    }
}

/// Values of every kind: normal around `scale`, ties, specials, any bit pattern of `T`.
fn draw_data<T: Element>(rng: &mut Rng, n: usize, scale: f32) -> Vec<T> {
    (0..n)
        .map(|_| {
            if rng.below(16) == 0 {
                let bytes = rng.next_u32().to_le_bytes();
                bytemuck::pod_read_unaligned(&bytes[..T::DTYPE.size() as usize])
            } else {
                T::from_f32(draw_value(rng, scale))
            }
        })
        .collect()
}

fn data_scale(rng: &mut Rng) -> f32 {
    2f32.powi(rng.below(24) as i32 - 12)
}

fn draw_data_scaled<T: Element>(rng: &mut Rng, n: usize) -> Vec<T> {
    let scale = data_scale(rng);
    draw_data(rng, n, scale)
}

fn draw_observer_config(
    rng: &mut Rng,
    case: &Case,
    granularity: Granularity,
) -> Option<ObserverConfig> {
    let range = draw_zero_range(rng, case)?;
    let averaging = match rng.below(8) {
        0 => Averaging::MinMax,
        1 => Averaging::MinMax,
        2 => Averaging::MovingAverage(1.0),
        3 => Averaging::MovingAverage(pick(rng, &[0.0, -0.5, 1.5, f32::NAN, f32::INFINITY])),
        4 => Averaging::MovingAverage(rng.uniform(0.0, 1.0).max(1e-6)),
        _ => Averaging::MovingAverage(0.01),
    };
    let scheme = pick(rng, &[QScheme::Symmetric, QScheme::Affine]);
    let legal = range.qmin() <= 0
        && match averaging {
            Averaging::MovingAverage(c) => c > 0.0 && c <= 1.0,
            Averaging::MinMax => true,
        };
    case.note(format!("observer {scheme:?} {averaging:?} {granularity:?}"));
    let config = match ObserverConfig::new(range, scheme, averaging, granularity) {
        Ok(c) => {
            assert!(legal, "ObserverConfig::new accepted an illegal config");
            c
        }
        Err(e) => {
            assert!(!legal, "ObserverConfig::new refused a legal config: {e}");
            assert!(matches!(e, Error::InvalidObserver(_)), "{e:?}");
            return None;
        }
    };
    let config = config
        .with_power_of_two(rng.below(4) == 0)
        .with_rounding(draw_rounding(rng));
    if rng.below(4) == 0 {
        let eps = pick(
            rng,
            &[
                2f32.powi(-126),
                1e-3,
                0.5,
                0.0,
                f32::from_bits(5),
                f32::NAN,
                2f32.powi(127),
            ],
        );
        case.note(format!("eps {eps:e}"));
        let legal = eps.is_normal() && eps > 0.0 && eps <= 2f32.powi(126);
        return match config.with_eps(eps) {
            Ok(c) => {
                assert!(legal, "with_eps accepted {eps:e}");
                Some(c)
            }
            Err(e) => {
                assert!(!legal, "with_eps refused {eps:e}: {e}");
                None
            }
        };
    }
    Some(config)
}

fn draw_lsq_config(rng: &mut Rng, case: &Case, granularity: Granularity) -> Option<LsqConfig> {
    let range = draw_zero_range(rng, case)?;
    let legal = range.qmin() <= 0 && range.qmax() > 0;
    let config = match LsqConfig::new(range, granularity) {
        Ok(c) => {
            assert!(legal, "LsqConfig::new accepted {range:?}");
            c
        }
        Err(e) => {
            assert!(!legal, "LsqConfig::new refused {range:?}: {e}");
            return None;
        }
    };
    let grad_scale = match rng.below(5) {
        0 => GradScale::Off,
        1 => GradScale::Custom(pick(rng, &[0.5, -3.0, 0.0, f32::NAN, f32::INFINITY])),
        _ => GradScale::Lsq,
    };
    case.note(format!("lsq {granularity:?} {grad_scale:?}"));
    let config = match config.with_grad_scale(grad_scale) {
        Ok(c) => {
            assert!(
                !matches!(grad_scale, GradScale::Custom(g) if !g.is_finite()),
                "a non-finite gradient factor was accepted"
            );
            c
        }
        Err(_) => {
            assert!(matches!(grad_scale, GradScale::Custom(g) if !g.is_finite()));
            return None;
        }
    };
    if rng.below(4) == 0 {
        let eps = pick(rng, &[2f32.powi(-126), 1e-2, 3.0, 0.0, f32::NAN]);
        case.note(format!("eps {eps:e}"));
        return match config.with_eps(eps) {
            Ok(c) => {
                assert!(eps.is_normal() && eps > 0.0, "with_eps accepted {eps:e}");
                Some(c)
            }
            Err(_) => {
                assert!(!(eps.is_normal() && eps > 0.0), "with_eps refused {eps:e}");
                None
            }
        };
    }
    Some(config)
}

/// Learnable parameters for `config` on `shape`: one per channel (sometimes one too many), any
/// values.
fn draw_lsq_params(rng: &mut Rng, config: &LsqConfig, shape: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let channels = config.channels_for(shape).unwrap_or(1 + rng.below(3));
    let count = if rng.below(12) == 0 {
        channels + 1
    } else {
        channels
    };
    let scales = (0..count).map(|_| draw_any_scale(rng)).collect();
    let zero_points = (0..count)
        .map(|_| draw_any_zero_point(rng, config.range()))
        .collect();
    (scales, zero_points)
}

fn draw_mode(rng: &mut Rng) -> Mode {
    pick(rng, &[Mode::Calibrate, Mode::Qat, Mode::Qat, Mode::Frozen])
}

/// A state to load: the reference's own, or one with a broken channel.
fn draw_state(rng: &mut Rng, state: &ObserverState) -> ObserverState {
    let mut s = state.clone();
    let c = rng.below(s.channels().max(1));
    match rng.below(8) {
        0 => s.running.min[c] = f32::NAN,
        1 => {
            s.running.min[c] = 2.0;
            s.running.max[c] = 1.0;
        }
        2 => s.scales[c] = draw_illegal_scale(rng),
        3 => s.zero_points[c] = 70_000,
        4 => s.scales.push(1.0),
        5 => {
            s.running.min[c] = -rng.uniform(0.0, 10.0);
            s.running.max[c] = rng.uniform(0.0, 10.0);
            s.scales[c] = draw_legal_scale(rng);
        }
        _ => {}
    }
    s
}

fn lsq_params_eq(what: &str, cpu: &Lsq, got: (Vec<f32>, Vec<f32>)) {
    assert_bits_eq(&format!("{what}: scales"), &[], cpu.scales(), &got.0);
    assert_bits_eq(
        &format!("{what}: zero points"),
        &[],
        cpu.zero_points(),
        &got.1,
    );
}

// ---------------------------------------------------------------------------------------------
// The reference itself: random lengths everywhere, never a panic.

#[test]
fn fuzz_reference() {
    run_cases(
        "fuzz_reference",
        REFERENCE_CASES,
        REFERENCE_CASES,
        |_, rng, case| {
            let dtype = pick(rng, &DTYPES);
            case.note(format!("{dtype:?}"));
            with_dtype!(dtype, reference_case(rng, case));
        },
    );
}

fn reference_case<T: Element>(rng: &mut Rng, case: &Case) {
    let shape = draw_shape(rng, 3000);
    let n = numel(&shape);
    let len = draw_len(rng, n);
    case.note(format!("shape {shape:?}, len {len}"));
    let x: Vec<T> = draw_data_scaled(rng, len);
    match rng.below(9) {
        0 => {
            let Some((op, granularity)) = draw_op(rng, case, &shape) else {
                return;
            };
            let params = op.params().scales().len();
            let r = reference::fake_quant(&op, &x, &shape);
            match (layout_error(&shape, len, granularity, Some(params)), r) {
                (Some(expected), Err(e)) => assert_eq!(variant(&e), expected, "{e}"),
                (Some(expected), Ok(_)) => {
                    panic!("fake_quant accepted a call that breaks {expected}")
                }
                (None, Err(e)) => panic!("fake_quant refused a legal call: {e}"),
                (None, Ok(out)) => {
                    assert_eq!(out.y.len(), len);
                    assert_eq!(out.mask.len(), len);
                }
            }
        }
        1 => {
            let mask_len = draw_len(rng, len);
            let bits: Vec<bool> = (0..mask_len).map(|_| rng.below(2) == 0).collect();
            let r = reference::ste_backward(&x, &PackedMask::from_bools(&bits));
            if mask_len == len {
                assert_eq!(r.expect("lengths agree").len(), len);
            } else {
                assert!(matches!(r, Err(Error::LengthMismatch { .. })), "{r:?}");
            }
        }
        2 => {
            let words_len = draw_len(rng, PackedMask::words_for(len));
            let words: Vec<u32> = (0..words_len)
                .map(|_| rng.next_u32() >> rng.below(33).min(31))
                .collect();
            let stray = words_len == PackedMask::words_for(len)
                && !len.is_multiple_of(32)
                && words[len / 32] >> (len % 32) != 0;
            let r = PackedMask::from_words(words, len);
            assert_eq!(
                r.is_ok(),
                words_len == PackedMask::words_for(len) && !stray,
                "{r:?}"
            );
        }
        3 => {
            let granularity = draw_granularity(rng, &shape);
            let Some(config) = draw_observer_config(rng, case, granularity) else {
                return;
            };
            let r = reference::observer::batch_min_max(&config, &x, &shape);
            match model_channels(granularity, &shape, len) {
                Err(expected) => assert_eq!(variant(&r.expect_err("invalid layout")), expected),
                Ok(channels) => {
                    let stats = r.expect("valid layout");
                    assert_eq!((stats.min.len(), stats.max.len()), (channels, channels));
                    // Merging and folding with statistics of random lengths.
                    let other_len = draw_len(rng, channels);
                    let other = MinMax {
                        min: vec![-1.0; other_len],
                        max: vec![1.0; draw_len(rng, other_len)],
                    };
                    let consistent = other.min.len() == other.max.len();
                    let merged = reference::observer::merge(&stats, &other);
                    assert_eq!(
                        merged.is_ok(),
                        consistent && other_len == channels,
                        "{merged:?}"
                    );
                    let mut running = MinMax::empty(channels);
                    let r = reference::observer::update_running(&config, &mut running, &other);
                    assert_eq!(r.is_ok(), consistent && other_len == channels, "{r:?}");
                    let r = reference::observer::update_running(&config, &mut running, &stats);
                    assert!(r.is_ok(), "{r:?}");
                }
            }
        }
        4 => {
            let granularity = draw_granularity(rng, &shape);
            let Some(config) = draw_observer_config(rng, case, granularity) else {
                return;
            };
            let obs_shape = if rng.below(4) == 0 {
                draw_shape(rng, 3000)
            } else {
                shape.clone()
            };
            let Ok(mut observer) = Observer::new(config.clone(), &obs_shape) else {
                return;
            };
            let mode = draw_mode(rng);
            let r = observer.step(&x, &shape, mode);
            let params = observer.state().channels();
            match layout_error(&shape, len, granularity, Some(params)) {
                Some(expected) => assert_eq!(variant(&r.expect_err("invalid layout")), expected),
                None => assert_eq!(r.expect("valid layout").y.len(), len),
            }
        }
        5 | 6 => {
            let x: Vec<T> = match model_outer_inner(Granularity::PerToken, &shape) {
                (1, inner) if rng.below(2) == 0 => draw_dynamic_data(rng, len, inner),
                _ => x,
            };
            reference_dynamic(rng, case, &shape, &x);
        }
        _ => {
            let granularity = draw_granularity(rng, &shape);
            let Some(config) = draw_lsq_config(rng, case, granularity) else {
                return;
            };
            let (scales, zero_points) = draw_lsq_params(rng, &config, &shape);
            let channels = scales.len();
            let dy: Vec<T> = {
                let l = draw_len(rng, len);
                draw_data(rng, l, 1.0)
            };
            let layout = layout_error(&shape, len, granularity, None);
            let r = reference::lsq::forward(&config, &x, &shape, &scales, &zero_points);
            let param_count_ok =
                model_channels(granularity, &shape, numel(&shape)) == Ok(channels) && channels > 0;
            match (layout, param_count_ok) {
                (None, true) => assert_eq!(r.expect("valid call").y.len(), len),
                _ => expect_err("lsq::forward", r),
            }
            let r = reference::lsq::backward(&config, &x, &dy, &shape, &scales, &zero_points);
            match (layout, param_count_ok && dy.len() == len) {
                // No channel at all (an axis of size 0, no parameters): `forward` refuses it,
                // `backward` accepts it (and returns empty gradients); either is no panic.
                (None, false) if channels == 0 && dy.len() == len => {}
                (None, true) => {
                    let g = r.expect("valid call");
                    assert_eq!(
                        (g.dx.len(), g.dscale.len(), g.dzero_point.len()),
                        (len, channels, channels)
                    );
                }
                _ => expect_err("lsq::backward", r),
            }
            let r = reference::lsq::init_scales(&config, &x, &shape);
            match model_channels(granularity, &shape, len) {
                Err(expected) => assert_eq!(variant(&r.expect_err("invalid layout")), expected),
                Ok(c) => assert_eq!(r.expect("valid layout").len(), c),
            }
            if let Ok(mut lsq) = Lsq::new(config, &scales, &zero_points) {
                let (s, z) = (draw_len(rng, channels), draw_len(rng, channels));
                let r = lsq.load_params(&vec![1.0; s], &vec![0.0; z]);
                assert_eq!(r.is_ok(), s == channels && z == channels, "{r:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Host level.

#[test]
fn fuzz_host_level() {
    run_gpu_cases("fuzz_host_level", HOST_CASES, |ctx, rng, case| {
        let dtype = pick(rng, &DTYPES);
        case.note(format!("{dtype:?}"));
        match rng.below(7) {
            0 => with_dtype!(dtype, host_fake_quant(ctx, rng, case)),
            1 => with_dtype!(dtype, host_observer(ctx, rng, case)),
            2 => with_dtype!(dtype, host_dynamic(ctx, rng, case)),
            3 => with_dtype!(dtype, host_float(ctx, rng, case)),
            4 => with_dtype!(dtype, host_histogram(ctx, rng, case)),
            _ => with_dtype!(dtype, host_lsq(ctx, rng, case)),
        }
    });
}

fn host_fake_quant<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    // Now and then a tensor over one lowered binding (2^16 f32 elements), for the chunked path.
    let max = if rng.below(25) == 0 { 140_000 } else { 3000 };
    let shape = draw_shape(rng, max);
    let len = draw_len(rng, numel(&shape));
    case.note(format!("fake_quant shape {shape:?}, len {len}"));
    let Some((op, granularity)) = draw_op(rng, case, &shape) else {
        return;
    };
    let x: Vec<T> = draw_data(rng, len, op.params().scales()[0] * 40.0);
    let expected = reference::fake_quant(&op, &x, &shape);
    let got = ctx.fake_quant(&op, &x, &shape);
    let expected = match (
        layout_error(&shape, len, granularity, Some(op.params().scales().len())),
        expected,
    ) {
        (Some(rule), Err(e)) => {
            assert_eq!(variant(&e), rule, "reference: {e}");
            let g = got.expect_err("the device accepted an invalid layout");
            assert_eq!(variant(&g), rule, "device: {g}");
            return;
        }
        (None, Ok(expected)) => expected,
        (rule, r) => panic!("reference: {r:?} where the rules say {rule:?}"),
    };
    let Some(got) = device_ok("fake_quant", got) else {
        return;
    };
    assert_elems_eq("y", &expected.y, &got.y);
    assert_mask_eq("mask", &expected.mask, &got.mask);
    let dy: Vec<T> = {
        let l = draw_len(rng, len);
        draw_data(rng, l, 1.0)
    };
    case.note(format!("dy len {}", dy.len()));
    let expected_dx = reference::ste_backward(&dy, &expected.mask);
    let got_dx = ctx.ste_backward(&dy, &expected.mask);
    match expected_dx {
        Err(e) => {
            assert_eq!(variant(&e), "LengthMismatch");
            expect_err("ste_backward", got_dx);
        }
        Ok(e) => {
            if let Some(g) = device_ok("ste_backward", got_dx) {
                assert_elems_eq("dx", &e, &g);
            }
        }
    }
}

fn host_observer<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let shape = draw_shape(rng, 3000);
    let granularity = draw_granularity(rng, &shape);
    case.note(format!("observer shape {shape:?}"));
    let Some(config) = draw_observer_config(rng, case, granularity) else {
        return;
    };
    let gpu = ctx.create_observer(&config, &shape);
    let mut cpu = match Observer::new(config.clone(), &shape) {
        Ok(cpu) => cpu,
        Err(e) => {
            expect_err(&format!("create_observer (reference: {e})"), gpu);
            return;
        }
    };
    let Some(gpu) = device_ok("create_observer", gpu) else {
        return;
    };
    for step in 0..1 + rng.below(4) {
        let shape = if rng.below(6) == 0 {
            draw_shape(rng, 3000)
        } else {
            shape.clone()
        };
        let len = draw_len(rng, numel(&shape));
        let x: Vec<T> = draw_data_scaled(rng, len);
        let what = rng.below(7);
        case.note(format!(
            "step {step}: op {what}, shape {shape:?}, len {len}"
        ));
        match what {
            0 => {
                let expected = cpu.observe(&x, &shape);
                let got = gpu.observe(&x, &shape);
                if expected.is_err() {
                    expect_err("observe", got);
                } else if device_ok("observe", got).is_none() {
                    return;
                }
            }
            1 => {
                let expected = reference::observer::batch_min_max(&config, &x, &shape);
                let got = gpu.batch_min_max(&x, &shape);
                match expected {
                    Ok(e) if e.channels() == gpu.channels() => {
                        if let Some(g) = device_ok("batch_min_max", got) {
                            assert_minmax_eq("batch min/max", &e, &g);
                        }
                    }
                    _ => expect_err("batch_min_max", got),
                }
            }
            2 => {
                let state = draw_state(rng, cpu.state());
                let expected = cpu.load_state(state.clone());
                let got = gpu.load_state(&state);
                assert_eq!(
                    expected.is_ok(),
                    got.is_ok(),
                    "load_state: {expected:?} vs {got:?}"
                );
            }
            _ => {
                let mode = draw_mode(rng);
                case.note(format!("{mode:?}"));
                let expected = cpu.step(&x, &shape, mode);
                let got = gpu.step(&x, &shape, mode);
                match expected {
                    Err(_) => expect_err("step", got),
                    Ok(e) => {
                        let Some(g) = device_ok("step", got) else {
                            return;
                        };
                        assert_elems_eq("y", &e.y, &g.y);
                        assert_mask_eq("mask", &e.mask, &g.mask);
                    }
                }
            }
        }
        let state = gpu.read_state().expect("read_state");
        assert_state_eq("state", cpu.state(), &state);
    }
}

fn host_lsq<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let shape = draw_shape(rng, 3000);
    let granularity = draw_granularity(rng, &shape);
    case.note(format!("lsq shape {shape:?}"));
    let Some(config) = draw_lsq_config(rng, case, granularity) else {
        return;
    };
    let (scales, zero_points) = draw_lsq_params(rng, &config, &shape);
    if scales.len() <= 4 {
        case.note(format!(
            "scales {:?}, zero points {:?}",
            scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
            zero_points.iter().map(|s| s.to_bits()).collect::<Vec<_>>()
        ));
    }
    let gpu = ctx.create_lsq(&config, &scales, &zero_points);
    let mut cpu = match Lsq::new(config.clone(), &scales, &zero_points) {
        Ok(cpu) => cpu,
        Err(_) => return expect_err("create_lsq", gpu),
    };
    let Some(gpu) = device_ok("create_lsq", gpu) else {
        return;
    };
    for op in 0..1 + rng.below(3) {
        let shape = if rng.below(6) == 0 {
            draw_shape(rng, 3000)
        } else {
            shape.clone()
        };
        let len = draw_len(rng, numel(&shape));
        let x: Vec<T> = draw_data_scaled(rng, len);
        let what = rng.below(5);
        case.note(format!("op {op}: {what}, shape {shape:?}, len {len}"));
        match what {
            0 => {
                let dy: Vec<T> = {
                    let l = draw_len(rng, len);
                    draw_data(rng, l, 1.0)
                };
                match cpu.backward(&x, &dy, &shape) {
                    Err(_) => expect_err("backward", gpu.backward(&x, &dy, &shape)),
                    Ok(e) => {
                        let Some(g) = device_ok("backward", gpu.backward(&x, &dy, &shape)) else {
                            return;
                        };
                        assert_elems_eq("dx", &e.dx, &g.dx);
                        assert_bits_eq("dscale", &[], &e.dscale, &g.dscale);
                        assert_bits_eq("dzero_point", &[], &e.dzero_point, &g.dzero_point);
                    }
                }
            }
            1 => {
                let expected = cpu.init_from_data(&x, &shape);
                let got = gpu.init_from_data(&x, &shape);
                match expected {
                    Err(_) => expect_err("init_from_data", got),
                    Ok(e) => {
                        let Some(g) = device_ok("init_from_data", got) else {
                            return;
                        };
                        assert_bits_eq("initial scales", &[], &e, &g);
                    }
                }
            }
            2 => {
                let count = draw_len(rng, cpu.scales().len());
                let s: Vec<f32> = (0..count).map(|_| draw_any_scale(rng)).collect();
                let z: Vec<f32> = (0..count)
                    .map(|_| draw_any_zero_point(rng, config.range()))
                    .collect();
                let expected = cpu.load_params(&s, &z);
                let got = gpu.load_params(&s, &z);
                assert_eq!(
                    expected.is_ok(),
                    got.is_ok(),
                    "load_params: {expected:?} vs {got:?}"
                );
            }
            _ => match cpu.forward(&x, &shape) {
                Err(_) => expect_err("forward", gpu.forward(&x, &shape)),
                Ok(e) => {
                    let Some(g) = device_ok("forward", gpu.forward(&x, &shape)) else {
                        return;
                    };
                    assert_elems_eq("y", &e.y, &g.y);
                    assert_mask_eq("mask", &e.mask, &g.mask);
                }
            },
        }
        lsq_params_eq("parameters", &cpu, gpu.read_params().expect("read_params"));
    }
}

// ---------------------------------------------------------------------------------------------
// Device level: device tensors of random lengths and types, the same tensor passed twice.

#[test]
fn fuzz_device_level() {
    run_gpu_cases("fuzz_device_level", DEVICE_CASES, |ctx, rng, case| {
        let dtype = pick(rng, &DTYPES);
        case.note(format!("{dtype:?}"));
        match rng.below(6) {
            0 => with_dtype!(dtype, device_fake_quant(ctx, rng, case)),
            1 => with_dtype!(dtype, device_ste(ctx, rng, case)),
            2 => with_dtype!(dtype, device_observer(ctx, rng, case)),
            3 | 4 => with_dtype!(dtype, device_dynamic(ctx, rng, case)),
            _ => with_dtype!(dtype, device_lsq(ctx, rng, case)),
        }
    });
}

/// An output tensor for `len` elements of `T`: sometimes of another length or type, noted with
/// whether that breaks the call.
fn output_tensor<T: Element>(
    ctx: &GpuContext,
    rng: &mut Rng,
    case: &Case,
    what: &str,
    len: usize,
) -> (fakequant::GpuTensor, bool) {
    let out_len = draw_len(rng, len);
    let dtype = if rng.below(12) == 0 {
        other_dtype(rng, T::DTYPE)
    } else {
        T::DTYPE
    };
    case.note(format!("{what}: {out_len} x {dtype:?}"));
    let tensor = ctx.create_tensor(out_len, dtype).expect("create_tensor");
    (tensor, out_len != len || dtype != T::DTYPE)
}

fn output_mask(
    ctx: &GpuContext,
    rng: &mut Rng,
    case: &Case,
    len: usize,
) -> (Option<fakequant::GpuMask>, bool) {
    if rng.below(3) == 0 {
        case.note("no mask");
        return (None, false);
    }
    let mask_len = draw_len(rng, len);
    case.note(format!("mask {mask_len}"));
    (
        Some(ctx.create_mask(mask_len).expect("create_mask")),
        mask_len != len,
    )
}

fn device_fake_quant<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let shape = draw_shape(rng, 3000);
    let len = draw_len(rng, numel(&shape));
    case.note(format!("forward_device shape {shape:?}, len {len}"));
    let Some((op, _)) = draw_op(rng, case, &shape) else {
        return;
    };
    let x: Vec<T> = draw_data(rng, len, op.params().scales()[0] * 40.0);
    let Some(prepared) = device_ok("prepare", ctx.prepare(&op)) else {
        return;
    };
    let x_dev = ctx.upload(&x).expect("upload");
    let (y_dev, bad_y) = output_tensor::<T>(ctx, rng, case, "y", len);
    let (mask_dev, bad_mask) = output_mask(ctx, rng, case, len);
    // In place: x and y in the same bytes, refused unless empty (empty ranges overlap nothing).
    let in_place = rng.below(12) == 0;
    let overlaps = in_place && len > 0;
    let y_used = if in_place { &x_dev } else { &y_dev };
    case.note(format!("in place {in_place}"));
    let expected = reference::fake_quant(&op, &x, &shape);
    let got = prepared.forward_device(&x_dev, &shape, y_used, mask_dev.as_ref());
    let expected = match expected {
        Ok(e) if !bad_y && !bad_mask && !overlaps => e,
        _ => return expect_err("forward_device", got),
    };
    if device_ok("forward_device", got).is_none() {
        return;
    }
    assert_elems_eq(
        "y",
        &expected.y,
        &ctx.read_tensor::<T>(&y_dev).expect("read y"),
    );
    if let Some(m) = &mask_dev {
        assert_mask_eq(
            "mask",
            &expected.mask,
            &ctx.read_mask(m).expect("read mask"),
        );
    }
}

fn device_ste<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let len = rng.below(3000);
    let mask_len = draw_len(rng, len);
    case.note(format!("ste_backward_device len {len}, mask {mask_len}"));
    let dy: Vec<T> = draw_data(rng, len, 1.0);
    let bits: Vec<bool> = (0..mask_len).map(|_| rng.below(3) != 0).collect();
    let mask = PackedMask::from_bools(&bits);
    let dy_dev = ctx.upload(&dy).expect("upload");
    let mask_dev = ctx.upload_mask(&mask).expect("upload_mask");
    let (dx_dev, bad_dx) = output_tensor::<T>(ctx, rng, case, "dx", len);
    let in_place = rng.below(12) == 0;
    let overlaps = in_place && len > 0;
    case.note(format!("in place {in_place}"));
    let got = ctx.ste_backward_device(&dy_dev, &mask_dev, if in_place { &dy_dev } else { &dx_dev });
    let expected = match reference::ste_backward(&dy, &mask) {
        Ok(e) if !bad_dx && !overlaps => e,
        _ => return expect_err("ste_backward_device", got),
    };
    if device_ok("ste_backward_device", got).is_some() {
        assert_elems_eq(
            "dx",
            &expected,
            &ctx.read_tensor::<T>(&dx_dev).expect("read dx"),
        );
    }
}

fn device_observer<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let shape = draw_shape(rng, 3000);
    let granularity = draw_granularity(rng, &shape);
    case.note(format!("observer shape {shape:?}"));
    let Some(config) = draw_observer_config(rng, case, granularity) else {
        return;
    };
    let gpu = ctx.create_observer(&config, &shape);
    let Ok(mut cpu) = Observer::new(config.clone(), &shape) else {
        return expect_err("create_observer", gpu);
    };
    let Some(gpu) = device_ok("create_observer", gpu) else {
        return;
    };
    for step in 0..1 + rng.below(3) {
        let len = draw_len(rng, numel(&shape));
        let x: Vec<T> = draw_data_scaled(rng, len);
        let x_dev = ctx.upload(&x).expect("upload");
        let mode = draw_mode(rng);
        case.note(format!("step {step}: len {len}, {mode:?}"));
        if rng.below(4) == 0 {
            case.note("observe_device");
            let got = gpu.observe_device(&x_dev, &shape);
            match cpu.observe(&x, &shape) {
                Ok(()) => {
                    if device_ok("observe_device", got).is_none() {
                        return;
                    }
                }
                Err(_) => expect_err("observe_device", got),
            }
        } else {
            let (y_dev, bad_y) = output_tensor::<T>(ctx, rng, case, "y", len);
            let (mask_dev, bad_mask) = output_mask(ctx, rng, case, len);
            let in_place = rng.below(12) == 0;
            let overlaps = in_place && len > 0;
            case.note(format!("in place {in_place}"));
            let y_used = if in_place { &x_dev } else { &y_dev };
            let got = gpu.step_device(&x_dev, &shape, y_used, mask_dev.as_ref(), mode);
            // A refused call changes nothing, so the reference steps only when the call is valid.
            if bad_y
                || bad_mask
                || overlaps
                || layout_error(&shape, len, granularity, Some(gpu.channels())).is_some()
            {
                expect_err("step_device", got);
            } else {
                let expected = cpu.step(&x, &shape, mode).expect("a valid step");
                if device_ok("step_device", got).is_none() {
                    return;
                }
                assert_elems_eq(
                    "y",
                    &expected.y,
                    &ctx.read_tensor::<T>(&y_dev).expect("read y"),
                );
                if let Some(m) = &mask_dev {
                    assert_mask_eq(
                        "mask",
                        &expected.mask,
                        &ctx.read_mask(m).expect("read mask"),
                    );
                }
            }
        }
        assert_state_eq("state", cpu.state(), &gpu.read_state().expect("read_state"));
    }
}

fn device_lsq<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let shape = draw_shape(rng, 3000);
    let granularity = draw_granularity(rng, &shape);
    case.note(format!("lsq shape {shape:?}"));
    let Some(config) = draw_lsq_config(rng, case, granularity) else {
        return;
    };
    let (scales, zero_points) = draw_lsq_params(rng, &config, &shape);
    let gpu = ctx.create_lsq(&config, &scales, &zero_points);
    let Ok(cpu) = Lsq::new(config.clone(), &scales, &zero_points) else {
        return expect_err("create_lsq", gpu);
    };
    let Some(gpu) = device_ok("create_lsq", gpu) else {
        return;
    };
    let len = draw_len(rng, numel(&shape));
    let x: Vec<T> = draw_data_scaled(rng, len);
    let x_dev = ctx.upload(&x).expect("upload");
    case.note(format!("len {len}"));
    if rng.below(2) == 0 {
        let (y_dev, bad_y) = output_tensor::<T>(ctx, rng, case, "y", len);
        let (mask_dev, mask_len_differs) = output_mask(ctx, rng, case, len);
        let in_place = rng.below(12) == 0;
        let overlaps = in_place && len > 0;
        case.note(format!("forward_device, in place {in_place}"));
        let y_used = if in_place { &x_dev } else { &y_dev };
        let got = gpu.forward_device(&x_dev, &shape, y_used, mask_dev.as_ref());
        let expected = match cpu.forward(&x, &shape) {
            Ok(e) if !bad_y && !overlaps && !mask_len_differs => e,
            _ => return expect_err("forward_device", got),
        };
        if device_ok("forward_device", got).is_none() {
            return;
        }
        assert_elems_eq(
            "y",
            &expected.y,
            &ctx.read_tensor::<T>(&y_dev).expect("read y"),
        );
        if let Some(m) = &mask_dev {
            let words = ctx
                .read_buffer(m.buffer(), 0, expected.mask.words().len() as u64 * 4)
                .expect("read mask");
            let words: Vec<u32> = bytemuck::pod_collect_to_vec(&words);
            assert_eq!(words, expected.mask.words(), "mask words");
        }
    } else {
        let dy_len = draw_len(rng, len);
        let dy: Vec<T> = draw_data(rng, dy_len, 1.0);
        let dy_dev = ctx.upload(&dy).expect("upload");
        let (dx_dev, bad_dx) = output_tensor::<T>(ctx, rng, case, "dx", len);
        let other_grads = rng.below(12) == 0;
        let grads = if other_grads {
            ctx.create_lsq(
                &LsqConfig::weight_int8(),
                &vec![1.0; gpu.channels() + 1],
                &vec![0.0; gpu.channels() + 1],
            )
            .expect("create_lsq")
            .create_grads()
        } else {
            gpu.create_grads()
        }
        .expect("create_grads");
        // x passed as dy too is two reads of one tensor (fine); dx on x or dy is not.
        let alias = rng.below(8);
        case.note(format!(
            "backward_device, dy len {dy_len}, other grads {other_grads}, alias {alias}"
        ));
        let (dy_used, dx_used, dy_values) = match alias {
            0 => (&x_dev, &dx_dev, &x),
            1 => (&dy_dev, &x_dev, &dy),
            2 => (&dy_dev, &dy_dev, &dy),
            _ => (&dy_dev, &dx_dev, &dy),
        };
        let got = gpu.backward_device(&x_dev, dy_used, &shape, dx_used, &grads);
        let expected = match cpu.backward(&x, dy_values, &shape) {
            Ok(e) if !bad_dx && !other_grads && alias != 1 && alias != 2 => e,
            _ => return expect_err("backward_device", got),
        };
        if device_ok("backward_device", got).is_none() {
            return;
        }
        assert_elems_eq(
            "dx",
            &expected.dx,
            &ctx.read_tensor::<T>(&dx_dev).expect("read dx"),
        );
        let (dscale, dzero_point) = ctx.read_lsq_grads(&grads).expect("read grads");
        assert_bits_eq("dscale", &[], &expected.dscale, &dscale);
        assert_bits_eq("dzero_point", &[], &expected.dzero_point, &dzero_point);
    }
    lsq_params_eq("parameters", &cpu, gpu.read_params().expect("read_params"));
}

// ---------------------------------------------------------------------------------------------
// Record level: the caller's buffers, random offsets, sizes and usages.

/// A caller's buffer and its bytes before the call: what the call did not write must be intact.
struct CallerBuffer {
    buffer: wgpu::Buffer,
    initial: Vec<u8>,
}

fn caller_buffer(ctx: &GpuContext, mut bytes: Vec<u8>, storage: bool) -> CallerBuffer {
    // Whole words: copies (the read-back) move multiples of 4 bytes.
    bytes.resize(bytes.len().next_multiple_of(4).max(4), 0xa5);
    let mut usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    if storage {
        usage |= wgpu::BufferUsages::STORAGE;
    }
    let buffer = ctx
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("fuzz caller buffer"),
            contents: &bytes,
            usage,
        });
    CallerBuffer {
        buffer,
        initial: bytes,
    }
}

/// Reads `buffer` back and compares it with its initial bytes overwritten by `written` (offset,
/// bytes): the outputs are right and nothing else changed.
fn check_buffer(ctx: &GpuContext, what: &str, buffer: &CallerBuffer, written: &[(u64, &[u8])]) {
    let got = ctx
        .read_buffer(&buffer.buffer, 0, buffer.initial.len() as u64)
        .expect("read-back");
    let mut expected = buffer.initial.clone();
    for &(offset, bytes) in written {
        expected[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
    }
    if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
        let inside = written
            .iter()
            .any(|&(o, b)| (o as usize..o as usize + b.len()).contains(&i));
        panic!(
            "{what}: byte {i} is {:#04x}, expected {:#04x} ({}); {} bytes differ",
            got[i],
            expected[i],
            if inside {
                "an output"
            } else {
                "outside every output: overwritten"
            },
            (0..got.len()).filter(|&j| got[j] != expected[j]).count()
        );
    }
}

/// Where a tensor of a call goes: its offset in a buffer of `size` bytes, with or without
/// `STORAGE`, and whether that breaks a documented binding rule.
#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: u64,
    size: u64,
    storage: bool,
    invalid: bool,
}

/// Bytes a binding of `len` elements covers: `None` is a mask (whole words).
fn slot_bytes(dtype: Option<DType>, len: usize) -> u64 {
    match dtype {
        None => PackedMask::words_for(len) as u64 * 4,
        Some(d) => len as u64 * d.size(),
    }
}

/// A slot for `len` elements of `dtype` (`None`: a mask): f32 tensors and masks at multiples of
/// the device's offset alignment, 16-bit tensors at any even offset; now and then a misaligned
/// offset, a buffer too small or a buffer without `STORAGE` (each refused, as documented).
fn draw_slot(rng: &mut Rng, align: u64, dtype: Option<DType>, len: usize) -> Slot {
    let half = matches!(dtype, Some(DType::F16 | DType::Bf16));
    let mut offset = if half {
        2 * rng.below(align as usize * 2) as u64
    } else {
        align * rng.below(3) as u64
    };
    let mut invalid = false;
    let mut storage = true;
    let mut short = false;
    match rng.below(16) {
        0 => {
            offset += if half {
                1
            } else if align > 4 {
                4
            } else {
                2
            };
            invalid = true;
        }
        // (A tensor within one word at offset 0 cannot be given a shorter buffer: a buffer has
        // at least one word.)
        1 if len > 0 && offset + slot_bytes(dtype, len) > 4 => {
            short = true;
            invalid = true;
        }
        2 => {
            storage = false;
            invalid = true;
        }
        _ => {}
    }
    // The words that hold the tensor (a 16-bit tensor may end mid-word).
    let end = (offset + slot_bytes(dtype, len)).next_multiple_of(4);
    let size = if short {
        end - 4
    } else {
        end + 4 * rng.below(4) as u64
    };
    Slot {
        offset,
        size: size.max(4),
        storage,
        invalid,
    }
}

fn random_bytes(rng: &mut Rng, n: u64) -> Vec<u8> {
    (0..n).map(|_| rng.next_u32() as u8).collect()
}

/// A buffer for `slot` holding `content` at its offset (as much as fits) and random bytes around.
fn slot_buffer(ctx: &GpuContext, rng: &mut Rng, slot: &Slot, content: &[u8]) -> CallerBuffer {
    let mut bytes = random_bytes(rng, slot.size.next_multiple_of(4));
    let start = (slot.offset as usize).min(bytes.len());
    let n = content.len().min(bytes.len() - start);
    bytes[start..start + n].copy_from_slice(&content[..n]);
    caller_buffer(ctx, bytes, slot.storage)
}

fn binding<'a>(buffer: &'a CallerBuffer, slot: &Slot, dtype: DType) -> TensorBinding<'a> {
    TensorBinding::new(&buffer.buffer, slot.offset).with_dtype(dtype)
}

#[test]
fn fuzz_record_level() {
    run_gpu_cases("fuzz_record_level", RECORD_CASES, |ctx, rng, case| {
        let dtype = pick(rng, &DTYPES);
        case.note(format!("{dtype:?}"));
        match rng.below(6) {
            0 => with_dtype!(dtype, record_fake_quant(ctx, rng, case)),
            1 => with_dtype!(dtype, record_ste(ctx, rng, case)),
            2 => with_dtype!(dtype, record_observer(ctx, rng, case)),
            3 => with_dtype!(dtype, record_dynamic(ctx, rng, case)),
            4 => with_dtype!(dtype, record_float(ctx, rng, case)),
            _ => with_dtype!(dtype, record_lsq(ctx, rng, case)),
        }
    });
}

fn align_of(ctx: &GpuContext) -> u64 {
    ctx.device_limits().min_storage_buffer_offset_alignment as u64
}

/// Submits a call's encoder. After a refused call the encoder must still be usable (nothing
/// invalid was recorded) and every buffer intact; after an accepted one the submission must
/// succeed.
fn submit(ctx: &GpuContext, encoder: wgpu::CommandEncoder, accepted: bool) {
    if let Err(e) = ctx.submit_and_wait(encoder) {
        if accepted {
            panic!("the call returned Ok but its submission failed: {e}");
        }
        panic!("a refused call left something invalid in the encoder: {e}");
    }
}

/// The output slot for `len` elements of `T` (sometimes of another type), with its buffer.
fn output_slot<T: Element>(
    ctx: &GpuContext,
    rng: &mut Rng,
    case: &Case,
    what: &str,
    len: usize,
) -> (Slot, DType, CallerBuffer) {
    let dtype = if rng.below(12) == 0 {
        other_dtype(rng, T::DTYPE)
    } else {
        T::DTYPE
    };
    let mut slot = draw_slot(rng, align_of(ctx), Some(dtype), len);
    slot.invalid |= dtype != T::DTYPE;
    case.note(format!("{what} {dtype:?} {slot:?}"));
    let buffer = slot_buffer(ctx, rng, &slot, &[]);
    (slot, dtype, buffer)
}

fn mask_slot(
    ctx: &GpuContext,
    rng: &mut Rng,
    case: &Case,
    len: usize,
) -> Option<(Slot, CallerBuffer)> {
    if rng.below(3) == 0 {
        case.note("no mask");
        return None;
    }
    let slot = draw_slot(rng, align_of(ctx), None, len);
    case.note(format!("mask {slot:?}"));
    let buffer = slot_buffer(ctx, rng, &slot, &[]);
    Some((slot, buffer))
}

fn input_slot<T: Element>(
    ctx: &GpuContext,
    rng: &mut Rng,
    case: &Case,
    what: &str,
    values: &[T],
) -> (Slot, CallerBuffer) {
    let slot = draw_slot(rng, align_of(ctx), Some(T::DTYPE), values.len());
    case.note(format!("{what} {slot:?}"));
    let buffer = slot_buffer(ctx, rng, &slot, bytemuck::cast_slice(values));
    (slot, buffer)
}

/// Checks an elementwise call's outputs (`y` and the mask) and that its input is untouched.
#[allow(clippy::too_many_arguments)]
fn check_forward_outputs<T: Element>(
    ctx: &GpuContext,
    x: &CallerBuffer,
    y: (&Slot, &CallerBuffer),
    mask: Option<&(Slot, CallerBuffer)>,
    expected: Option<&fakequant::FakeQuantOutput<T>>,
) {
    check_buffer(ctx, "x", x, &[]);
    match expected {
        Some(e) => {
            check_buffer(ctx, "y", y.1, &[(y.0.offset, bytemuck::cast_slice(&e.y))]);
            if let Some((slot, buffer)) = mask {
                check_buffer(
                    ctx,
                    "mask",
                    buffer,
                    &[(slot.offset, bytemuck::cast_slice(e.mask.words()))],
                );
            }
        }
        None => {
            check_buffer(ctx, "y", y.1, &[]);
            if let Some((_, buffer)) = mask {
                check_buffer(ctx, "mask", buffer, &[]);
            }
        }
    }
}

/// A forward recorded on caller buffers at drawn slots (now and then invalid ones): a call with an
/// invalid slot or input (`expected` an error) must be refused and change nothing; an accepted one
/// (`accepted` says which refusals are documented) must give `expected`'s `y` and mask. Returns
/// whether the call was accepted and checked.
fn recorded_forward<T: Element>(
    ctx: &GpuContext,
    rng: &mut Rng,
    case: &Case,
    x: &[T],
    expected: fakequant::Result<fakequant::FakeQuantOutput<T>>,
    accepted: impl FnOnce(fakequant::Result<()>) -> Option<()>,
    record: impl FnOnce(
        &mut wgpu::CommandEncoder,
        TensorBinding<'_>,
        TensorBinding<'_>,
        Option<TensorBinding<'_>>,
    ) -> fakequant::Result<()>,
) -> bool {
    let n = x.len();
    let (x_slot, x_buf) = input_slot(ctx, rng, case, "x", x);
    let (y_slot, y_dtype, y_buf) = output_slot::<T>(ctx, rng, case, "y", n);
    let mask = mask_slot(ctx, rng, case, n);
    let invalid = x_slot.invalid
        || y_slot.invalid
        || mask.as_ref().is_some_and(|m| m.0.invalid)
        || expected.is_err();
    let mut encoder = ctx.create_encoder("fuzz");
    let r = record(
        &mut encoder,
        binding(&x_buf, &x_slot, T::DTYPE),
        binding(&y_buf, &y_slot, y_dtype),
        mask.as_ref().map(|(s, b)| binding(b, s, DType::F32)),
    );
    if invalid {
        expect_err("record_forward", r);
        submit(ctx, encoder, false);
        check_forward_outputs::<T>(ctx, &x_buf, (&y_slot, &y_buf), mask.as_ref(), None);
        return false;
    }
    if accepted(r).is_none() {
        return false;
    }
    submit(ctx, encoder, true);
    check_forward_outputs(
        ctx,
        &x_buf,
        (&y_slot, &y_buf),
        mask.as_ref(),
        expected.ok().as_ref(),
    );
    true
}

fn record_fake_quant<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let shape = draw_shape(rng, 3000);
    let n = numel(&shape);
    case.note(format!("record_forward shape {shape:?}"));
    let Some((op, _)) = draw_op(rng, case, &shape) else {
        return;
    };
    let x: Vec<T> = draw_data(rng, n, op.params().scales()[0] * 40.0);
    let Some(prepared) = device_ok("prepare", ctx.prepare(&op)) else {
        return;
    };
    recorded_forward(
        ctx,
        rng,
        case,
        &x,
        reference::fake_quant(&op, &x, &shape),
        |r| device_ok("record_forward", r),
        |encoder, x, y, mask| prepared.record_forward(encoder, x, &shape, y, mask),
    );
}

fn record_ste<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let n = rng.below(3000);
    case.note(format!("record_ste_backward len {n}"));
    let dy: Vec<T> = draw_data(rng, n, 1.0);
    let mut words: Vec<u32> = (0..PackedMask::words_for(n))
        .map(|_| rng.next_u32())
        .collect();
    // The bits past the end are the caller's business: some masks have them set.
    if !n.is_multiple_of(32) && rng.below(2) == 0 {
        words[n / 32] &= (1u32 << (n % 32)) - 1;
    }
    let bits: Vec<bool> = (0..n).map(|i| words[i / 32] >> (i % 32) & 1 == 1).collect();
    let (dy_slot, dy_buf) = input_slot(ctx, rng, case, "dy", &dy);
    let mask_slot = draw_slot(rng, align_of(ctx), None, n);
    case.note(format!("mask {mask_slot:?}"));
    let mask_buf = slot_buffer(ctx, rng, &mask_slot, bytemuck::cast_slice(&words));
    let (dx_slot, dx_dtype, dx_buf) = output_slot::<T>(ctx, rng, case, "dx", n);
    let invalid = dy_slot.invalid || mask_slot.invalid || dx_slot.invalid;
    let mut encoder = ctx.create_encoder("fuzz");
    let r = ctx.record_ste_backward(
        &mut encoder,
        binding(&dy_buf, &dy_slot, T::DTYPE),
        binding(&mask_buf, &mask_slot, DType::F32),
        binding(&dx_buf, &dx_slot, dx_dtype),
        n,
    );
    if invalid {
        expect_err("record_ste_backward", r);
        submit(ctx, encoder, false);
        check_buffer(ctx, "dx", &dx_buf, &[]);
        return;
    }
    if device_ok("record_ste_backward", r).is_none() {
        return;
    }
    submit(ctx, encoder, true);
    let expected =
        reference::ste_backward(&dy, &PackedMask::from_bools(&bits)).expect("lengths agree");
    check_buffer(ctx, "dy", &dy_buf, &[]);
    check_buffer(ctx, "mask", &mask_buf, &[]);
    check_buffer(
        ctx,
        "dx",
        &dx_buf,
        &[(dx_slot.offset, bytemuck::cast_slice(&expected))],
    );
}

fn record_observer<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let shape = draw_shape(rng, 3000);
    let granularity = draw_granularity(rng, &shape);
    case.note(format!("observer shape {shape:?}"));
    let Some(config) = draw_observer_config(rng, case, granularity) else {
        return;
    };
    let gpu = ctx.create_observer(&config, &shape);
    let Ok(mut cpu) = Observer::new(config.clone(), &shape) else {
        return expect_err("create_observer", gpu);
    };
    let Some(gpu) = device_ok("create_observer", gpu) else {
        return;
    };
    let n = numel(&shape);
    let layout_ok = layout_error(&shape, n, granularity, Some(gpu.channels())).is_none();
    for step in 0..1 + rng.below(3) {
        let x: Vec<T> = draw_data_scaled(rng, n);
        let (x_slot, x_buf) = input_slot(ctx, rng, case, "x", &x);
        let what = rng.below(6);
        let mut encoder = ctx.create_encoder("fuzz");
        case.note(format!("step {step}: op {what}"));
        match what {
            0 => {
                let r =
                    gpu.record_observe(&mut encoder, binding(&x_buf, &x_slot, T::DTYPE), &shape);
                if x_slot.invalid || !layout_ok {
                    expect_err("record_observe", r);
                    submit(ctx, encoder, false);
                } else {
                    if device_ok("record_observe", r).is_none() {
                        return;
                    }
                    submit(ctx, encoder, true);
                    cpu.observe(&x, &shape).expect("a valid observation");
                }
            }
            1 => {
                let stats = gpu.create_batch_stats().expect("create_batch_stats");
                let r = gpu.record_batch_min_max(
                    &mut encoder,
                    binding(&x_buf, &x_slot, T::DTYPE),
                    &shape,
                    &stats,
                );
                if x_slot.invalid || !layout_ok {
                    expect_err("record_batch_min_max", r);
                    submit(ctx, encoder, false);
                } else {
                    if device_ok("record_batch_min_max", r).is_none() {
                        return;
                    }
                    submit(ctx, encoder, true);
                    let expected =
                        reference::observer::batch_min_max(&config, &x, &shape).expect("valid");
                    assert_minmax_eq(
                        "batch",
                        &expected,
                        &ctx.read_batch_stats(&stats).expect("read stats"),
                    );
                }
            }
            _ => {
                let (y_slot, y_dtype, y_buf) = output_slot::<T>(ctx, rng, case, "y", n);
                let mask = mask_slot(ctx, rng, case, n);
                let mode = if what == 2 {
                    None
                } else {
                    Some(draw_mode(rng))
                };
                case.note(format!("mode {mode:?} (None: record_fake_quant)"));
                let (x_b, y_b) = (
                    binding(&x_buf, &x_slot, T::DTYPE),
                    binding(&y_buf, &y_slot, y_dtype),
                );
                let m_b = mask.as_ref().map(|(s, b)| binding(b, s, DType::F32));
                let r = match mode {
                    None => gpu.record_fake_quant(&mut encoder, x_b, &shape, y_b, m_b),
                    Some(mode) => gpu.record_step(&mut encoder, x_b, &shape, y_b, m_b, mode),
                };
                let invalid = x_slot.invalid
                    || y_slot.invalid
                    || mask.as_ref().is_some_and(|m| m.0.invalid)
                    || !layout_ok;
                if invalid {
                    expect_err("record_step", r);
                    submit(ctx, encoder, false);
                    check_forward_outputs::<T>(ctx, &x_buf, (&y_slot, &y_buf), mask.as_ref(), None);
                } else {
                    if device_ok("record_step", r).is_none() {
                        return;
                    }
                    submit(ctx, encoder, true);
                    let expected = cpu
                        .step(&x, &shape, mode.unwrap_or(Mode::Frozen))
                        .expect("a valid step");
                    check_forward_outputs(
                        ctx,
                        &x_buf,
                        (&y_slot, &y_buf),
                        mask.as_ref(),
                        Some(&expected),
                    );
                }
            }
        }
        assert_state_eq("state", cpu.state(), &gpu.read_state().expect("read_state"));
    }
}

fn record_lsq<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let shape = draw_shape(rng, 3000);
    let granularity = draw_granularity(rng, &shape);
    case.note(format!("lsq shape {shape:?}"));
    let Some(config) = draw_lsq_config(rng, case, granularity) else {
        return;
    };
    let (scales, zero_points) = draw_lsq_params(rng, &config, &shape);
    let gpu = ctx.create_lsq(&config, &scales, &zero_points);
    let Ok(mut cpu) = Lsq::new(config.clone(), &scales, &zero_points) else {
        return expect_err("create_lsq", gpu);
    };
    let Some(gpu) = device_ok("create_lsq", gpu) else {
        return;
    };
    let n = numel(&shape);
    let layout_ok = layout_error(&shape, n, granularity, Some(gpu.channels())).is_none();
    let x: Vec<T> = draw_data_scaled(rng, n);
    let (x_slot, x_buf) = input_slot(ctx, rng, case, "x", &x);
    let mut encoder = ctx.create_encoder("fuzz");
    match rng.below(3) {
        0 => {
            case.note("record_init_from_data");
            let r =
                gpu.record_init_from_data(&mut encoder, binding(&x_buf, &x_slot, T::DTYPE), &shape);
            if x_slot.invalid || !layout_ok {
                expect_err("record_init_from_data", r);
                submit(ctx, encoder, false);
            } else {
                if device_ok("record_init_from_data", r).is_none() {
                    return;
                }
                submit(ctx, encoder, true);
                cpu.init_from_data(&x, &shape).expect("valid");
            }
        }
        1 => {
            let dy: Vec<T> = draw_data(rng, n, 1.0);
            let (dy_slot, dy_buf) = input_slot(ctx, rng, case, "dy", &dy);
            let (dx_slot, dx_dtype, dx_buf) = output_slot::<T>(ctx, rng, case, "dx", n);
            let grads = gpu.create_grads().expect("create_grads");
            case.note("record_backward");
            let r = gpu.record_backward(
                &mut encoder,
                binding(&x_buf, &x_slot, T::DTYPE),
                binding(&dy_buf, &dy_slot, T::DTYPE),
                &shape,
                binding(&dx_buf, &dx_slot, dx_dtype),
                &grads,
            );
            if x_slot.invalid || dy_slot.invalid || dx_slot.invalid || !layout_ok {
                expect_err("record_backward", r);
                submit(ctx, encoder, false);
                check_buffer(ctx, "dx", &dx_buf, &[]);
            } else {
                if device_ok("record_backward", r).is_none() {
                    return;
                }
                submit(ctx, encoder, true);
                let e = cpu.backward(&x, &dy, &shape).expect("valid");
                check_buffer(ctx, "x", &x_buf, &[]);
                check_buffer(ctx, "dy", &dy_buf, &[]);
                check_buffer(
                    ctx,
                    "dx",
                    &dx_buf,
                    &[(dx_slot.offset, bytemuck::cast_slice(&e.dx))],
                );
                let (dscale, dzero_point) = ctx.read_lsq_grads(&grads).expect("read grads");
                assert_bits_eq("dscale", &[], &e.dscale, &dscale);
                assert_bits_eq("dzero_point", &[], &e.dzero_point, &dzero_point);
            }
        }
        _ => {
            let (y_slot, y_dtype, y_buf) = output_slot::<T>(ctx, rng, case, "y", n);
            let mask = mask_slot(ctx, rng, case, n);
            case.note("record_forward");
            let r = gpu.record_forward(
                &mut encoder,
                binding(&x_buf, &x_slot, T::DTYPE),
                &shape,
                binding(&y_buf, &y_slot, y_dtype),
                mask.as_ref().map(|(s, b)| binding(b, s, DType::F32)),
            );
            if x_slot.invalid
                || y_slot.invalid
                || mask.as_ref().is_some_and(|m| m.0.invalid)
                || !layout_ok
            {
                expect_err("record_forward", r);
                submit(ctx, encoder, false);
                check_forward_outputs::<T>(ctx, &x_buf, (&y_slot, &y_buf), mask.as_ref(), None);
            } else {
                if device_ok("record_forward", r).is_none() {
                    return;
                }
                submit(ctx, encoder, true);
                let e = cpu.forward(&x, &shape).expect("valid");
                check_forward_outputs(ctx, &x_buf, (&y_slot, &y_buf), mask.as_ref(), Some(&e));
            }
        }
    }
    lsq_params_eq("parameters", &cpu, gpu.read_params().expect("read_params"));
}

// ---------------------------------------------------------------------------------------------
// Aliasing by byte range: the tensors of one call in one or two buffers. Disjoint ranges must
// work; a range the call writes that overlaps any other range of the call must be refused.

/// One tensor of a call: its role, its type (`None`: a mask), whether the call writes it, where
/// it goes.
#[derive(Debug, Clone)]
struct Placed {
    role: &'static str,
    dtype: Option<DType>,
    written: bool,
    buffer: usize,
    offset: u64,
    bytes: u64,
}

impl Placed {
    fn end(&self) -> u64 {
        self.offset + self.bytes
    }

    fn overlaps(&self, other: &Placed) -> bool {
        self.buffer == other.buffer && self.offset < other.end() && other.offset < self.end()
    }
}

/// Places `tensors` (role, dtype, written, elements) in one or two buffers: one after the other
/// with random gaps (16-bit tensors sometimes sharing a word), or with one written tensor moved
/// onto another tensor's range. Returns the placements and the buffer sizes.
fn place(
    rng: &mut Rng,
    align: u64,
    tensors: &[(&'static str, Option<DType>, bool, usize)],
    overlap: bool,
) -> (Vec<Placed>, [u64; 2]) {
    let two = rng.below(3) == 0;
    let mut placed: Vec<Placed> = tensors
        .iter()
        .map(|&(role, dtype, written, len)| Placed {
            role,
            dtype,
            written,
            buffer: if two { rng.below(2) } else { 0 },
            offset: 0,
            bytes: slot_bytes(dtype, len),
        })
        .collect();
    let alignment = |p: &Placed| match p.dtype {
        Some(DType::F16 | DType::Bf16) => 2,
        _ => align,
    };
    let mut order: Vec<usize> = (0..placed.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut cursor = [0u64; 2];
    for &i in &order {
        let p = &mut placed[i];
        let gap = match rng.below(3) {
            0 => 0,
            1 => 2 * rng.below(4) as u64,
            _ => rng.below(3 * align as usize) as u64,
        };
        let a = alignment(p);
        p.offset = (cursor[p.buffer] + gap).next_multiple_of(a);
        cursor[p.buffer] = p.end();
    }
    if overlap {
        let writers: Vec<usize> = (0..placed.len()).filter(|&i| placed[i].written).collect();
        let w = pick(rng, &writers);
        let others: Vec<usize> = (0..placed.len()).filter(|&i| i != w).collect();
        let o = pick(rng, &others);
        // Both at a common aligned offset past everything, then the later one shifted inside the
        // earlier one's range: the overlap is certain.
        let common = alignment(&placed[w]).max(alignment(&placed[o]));
        let buffer = placed[o].buffer;
        let base = cursor[buffer].next_multiple_of(common);
        let (first, second) = if rng.below(2) == 0 { (w, o) } else { (o, w) };
        placed[first].buffer = buffer;
        placed[second].buffer = buffer;
        placed[first].offset = base;
        let step = alignment(&placed[second]);
        let room = placed[first].bytes.saturating_sub(1) / step;
        placed[second].offset = base + step * rng.below(room as usize + 1) as u64;
    }
    let sizes = [0, 1].map(|b| {
        placed
            .iter()
            .filter(|p| p.buffer == b)
            .map(Placed::end)
            .max()
            .unwrap_or(0)
            .next_multiple_of(4)
            + 4 * rng.below(3) as u64
    });
    (placed, sizes)
}

fn must_refuse(placed: &[Placed]) -> bool {
    placed.iter().enumerate().any(|(i, p)| {
        p.written
            && placed
                .iter()
                .enumerate()
                .any(|(j, q)| i != j && p.overlaps(q))
    })
}

/// What the call's inputs hold: written into the buffers in order, then read back from the
/// final bytes (so that two inputs sharing bytes agree).
struct Arena {
    bytes: [Vec<u8>; 2],
}

impl Arena {
    fn new(rng: &mut Rng, sizes: [u64; 2]) -> Self {
        Self {
            bytes: sizes.map(|s| random_bytes(rng, s.max(4))),
        }
    }

    fn write(&mut self, p: &Placed, content: &[u8]) {
        self.bytes[p.buffer][p.offset as usize..p.offset as usize + content.len()]
            .copy_from_slice(content);
    }

    fn read<T: Element>(&self, p: &Placed, len: usize) -> Vec<T> {
        let b = &self.bytes[p.buffer]
            [p.offset as usize..p.offset as usize + len * T::DTYPE.size() as usize];
        bytemuck::pod_collect_to_vec(b)
    }

    fn read_words(&self, p: &Placed) -> Vec<u32> {
        bytemuck::pod_collect_to_vec(&self.bytes[p.buffer][p.offset as usize..p.end() as usize])
    }
}

#[test]
fn fuzz_aliasing_by_range() {
    run_gpu_cases(
        "fuzz_aliasing_by_range",
        ALIASING_CASES,
        |ctx, rng, case| {
            let dtype = pick(rng, &DTYPES);
            case.note(format!("{dtype:?}"));
            with_dtype!(dtype, aliasing_case(ctx, rng, case));
        },
    );
}

fn aliasing_case<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let align = align_of(ctx);
    let op_kind = rng.below(6);
    // The dynamic forward (op 5): a configuration of the fixed set that takes a vector (per
    // token, per tensor, per channel) or a row ([1, n], groups of 32, one pass).
    let dynamic = (op_kind == 5).then(|| pick(rng, &[0usize, 1, 4, 5]));
    let n = match dynamic {
        Some(0) => 32 * (1 + rng.below(64)),
        Some(1) if rng.below(2) == 0 => pick(rng, &[32, 64, 256, 1024, 2048]),
        _ => 1 + rng.below(2000),
    };
    let shape: Vec<usize> = if dynamic == Some(0) {
        vec![1, n]
    } else {
        vec![n]
    };
    let t = Some(T::DTYPE);
    let with_mask = rng.below(2) == 0;
    let tensors: Vec<(&'static str, Option<DType>, bool, usize)> = match op_kind {
        // Elementwise forwards: fake-quant, observer step, LSQ forward, dynamic forward.
        0..=2 | 5 => {
            let mut v = vec![("x", t, false, n), ("y", t, true, n)];
            if with_mask {
                v.push(("mask", None, true, n));
            }
            v
        }
        3 => vec![
            ("dy", t, false, n),
            ("mask", None, false, n),
            ("dx", t, true, n),
        ],
        _ => vec![("x", t, false, n), ("dy", t, false, n), ("dx", t, true, n)],
    };
    let overlap = rng.below(3) == 0;
    let (placed, sizes) = place(rng, align, &tensors, overlap);
    let refuse = must_refuse(&placed);
    case.note(format!(
        "op {op_kind}, n {n}, deliberate overlap {overlap}, must refuse {refuse}, {placed:?}"
    ));
    let mut arena = Arena::new(rng, sizes);
    let scale = data_scale(rng);
    for p in &placed {
        if p.written {
            continue;
        }
        let content: Vec<u8> = match p.dtype {
            None => bytemuck::cast_slice(
                &(0..PackedMask::words_for(n))
                    .map(|_| rng.next_u32())
                    .collect::<Vec<u32>>(),
            )
            .to_vec(),
            Some(_) if op_kind == 5 => {
                bytemuck::cast_slice(&draw_dynamic_data::<T>(rng, n, 32)).to_vec()
            }
            Some(_) => bytemuck::cast_slice(&draw_data::<T>(rng, n, scale)).to_vec(),
        };
        arena.write(p, &content);
    }
    let buffers: Vec<CallerBuffer> = arena
        .bytes
        .iter()
        .map(|b| caller_buffer(ctx, b.clone(), true))
        .collect();
    let get = |role: &str| placed.iter().find(|p| p.role == role).expect("placed");
    let bind = |role: &str| {
        let p = get(role);
        TensorBinding::new(&buffers[p.buffer].buffer, p.offset)
            .with_dtype(p.dtype.unwrap_or(DType::F32))
    };
    let mut encoder = ctx.create_encoder("fuzz aliasing");
    // The expected bytes of every written tensor.
    let mut outputs: Vec<(&'static str, Vec<u8>)> = Vec::new();
    // The dynamic object and its expected qparams, checked after the submission.
    let mut qparams: Option<(GpuDynamic, fakequant::DynamicOutput<T>)> = None;
    let r = match op_kind {
        0..=2 | 5 => {
            let x: Vec<T> = arena.read(get("x"), n);
            let mask = with_mask.then(|| bind("mask"));
            let (r, expected) = match op_kind {
                0 => {
                    let op =
                        FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(scale / 8.0, 3))
                            .expect("legal")
                            .with_rounding(draw_rounding(rng));
                    let prepared = ctx.prepare(&op).expect("prepare");
                    (
                        prepared.record_forward(&mut encoder, bind("x"), &shape, bind("y"), mask),
                        reference::fake_quant(&op, &x, &shape).expect("valid"),
                    )
                }
                1 => {
                    let config = ObserverConfig::qat_activation_int8();
                    let gpu = ctx
                        .create_observer(&config, &shape)
                        .expect("create_observer");
                    let mut cpu = Observer::new(config, &shape).expect("observer");
                    let r = gpu.record_step(
                        &mut encoder,
                        bind("x"),
                        &shape,
                        bind("y"),
                        mask,
                        Mode::Qat,
                    );
                    (r, cpu.step(&x, &shape, Mode::Qat).expect("valid"))
                }
                5 => {
                    let c = dynamic.expect("a dynamic case");
                    let config = dynamic_configs()[c].clone();
                    case.note(format!("dynamic config {c}"));
                    let gpu = ctx.create_dynamic(&config, &shape).expect("create_dynamic");
                    let cpu = Dynamic::new(config, &shape).expect("dynamic");
                    let r = gpu.record_forward(&mut encoder, bind("x"), &shape, bind("y"), mask);
                    let e = cpu.forward(&x, &shape).expect("valid");
                    let out = fakequant::FakeQuantOutput {
                        y: e.y.clone(),
                        mask: e.mask.clone(),
                    };
                    qparams = Some((gpu, e));
                    (r, out)
                }
                _ => {
                    let config = LsqConfig::activation_int8();
                    let s = [scale / 8.0];
                    let gpu = ctx.create_lsq(&config, &s, &[1.0]).expect("create_lsq");
                    let cpu = Lsq::new(config, &s, &[1.0]).expect("lsq");
                    let r = gpu.record_forward(&mut encoder, bind("x"), &shape, bind("y"), mask);
                    (r, cpu.forward(&x, &shape).expect("valid"))
                }
            };
            outputs.push(("y", bytemuck::cast_slice(&expected.y).to_vec()));
            if with_mask {
                outputs.push(("mask", bytemuck::cast_slice(expected.mask.words()).to_vec()));
            }
            r
        }
        3 => {
            let dy: Vec<T> = arena.read(get("dy"), n);
            let words = arena.read_words(get("mask"));
            let bits: Vec<bool> = (0..n).map(|i| words[i / 32] >> (i % 32) & 1 == 1).collect();
            let expected =
                reference::ste_backward(&dy, &PackedMask::from_bools(&bits)).expect("valid");
            outputs.push(("dx", bytemuck::cast_slice(&expected).to_vec()));
            ctx.record_ste_backward(&mut encoder, bind("dy"), bind("mask"), bind("dx"), n)
        }
        _ => {
            let x: Vec<T> = arena.read(get("x"), n);
            let dy: Vec<T> = arena.read(get("dy"), n);
            let config = LsqConfig::activation_int8();
            let s = [scale / 8.0];
            let gpu = ctx.create_lsq(&config, &s, &[-2.0]).expect("create_lsq");
            let cpu = Lsq::new(config, &s, &[-2.0]).expect("lsq");
            let grads = gpu.create_grads().expect("create_grads");
            let expected = cpu.backward(&x, &dy, &shape).expect("valid");
            outputs.push(("dx", bytemuck::cast_slice(&expected.dx).to_vec()));
            let r = gpu.record_backward(
                &mut encoder,
                bind("x"),
                bind("dy"),
                &shape,
                bind("dx"),
                &grads,
            );
            if r.is_ok() && !refuse {
                submit(ctx, encoder, true);
                let (dscale, dzero_point) = ctx.read_lsq_grads(&grads).expect("read grads");
                assert_bits_eq("dscale", &[], &expected.dscale, &dscale);
                assert_bits_eq("dzero_point", &[], &expected.dzero_point, &dzero_point);
                encoder = ctx.create_encoder("fuzz aliasing");
            }
            r
        }
    };
    if refuse {
        assert!(
            r.is_err(),
            "a call whose output overlaps another of its ranges returned Ok"
        );
        submit(ctx, encoder, false);
        for (b, buffer) in buffers.iter().enumerate() {
            check_buffer(ctx, &format!("buffer {b}"), buffer, &[]);
        }
        return;
    }
    if let Err(e) = r {
        panic!("a call whose ranges are disjoint was refused: {e}");
    }
    submit(ctx, encoder, true);
    if let Some((gpu, e)) = &qparams {
        assert_qparams_eq("qparams", e, gpu.read_qparams().expect("read"));
    }
    for (b, buffer) in buffers.iter().enumerate() {
        let written: Vec<(u64, &[u8])> = outputs
            .iter()
            .map(|(role, bytes)| (get(role), bytes))
            .filter(|(p, _)| p.buffer == b)
            .map(|(p, bytes)| (p.offset, bytes.as_slice()))
            .collect();
        check_buffer(ctx, &format!("buffer {b}"), buffer, &written);
    }
}

/// Found by `fuzz_aliasing_by_range` (case 26): the straight-through backward with `dy` and the
/// mask (both only read) in one caller buffer at disjoint offsets, `dx` in its own buffer. The
/// call returned Ok, but the pass it recorded bound the mask's buffer read-write next to the same
/// buffer read-only, so the submission failed wgpu's validation (the mask is now an input, bound
/// like `dy`).
#[test]
fn ste_backward_with_dy_and_mask_in_one_buffer() {
    for ctx in contexts() {
        let align = align_of(ctx);
        let dy = [1.5f32, -2.0, 3.0];
        let mask = [0b101u32];
        let mut bytes = vec![0u8; (align + 4) as usize];
        bytes[..12].copy_from_slice(bytemuck::cast_slice(&dy));
        bytes[align as usize..].copy_from_slice(bytemuck::cast_slice(&mask));
        let inputs = caller_buffer(ctx, bytes, true);
        let dx = caller_buffer(ctx, vec![0; 12], true);
        let mut encoder = ctx.create_encoder("dy and mask in one buffer");
        let r = ctx.record_ste_backward(
            &mut encoder,
            TensorBinding::new(&inputs.buffer, 0),
            TensorBinding::new(&inputs.buffer, align),
            TensorBinding::new(&dx.buffer, 0),
            3,
        );
        r.unwrap();
        submit(ctx, encoder, true);
        // The reference's masked-out gradient keeps dy's sign: -2.0 becomes -0.0.
        let expected =
            reference::ste_backward(&dy, &PackedMask::from_words(mask.to_vec(), 3).unwrap())
                .unwrap();
        check_buffer(ctx, "dx", &dx, &[(0, bytemuck::cast_slice(&expected))]);
    }
}

// ---------------------------------------------------------------------------------------------
// Dynamic fake-quant: each group's qparams from its own values. The device levels draw from a
// small fixed set of configurations (each compiles its own pipelines: the rules are override
// constants) and vary the shapes, the data and the offsets instead; the reference takes any.

/// The configurations the device levels draw from.
fn dynamic_configs() -> Vec<DynamicConfig> {
    let new = |range, scheme, granularity| {
        DynamicConfig::new(range, scheme, granularity).expect("legal config")
    };
    vec![
        // torchao's int4 weights: symmetric groups of 32 along axis 1.
        DynamicConfig::int4_weight(32),
        // torchao's int8 per-token activations.
        DynamicConfig::int8_per_token(),
        // torchao's tinygemm uint4: float zero points, bf16 qparams, groups of 128.
        new(
            QuantRange::UINT4,
            DynamicScheme::AsymmetricFloat,
            Granularity::per_group(1, 128),
        )
        .with_qparams_dtype(DType::Bf16)
        .expect("bf16 qparams"),
        // Float zero points per token (one-pass rows only), f32 qparams, the smallest eps.
        new(
            QuantRange::signed(3).expect("3 bits"),
            DynamicScheme::AsymmetricFloat,
            Granularity::PerToken,
        )
        .with_eps(2f32.powi(-126))
        .expect("legal eps"),
        // Per tensor (two passes), a large eps.
        new(
            QuantRange::INT8,
            DynamicScheme::Symmetric,
            Granularity::PerTensor,
        )
        .with_eps(1e-3)
        .expect("legal eps"),
        // Per channel along axis 0: one pass where the rows are a power of two from 32 to 4096.
        new(
            QuantRange::UINT8,
            DynamicScheme::Asymmetric,
            Granularity::per_channel(0),
        ),
        // 16 bits, groups of 64 along axis 2.
        new(
            QuantRange::INT16,
            DynamicScheme::Symmetric,
            Granularity::per_group(2, 64),
        )
        .with_eps(2f32.powi(-126))
        .expect("legal eps"),
        // An odd range without zero in the middle, groups of 3 (two passes), eps 0.5.
        new(
            QuantRange::new(-5, 9).expect("legal range"),
            DynamicScheme::Asymmetric,
            Granularity::per_group(0, 3),
        )
        .with_eps(0.5)
        .expect("legal eps"),
    ]
}

/// Where the reference accepts a dynamic call, the device may refuse it only as `TooLarge` (a
/// table one binding must hold): every scheme runs on every granularity.
fn dynamic_ok<V>(what: &str, r: fakequant::Result<V>) -> Option<V> {
    match r {
        Ok(v) => Some(v),
        Err(Error::TooLarge { .. }) => None,
        Err(e) => panic!("{what}: the reference accepts this call but the device returned: {e}"),
    }
}

/// A shape for `granularity`: mostly one it accepts (now and then over one lowered binding),
/// sometimes a random one.
fn dynamic_shape(rng: &mut Rng, granularity: Granularity) -> Vec<usize> {
    if rng.below(10) == 0 {
        return draw_shape(rng, 3000);
    }
    let target = if rng.below(30) == 0 {
        70_000 + rng.below(70_000)
    } else {
        1 + rng.below(6000)
    };
    let mut shape: Vec<usize> = match granularity {
        Granularity::PerGroup { axis, size } => {
            let mut shape: Vec<usize> = (0..axis)
                .map(|_| {
                    if rng.below(20) == 0 {
                        0
                    } else {
                        1 + rng.below(4)
                    }
                })
                .collect();
            let before = numel(&shape).max(1);
            let k = 1 + rng.below((target / (size * before)).max(1));
            let mut len = size * k;
            match rng.below(16) {
                0 => len += 1,
                1 => len = 0,
                _ => {}
            }
            shape.push(len);
            shape
        }
        Granularity::PerToken => {
            let row = match rng.below(3) {
                0 => 1 + rng.below(300),
                _ => pick(rng, &[1, 3, 31, 32, 33, 64, 100, 128, 256, 512, 2048, 4096]),
            };
            let rows = 1 + rng.below((target / row).max(1));
            match rng.below(8) {
                0 => vec![],
                1 => vec![row],
                2 => vec![rows, 0],
                3 => vec![1 + rng.below(3), rows, row],
                _ => vec![rows, row],
            }
        }
        Granularity::PerChannel { axis } => {
            let inner = pick(rng, &[1, 7, 32, 64, 256, 1024]);
            let mut shape: Vec<usize> = (0..axis).map(|_| 1 + rng.below(3)).collect();
            shape.push(1 + rng.below((target / inner).max(1)));
            if inner > 1 {
                shape.push(inner);
            }
            shape
        }
        _ => match rng.below(3) {
            0 => draw_shape(rng, target),
            _ => vec![rng.below(target + 1)],
        },
    };
    // Trailing ones change nothing; a trailing 2 breaks the groups.
    for _ in 0..rng.below(3) {
        shape.push(if rng.below(12) == 0 { 2 } else { 1 });
    }
    shape
}

/// Another shape with the same number of groups (the object serves any), when one is easy to
/// make: per token any row length, per group other splits before the axis.
fn regroup(rng: &mut Rng, granularity: Granularity, shape: &[usize]) -> Option<Vec<usize>> {
    let groups = model_channels(granularity, shape, numel(shape)).ok()?;
    match granularity {
        Granularity::PerToken if groups > 0 && !shape.is_empty() => {
            let row = pick(rng, &[1, 2, 3, 32, 64, 100, 128]);
            Some(vec![groups, row])
        }
        Granularity::PerGroup { axis, size } if groups > 0 => {
            let mut s = vec![1; axis];
            if axis > 0 {
                s[0] = groups;
                s.push(size);
            } else {
                s.push(groups * size);
            }
            Some(s)
        }
        Granularity::PerChannel { axis: 0 } if groups > 0 => {
            Some(vec![groups, pick(rng, &[1, 2, 32, 64, 5])])
        }
        _ => None,
    }
}

fn bits_of<T: Element>(bits: u32) -> T {
    let bytes = bits.to_le_bytes();
    bytemuck::pod_read_unaligned(&bytes[..T::DTYPE.size() as usize])
}

fn max_finite_of(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => f32::MAX,
        DType::F16 => f16::MAX.to_f32(),
        DType::Bf16 => bf16::MAX.to_f32(),
    }
}

/// Data in runs (mostly of the group size `group`), each of one kind: random values, a
/// constant, zeros of both signs, huge values whose range overflows, subnormals, NaN and
/// infinities alone or sprinkled in.
fn draw_dynamic_data<T: Element>(rng: &mut Rng, n: usize, group: usize) -> Vec<T> {
    let (sign, subnormal_max) = match T::DTYPE {
        DType::F32 => (0x8000_0000u32, 0x007f_ffffu32),
        DType::F16 => (0x8000, 0x3ff),
        DType::Bf16 => (0x8000, 0x7f),
    };
    let huge = max_finite_of(T::DTYPE);
    let mut out: Vec<T> = Vec::with_capacity(n);
    while out.len() < n {
        let run = if group > 0 && rng.below(4) != 0 {
            group
        } else {
            1 + rng.below(80)
        };
        let run = run.min(n - out.len());
        let scale = data_scale(rng);
        match rng.below(14) {
            0 => {
                let v = T::from_f32(draw_value(rng, scale));
                out.extend(std::iter::repeat_n(v, run));
            }
            1 => out.extend((0..run).map(|_| T::from_f32(pick(rng, &[0.0, -0.0])))),
            2 => out.extend((0..run).map(|_| {
                let v = huge * rng.uniform(0.5, 1.0);
                T::from_f32(if rng.below(2) == 0 { v } else { -v })
            })),
            3 => out.extend((0..run).map(|_| {
                let bits = 1 + rng.next_u32() % subnormal_max;
                bits_of::<T>(if rng.below(2) == 0 { bits } else { bits | sign })
            })),
            4 => out.extend((0..run).map(|_| {
                T::from_f32(pick(
                    rng,
                    &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN],
                ))
            })),
            5 => out.extend((0..run).map(|_| {
                if rng.below(6) == 0 {
                    T::from_f32(pick(rng, &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]))
                } else {
                    T::from_f32(rng.normal() * scale)
                }
            })),
            6 => {
                // A huge value of one sign and a huge one of the other: the range overflows.
                out.extend((0..run).map(|i| {
                    T::from_f32(match i % 3 {
                        0 => huge,
                        1 => -huge,
                        _ => rng.normal() * scale,
                    })
                }));
            }
            _ => out.extend(draw_data::<T>(rng, run, scale)),
        }
    }
    out
}

/// The documented properties of the qparams the reference chose.
fn check_dynamic_qparams<T: Element>(config: &DynamicConfig, out: &fakequant::DynamicOutput<T>) {
    let (qmin, qmax) = (config.range().qmin() as f32, config.range().qmax() as f32);
    let eps = config.eps_for(T::DTYPE);
    for (g, (&s, &z)) in out.scales.iter().zip(&out.zero_points).enumerate() {
        match config.scheme() {
            DynamicScheme::AsymmetricFloat => {
                if config.qparams_dtype() == DType::Bf16 {
                    for v in [s, z] {
                        assert_eq!(
                            bf16::from_f32(v).to_f32().to_bits(),
                            v.to_bits(),
                            "group {g}: a bf16 qparam that is not a bf16 value"
                        );
                    }
                }
            }
            scheme => {
                assert!(
                    s.is_normal() && s >= eps.min(2f32.powi(126)) && s <= 2f32.powi(126),
                    "group {g}: scale {s:e} outside [eps, 2^126]"
                );
                assert!(
                    z.fract() == 0.0 && (qmin..=qmax).contains(&z),
                    "group {g}: zero point {z} not an integer in the range"
                );
                if scheme == DynamicScheme::Symmetric {
                    assert_eq!(z, 0.0, "group {g}: a symmetric zero point");
                }
            }
        }
    }
}

/// The reference on random configurations (any scheme, range, granularity, `eps` and qparams
/// precision), shapes and lengths: the layout rules, the setters' rules, no panic.
fn reference_dynamic<T: Element>(rng: &mut Rng, case: &Case, shape: &[usize], x: &[T]) {
    let Some(range) = draw_range(rng, case) else {
        return;
    };
    let scheme = pick(
        rng,
        &[
            DynamicScheme::Symmetric,
            DynamicScheme::Asymmetric,
            DynamicScheme::AsymmetricFloat,
        ],
    );
    let granularity = draw_granularity(rng, shape);
    case.note(format!("dynamic {scheme:?} {granularity:?}"));
    let symmetric_without_zero =
        scheme == DynamicScheme::Symmetric && !(range.qmin() <= 0 && 0 <= range.qmax());
    let mut config = match DynamicConfig::new(range, scheme, granularity) {
        Ok(config) => {
            assert!(
                !symmetric_without_zero,
                "a symmetric range without 0 accepted"
            );
            config
        }
        Err(e) => {
            assert!(symmetric_without_zero, "DynamicConfig::new refused: {e}");
            assert_eq!(variant(&e), "InvalidRange");
            return;
        }
    };
    if rng.below(3) == 0 {
        let eps = pick(
            rng,
            &[
                2f32.powi(-126),
                1e-6,
                0.5,
                3.0,
                2f32.powi(126),
                f32::MAX,
                0.0,
                -1.0,
                2f32.powi(-127),
                f32::from_bits(1),
                f32::NAN,
                f32::INFINITY,
            ],
        );
        case.note(format!("eps {eps:e}"));
        let legal = (2f32.powi(-126)..=1.0).contains(&eps);
        match config.clone().with_eps(eps) {
            Ok(c) => {
                assert!(legal, "with_eps accepted {eps:e}");
                config = c;
            }
            Err(e) => {
                assert!(!legal, "with_eps refused {eps:e}: {e}");
                assert_eq!(variant(&e), "InvalidSetting");
            }
        }
    }
    if rng.below(3) == 0 {
        let dtype = pick(rng, &DTYPES);
        case.note(format!("qparams {dtype:?}"));
        match config.clone().with_qparams_dtype(dtype) {
            Ok(c) => {
                assert_ne!(dtype, DType::F16, "f16 qparams accepted");
                config = c;
            }
            Err(e) => assert_eq!(
                (dtype, variant(&e).as_str()),
                (DType::F16, "InvalidSetting")
            ),
        }
    }
    let r = reference::dynamic::fake_quant_dynamic(&config, x, shape);
    match model_channels(granularity, shape, x.len()) {
        Err(expected) => assert_eq!(variant(&r.expect_err("invalid layout")), expected),
        // A symmetric zero point (0) outside a range without zero: refused by the core op's
        // check (InvalidZeroPoint), unless there is no group at all.
        Ok(groups)
            if scheme == DynamicScheme::Symmetric
                && !(range.qmin() <= 0 && 0 <= range.qmax())
                && groups > 0 =>
        {
            assert_eq!(
                variant(&r.expect_err("zero outside the range")),
                "InvalidZeroPoint"
            );
        }
        Ok(groups) => {
            let out = r.expect("valid layout");
            assert_eq!(
                (out.y.len(), out.mask.len(), out.scales.len()),
                (x.len(), x.len(), groups)
            );
            assert_eq!(out.zero_points.len(), groups);
            // The large eps values are legal but make the float domain's f16 scales infinite:
            // only the integer domain's qparams have documented bounds for every eps.
            check_dynamic_qparams(&config, &out);
        }
    }
    // An object for another shape: the group counts must agree.
    let other = if rng.below(2) == 0 {
        draw_shape(rng, 3000)
    } else {
        shape.to_vec()
    };
    if let Ok(object) = Dynamic::new(config.clone(), &other) {
        let r = object.forward(x, shape);
        let groups = model_channels(granularity, &other, numel(&other)).expect("accepted");
        match model_channels(granularity, shape, x.len()) {
            Err(expected) => assert_eq!(variant(&r.expect_err("invalid layout")), expected),
            Ok(g) if g != groups => assert_eq!(variant(&r.expect_err("groups")), "LengthMismatch"),
            Ok(g)
                if scheme == DynamicScheme::Symmetric
                    && !(range.qmin() <= 0 && 0 <= range.qmax())
                    && g > 0 =>
            {
                assert_eq!(variant(&r.expect_err("zero outside")), "InvalidZeroPoint")
            }
            Ok(_) => assert!(r.is_ok(), "{r:?}"),
        }
    } else {
        assert!(model_channels(granularity, &other, numel(&other)).is_err());
    }
}

/// The group size the data's runs follow.
fn data_group(config: &DynamicConfig, shape: &[usize]) -> usize {
    let (outer, inner) = model_outer_inner(config.granularity(), shape);
    if outer == 1 {
        inner
    } else {
        0
    }
}

/// A configuration from the fixed set and a shape for it.
fn draw_dynamic(rng: &mut Rng, case: &Case) -> (DynamicConfig, Vec<usize>) {
    let configs = dynamic_configs();
    let c = rng.below(configs.len());
    let config = configs[c].clone();
    let shape = dynamic_shape(rng, config.granularity());
    case.note(format!("dynamic config {c}, shape {shape:?}"));
    (config, shape)
}

/// The device object and the reference's for `shape`; `None` where either refuses (and then
/// the device must have refused too, or only as documented).
fn create_dynamic_pair(
    ctx: &GpuContext,
    config: &DynamicConfig,
    shape: &[usize],
) -> Option<(GpuDynamic, Dynamic)> {
    let gpu = ctx.create_dynamic(config, shape);
    let cpu = match Dynamic::new(config.clone(), shape) {
        Ok(c) => c,
        Err(e) => {
            let expected = model_channels(config.granularity(), shape, numel(shape))
                .expect_err("the reference refused a valid layout");
            assert_eq!(variant(&e), expected, "reference: {e}");
            expect_err("create_dynamic", gpu);
            return None;
        }
    };
    let gpu = dynamic_ok("create_dynamic", gpu)?;
    assert_eq!(
        Ok(gpu.groups()),
        model_channels(config.granularity(), shape, numel(shape)),
        "groups"
    );
    Some((gpu, cpu))
}

/// The shape of a later call on the same object: the same, another with the same groups, or a
/// fresh one.
fn next_dynamic_shape(rng: &mut Rng, config: &DynamicConfig, shape: &[usize]) -> Vec<usize> {
    match rng.below(4) {
        0 => regroup(rng, config.granularity(), shape).unwrap_or_else(|| shape.to_vec()),
        1 => dynamic_shape(rng, config.granularity()),
        _ => shape.to_vec(),
    }
}

fn assert_qparams_eq<T: Element>(
    what: &str,
    expected: &fakequant::DynamicOutput<T>,
    got: (Vec<f32>, Vec<f32>),
) {
    assert_bits_eq(&format!("{what}: scales"), &[], &expected.scales, &got.0);
    assert_bits_eq(
        &format!("{what}: zero points"),
        &[],
        &expected.zero_points,
        &got.1,
    );
}

fn host_dynamic<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let (config, shape) = draw_dynamic(rng, case);
    let Some((gpu, cpu)) = create_dynamic_pair(ctx, &config, &shape) else {
        return;
    };
    for call in 0..1 + rng.below(3) {
        let shape = if call == 0 {
            shape.clone()
        } else {
            next_dynamic_shape(rng, &config, &shape)
        };
        let len = draw_len(rng, numel(&shape));
        case.note(format!("call {call}: shape {shape:?}, len {len}"));
        let x: Vec<T> = draw_dynamic_data(rng, len, data_group(&config, &shape));
        let got = gpu.forward(&x, &shape);
        match cpu.forward(&x, &shape) {
            Err(_) => expect_err("forward", got),
            Ok(e) => {
                let Some(g) = dynamic_ok("forward", got) else {
                    return;
                };
                assert_dynamic_eq("forward", &e, &g);
                assert_qparams_eq("read_qparams", &e, gpu.read_qparams().expect("read"));
            }
        }
    }
}

fn device_dynamic<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let (config, shape) = draw_dynamic(rng, case);
    let Some((gpu, cpu)) = create_dynamic_pair(ctx, &config, &shape) else {
        return;
    };
    for call in 0..1 + rng.below(2) {
        let shape = if call == 0 {
            shape.clone()
        } else {
            next_dynamic_shape(rng, &config, &shape)
        };
        let len = draw_len(rng, numel(&shape));
        case.note(format!(
            "call {call}: forward_device shape {shape:?}, len {len}"
        ));
        let x: Vec<T> = draw_dynamic_data(rng, len, data_group(&config, &shape));
        let x_dev = ctx.upload(&x).expect("upload");
        let (y_dev, bad_y) = output_tensor::<T>(ctx, rng, case, "y", len);
        let (mask_dev, bad_mask) = output_mask(ctx, rng, case, len);
        let in_place = rng.below(12) == 0;
        let overlaps = in_place && len > 0;
        case.note(format!("in place {in_place}"));
        let y_used = if in_place { &x_dev } else { &y_dev };
        let got = gpu.forward_device(&x_dev, &shape, y_used, mask_dev.as_ref());
        let expected = match cpu.forward(&x, &shape) {
            Ok(e) if !bad_y && !bad_mask && !overlaps => e,
            _ => {
                expect_err("forward_device", got);
                continue;
            }
        };
        if dynamic_ok("forward_device", got).is_none() {
            return;
        }
        assert_elems_eq(
            "y",
            &expected.y,
            &ctx.read_tensor::<T>(&y_dev).expect("read y"),
        );
        if let Some(m) = &mask_dev {
            assert_mask_eq(
                "mask",
                &expected.mask,
                &ctx.read_mask(m).expect("read mask"),
            );
        }
        assert_qparams_eq("qparams", &expected, gpu.read_qparams().expect("read"));
    }
}

fn record_dynamic<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let (config, shape) = draw_dynamic(rng, case);
    let Some((gpu, cpu)) = create_dynamic_pair(ctx, &config, &shape) else {
        return;
    };
    let shape = if rng.below(4) == 0 {
        next_dynamic_shape(rng, &config, &shape)
    } else {
        shape
    };
    let n = numel(&shape);
    case.note(format!("record_forward shape {shape:?}"));
    let x: Vec<T> = draw_dynamic_data(rng, n, data_group(&config, &shape));
    let expected = cpu.forward(&x, &shape);
    let as_output = match &expected {
        Ok(e) => Ok(fakequant::FakeQuantOutput {
            y: e.y.clone(),
            mask: e.mask.clone(),
        }),
        Err(e) => Err(e.clone()),
    };
    if recorded_forward(
        ctx,
        rng,
        case,
        &x,
        as_output,
        |r| dynamic_ok("record_forward", r),
        |encoder, x, y, mask| gpu.record_forward(encoder, x, &shape, y, mask),
    ) {
        let e = expected.expect("valid");
        assert_qparams_eq("qparams", &e, gpu.read_qparams().expect("read"));
    }
}

/// Found by `fuzz_record_level` (case 55): a dynamic fake-quant whose shape has no group (an
/// empty axis, here `int4_weight(32)` on `[4, 0, 1]`). The reference accepts it (empty
/// outputs); `create_dynamic` returned `Error::InvalidObserver` from its internal min/max
/// observer. It now makes no observer for no group.
#[test]
fn dynamic_with_no_groups_on_the_device() {
    let config = DynamicConfig::int4_weight(32);
    let shape = [4, 0, 1];
    let cpu = Dynamic::new(config.clone(), &shape).unwrap();
    let expected = cpu.forward::<f32>(&[], &shape).unwrap();
    for ctx in contexts() {
        let gpu = ctx.create_dynamic(&config, &shape).unwrap();
        let got = gpu.forward::<f32>(&[], &shape).unwrap();
        assert_dynamic_eq("no groups", &expected, &got);
    }
}

// ---------------------------------------------------------------------------------------------
// Floating-point formats.

/// A floating-point configuration, valid or not: any format with any scaling, bounds and tensor
/// scales of every kind (the constructor must refuse the invalid ones with an error).
fn draw_float_config(rng: &mut Rng, case: &Case, shape: &[usize]) -> Option<FloatQuantConfig> {
    let formats = [
        ElementFormat::Fp8E4M3,
        ElementFormat::Fp8E5M2,
        ElementFormat::Fp6E2M3,
        ElementFormat::Fp6E3M2,
        ElementFormat::Fp4E2M1,
    ];
    let format = pick(rng, &formats);
    let odd = [
        0.0,
        -1.0,
        f32::NAN,
        f32::INFINITY,
        1e-40,
        1e-12,
        0.25,
        3.0,
        1e37,
        f32::MAX,
    ];
    let maybe = |rng: &mut Rng| (rng.below(3) == 0).then(|| pick(rng, &odd));
    let scaling = match rng.below(4) {
        0 => FloatScaling::Amax {
            granularity: draw_granularity(rng, shape),
            lower: maybe(rng),
            upper: maybe(rng),
        },
        1 => FloatScaling::Mx(pick(
            rng,
            &[
                MxScaleRule::Floor,
                MxScaleRule::Ceil,
                MxScaleRule::Even,
                MxScaleRule::Rceil,
            ],
        )),
        2 => FloatScaling::Nvfp4(maybe(rng)),
        _ => FloatScaling::Nvfp4Modelopt(pick(rng, &odd)),
    };
    case.note(format!("float {format:?} {scaling:?}"));
    FloatQuantConfig::new(format, scaling).ok()
}

fn host_float<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let mut shape = draw_shape(rng, 3000);
    if rng.below(2) == 0 {
        // Often a last axis of whole blocks.
        if let Some(last) = shape.last_mut() {
            *last = 16 * (1 + rng.below(6));
        }
    }
    let Some(config) = draw_float_config(rng, case, &shape) else {
        return;
    };
    let len = draw_len(rng, numel(&shape));
    case.note(format!("shape {shape:?}, len {len}"));
    let scale = data_scale(rng);
    let x: Vec<T> = draw_data(rng, len, scale);
    let expected = fake_quant_float(&config, &x, &shape);
    let gpu = match ctx.create_float_quant(&config, &shape) {
        Ok(g) => g,
        Err(e) => {
            // Only a shape the reference refuses too (its layout), or a size limit.
            let zeros = vec![T::from_f32(0.0); numel(&shape)];
            assert!(
                matches!(e, Error::TooLarge { .. })
                    || fake_quant_float(&config, &zeros, &shape).is_err(),
                "create_float_quant refused a shape the reference takes: {e}"
            );
            return;
        }
    };
    let got = gpu.forward(&x, &shape);
    let Ok(expected) = expected else {
        return expect_err("float forward", got);
    };
    let Some(got) = device_ok("float forward", got) else {
        return;
    };
    assert_elems_eq("float y", &expected.y, &got.y);
    assert_mask_eq("float mask", &expected.mask, &got.mask);
    assert_eq!(expected.codes, got.codes, "float codes");
    assert_eq!(expected.scales, got.scales, "float scales");
}

// ---------------------------------------------------------------------------------------------
// Histogram calibration.

fn host_histogram<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let shape = draw_shape(rng, 3000);
    let bins = pick(rng, &[64, 128, 256, 300, 2048, 4096, 8192]);
    let domain = pick(rng, &[HistogramDomain::Magnitude, HistogramDomain::Signed]);
    let granularity = draw_granularity(rng, &shape);
    case.note(format!(
        "histogram {bins} {domain:?} {granularity:?}, shape {shape:?}"
    ));
    let Ok(config) = HistogramConfig::new(bins, domain, granularity) else {
        return;
    };
    let cpu = HistogramObserver::new(config, &shape);
    let gpu = ctx.create_histogram_observer(&config, &shape);
    let Ok(mut cpu) = cpu else {
        return expect_err("create_histogram_observer", gpu);
    };
    let Some(gpu) = device_ok("create_histogram_observer", gpu) else {
        return;
    };
    for batch in 0..1 + rng.below(3) {
        let len = draw_len(rng, numel(&shape));
        case.note(format!("batch {batch}: len {len}"));
        let scale = data_scale(rng);
        let x: Vec<T> = draw_data(rng, len, scale);
        match cpu.observe(&x, &shape) {
            Ok(()) => {
                if device_ok("histogram observe", gpu.observe(&x, &shape)).is_none() {
                    return;
                }
            }
            Err(_) => expect_err("histogram observe", gpu.observe(&x, &shape)),
        }
    }
    let got = gpu.read_histograms().expect("read_histograms");
    assert_eq!(got.as_slice(), cpu.histograms(), "histograms");
    let method = match rng.below(6) {
        0 => CalibrationMethod::Percentile(pick(rng, &[0.0, 49.0, 99.99, 100.0, 101.0])),
        1 => CalibrationMethod::Mse,
        2 => CalibrationMethod::Entropy,
        3 => CalibrationMethod::mix(),
        4 => CalibrationMethod::Mix(Vec::new()),
        _ => CalibrationMethod::PyTorchL2,
    };
    let observer = ObserverConfig::qat_activation_int8();
    case.note(format!("{method:?}"));
    let (c, g) = (
        cpu.calibrate(&method, &observer),
        gpu.calibrate(&method, &observer),
    );
    match c {
        Ok(c) => assert_state_eq("calibrate", &c, &g.expect("calibrate")),
        Err(_) => expect_err("calibrate", g),
    }
}

/// A floating-point fake-quantization recorded on caller buffers at any offsets (16-bit tensors
/// at odd element offsets included), now and then invalid ones.
fn record_float<T: Element>(ctx: &GpuContext, rng: &mut Rng, case: &Case) {
    let mut shape = draw_shape(rng, 3000);
    if let Some(last) = shape.last_mut() {
        *last = 16 * (1 + rng.below(6));
    }
    let Some(config) = draw_float_config(rng, case, &shape) else {
        return;
    };
    let n = numel(&shape);
    case.note(format!("record_forward shape {shape:?}"));
    let gpu = match ctx.create_float_quant(&config, &shape) {
        Ok(g) => g,
        Err(e) => {
            let zeros = vec![T::from_f32(0.0); n];
            assert!(
                matches!(e, Error::TooLarge { .. })
                    || fake_quant_float(&config, &zeros, &shape).is_err(),
                "create_float_quant refused a shape the reference takes: {e}"
            );
            return;
        }
    };
    let scale = data_scale(rng);
    let x: Vec<T> = draw_data(rng, n, scale);
    let expected = fake_quant_float(&config, &x, &shape);
    let as_output = match &expected {
        Ok(e) => Ok(fakequant::FakeQuantOutput {
            y: e.y.clone(),
            mask: e.mask.clone(),
        }),
        Err(e) => Err(e.clone()),
    };
    if recorded_forward(
        ctx,
        rng,
        case,
        &x,
        as_output,
        |r| device_ok("record_forward", r),
        |encoder, x, y, mask| gpu.record_forward(encoder, x, &shape, y, mask),
    ) {
        let e = expected.expect("valid");
        assert_eq!(gpu.read_codes().expect("read codes"), e.codes, "codes");
        assert_eq!(gpu.read_scales().expect("read scales"), e.scales, "scales");
    }
}

// ---------------------------------------------------------------------------------------------
// The CPU backend: the same random (and invalid) inputs through the `Backend` calls, against the
// reference: the same bits, or an error where the reference errs.

const CPU_CASES: usize = 600;

#[test]
fn fuzz_cpu_backend() {
    run_cases("fuzz_cpu_backend", CPU_CASES, CPU_CASES, |i, rng, case| {
        let threads = 1 + i % 3;
        let mut cpu = fakequant::Cpu::with_threads(threads).expect("a pool");
        if i % 2 == 0 {
            cpu = cpu
                .with_instruction_set(fakequant::cpu::InstructionSet::Baseline)
                .expect("the baseline");
        }
        let dtype = pick(rng, &DTYPES);
        case.note(format!("{}, {dtype:?}", fakequant::Backend::name(&cpu)));
        match rng.below(6) {
            5 => with_dtype!(dtype, cpu_histogram(&cpu, rng, case)),
            0 => with_dtype!(dtype, cpu_fake_quant(&cpu, rng, case)),
            1 => with_dtype!(dtype, cpu_observer(&cpu, rng, case)),
            2 => with_dtype!(dtype, cpu_dynamic(&cpu, rng, case)),
            3 => with_dtype!(dtype, cpu_float(&cpu, rng, case)),
            _ => with_dtype!(dtype, cpu_lsq(&cpu, rng, case)),
        }
    });
}

/// Both sides' results: the same error variant, or the same value by `same`.
fn cpu_agrees<V, W>(
    what: &str,
    expected: fakequant::Result<V>,
    got: fakequant::Result<W>,
    same: impl FnOnce(V, W),
) {
    match (expected, got) {
        (Ok(e), Ok(g)) => same(e, g),
        (Err(e), Err(g)) => assert_eq!(variant(&e), variant(&g), "{what}: {e} vs {g}"),
        (e, g) => panic!(
            "{what}: the reference gave {:?}, the CPU backend {:?}",
            e.map(|_| ()),
            g.map(|_| ())
        ),
    }
}

fn cpu_fake_quant<T: Element>(cpu: &fakequant::Cpu, rng: &mut Rng, case: &Case) {
    let max = if rng.below(10) == 0 { 200_000 } else { 3000 };
    let shape = draw_shape(rng, max);
    let len = draw_len(rng, numel(&shape));
    case.note(format!("fake_quant shape {shape:?}, len {len}"));
    let Some((op, _)) = draw_op(rng, case, &shape) else {
        return;
    };
    let x: Vec<T> = draw_data(rng, len, op.params().scales()[0] * 40.0);
    let expected = reference::fake_quant(&op, &x, &shape);
    let mask = expected.as_ref().ok().map(|e| e.mask.clone());
    cpu_agrees(
        "fake_quant",
        expected,
        cpu.fake_quant(&op, &x, &shape),
        |e, g| {
            assert_elems_eq("y", &e.y, &g.y);
            assert_mask_eq("mask", &e.mask, &g.mask);
        },
    );
    let mask = mask.unwrap_or_else(|| PackedMask::from_bools(&vec![true; len]));
    let dy: Vec<T> = {
        let l = draw_len(rng, mask.len());
        draw_data(rng, l, 1.0)
    };
    case.note(format!("dy len {}", dy.len()));
    cpu_agrees(
        "ste_backward",
        reference::ste_backward(&dy, &mask),
        cpu.ste_backward(&dy, &mask),
        |e, g| assert_elems_eq("dx", &e, &g),
    );
}

fn cpu_observer<T: Element>(cpu: &fakequant::Cpu, rng: &mut Rng, case: &Case) {
    use fakequant::{Backend, ObserverOps};
    let shape = draw_shape(rng, 3000);
    let granularity = draw_granularity(rng, &shape);
    case.note(format!("observer shape {shape:?}"));
    let Some(config) = draw_observer_config(rng, case, granularity) else {
        return;
    };
    let (mut want, mut got) = match (
        Observer::new(config.clone(), &shape),
        cpu.create_observer(&config, &shape),
    ) {
        (Ok(w), Ok(g)) => (w, g),
        (w, g) => return cpu_agrees("create_observer", w, g, |_, _| {}),
    };
    for step in 0..1 + rng.below(4) {
        let shape = if rng.below(6) == 0 {
            draw_shape(rng, 3000)
        } else {
            shape.clone()
        };
        let len = draw_len(rng, numel(&shape));
        let x: Vec<T> = draw_data_scaled(rng, len);
        let what = rng.below(6);
        case.note(format!(
            "step {step}: op {what}, shape {shape:?}, len {len}"
        ));
        match what {
            0 => cpu_agrees(
                "observe",
                want.observe(&x, &shape),
                got.observe(&x, &shape),
                |_, _| {},
            ),
            1 => {
                let state = draw_state(rng, want.state());
                let (e, g) = (want.load_state(state.clone()), got.load_state(&state));
                cpu_agrees("load_state", e, g, |_, _| {});
            }
            _ => {
                let mode = draw_mode(rng);
                case.note(format!("{mode:?}"));
                cpu_agrees(
                    "step",
                    want.step(&x, &shape, mode),
                    got.step(&x, &shape, mode),
                    |e, g| {
                        assert_elems_eq("y", &e.y, &g.y);
                        assert_mask_eq("mask", &e.mask, &g.mask);
                    },
                );
            }
        }
        assert_state_eq(
            "state",
            want.state(),
            &got.read_state().expect("read_state"),
        );
    }
}

fn cpu_lsq<T: Element>(cpu: &fakequant::Cpu, rng: &mut Rng, case: &Case) {
    use fakequant::{Backend, LsqOps};
    let shape = draw_shape(rng, 3000);
    let granularity = draw_granularity(rng, &shape);
    case.note(format!("lsq shape {shape:?}"));
    let Some(config) = draw_lsq_config(rng, case, granularity) else {
        return;
    };
    let (scales, zero_points) = draw_lsq_params(rng, &config, &shape);
    let (mut want, mut got) = match (
        Lsq::new(config.clone(), &scales, &zero_points),
        cpu.create_lsq(&config, &scales, &zero_points),
    ) {
        (Ok(w), Ok(g)) => (w, g),
        (w, g) => return cpu_agrees("create_lsq", w, g, |_, _| {}),
    };
    for op in 0..1 + rng.below(3) {
        let shape = if rng.below(6) == 0 {
            draw_shape(rng, 3000)
        } else {
            shape.clone()
        };
        let len = draw_len(rng, numel(&shape));
        let x: Vec<T> = draw_data_scaled(rng, len);
        let what = rng.below(4);
        case.note(format!("op {op}: {what}, shape {shape:?}, len {len}"));
        match what {
            0 => {
                let dy: Vec<T> = {
                    let l = draw_len(rng, len);
                    draw_data(rng, l, 1.0)
                };
                cpu_agrees(
                    "backward",
                    want.backward(&x, &dy, &shape),
                    got.backward(&x, &dy, &shape),
                    |e, g| {
                        assert_elems_eq("dx", &e.dx, &g.dx);
                        assert_bits_eq("dscale", &[], &e.dscale, &g.dscale);
                        assert_bits_eq("dzero_point", &[], &e.dzero_point, &g.dzero_point);
                    },
                );
            }
            1 => cpu_agrees(
                "init_from_data",
                want.init_from_data(&x, &shape),
                got.init_from_data(&x, &shape),
                |e, g| assert_bits_eq("initial scales", &[], &e, &g),
            ),
            2 => {
                let count = draw_len(rng, want.scales().len());
                let s: Vec<f32> = (0..count).map(|_| draw_any_scale(rng)).collect();
                let z: Vec<f32> = (0..count)
                    .map(|_| draw_any_zero_point(rng, config.range()))
                    .collect();
                cpu_agrees(
                    "load_params",
                    want.load_params(&s, &z),
                    got.load_params(&s, &z),
                    |_, _| {},
                );
            }
            _ => cpu_agrees(
                "forward",
                want.forward(&x, &shape),
                got.forward(&x, &shape),
                |e, g| {
                    assert_elems_eq("y", &e.y, &g.y);
                    assert_mask_eq("mask", &e.mask, &g.mask);
                },
            ),
        }
        lsq_params_eq("parameters", &want, got.read_params().expect("read_params"));
    }
}

fn cpu_dynamic<T: Element>(cpu: &fakequant::Cpu, rng: &mut Rng, case: &Case) {
    use fakequant::Backend;
    let (config, shape) = draw_dynamic(rng, case);
    let (want, got) = match (
        Dynamic::new(config.clone(), &shape),
        cpu.create_dynamic(&config, &shape),
    ) {
        (Ok(w), Ok(g)) => (w, g),
        (w, g) => return cpu_agrees("create_dynamic", w, g, |_, _| {}),
    };
    for call in 0..1 + rng.below(3) {
        let shape = if call == 0 {
            shape.clone()
        } else {
            next_dynamic_shape(rng, &config, &shape)
        };
        let len = draw_len(rng, numel(&shape));
        case.note(format!("call {call}: shape {shape:?}, len {len}"));
        let x: Vec<T> = draw_dynamic_data(rng, len, data_group(&config, &shape));
        cpu_agrees(
            "forward",
            want.forward(&x, &shape),
            got.forward(&x, &shape),
            |e, g| assert_dynamic_eq("forward", &e, &g),
        );
    }
}

fn cpu_float<T: Element>(cpu: &fakequant::Cpu, rng: &mut Rng, case: &Case) {
    use fakequant::Backend;
    let max = if rng.below(10) == 0 { 150_000 } else { 3000 };
    let mut shape = draw_shape(rng, max);
    if rng.below(2) == 0 {
        // Often a last axis of whole blocks.
        if let Some(last) = shape.last_mut() {
            *last = 16 * (1 + rng.below(6));
        }
    }
    let Some(config) = draw_float_config(rng, case, &shape) else {
        return;
    };
    let (want, got) = match (
        fakequant::reference::float_quant::FloatQuant::new(config.clone(), &shape),
        cpu.create_float_quant(&config, &shape),
    ) {
        (Ok(w), Ok(g)) => (w, g),
        (w, g) => return cpu_agrees("create_float_quant", w, g, |_, _| {}),
    };
    for call in 0..1 + rng.below(2) {
        let shape = if call == 0 || rng.below(2) == 0 {
            shape.clone()
        } else {
            draw_shape(rng, 3000)
        };
        let len = draw_len(rng, numel(&shape));
        case.note(format!("call {call}: shape {shape:?}, len {len}"));
        let scale = data_scale(rng);
        let x: Vec<T> = draw_data(rng, len, scale);
        cpu_agrees(
            "float forward",
            want.forward(&x, &shape),
            got.forward(&x, &shape),
            |e, g| {
                assert_elems_eq("float y", &e.y, &g.y);
                assert_mask_eq("float mask", &e.mask, &g.mask);
                assert_eq!(e.codes, g.codes, "float codes");
                assert_eq!(e.scales, g.scales, "float scales");
            },
        );
    }
}

fn cpu_histogram<T: Element>(cpu: &fakequant::Cpu, rng: &mut Rng, case: &Case) {
    use fakequant::Backend;
    let max = if rng.below(10) == 0 { 150_000 } else { 3000 };
    let shape = draw_shape(rng, max);
    let bins = pick(rng, &[64, 128, 256, 300, 2048, 4096, 8192]);
    let domain = pick(rng, &[HistogramDomain::Magnitude, HistogramDomain::Signed]);
    let granularity = draw_granularity(rng, &shape);
    case.note(format!(
        "histogram {bins} {domain:?} {granularity:?}, shape {shape:?}"
    ));
    let Ok(config) = HistogramConfig::new(bins, domain, granularity) else {
        return;
    };
    let (mut want, mut got) = match (
        HistogramObserver::new(config, &shape),
        cpu.create_histogram_observer(&config, &shape),
    ) {
        (Ok(w), Ok(g)) => (w, g),
        (w, g) => return cpu_agrees("create_histogram_observer", w, g, |_, _| {}),
    };
    for batch in 0..1 + rng.below(3) {
        let shape = if rng.below(5) == 0 {
            draw_shape(rng, 3000)
        } else {
            shape.clone()
        };
        let len = draw_len(rng, numel(&shape));
        case.note(format!("batch {batch}: shape {shape:?}, len {len}"));
        let scale = data_scale(rng);
        let x: Vec<T> = draw_data(rng, len, scale);
        cpu_agrees(
            "histogram observe",
            want.observe(&x, &shape),
            got.observe(&x, &shape),
            |_, _| {},
        );
        assert_eq!(got.histograms(), want.histograms(), "histograms");
    }
    let method = if rng.below(2) == 0 {
        CalibrationMethod::Mse
    } else {
        CalibrationMethod::Percentile(99.9)
    };
    let observer = ObserverConfig::qat_activation_int8();
    cpu_agrees(
        "calibrate",
        want.calibrate(&method, &observer),
        got.calibrate(&method, &observer),
        |e, g| assert_state_eq("calibrated state", &e, &g),
    );
}
