//! LSQ against PyTorch's own outputs.
//!
//! `tests/data/pytorch_lsq.txt` holds the outputs of PyTorch 2.15 CPU (AVX512 kernels) for
//! `torch._fake_quantize_learnable_per_tensor_affine` and
//! `torch._fake_quantize_learnable_per_channel_affine` (forward and autograd backward) and the
//! module `_LearnableFakeQuantize` (four steps with gradient scaling), converted from the shared
//! `vectors.json` by `tests/data/convert_pytorch_vectors.py` (see its docstring for the format).
//!
//! The library is configured as PyTorch was called: the case's range and axis, its `grad_factor`
//! as `GradScale::Custom` (the module: `GradScale::Lsq`, checked equal to the module's factor), and
//! an `eps` that never clamps a scale PyTorch took as given (the ops: the smallest normal f32; the
//! module: its own eps, 2^-23); every scale in the data is checked to be its own effective scale.
//!
//! What is compared, and how (see REFERENCE.md section 1):
//!
//! - `y`: bit for bit on every finite input and on `+-inf`. NaN inputs: PyTorch maps them to the
//!   qmin side, the library keeps the NaN (both asserted).
//! - `dx`: bit for bit on every element except where PyTorch's backward decides "in range"
//!   differently from its own forward. A model of PyTorch's backward kernel ([`pytorch_element`]:
//!   `q = rint(fma(x, inv, zp_b))`, `zp_b = trunc(clamp(zp + 0.5))` per tensor, half-even per
//!   channel, NaN and overflow through x86's float -> int64 cast) must reproduce PyTorch's `dx`
//!   bits on every element. Each element where the library differs must then be either a
//!   zero-point exception (`rint(x * inv) + zp` and `rint(x * inv) + zp_b` straddle an edge of the
//!   range, `|zp_b - zp| = 1`) or a rounding-of-the-sum exception (`x * inv` within half an ulp,
//!   of itself or of `zp + x * inv`, of a half-integer, where rounding the sum once and rounding
//!   `x * inv` first can disagree); the counts of both, per kind and tag, are fixed.
//! - `dscale`, `dzero_point`: PyTorch sums its per-element terms in its own order. The model's
//!   terms must explain PyTorch's sums within the bound of f32 summation; where an element's
//!   PyTorch term differs from the library's by design (the decisions above, the edge
//!   `qmin - zp_b`, NaN / `+inf` / overflow taken as below qmin) the difference is accounted for
//!   exactly with the model, the library's own terms are checked element by element against its
//!   documented formulas, and its sums must agree with the corrected PyTorch sums within the bound
//!   of f32 summation and of the two orders of operations (see [`ReducedCheck`]). Cases with a NaN
//!   input: the library's reduced gradients are NaN (as documented); its backward on the same
//!   tensor without the NaN elements is compared instead.
//! - GPU vs CPU reference, on every adapter: forward (`y`, mask) and backward (`dx`, `dscale`,
//!   `dzero_point`) bit for bit on every case and step, specials included.

use crate::common;

use crate::common::vectors::{data_lines, hex_values, key_value, parse_hex_f32, Mismatches};

use std::collections::BTreeMap;

use fakequant::reference::lsq as reference;
use fakequant::{GradScale, LsqConfig, LsqGrads, QuantRange};

const DATA: &str = include_str!("../data/pytorch_lsq.txt");

/// What the data file must hold, so that the tests cannot silently check nothing.
const EXPECTED_CASES: usize = 89;
const EXPECTED_PER_TENSOR_CASES: usize = 72;
const EXPECTED_PER_CHANNEL_CASES: usize = 16;
const EXPECTED_MODULE_CASES: usize = 1;
const EXPECTED_STEPS: usize = 92;
const EXPECTED_ELEMENTS: usize = 20_079;
const EXPECTED_NAN_INPUTS: usize = 48;
const EXPECTED_INF_INPUTS: usize = 48;
/// Finite inputs with `|x * inv| >= 2^62` (all in the per-tensor `specials` cases).
const EXPECTED_HUGE_INPUTS: usize = 216;

/// `dx` elements where the library differs from PyTorch because PyTorch's per-tensor backward
/// rounds the zero point as `trunc(clamp(zp + 0.5))`, not half to even as its forward: each at an
/// edge of the range, in a case where the two zero points differ by one.
const EXPECTED_ZERO_POINT_EXCEPTIONS: usize = 193;
/// `dx` elements where the library differs from PyTorch because PyTorch's backward rounds
/// `zp + x * inv` as one f32 value (in one FMA) where the library rounds `x * inv`: each with
/// `x * inv` within half an ulp (of itself or of the sum) of a half-integer.
const EXPECTED_SUM_ROUNDING_EXCEPTIONS: usize = 171;
/// Of those, the ones that a non-fused `zp + fl(x * inv)` would not produce.
const EXPECTED_FMA_ONLY_EXCEPTIONS: usize = 4;
/// Elements where the model WITHOUT the FMA would get PyTorch's `dx` wrong (the FMA is real).
const EXPECTED_FMA_VISIBLE_IN_DX: usize = 14;
/// Elements whose PyTorch gradient terms differ from the library's by design, per reason.
const EXPECTED_BY_DESIGN: &[(&str, usize)] = &[
    ("NaN input", 48),
    ("edge side (+inf / overflow below qmin)", 116),
    ("edge value (backward zero point)", 439),
    ("in-range level (rounding of zp + x*inv)", 3005),
    ("range decision (dx exceptions)", 364),
];
/// The dx exceptions per (kind, tag, cause): none in the module case, none from the rounding of
/// the sum on random data.
const EXPECTED_EXCEPTIONS_BY: &[(&str, &str, &str, usize)] = &[
    ("PerChannel", "adversarial", "rounding of zp + x*inv", 2),
    ("PerTensor", "adversarial", "rounding of zp + x*inv", 169),
    ("PerTensor", "adversarial", "zero point", 172),
    ("PerTensor", "random", "zero point", 21),
];
/// (step, channel) pairs: each has a dscale and a dzero_point.
const EXPECTED_REDUCED_CHANNEL_STEPS: usize = 204;

/// An empirical guard on top of the a-priori bound of [`ReducedCheck`]: the model's terms summed
/// in f64 must be within this many `u sum|b_i|` of PyTorch's reduced gradient on every channel
/// (measured: at most 2.93; a sum in any order may be off by up to `n u sum|b_i|`, 256 to 380 u
/// here, which would hide a perturbed reduced gradient of the data).
const MODEL_SUM_GUARD_U: f64 = 4.0;

