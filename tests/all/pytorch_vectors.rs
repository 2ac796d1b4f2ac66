//! The library against PyTorch's own outputs.
//!
//! `tests/data/pytorch_fake_quant.txt` holds the outputs of PyTorch 2.15 CPU for
//! `torch.fake_quantize_per_tensor_affine` and `torch.fake_quantize_per_channel_affine` (integer
//! zero points), converted from the shared `vectors.json` by `tests/data/convert_pytorch_vectors.py`
//! (see its docstring for the format).
//!
//! - CPU reference vs PyTorch: `y` and `mask` bit for bit on every finite input. Non-finite inputs
//!   are where PyTorch has documented bugs (NaN to the qmin side, per-channel `+inf` to qmin through
//!   an undefined cast, and likewise finite per-channel inputs with `x * inv >= 2^63`); there the
//!   library's own semantics are asserted instead. The straight-through
//!   backward matches PyTorch's `dx` on every element.
//! - GPU vs CPU reference, on every adapter: `y`, `mask` and `dx` bit for bit on every element,
//!   specials included. With `FAKEQUANT_REQUIRE_GPU=1` a missing adapter fails the test.

use crate::common;

use crate::common::vectors::{data_lines, hex_values, key_value, values, Mismatches};

use fakequant::{reference, FakeQuant, PackedMask, QuantParams, QuantRange};

const DATA: &str = include_str!("../data/pytorch_fake_quant.txt");

/// What the data file must hold, so that the tests cannot silently check nothing.
const EXPECTED_CASES: usize = 66;
const EXPECTED_PER_TENSOR_CASES: usize = 30;
const EXPECTED_PER_CHANNEL_CASES: usize = 36;
const EXPECTED_ELEMENTS: usize = 17_465;
const EXPECTED_NAN_INPUTS: usize = 340;
const EXPECTED_INF_INPUTS: usize = 340;
/// Finite per-channel inputs with `x * inv >= 2^63`, where PyTorch's float -> int64 cast is
/// undefined (it returns INT64_MIN on x86 and so the qmin side); the library saturates to qmax.
const EXPECTED_PYTORCH_INT64_OVERFLOWS: usize = 460;

const PER_TENSOR_OP: &str = "fake_quantize_per_tensor_affine";
const PER_CHANNEL_OP: &str = "fake_quantize_per_channel_affine";

#[derive(Debug)]
struct Case {
    name: String,
    op: String,
    tags: Vec<String>,
    qmin: i32,
    qmax: i32,
    axis: Option<usize>,
    shape: Vec<usize>,
    scales: Vec<f32>,
    zero_points: Vec<i32>,
    x: Vec<f32>,
    y: Vec<f32>,
    mask: Vec<bool>,
    dy: Vec<f32>,
    dx: Vec<f32>,
}

impl Case {
    fn fake_quant(&self) -> FakeQuant {
        let range = QuantRange::new(self.qmin, self.qmax)
            .unwrap_or_else(|e| panic!("{}: invalid range: {e}", self.name));
        let params = match self.axis {
            None => QuantParams::per_tensor(self.scales[0], self.zero_points[0]),
            Some(axis) => {
                QuantParams::per_channel(axis, self.scales.clone(), self.zero_points.clone())
            }
        };
        FakeQuant::new(range, params)
            .unwrap_or_else(|e| panic!("{}: invalid parameters: {e}", self.name))
    }

    /// The channel (index into `scales` / `zero_points`) of flat element `i`.
    fn channel_of(&self, i: usize) -> usize {
        match self.axis {
            None => 0,
            Some(axis) => {
                let inner: usize = self.shape[axis + 1..].iter().product();
                (i / inner) % self.shape[axis]
            }
        }
    }