const PER_TENSOR_OP: &str = "_fake_quantize_learnable_per_tensor_affine";
const PER_CHANNEL_OP: &str = "_fake_quantize_learnable_per_channel_affine";
const MODULE_OP: &str = "_LearnableFakeQuantize";

/// Unit roundoff of f32.
const U: f64 = 1.0 / (1u64 << 24) as f64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    PerTensor,
    PerChannel,
    Module,
}

#[derive(Debug)]
struct Step {
    scales: Vec<f32>,
    zero_points: Vec<f32>,
    x: Vec<f32>,
    dy: Vec<f32>,
    y: Vec<f32>,
    dx: Vec<f32>,
    dscale: Vec<f32>,
    dzero_point: Vec<f32>,
}

#[derive(Debug)]
struct Case {
    name: String,
    op: String,
    tags: Vec<String>,
    kind: Kind,
    qmin: i32,
    qmax: i32,
    axis: Option<usize>,
    channels: usize,
    /// `true`: the module's gradient scaling (`GradScale::Lsq`); `false`: the op's argument.
    lsq_grad_scale: bool,
    grad_factor: f32,
    shape: Vec<usize>,
    steps: Vec<Step>,
}

impl Case {
    fn range(&self) -> QuantRange {
        QuantRange::new(self.qmin, self.qmax)
            .unwrap_or_else(|e| panic!("{}: invalid range: {e}", self.name))
    }

    /// The library configured as PyTorch was called (see the module docs).
    fn config(&self) -> LsqConfig {
        let grad_scale = if self.lsq_grad_scale {
            GradScale::Lsq
        } else {
            GradScale::Custom(self.grad_factor)
        };
        // The ops take the scale as given: the smallest eps the library allows. The module
        // clamps to its eps, f32 machine epsilon (when its observer does not set the scale).
        let eps = match self.kind {
            Kind::Module => f32::EPSILON,
            Kind::PerTensor | Kind::PerChannel => f32::MIN_POSITIVE,
        };
        LsqConfig::new(self.range(), crate::common::granularity_of(self.axis))
            .and_then(|c| c.with_grad_scale(grad_scale))
            .and_then(|c| c.with_eps(eps))
            .unwrap_or_else(|e| panic!("{}: invalid LSQ config: {e}", self.name))
    }

    fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The channel of flat element `i`.
    fn channel_of(&self, i: usize) -> usize {
        match self.axis {
            None => 0,
            Some(axis) => {
                let inner: usize = self.shape[axis + 1..].iter().product();
                (i / inner) % self.shape[axis]
            }
        }
    }

    fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// The zero point PyTorch's backward kernel uses for learnable zero point `z`: per tensor
    /// `static_cast<int64_t>(min(max(z + 0.5f, qmin), qmax))`, per channel
    /// `round(z).clamp(qmin, qmax)` (half to even, as the forward).
    fn pytorch_backward_zero_point(&self, z: f32) -> f32 {
        match self.kind {
            Kind::PerTensor | Kind::Module => (z + 0.5)
                .max(self.qmin as f32)
                .min(self.qmax as f32)
                .trunc(),
            Kind::PerChannel => z
                .round_ties_even()
                .max(self.qmin as f32)
                .min(self.qmax as f32),
        }
    }
}

fn parse_cases(text: &str) -> Vec<Case> {
    let mut lines = data_lines(text);
    let mut cases = Vec::new();
    while let Some(header) = lines.next() {
        let mut fields = header.split_ascii_whitespace();
        assert_eq!(
            fields.next(),
            Some("case"),
            "expected a `case` line, found {header:.80?}"
        );
        let name = fields.next().expect("case without a name").to_string();
        let op = fields
            .next()
            .unwrap_or_else(|| panic!("{name}: no op"))
            .to_string();
        let tags = fields
            .next()
            .unwrap_or_else(|| panic!("{name}: no tags"))
            .split(',')
            .map(str::to_string)
            .collect();
        let int = |s: &str| -> i64 {
            s.parse()
                .unwrap_or_else(|e| panic!("{name}: bad integer {s:?}: {e}"))
        };
        let kind = match key_value(&name, fields.next(), "kind") {
            "per_tensor" => Kind::PerTensor,
            "per_channel" => Kind::PerChannel,
            "module" => Kind::Module,
            k => panic!("{name}: unknown kind {k:?}"),
        };
        let qmin = int(key_value(&name, fields.next(), "qmin")) as i32;
        let qmax = int(key_value(&name, fields.next(), "qmax")) as i32;
        let axis = match key_value(&name, fields.next(), "axis") {
            "none" => None,
            a => Some(int(a) as usize),
        };
        let channels = int(key_value(&name, fields.next(), "channels")) as usize;
        let lsq_grad_scale = match key_value(&name, fields.next(), "grad_scale") {
            "lsq" => true,
            "custom" => false,
            g => panic!("{name}: unknown grad_scale {g:?}"),
        };
        let grad_factor = parse_hex_f32(
            &name,
            "grad_factor",
            key_value(&name, fields.next(), "grad_factor"),
        );
        let step_count = int(key_value(&name, fields.next(), "steps")) as usize;
        let shape: Vec<usize> = key_value(&name, fields.next(), "shape")
            .split('x')
            .map(|d| int(d) as usize)
            .collect();
        assert_eq!(fields.next(), None, "{name}: trailing fields in the header");

        let mut steps = Vec::new();
        for k in 0..step_count {
            let step_line = lines
                .next()
                .unwrap_or_else(|| panic!("{name}: file ends before step {k}"));
            assert_eq!(step_line, format!("step {k}"), "{name}: step header");
            steps.push(Step {
                scales: hex_values(&name, "scale", lines.next()),
                zero_points: hex_values(&name, "zp", lines.next()),
                x: hex_values(&name, "x", lines.next()),
                dy: hex_values(&name, "dy", lines.next()),
                y: hex_values(&name, "y", lines.next()),
                dx: hex_values(&name, "dx", lines.next()),
                dscale: hex_values(&name, "dscale", lines.next()),
                dzero_point: hex_values(&name, "dzp", lines.next()),
            });
        }
        assert_eq!(lines.next(), Some("end"), "{name}: missing `end`");
        let case = Case {
            name,
            op,
            tags,
            kind,
            qmin,
            qmax,
            axis,
            channels,
            lsq_grad_scale,
            grad_factor,
            shape,
            steps,
        };
        validate(&case);
        cases.push(case);
    }
    cases
}

fn validate(case: &Case) {
    let name = &case.name;
    let numel = case.numel();
    assert!(numel > 0, "{name}: empty shape");
    assert!(!case.steps.is_empty(), "{name}: no step");
    match (case.op.as_str(), case.kind, case.axis) {
        (PER_TENSOR_OP, Kind::PerTensor, None) | (MODULE_OP, Kind::Module, None) => {
            assert_eq!(case.channels, 1, "{name}: per-tensor channel count");
        }
        (PER_CHANNEL_OP, Kind::PerChannel, Some(axis)) => {
            assert!(axis < case.shape.len(), "{name}: axis out of range");
            assert_eq!(case.channels, case.shape[axis], "{name}: channel count");
        }
        (op, kind, axis) => panic!("{name}: unexpected op {op} with kind {kind:?} axis {axis:?}"),
    }
    assert_eq!(
        case.kind == Kind::Module,
        case.steps.len() > 1,
        "{name}: only the module has several steps"
    );
    assert_eq!(case.lsq_grad_scale, case.kind == Kind::Module, "{name}");
    assert!(
        case.grad_factor.is_finite() && case.grad_factor > 0.0,
        "{name}: grad_factor"
    );
    for (k, step) in case.steps.iter().enumerate() {
        for (role, len) in [
            ("x", step.x.len()),
            ("dy", step.dy.len()),
            ("y", step.y.len()),
            ("dx", step.dx.len()),
        ] {
            assert_eq!(
                len, numel,
                "{name}: step {k}: {role} has {len} elements, shape {:?}",
                case.shape
            );
        }
        for (role, len) in [
            ("scale", step.scales.len()),
            ("zp", step.zero_points.len()),
            ("dscale", step.dscale.len()),
            ("dzp", step.dzero_point.len()),
        ] {
            assert_eq!(len, case.channels, "{name}: step {k}: {role} count");
        }
        assert!(
            step.dy.iter().all(|v| v.is_finite() && *v != 0.0),
            "{name}: step {k}: dy must be finite and nonzero (dx then tells the decision)"
        );
        assert!(
            step.scales
                .iter()
                .all(|s| s.is_normal() && *s >= f32::EPSILON),
            "{name}: step {k}: scales must be normal and at least 2^-23"
        );
        assert!(
            step.zero_points.iter().all(|z| z.is_finite()),
            "{name}: step {k}: zero points must be finite"
        );
    }
}

fn cases() -> Vec<Case> {
    let cases = parse_cases(DATA);
    let count = |kind: Kind| cases.iter().filter(|c| c.kind == kind).count();
    assert_eq!(cases.len(), EXPECTED_CASES, "number of PyTorch cases");
    assert_eq!(count(Kind::PerTensor), EXPECTED_PER_TENSOR_CASES);
    assert_eq!(count(Kind::PerChannel), EXPECTED_PER_CHANNEL_CASES);
    assert_eq!(count(Kind::Module), EXPECTED_MODULE_CASES);
    let steps: usize = cases.iter().map(|c| c.steps.len()).sum();
    assert_eq!(steps, EXPECTED_STEPS, "number of steps");
    let elements: usize = cases.iter().flat_map(|c| &c.steps).map(|s| s.x.len()).sum();
    assert_eq!(elements, EXPECTED_ELEMENTS, "number of PyTorch elements");
    cases
}

/// This test's comparisons on the shared collector: a trait of this module (the PyTorch test
/// modules share one binary, so each adds its own methods through a trait of its own).
trait LsqChecks {
    /// Compares bits and records a mismatch with the case, step, index and input bits.
    #[allow(clippy::too_many_arguments)]
    fn bits(
        &mut self,
        what: &str,
        case: &Case,
        step: usize,
        i: usize,
        input: f32,
        expected: f32,
        actual: f32,
    );
}

impl LsqChecks for Mismatches {
    fn bits(
        &mut self,
        what: &str,
        case: &Case,
        step: usize,
        i: usize,
        input: f32,
        expected: f32,
        actual: f32,
    ) {
        if expected.to_bits() != actual.to_bits() {
            self.push(what, &case.name, format!(
                "{what}: case {} step {step} [{i}] x={:#010x} ({:e}) expected {:#010x} ({:e}) actual {:#010x} ({:e})",
                case.name,
                input.to_bits(),
                input,
                expected.to_bits(),
                expected,
                actual.to_bits(),
                actual
            ));
        }
    }
}

/// What PyTorch's CPU backward kernel computes for one element.
#[derive(Debug, Clone, Copy)]
struct PtElement {
    /// The kernel's `xqi`: `nearbyint(zp_b + x * inv)` through a float -> int64 cast.
    xqi: i64,
    in_range: bool,
    dx: f32,
    /// The element's dscale term, grad_factor included.
    dscale: f32,
    /// The element's dzero_point term, grad_factor included.
    dzero_point: f32,
}

/// x86's float -> int64 conversion (`cvttss2si`, what the kernel's implicit conversion of
/// `nearbyint(..)` compiles to): NaN and out-of-range values give INT64_MIN.
fn x86_f32_to_i64(r: f32) -> i64 {
    let limit = 2f32.powi(63);
    if r.is_nan() || r >= limit || r < -limit {
        i64::MIN
    } else {
        r as i64
    }
}

/// PyTorch 2.15's learnable backward kernel for one element (`QuantizedOpKernels.cpp`,
/// `fake_quantize_learnable_tensor_grad_kernel_cpu` and its per-channel twin), evaluated in f32
/// operation by operation. `zp_b` is the backward's zero point. `fma`: the compiler's contractions
/// in the AVX2/AVX512 builds, `zp_b + x * inv` rounded once and `xfq - x` (with
/// `xfq = (xqi - zp) * s`) rounded once; without it, every operation is rounded.
///
/// Evidence for both: with the first the model reproduces PyTorch's `dx` on every element, where
/// the uncontracted model misses some (`EXPECTED_FMA_VISIBLE_IN_DX`); with the second, the f64
/// sum of the model's terms is within `3 u sum|b_i|` of PyTorch's dscale on every channel
/// (measured; `cpu_reference_matches_pytorch_lsq` reports it), against `91 u` without it.
fn pytorch_element(
    x: f32,
    dy: f32,
    scale: f32,
    zp_b: f32,
    (qmin, qmax): (i32, i32),
    grad_factor: f32,
    fma: bool,
) -> PtElement {
    let inv = 1.0f32 / scale;
    let t = if fma {
        x.mul_add(inv, zp_b)
    } else {
        zp_b + x * inv
    };
    let xqi = x86_f32_to_i64(t.round_ties_even());
    pytorch_terms(x, dy, scale, xqi, zp_b, (qmin, qmax), grad_factor, fma)
}