    fn pytorch_mask(&self) -> PackedMask {
        PackedMask::from_bools(&self.mask)
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
        let qmin = int(key_value(&name, fields.next(), "qmin")) as i32;
        let qmax = int(key_value(&name, fields.next(), "qmax")) as i32;
        let axis = match key_value(&name, fields.next(), "axis") {
            "none" => None,
            a => Some(int(a) as usize),
        };
        let shape: Vec<usize> = key_value(&name, fields.next(), "shape")
            .split('x')
            .map(|d| int(d) as usize)
            .collect();
        assert_eq!(fields.next(), None, "{name}: trailing fields in the header");

        let scales = hex_values(&name, "scale", lines.next());
        let zero_points = values(&name, "zp", lines.next())
            .into_iter()
            .map(|z| int(z) as i32)
            .collect();
        let x = hex_values(&name, "x", lines.next());
        let y = hex_values(&name, "y", lines.next());
        let mask_field = values(&name, "mask", lines.next());
        assert_eq!(mask_field.len(), 1, "{name}: the mask is one string of 0/1");
        let mask = mask_field[0]
            .bytes()
            .map(|b| match b {
                b'0' => false,
                b'1' => true,
                _ => panic!("{name}: bad mask character {:?}", b as char),
            })
            .collect();
        let dy = hex_values(&name, "dy", lines.next());
        let dx = hex_values(&name, "dx", lines.next());
        assert_eq!(lines.next(), Some("end"), "{name}: missing `end`");

        let case = Case {
            name,
            op,
            tags,
            qmin,
            qmax,
            axis,
            shape,
            scales,
            zero_points,
            x,
            y,
            mask,
            dy,
            dx,
        };
        validate(&case);
        cases.push(case);
    }
    cases
}

fn validate(case: &Case) {
    let name = &case.name;
    let numel: usize = case.shape.iter().product();
    assert!(numel > 0, "{name}: empty shape");
    for (role, len) in [
        ("x", case.x.len()),
        ("y", case.y.len()),
        ("mask", case.mask.len()),
        ("dy", case.dy.len()),
        ("dx", case.dx.len()),
    ] {
        assert_eq!(
            len, numel,
            "{name}: {role} has {len} elements, shape {:?}",
            case.shape
        );
    }
    match (case.op.as_str(), case.axis) {
        (PER_TENSOR_OP, None) => {
            assert_eq!(case.scales.len(), 1, "{name}: per-tensor scale count");
        }
        (PER_CHANNEL_OP, Some(axis)) => {
            assert!(axis < case.shape.len(), "{name}: axis out of range");
            assert_eq!(
                case.scales.len(),
                case.shape[axis],
                "{name}: per-channel scale count"
            );
        }
        (op, axis) => panic!("{name}: unexpected op {op} with axis {axis:?}"),
    }
    assert_eq!(
        case.scales.len(),
        case.zero_points.len(),
        "{name}: scale/zp counts"
    );
    assert!(
        case.dy.iter().all(|v| v.is_finite()),
        "{name}: dy must be finite"
    );
}

fn cases() -> Vec<Case> {
    let cases = parse_cases(DATA);
    let count = |op: &str| cases.iter().filter(|c| c.op == op).count();
    assert_eq!(cases.len(), EXPECTED_CASES, "number of PyTorch cases");
    assert_eq!(
        count(PER_TENSOR_OP),
        EXPECTED_PER_TENSOR_CASES,
        "per-tensor cases"
    );
    assert_eq!(
        count(PER_CHANNEL_OP),
        EXPECTED_PER_CHANNEL_CASES,
        "per-channel cases"
    );
    let elements: usize = cases.iter().map(|c| c.x.len()).sum();
    assert_eq!(elements, EXPECTED_ELEMENTS, "number of PyTorch elements");
    cases
}

/// This test's comparisons on the shared collector: a trait of this module (the PyTorch test
/// modules share one binary, so each adds its own methods through a trait of its own).
trait FakeQuantChecks {
    /// Compares bits and records a mismatch with the case, index and input bits.
    fn bits(&mut self, what: &str, case: &Case, i: usize, input: f32, expected: f32, actual: f32);

    fn flag(&mut self, what: &str, case: &Case, i: usize, expected: bool, actual: bool);
}