/// The library's decision with PyTorch's gradient formulas: the kernel's terms for the level the
/// library's forward decides (`rint(x * inv) + zp`, `+-inf` and overflow saturated to their side)
/// and its zero point. This is the library's documented per-element semantics in PyTorch's
/// order of operations; `None` for NaN.
fn library_model_element(
    x: f32,
    dy: f32,
    scale: f32,
    zp: i32,
    (qmin, qmax): (i32, i32),
    grad_factor: f32,
) -> Option<PtElement> {
    let q = library_level(x, scale, zp)?;
    // `as` saturates: +inf and huge values above the range, -inf below.
    let xqi = q as i64;
    Some(pytorch_terms(
        x,
        dy,
        scale,
        xqi,
        zp as f32,
        (qmin, qmax),
        grad_factor,
        true,
    ))
}

/// The kernel's per-element formulas once it has decided `xqi` (zero point included):
/// `dx = dy * (in range)`; in range `dscale = ((dy * (xfq - x)) * inv) * gf` with
/// `xfq = (xqi - zp) * s` (`xfq - x` in one FMA when `contract`), `dzp = 0`; out of range
/// `dscale = (dy * (qmin|qmax - zp)) * gf`, `dzp = ((dy * -1) * s) * gf`.
#[allow(clippy::too_many_arguments)]
fn pytorch_terms(
    x: f32,
    dy: f32,
    scale: f32,
    xqi: i64,
    zp: f32,
    (qmin, qmax): (i32, i32),
    grad_factor: f32,
    contract: bool,
) -> PtElement {
    let inv = 1.0f32 / scale;
    let (qmin, qmax) = (qmin as i64, qmax as i64);
    let in_range = qmin <= xqi && xqi <= qmax;
    let dx = dy * if in_range { 1.0 } else { 0.0 };
    if in_range {
        let level = (xqi - zp as i64) as f32;
        let diff = if contract {
            level.mul_add(scale, -x)
        } else {
            level * scale - x
        };
        PtElement {
            xqi,
            in_range,
            dx,
            dscale: ((dy * diff) * inv) * grad_factor,
            dzero_point: 0.0,
        }
    } else {
        let edge = if xqi < qmin { qmin } else { qmax } as f32 - zp;
        PtElement {
            xqi,
            in_range,
            dx,
            dscale: (dy * edge) * grad_factor,
            // The kernel's `dy * (-1)` is exactly `-dy`.
            dzero_point: (-dy * scale) * grad_factor,
        }
    }
}

/// Where the library's quotient lands, as its forward forms it: `rint(x * inv) + zp` in f64
/// (`+-inf` on its side), `None` for NaN.
fn library_level(x: f32, scale: f32, zp: i32) -> Option<f64> {
    if x.is_nan() {
        None
    } else {
        Some((x * (1.0f32 / scale)).round_ties_even() as f64 + zp as f64)
    }
}

/// PyTorch's backward decision without its rounding of the sum: `rint(x * inv) + zp_b` in
/// exact arithmetic (the library's forward, with the backward's zero point).
fn separate_in_range(x: f32, scale: f32, zp_b: f32, (qmin, qmax): (i32, i32)) -> bool {
    let q = (x * (1.0f32 / scale)).round_ties_even() as f64 + zp_b as f64;
    qmin as f64 <= q && q <= qmax as f64
}

/// The distance from the exact product `p = x * inv` to the nearest half-integer, and one f32 ulp
/// at the larger of `|p|` and `|zp + p|`: the library rounds `p` (error at most half an ulp of
/// `p`), PyTorch's FMA rounds `zp + p` (half an ulp of the sum); their roundings can only land on
/// different sides of a half-integer (or one on it) when `p` is within half the larger ulp of it.
fn tie_distance(x: f32, scale: f32, zp: f32) -> (f64, f64) {
    let inv = 1.0f32 / scale;
    let p = x as f64 * inv as f64; // exact: 24 x 24 bits
    let distance = (p - (p.floor() + 0.5)).abs();
    let magnitude = p.abs().max((zp as f64 + p).abs()) as f32;
    let ulp = (f32::from_bits(magnitude.to_bits() + 1) - magnitude) as f64;
    (distance, ulp)
}

/// How far the library's `g t` may be from the model's `m` for one element: relative `6 u` (at
/// most 5 roundings between the two orders, see [`ReducedCheck`]); for an element in range,
/// `u |dy y inv g|` more, as PyTorch forms `xfq - x` in one rounding where the library rounds
/// `y = xfq` first (`y` is its forward output) and then subtracts; and for terms near the bottom
/// of the f32 range (inputs near zero), the absolute error (at most `2^-150`) of each rounding that
/// may underflow, carried through the multiplications after it: PyTorch's `dy * d` by
/// `inv * gf`, `* inv` and `(dy * edge)` by `gf`, its last `* gf` by 1; the library's `d * inv`
/// by `dy * g`, `dy * ..` by `g`.
fn element_tolerance(m: f32, t: f32, g: f32, dy: f32, inv: f32, y: Option<f32>) -> f64 {
    let (g, dy, inv) = (g as f64, (dy as f64).abs(), (inv as f64).abs());
    let relative = 6.0 * U * (m as f64).abs().max((t as f64 * g).abs());
    let contraction = y.map_or(0.0, |y| U * dy * (y as f64).abs() * inv * g);
    relative + contraction + 2f64.powi(-150) * (inv * g + 2.0 * g + 1.0 + dy * g + g)
}

/// `err <= bound`, false for NaN.
fn within(err: f64, bound: f64) -> bool {
    err <= bound
}

fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U;
    nu / (1.0 - nu)
}

/// One reduced gradient (one channel of dscale or dzero_point) of the library against PyTorch's.
///
/// Per element, `b_i` is PyTorch's term (the model of its kernel, grad_factor included), `m_i` the
/// term of the same formulas with the library's decisions ([`library_model_element`]), and `t_i`
/// the library's own (`element_grads`, before its factor `g`). Where nothing differs by design,
/// `m_i == b_i` (asserted); elsewhere `m_i - b_i` is what the documented differences account for.
///
/// - The model: `|pytorch - sum_i b_i| <= gamma_n sum|b_i|` (the f64 sum of the model's terms;
///   `gamma_n = n u / (1 - n u)` bounds any order of summation of `n` f32 terms).
/// - The library: with `corrected = pytorch + sum_i (m_i - b_i)` (in f64; a NaN input contributes
///   `-b_i`, the library's sum being taken without it),
///   `|ours - corrected| <= gamma_n (sum|b_i| + g sum|t_i|) + u |ours| + sum_i e_i + slack`:
///   both summation errors, the library's final multiplication by `g`, and `e_i`, the
///   per-element difference between `g t_i` and `m_i` ([`element_tolerance`], also asserted per
///   element): the library rounds `dy * ((y - x) * inv)`, `dy * edge`, `-dy * s` and multiplies
///   by `g` after the sum, PyTorch rounds `((dy * fma(k, s, -x)) * inv) * gf`, `(dy * edge) * gf`,
///   `((dy * -1) * s) * gf`.
#[derive(Default)]
struct ReducedCheck {
    sum_abs_pt: f64,
    sum_abs_ours: f64,
    elementwise: f64,
    correction: f64,
    /// `sum_i b_i`, in f64.
    model_sum: f64,
    n: usize,
    /// Elements whose PyTorch term differs from the library's by design.
    by_design: usize,
}