impl FakeQuantChecks for Mismatches {
    fn bits(&mut self, what: &str, case: &Case, i: usize, input: f32, expected: f32, actual: f32) {
        if expected.to_bits() != actual.to_bits() {
            self.push(what, &case.name, format!(
                "{what}: case {} [{i}] x={:#010x} ({:e}) expected {:#010x} ({:e}) actual {:#010x} ({:e})",
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

    fn flag(&mut self, what: &str, case: &Case, i: usize, expected: bool, actual: bool) {
        if expected != actual {
            self.push(
                what,
                &case.name,
                format!(
                    "{what}: case {} [{i}] x={:#010x} ({:e}) expected {} actual {}",
                    case.name,
                    case.x[i].to_bits(),
                    case.x[i],
                    expected as u8,
                    actual as u8
                ),
            );
        }
    }
}

/// The library's documented output for a non-finite input (NaN quieted, +-inf to the range ends).
/// A finite input on which PyTorch's per-channel kernel overflows its float -> int64 cast.
fn pytorch_per_channel_int64_overflow(case: &Case, x: f32, scale: f32) -> bool {
    case.op == PER_CHANNEL_OP && x.is_finite() && x * (1.0f32 / scale) >= 2f32.powi(63)
}

fn library_special(x: f32, scale: f32, zero_point: i32, qmin: i32, qmax: i32) -> f32 {
    if x.is_nan() {
        f32::from_bits(x.to_bits() | 0x0040_0000)
    } else if x > 0.0 {
        (qmax - zero_point) as f32 * scale
    } else {
        (qmin - zero_point) as f32 * scale
    }
}

#[test]
fn data_file_has_the_expected_cases() {
    let cases = cases();
    let nan = cases
        .iter()
        .flat_map(|c| &c.x)
        .filter(|v| v.is_nan())
        .count();
    let inf = cases
        .iter()
        .flat_map(|c| &c.x)
        .filter(|v| v.is_infinite())
        .count();
    assert_eq!(nan, EXPECTED_NAN_INPUTS, "NaN inputs");
    assert_eq!(inf, EXPECTED_INF_INPUTS, "infinite inputs");
    // Every non-finite input is in a `specials` case, and every kind of tensor has them.
    for c in &cases {
        let specials = c.x.iter().any(|v| !v.is_finite());
        assert_eq!(
            specials,
            c.tags.iter().any(|t| t == "specials"),
            "{}: tags",
            c.name
        );
    }
    for tag in ["random", "adversarial", "specials"] {
        let n = cases
            .iter()
            .filter(|c| c.tags.iter().any(|t| t == tag))
            .count();
        assert_eq!(n, EXPECTED_CASES / 3, "cases tagged {tag}");
    }
}

#[test]
fn cpu_reference_matches_pytorch() {
    let cases = cases();
    let mut bad = Mismatches::default();
    let (mut finite_checked, mut special_checked, mut dx_checked) = (0usize, 0usize, 0usize);
    let mut overflow_checked = 0usize;
    for case in &cases {
        let op = case.fake_quant();
        let out = reference::fake_quant(&op, &case.x, &case.shape)
            .unwrap_or_else(|e| panic!("{}: reference failed: {e}", case.name));
        let mask = out.mask;
        assert_eq!(out.y.len(), case.x.len(), "{}: y length", case.name);
        assert_eq!(mask.len(), case.x.len(), "{}: mask length", case.name);
        for (i, &x) in case.x.iter().enumerate() {
            let m = mask.get(i).unwrap();
            let c = case.channel_of(i);
            if pytorch_per_channel_int64_overflow(case, x, case.scales[c]) {
                // PyTorch's per-channel kernel casts x * inv >= 2^63 to int64 (undefined; INT64_MIN
                // on x86), which lands on the qmin side. The library saturates, like +inf.
                let expected =
                    library_special(x, case.scales[c], case.zero_points[c], case.qmin, case.qmax);
                bad.bits(
                    "y (PyTorch int64 overflow) vs documented",
                    case,
                    i,
                    x,
                    expected,
                    out.y[i],
                );
                bad.flag(
                    "mask (PyTorch int64 overflow) vs PyTorch",
                    case,
                    i,
                    case.mask[i],
                    m,
                );
                overflow_checked += 1;
            } else if x.is_finite() {
                bad.bits("y vs PyTorch", case, i, x, case.y[i], out.y[i]);
                bad.flag("mask vs PyTorch", case, i, case.mask[i], m);
                finite_checked += 1;
            } else {
                let expected =
                    library_special(x, case.scales[c], case.zero_points[c], case.qmin, case.qmax);
                bad.bits("y (special) vs documented", case, i, x, expected, out.y[i]);
                bad.flag("mask (special) vs documented", case, i, false, m);
                special_checked += 1;
            }
        }

        // STE backward with PyTorch's own mask, every element.
        let dx = reference::ste_backward(&case.dy, &case.pytorch_mask())
            .unwrap_or_else(|e| panic!("{}: ste_backward failed: {e}", case.name));
        // And end to end, with the library's mask (equal to PyTorch's, non-finite x included).
        let dx_lib = reference::ste_backward(&case.dy, &mask)
            .unwrap_or_else(|e| panic!("{}: ste_backward failed: {e}", case.name));
        for i in 0..case.dy.len() {
            bad.bits(
                "dx (PyTorch mask) vs PyTorch",
                case,
                i,
                case.x[i],
                case.dx[i],
                dx[i],
            );
            bad.bits(
                "dx (library mask) vs PyTorch",
                case,
                i,
                case.x[i],
                case.dx[i],
                dx_lib[i],
            );
            dx_checked += 1;
        }
    }
    bad.assert_none("CPU reference vs PyTorch");
    assert_eq!(overflow_checked, EXPECTED_PYTORCH_INT64_OVERFLOWS);
    assert_eq!(
        finite_checked,
        EXPECTED_ELEMENTS
            - EXPECTED_NAN_INPUTS
            - EXPECTED_INF_INPUTS
            - EXPECTED_PYTORCH_INT64_OVERFLOWS
    );
    assert_eq!(special_checked, EXPECTED_NAN_INPUTS + EXPECTED_INF_INPUTS);
    assert_eq!(dx_checked, EXPECTED_ELEMENTS);
}

#[test]
fn gpu_matches_cpu_reference_on_pytorch_vectors() {
    let cases = cases();
    let contexts = common::contexts();
    for ctx in contexts {
        let adapter = ctx.adapter_name();
        eprintln!("checking PyTorch vectors on adapter: {adapter}");
        let mut bad = Mismatches::default();
        let mut checked = 0usize;
        for case in &cases {
            let op = case.fake_quant();
            let cpu = reference::fake_quant(&op, &case.x, &case.shape).unwrap();
            let gpu = ctx
                .fake_quant(&op, &case.x, &case.shape)
                .unwrap_or_else(|e| {
                    panic!("{}: GPU fake_quant on {adapter} failed: {e}", case.name)
                });
            let cpu_mask = cpu.mask;
            let gpu_mask = gpu.mask;
            assert_eq!(gpu.y.len(), case.x.len(), "{}: GPU y length", case.name);
            assert_eq!(
                gpu_mask.len(),
                case.x.len(),
                "{}: GPU mask length",
                case.name
            );
            for (i, &x) in case.x.iter().enumerate() {
                bad.bits("GPU y vs CPU", case, i, x, cpu.y[i], gpu.y[i]);
                bad.flag(
                    "GPU mask vs CPU",
                    case,
                    i,
                    cpu_mask.get(i).unwrap(),
                    gpu_mask.get(i).unwrap(),
                );
            }
            assert_eq!(
                gpu_mask.words(),
                cpu_mask.words(),
                "{}: packed mask words on {adapter}",
                case.name
            );

            for (label, mask) in [
                ("PyTorch mask", case.pytorch_mask()),
                ("GPU mask", gpu_mask),
            ] {
                let cpu_dx = reference::ste_backward(&case.dy, &mask).unwrap();
                let gpu_dx = ctx.ste_backward(&case.dy, &mask).unwrap_or_else(|e| {
                    panic!("{}: GPU ste_backward on {adapter} failed: {e}", case.name)
                });
                assert_eq!(gpu_dx.len(), case.dy.len(), "{}: GPU dx length", case.name);
                for i in 0..case.dy.len() {
                    bad.bits(
                        &format!("GPU dx ({label}) vs CPU"),
                        case,
                        i,
                        case.x[i],
                        cpu_dx[i],
                        gpu_dx[i],
                    );
                }
            }
            checked += case.x.len();
        }
        bad.assert_none(&format!(
            "GPU ({adapter}) vs CPU reference on PyTorch vectors"
        ));
        assert_eq!(checked, EXPECTED_ELEMENTS, "elements checked on {adapter}");
    }
}