impl ReducedCheck {
    /// Adds one element: PyTorch's term `b`, the library-decision model's `m` (`None` for NaN),
    /// the library's `t`, and the tolerance of `g t` against `m` (see [`element_tolerance`]).
    fn add(&mut self, (b, m, t): (f32, Option<f32>, f32), g: f32, tolerance: f64, by_design: bool) {
        self.by_design += by_design as usize;
        let ours_scaled = t as f64 * g as f64;
        self.n += 1;
        self.sum_abs_pt += (b as f64).abs();
        self.model_sum += b as f64;
        let Some(m) = m else {
            // Left out of the library's sum (see `ReducedCheck`).
            self.correction -= b as f64;
            return;
        };
        self.sum_abs_ours += ours_scaled.abs();
        self.correction += m as f64 - b as f64;
        self.elementwise += tolerance;
    }

    /// `(|pytorch - sum b_i|, its bound)`.
    fn evaluate_model(&self, pytorch: f32) -> (f64, f64) {
        let bound = gamma(self.n) * self.sum_abs_pt + 2f64.powi(-40) * self.sum_abs_pt;
        ((pytorch as f64 - self.model_sum).abs(), bound)
    }

    /// `(|ours - corrected|, bound, corrected)`.
    fn evaluate(&self, pytorch: f32, ours: f32) -> (f64, f64, f64) {
        let corrected = pytorch as f64 + self.correction;
        let bound = gamma(self.n) * (self.sum_abs_pt + self.sum_abs_ours)
            + U * (ours as f64).abs()
            + self.elementwise
            + 2f64.powi(-40) * (self.sum_abs_pt + self.sum_abs_ours);
        ((ours as f64 - corrected).abs(), bound, corrected)
    }
}

#[test]
fn data_file_has_the_expected_cases() {
    let cases = cases();
    let inputs = || cases.iter().flat_map(|c| &c.steps).flat_map(|s| &s.x);
    assert_eq!(inputs().filter(|v| v.is_nan()).count(), EXPECTED_NAN_INPUTS);
    assert_eq!(
        inputs().filter(|v| v.is_infinite()).count(),
        EXPECTED_INF_INPUTS
    );
    let mut huge = 0usize;
    for case in &cases {
        let config = case.config();
        let numel = case.numel();
        // Every case is marked fp-order-sensitive (PyTorch's backward uses an FMA).
        assert!(case.has_tag("fp-order-sensitive"), "{}: tags", case.name);
        if case.lsq_grad_scale {
            // The module's 1/sqrt(numel * quant_max), rounded to f32, is the library's.
            assert_eq!(
                config.grad_factor(numel).to_bits(),
                case.grad_factor.to_bits(),
                "{}: LSQ gradient factor",
                case.name
            );
        } else {
            assert_eq!(config.grad_factor(numel), case.grad_factor, "{}", case.name);
        }
        for step in &case.steps {
            // No scale is clamped by eps: every scale is its own effective scale.
            for &s in &step.scales {
                assert_eq!(reference::effective_scale(&config, s), s, "{}", case.name);
            }
            // Non-finite inputs only in `specials` cases.
            let specials = step.x.iter().any(|v| !v.is_finite());
            assert_eq!(specials, case.has_tag("specials"), "{}: tags", case.name);
            for (i, &x) in step.x.iter().enumerate() {
                let s = step.scales[case.channel_of(i)];
                if x.is_finite() && (x as f64 / s as f64).abs() >= 2f64.powi(62) {
                    assert_eq!(case.kind, Kind::PerTensor, "{}", case.name);
                    huge += 1;
                }
            }
        }
    }
    assert_eq!(
        huge, EXPECTED_HUGE_INPUTS,
        "finite inputs with |x * inv| >= 2^62"
    );
    // The three zero point roundings meet in the data: ties (2.5, 0.5), a negative non-integer
    // (-1.7), integers inside and outside the range.
    let zps: Vec<f32> = cases
        .iter()
        .filter(|c| c.kind == Kind::PerTensor)
        .map(|c| c.steps[0].zero_points[0])
        .collect();
    for z in [2.5f32, 0.5, -1.7, -3.0, -131.0, 98.0] {
        assert!(zps.contains(&z), "a per-tensor case with zero point {z}");
    }
}

/// Counts and extremes over the whole data set, for the final assertions and the report.
#[derive(Default)]
struct Tally {
    y_compared: usize,
    y_nan: usize,
    dx_compared: usize,
    /// dx exceptions: PyTorch's backward zero point differs from its forward's.
    zero_point_exceptions: usize,
    /// dx exceptions: PyTorch rounds `zp + x * inv` as one value, at a tie.
    sum_rounding_exceptions: usize,
    /// Of those, the ones that a non-fused f32 sum would not produce (only the FMA does).
    fma_only_exceptions: usize,
    /// Elements where the model without the FMA gets PyTorch's dx wrong.
    fma_visible: usize,
    /// dx exceptions per (kind, tag, cause), for the report.
    exceptions_by: BTreeMap<(String, String, &'static str), usize>,
    /// Largest `|x * inv - (n + 1/2)| / ulp` (see [`tie_distance`]) over the rounding-of-the-sum
    /// differences (dx exceptions and in-range level differences).
    max_tie_ratio: f64,
    /// Elements whose PyTorch gradient terms differ from the library's by design, per reason.
    by_design: BTreeMap<&'static str, usize>,
    reduced_compared: usize,
    reduced_nan_steps: usize,
    max_bound_ratio: f64,
    /// `|pytorch - sum b_i| / sum|b_i|`: how well the model's terms explain PyTorch's sums.
    max_model_error: f64,
    /// `|ours - corrected| / (sum|b_i| + g sum|t_i|)`.
    max_normalized_error: f64,
    max_relative_corrected: f64,
    /// `|ours - pytorch| / |pytorch|` where no term differs by design, and anywhere.
    max_relative_raw_clean: f64,
    max_relative_raw_any: f64,
}

impl Tally {
    fn note_exception(&mut self, case: &Case, cause: &'static str) {
        let tag = case
            .tags
            .iter()
            .find(|t| *t != "fp-order-sensitive")
            .cloned()
            .unwrap_or_default();
        *self
            .exceptions_by
            .entry((format!("{:?}", case.kind), tag, cause))
            .or_default() += 1;
    }
}

/// Checks that `x * inv` is within half an ulp (see [`tie_distance`]) of a half-integer, where
/// rounding `zp_b + x * inv` once and rounding `x * inv` first can differ.
fn check_tie(
    bad: &mut Mismatches,
    tally: &mut Tally,
    case: &Case,
    (k, i): (usize, usize),
    x: f32,
    scale: f32,
    zp_b: f32,
) {
    let (distance, ulp) = tie_distance(x, scale, zp_b);
    tally.max_tie_ratio = tally.max_tie_ratio.max(distance / ulp);
    if distance > ulp / 2.0 {
        bad.push(
            "rounding of zp + x*inv away from a tie",
            &case.name,
            format!(
                "case {} step {k} [{i}] x={:#010x}: |x*inv - (n+1/2)| = {distance:e} > ulp/2 = {:e}",
                case.name,
                x.to_bits(),
                ulp / 2.0
            ),
        );
    }
}

/// Compares one step of one case with PyTorch (see the module docs).
fn check_step(case: &Case, k: usize, bad: &mut Mismatches, tally: &mut Tally) {
    let step = &case.steps[k];
    let config = case.config();
    let range = case.range();
    let (qmin, qmax) = (case.qmin, case.qmax);
    let fwd = reference::forward(
        &config,
        &step.x,
        &case.shape,
        &step.scales,
        &step.zero_points,
    )
    .unwrap_or_else(|e| panic!("{}: reference forward failed: {e}", case.name));
    let mask = fwd.mask;
    let grads = reference::backward(
        &config,
        &step.x,
        &step.dy,
        &case.shape,
        &step.scales,
        &step.zero_points,
    )
    .unwrap_or_else(|e| panic!("{}: reference backward failed: {e}", case.name));
    let g = config.grad_factor(step.x.len());
    let mut scale_checks: Vec<ReducedCheck> = (0..case.channels)
        .map(|_| ReducedCheck::default())
        .collect();
    let mut zp_checks: Vec<ReducedCheck> = (0..case.channels)
        .map(|_| ReducedCheck::default())
        .collect();

    for (i, (&x, &dy)) in step.x.iter().zip(&step.dy).enumerate() {
        let c = case.channel_of(i);
        let s = reference::effective_scale(&config, step.scales[c]);
        let zp = reference::effective_zero_point(&config, step.zero_points[c]);
        // PyTorch's forward zero point (nearbyint, clamped) is the library's.
        assert_eq!(
            (step.zero_points[c].round_ties_even() as i32).clamp(qmin, qmax),
            zp,
            "{}",
            case.name
        );
        let zp_b = case.pytorch_backward_zero_point(step.zero_points[c]);
        let pt = pytorch_element(x, dy, s, zp_b, (qmin, qmax), case.grad_factor, true);
        let pt_plain = pytorch_element(x, dy, s, zp_b, (qmin, qmax), case.grad_factor, false);

        // y: bit for bit on every input but NaN, which PyTorch sends to the qmin side.
        if x.is_nan() {
            assert!(fwd.y[i].is_nan(), "{}: a NaN input keeps NaN", case.name);
            bad.bits(
                "PyTorch y of a NaN input (qmin side)",
                case,
                k,
                i,
                x,
                (qmin - zp) as f32 * s,
                step.y[i],
            );
            tally.y_nan += 1;
        } else {
            bad.bits("y vs PyTorch", case, k, i, x, step.y[i], fwd.y[i]);
            tally.y_compared += 1;
        }

        // dx. The model must reproduce PyTorch on every element.
        bad.bits("model dx vs PyTorch", case, k, i, x, step.dx[i], pt.dx);
        if pt_plain.dx.to_bits() != step.dx[i].to_bits() {
            tally.fma_visible += 1;
        }
        let ours_in = mask.get(i).unwrap();
        let (ours_dx, ours_ds, ours_dz) = reference::element_grads(x, dy, s, zp, range);
        assert_eq!(ours_dx.to_bits(), grads.dx[i].to_bits(), "{}", case.name);
        tally.dx_compared += 1;
        if ours_in == pt.in_range {
            bad.bits("dx vs PyTorch", case, k, i, x, step.dx[i], grads.dx[i]);
        } else {
            // An exception: the backward's zero point, or its rounding of zp + x*inv at a tie.
            let level = library_level(x, s, zp).expect("NaN is out of range on both sides");
            if separate_in_range(x, s, zp_b, (qmin, qmax)) != ours_in {
                // rint(x*inv) + zp and rint(x*inv) + zp_b straddle an edge of the range.
                let at_edge = [qmin - 1, qmin, qmax, qmax + 1].contains(&(level as i32));
                if zp_b == zp as f32 || (zp_b - zp as f32).abs() != 1.0 || !at_edge {
                    bad.push(
                        "dx exception not explained by the zero point",
                        &case.name,
                        format!(
                            "case {} step {k} [{i}] x={:#010x} zp {zp} zp_b {zp_b} level {level}",
                            case.name,
                            x.to_bits()
                        ),
                    );
                }
                tally.zero_point_exceptions += 1;
                tally.note_exception(case, "zero point");
            } else {
                check_tie(bad, tally, case, (k, i), x, s, zp_b);
                tally.sum_rounding_exceptions += 1;
                tally.note_exception(case, "rounding of zp + x*inv");
                if pt_plain.in_range == ours_in {
                    tally.fma_only_exceptions += 1;
                }
            }
            if step.dx[i].to_bits() == grads.dx[i].to_bits() {
                bad.push(
                    "dx exception with equal bits",
                    &case.name,
                    format!("case {} step {k} [{i}]", case.name),
                );
            }
        }

        // The per-element gradient terms, and whether PyTorch's differs from ours by design.
        let design = match library_level(x, s, zp) {
            None => Some("NaN input"),
            Some(_) if ours_in != pt.in_range => Some("range decision (dx exceptions)"),
            Some(q) if ours_in => {
                // Both in range: PyTorch's level rint(zp_b + x*inv) - zp_b against rint(x*inv).
                let differs = pt.xqi - zp_b as i64 != q as i64 - zp as i64;
                if differs {
                    check_tie(bad, tally, case, (k, i), x, s, zp_b);
                }
                differs.then_some("in-range level (rounding of zp + x*inv)")
            }
            Some(q) => {
                let ours_below = q < qmin as f64;
                let pt_below = pt.xqi < qmin as i64;
                let pt_edge = if pt_below { qmin } else { qmax } as f32 - zp_b;
                let ours_edge = (if ours_below { qmin } else { qmax } - zp) as f32;
                if pt_below != ours_below {
                    // PyTorch: +inf and |x*inv| >= 2^63 through INT64_MIN, below qmin.
                    assert!(x > 0.0 && (x as f64 * (1.0 / s as f64)) >= 2f64.powi(63));
                    Some("edge side (+inf / overflow below qmin)")
                } else {
                    (pt_edge != ours_edge).then_some("edge value (backward zero point)")
                }
            }
        };
        if let Some(reason) = design {
            *tally.by_design.entry(reason).or_default() += 1;
        }
        let model = library_model_element(x, dy, s, zp, (qmin, qmax), case.grad_factor);
        let inv = 1.0f32 / s;
        let mut tolerances = (0.0, 0.0);
        if let Some(m) = model {
            let y = m.in_range.then_some(fwd.y[i]);
            tolerances = (
                element_tolerance(m.dscale, ours_ds, g, dy, inv, y),
                element_tolerance(m.dzero_point, ours_dz, g, dy, inv, None),
            );
            // The library's terms are its documented formulas, element by element.
            for (what, m, t, tolerance) in [
                ("dscale", m.dscale, ours_ds, tolerances.0),
                ("dzero_point", m.dzero_point, ours_dz, tolerances.1),
            ] {
                let err = (t as f64 * g as f64 - m as f64).abs();
                if !within(err, tolerance) {
                    bad.push(
                        "element term vs the library's formula",
                        &case.name,
                        format!(
                            "{what} term: case {} step {k} [{i}] x={:#010x}: g*t = {:e}, model {m:e}, |diff| {err:e} > {tolerance:e}",
                            case.name,
                            x.to_bits(),
                            t as f64 * g as f64
                        ),
                    );
                }
            }
            // Where nothing differs by design, PyTorch's terms are the library-decision model's.
            if design.is_none()
                && (m.dscale.to_bits() != pt.dscale.to_bits()
                    || m.dzero_point.to_bits() != pt.dzero_point.to_bits())
            {
                bad.push(
                    "PyTorch term differs outside the by-design elements",
                    &case.name,
                    format!("case {} step {k} [{i}] x={:#010x}", case.name, x.to_bits()),
                );
            }
        }
        let design = design.is_some();
        let scale_terms = (pt.dscale, model.map(|m| m.dscale), ours_ds);
        scale_checks[c].add(scale_terms, g, tolerances.0, design);
        let zp_terms = (pt.dzero_point, model.map(|m| m.dzero_point), ours_dz);
        zp_checks[c].add(zp_terms, g, tolerances.1, design);
    }

    // Reduced gradients. With a NaN input the library's are NaN (documented); its backward on
    // the tensor without the NaN elements is compared instead.
    let reduced = if step.x.iter().any(|v| v.is_nan()) {
        assert_eq!(case.kind, Kind::PerTensor, "{}", case.name);
        for v in grads.dscale.iter().chain(&grads.dzero_point) {
            assert_eq!(
                v.to_bits(),
                reference::CANONICAL_NAN.to_bits(),
                "{}: reduced gradients with a NaN input",
                case.name
            );
        }
        tally.reduced_nan_steps += 1;
        let keep = || step.x.iter().zip(&step.dy).filter(|(x, _)| !x.is_nan());
        let x: Vec<f32> = keep().map(|(&x, _)| x).collect();
        let dy: Vec<f32> = keep().map(|(_, &dy)| dy).collect();
        reference::backward(
            &config,
            &x,
            &dy,
            &[x.len()],
            &step.scales,
            &step.zero_points,
        )
        .unwrap()
    } else {
        grads
    };
    for c in 0..case.channels {
        for (what, check, pytorch, ours) in [
            (
                "dscale",
                &scale_checks[c],
                step.dscale[c],
                reduced.dscale[c],
            ),
            (
                "dzero_point",
                &zp_checks[c],
                step.dzero_point[c],
                reduced.dzero_point[c],
            ),
        ] {
            let (model_err, model_bound) = check.evaluate_model(pytorch);
            if !within(model_err, model_bound) {
                bad.push(
                    "model sum",
                    &case.name,
                    format!(
                        "{what}: case {} step {k} channel {c}: PyTorch {pytorch:e}, model sum {:e}, |diff| {model_err:e} > bound {model_bound:e}",
                        case.name, check.model_sum
                    ),
                );
            }
            if check.sum_abs_pt > 0.0 {
                tally.max_model_error = tally.max_model_error.max(model_err / check.sum_abs_pt);
            }
            let guard = MODEL_SUM_GUARD_U * U * check.sum_abs_pt;
            if !within(model_err, guard) {
                bad.push(
                    "model sum (empirical guard)",
                    &case.name,
                    format!(
                        "{what}: case {} step {k} channel {c}: PyTorch {pytorch:e}, model sum {:e}, |diff| {model_err:e} > {MODEL_SUM_GUARD_U} u sum|b| = {guard:e}",
                        case.name, check.model_sum
                    ),
                );
            }
            let (err, bound, corrected) = check.evaluate(pytorch, ours);
            tally.reduced_compared += 1;
            if !within(err, bound) {
                bad.push(
                    what,
                    &case.name,
                    format!(
                        "{what}: case {} step {k} channel {c}: ours {ours:e} ({:#010x}), PyTorch {pytorch:e} ({:#010x}), corrected {corrected:e}, |diff| {err:e} > bound {bound:e}",
                        case.name,
                        ours.to_bits(),
                        pytorch.to_bits()
                    ),
                );
            }
            if bound > 0.0 {
                tally.max_bound_ratio = tally.max_bound_ratio.max(err / bound);
            }
            let magnitude = check.sum_abs_pt + check.sum_abs_ours;
            if magnitude > 0.0 {
                tally.max_normalized_error = tally.max_normalized_error.max(err / magnitude);
            }
            if corrected != 0.0 {
                tally.max_relative_corrected =
                    tally.max_relative_corrected.max(err / corrected.abs());
            }
            if pytorch != 0.0 {
                let raw = (ours as f64 - pytorch as f64).abs() / (pytorch as f64).abs();
                tally.max_relative_raw_any = tally.max_relative_raw_any.max(raw);
                if check.by_design == 0 {
                    tally.max_relative_raw_clean = tally.max_relative_raw_clean.max(raw);
                }
            }
        }
    }
}

#[test]
fn cpu_reference_matches_pytorch_lsq() {
    let cases = cases();
    let mut bad = Mismatches::default();
    let mut t = Tally::default();
    for case in &cases {
        for k in 0..case.steps.len() {
            check_step(case, k, &mut bad, &mut t);
        }
    }
    eprintln!(
        "y: {} inputs bit for bit, {} NaN inputs (PyTorch: qmin side; library: NaN)",
        t.y_compared, t.y_nan
    );
    eprintln!(
        "dx: {} elements, all bit for bit but {} exceptions from PyTorch's backward zero point and {} from its rounding of zp + x*inv at a tie ({} only with the FMA; max |x*inv - (n+1/2)| / ulp = {:.4}); without the FMA the model would miss PyTorch's dx on {} elements",
        t.dx_compared,
        t.zero_point_exceptions,
        t.sum_rounding_exceptions,
        t.fma_only_exceptions,
        t.max_tie_ratio,
        t.fma_visible
    );
    eprintln!(
        "dx exceptions per (kind, tag, cause): {:?}",
        t.exceptions_by
    );
    eprintln!(
        "elements whose PyTorch gradient terms differ by design: {:?}",
        t.by_design
    );
    eprintln!(
        "model of PyTorch's terms: max |pytorch - sum b| / sum|b| = {:.3e} (u = {U:.3e})",
        t.max_model_error
    );
    eprintln!(
        "dscale/dzero_point: {} compared ({} steps with NaN inputs on the NaN-free tensor); max |ours - corrected| / bound = {:.3e}, / (sum|b| + g sum|t|) = {:.3e}, / |corrected| = {:.3e}; |ours - pytorch| / |pytorch| where nothing differs by design: {:.3e}, anywhere: {:.3e}",
        t.reduced_compared,
        t.reduced_nan_steps,
        t.max_bound_ratio,
        t.max_normalized_error,
        t.max_relative_corrected,
        t.max_relative_raw_clean,
        t.max_relative_raw_any
    );
    bad.assert_none("CPU reference vs PyTorch (LSQ)");
    assert_eq!(t.y_compared, EXPECTED_ELEMENTS - EXPECTED_NAN_INPUTS);
    assert_eq!(t.y_nan, EXPECTED_NAN_INPUTS);
    assert_eq!(t.dx_compared, EXPECTED_ELEMENTS);
    assert_eq!(
        t.zero_point_exceptions, EXPECTED_ZERO_POINT_EXCEPTIONS,
        "dx exceptions from PyTorch's backward zero point"
    );
    assert_eq!(
        t.sum_rounding_exceptions, EXPECTED_SUM_ROUNDING_EXCEPTIONS,
        "dx exceptions from PyTorch's rounding of zp + x*inv"
    );
    assert_eq!(
        t.fma_only_exceptions, EXPECTED_FMA_ONLY_EXCEPTIONS,
        "dx exceptions only the FMA explains"
    );
    assert_eq!(
        t.fma_visible, EXPECTED_FMA_VISIBLE_IN_DX,
        "elements where the FMA shows in PyTorch's dx"
    );
    let exceptions_by: Vec<(&str, &str, &str, usize)> = t
        .exceptions_by
        .iter()
        .map(|((kind, tag, cause), &n)| (kind.as_str(), tag.as_str(), *cause, n))
        .collect();
    assert_eq!(
        exceptions_by, EXPECTED_EXCEPTIONS_BY,
        "dx exceptions per kind, tag and cause"
    );
    let by_design: Vec<(&str, usize)> = t.by_design.into_iter().collect();
    assert_eq!(by_design, EXPECTED_BY_DESIGN, "terms that differ by design");
    assert_eq!(
        t.reduced_compared,
        2 * EXPECTED_REDUCED_CHANNEL_STEPS,
        "reduced gradients compared"
    );
}

#[test]
fn gpu_matches_cpu_reference_on_pytorch_lsq_vectors() {
    let cases = cases();
    for ctx in common::contexts() {
        let adapter = ctx.adapter_name();
        eprintln!("checking PyTorch LSQ vectors on adapter: {adapter}");
        let mut bad = Mismatches::default();
        let mut checked = 0usize;
        for case in &cases {
            let config = case.config();
            for (k, step) in case.steps.iter().enumerate() {
                let lsq = ctx
                    .create_lsq(&config, &step.scales, &step.zero_points)
                    .unwrap_or_else(|e| panic!("{}: create_lsq on {adapter}: {e}", case.name));
                let cpu = reference::forward(
                    &config,
                    &step.x,
                    &case.shape,
                    &step.scales,
                    &step.zero_points,
                )
                .unwrap();
                let gpu = lsq
                    .forward(&step.x, &case.shape)
                    .unwrap_or_else(|e| panic!("{}: GPU forward on {adapter}: {e}", case.name));
                assert_eq!(gpu.y.len(), step.x.len(), "{}: GPU y length", case.name);
                for (i, &x) in step.x.iter().enumerate() {
                    bad.bits("GPU y vs CPU", case, k, i, x, cpu.y[i], gpu.y[i]);
                }
                assert_eq!(
                    gpu.mask.words(),
                    cpu.mask.words(),
                    "{}: step {k}: mask words on {adapter}",
                    case.name
                );
                let cpu: LsqGrads = reference::backward(
                    &config,
                    &step.x,
                    &step.dy,
                    &case.shape,
                    &step.scales,
                    &step.zero_points,
                )
                .unwrap();
                let gpu = lsq
                    .backward(&step.x, &step.dy, &case.shape)
                    .unwrap_or_else(|e| panic!("{}: GPU backward on {adapter}: {e}", case.name));
                assert_eq!(gpu.dx.len(), step.x.len(), "{}: GPU dx length", case.name);
                for (i, &x) in step.x.iter().enumerate() {
                    bad.bits("GPU dx vs CPU", case, k, i, x, cpu.dx[i], gpu.dx[i]);
                }
                for c in 0..case.channels {
                    bad.bits(
                        "GPU dscale vs CPU",
                        case,
                        k,
                        c,
                        step.scales[c],
                        cpu.dscale[c],
                        gpu.dscale[c],
                    );
                    bad.bits(
                        "GPU dzero_point vs CPU",
                        case,
                        k,
                        c,
                        step.zero_points[c],
                        cpu.dzero_point[c],
                        gpu.dzero_point[c],
                    );
                }
                checked += step.x.len();
            }
        }
        bad.assert_none(&format!(
            "GPU ({adapter}) vs CPU reference on PyTorch LSQ vectors"
        ));
        assert_eq!(checked, EXPECTED_ELEMENTS, "elements checked on {adapter}");
    }
}
