//! The observers against PyTorch's own outputs.
//!
//! `tests/data/pytorch_observers.txt` holds the outputs of PyTorch 2.15 CPU for the observer
//! modules `MovingAverageMinMaxObserver`, `PerChannelMinMaxObserver` and
//! `MovingAveragePerChannelMinMaxObserver` (running min/max, scale and zero point after every step)
//! and for `torch.fused_moving_avg_obs_fake_quant` (running min/max after every step), converted
//! from the shared `vectors.json` by `tests/data/convert_pytorch_vectors.py` (see its docstring for
//! the format).
//!
//! - Observer cases: the observer runs in [`Mode::Calibrate`] step by step; after every step its
//!   running min/max and scales (bits) and zero points equal PyTorch's, on every channel.
//! - Fused cases: the running min/max (bits) after every step, with the same moving average. Their
//!   scale and zero point come from fbgemm's `ChooseQuantizationParams`, a different formula (see
//!   the data file's header), and are not compared. A step with `observer_on = 0` observes nothing:
//!   the step is skipped and the state must still equal PyTorch's.
//! - Both on the CPU reference and on every GPU adapter. With `FAKEQUANT_REQUIRE_GPU=1` a missing
//!   adapter fails the test.

use crate::common;

use crate::common::vectors::{
    data_lines, hex_values, key_value, parse_hex_f32, values, Mismatches,
};

use fakequant::reference::observer::Observer;
use fakequant::{Averaging, Mode, ObserverConfig, ObserverState, QScheme, QuantRange};

const DATA: &str = include_str!("../data/pytorch_observers.txt");

/// What the data file must hold, so that the tests cannot silently check nothing.
const EXPECTED_OBSERVER_CASES: usize = 7;
const EXPECTED_FUSED_CASES: usize = 8;
const EXPECTED_OBSERVER_STEPS: usize = 28;
const EXPECTED_FUSED_STEPS: usize = 48;
/// Fused steps with `observer_on = 0`.
const EXPECTED_SKIPPED_STEPS: usize = 8;
const EXPECTED_ELEMENTS: usize = 19_456;
/// (step, channel) states compared: observer cases (min, max, scale, zero point) and fused cases
/// (min, max).
const EXPECTED_OBSERVER_CHANNEL_STATES: usize = 236;
const EXPECTED_FUSED_CHANNEL_STATES: usize = 216;

const OBSERVER_OPS: [&str; 3] = [
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
];
const FUSED_OP: &str = "fused_moving_avg_obs_fake_quant";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An observer module: the state and its qparams are compared.
    Observer,
    /// `fused_moving_avg_obs_fake_quant`: the running min/max only.
    Fused,
}

#[derive(Debug)]
struct Step {
    /// Whether PyTorch observed in this step (`observer_on`; always for the observer modules).
    observe: bool,
    x: Vec<f32>,
    min: Vec<f32>,
    max: Vec<f32>,
    /// Observer cases only.
    scales: Option<Vec<f32>>,
    /// Observer cases only.
    zero_points: Option<Vec<i32>>,
}

#[derive(Debug)]
struct Case {
    name: String,
    op: String,
    kind: Kind,
    qmin: i32,
    qmax: i32,
    scheme: QScheme,
    averaging: Averaging,
    axis: Option<usize>,
    channels: usize,
    shape: Vec<usize>,
    steps: Vec<Step>,
}

impl Case {
    fn config(&self) -> ObserverConfig {
        let range = QuantRange::new(self.qmin, self.qmax)
            .unwrap_or_else(|e| panic!("{}: invalid range: {e}", self.name));
        ObserverConfig::new(
            range,
            self.scheme,
            self.averaging,
            crate::common::granularity_of(self.axis),
        )
        .unwrap_or_else(|e| panic!("{}: invalid observer config: {e}", self.name))
    }
}

fn parse_cases(text: &str) -> Vec<Case> {
    let mut lines = data_lines(text).peekable();
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
        let _tags = fields.next().unwrap_or_else(|| panic!("{name}: no tags"));
        let int = |s: &str| -> i64 {
            s.parse()
                .unwrap_or_else(|e| panic!("{name}: bad integer {s:?}: {e}"))
        };
        let kind = match key_value(&name, fields.next(), "kind") {
            "observer" => Kind::Observer,
            "fused" => Kind::Fused,
            k => panic!("{name}: unknown kind {k:?}"),
        };
        let qmin = int(key_value(&name, fields.next(), "qmin")) as i32;
        let qmax = int(key_value(&name, fields.next(), "qmax")) as i32;
        let scheme = match key_value(&name, fields.next(), "scheme") {
            "symmetric" => QScheme::Symmetric,
            "affine" => QScheme::Affine,
            s => panic!("{name}: unknown scheme {s:?}"),
        };
        let averaging = match key_value(&name, fields.next(), "averaging") {
            "minmax" => Averaging::MinMax,
            bits => Averaging::MovingAverage(parse_hex_f32(&name, "averaging", bits)),
        };
        let axis = match key_value(&name, fields.next(), "axis") {
            "none" => None,
            a => Some(int(a) as usize),
        };
        let channels = int(key_value(&name, fields.next(), "channels")) as usize;
        let step_count = int(key_value(&name, fields.next(), "steps")) as usize;
        let shape: Vec<usize> = key_value(&name, fields.next(), "shape")
            .split('x')
            .map(|d| int(d) as usize)
            .collect();
        assert_eq!(fields.next(), None, "{name}: trailing fields in the header");

        let mut steps = Vec::with_capacity(step_count);
        for k in 0..step_count {
            let step_fields = values(&name, "step", lines.next());
            assert_eq!(
                step_fields.len(),
                2,
                "{name}: step {k}: `step <k> observe=..`"
            );
            assert_eq!(int(step_fields[0]) as usize, k, "{name}: step order");
            let observe = match key_value(&name, Some(step_fields[1]), "observe") {
                "0" => false,
                "1" => true,
                v => panic!("{name}: step {k}: bad observe flag {v:?}"),
            };
            let x = hex_values(&name, "x", lines.next());
            let min = hex_values(&name, "min", lines.next());
            let max = hex_values(&name, "max", lines.next());
            let (scales, zero_points) = match kind {
                Kind::Observer => (
                    Some(hex_values(&name, "scale", lines.next())),
                    Some(
                        values(&name, "zp", lines.next())
                            .into_iter()
                            .map(|z| int(z) as i32)
                            .collect(),
                    ),
                ),
                Kind::Fused => (None, None),
            };
            steps.push(Step {
                observe,
                x,
                min,
                max,
                scales,
                zero_points,
            });
        }
        assert_eq!(lines.next(), Some("end"), "{name}: missing `end`");

        let case = Case {
            name,
            op,
            kind,
            qmin,
            qmax,
            scheme,
            averaging,
            axis,
            channels,
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
    let numel: usize = case.shape.iter().product();
    assert!(numel > 0, "{name}: empty shape");
    match case.kind {
        Kind::Observer => assert!(OBSERVER_OPS.contains(&case.op.as_str()), "{name}: op"),
        Kind::Fused => assert_eq!(case.op, FUSED_OP, "{name}: op"),
    }
    let channels = match case.axis {
        None => 1,
        Some(axis) => {
            assert!(axis < case.shape.len(), "{name}: axis out of range");
            case.shape[axis]
        }
    };
    assert_eq!(case.channels, channels, "{name}: channel count");
    assert!(!case.steps.is_empty(), "{name}: no steps");
    for (k, step) in case.steps.iter().enumerate() {
        assert_eq!(step.x.len(), numel, "{name}: step {k}: x length");
        assert_eq!(step.min.len(), channels, "{name}: step {k}: min length");
        assert_eq!(step.max.len(), channels, "{name}: step {k}: max length");
        assert!(
            step.x.iter().all(|v| v.is_finite()),
            "{name}: step {k}: PyTorch's observers are only compared on finite inputs"
        );
        if case.kind == Kind::Observer {
            assert!(
                step.observe,
                "{name}: step {k}: observer modules always observe"
            );
            let scales = step.scales.as_ref().unwrap();
            let zero_points = step.zero_points.as_ref().unwrap();
            assert_eq!(scales.len(), channels, "{name}: step {k}: scale length");
            assert_eq!(zero_points.len(), channels, "{name}: step {k}: zp length");
        }
    }
    assert!(
        case.steps[0].observe,
        "{name}: the first step must observe (the state starts empty)"
    );
}

fn cases() -> Vec<Case> {
    let cases = parse_cases(DATA);
    let of_kind = |kind: Kind| cases.iter().filter(move |c| c.kind == kind);
    assert_eq!(
        of_kind(Kind::Observer).count(),
        EXPECTED_OBSERVER_CASES,
        "observer cases"
    );
    assert_eq!(
        of_kind(Kind::Fused).count(),
        EXPECTED_FUSED_CASES,
        "fused cases"
    );
    let steps = |kind: Kind| of_kind(kind).map(|c| c.steps.len()).sum::<usize>();
    assert_eq!(
        steps(Kind::Observer),
        EXPECTED_OBSERVER_STEPS,
        "observer steps"
    );
    assert_eq!(steps(Kind::Fused), EXPECTED_FUSED_STEPS, "fused steps");
    let elements: usize = cases.iter().flat_map(|c| &c.steps).map(|s| s.x.len()).sum();
    assert_eq!(elements, EXPECTED_ELEMENTS, "number of PyTorch elements");
    cases
}

/// This test's comparisons on the shared collector: a trait of this module (the PyTorch test
/// modules share one binary, so each adds its own methods through a trait of its own).
trait ObserverChecks {
    /// Compares bits and records a mismatch with the case, step and channel.
    fn bits(&mut self, what: &str, case: &Case, step: usize, c: usize, expected: f32, actual: f32);

    fn int(&mut self, what: &str, case: &Case, step: usize, c: usize, expected: i32, actual: i32);
}

impl ObserverChecks for Mismatches {
    fn bits(&mut self, what: &str, case: &Case, step: usize, c: usize, expected: f32, actual: f32) {
        if expected.to_bits() != actual.to_bits() {
            self.push(
                what,
                &case.name,
                format!(
                    "{what}: case {} step {step} channel {c}: expected {:#010x} ({:e}) \
                     actual {:#010x} ({:e})",
                    case.name,
                    expected.to_bits(),
                    expected,
                    actual.to_bits(),
                    actual
                ),
            );
        }
    }

    fn int(&mut self, what: &str, case: &Case, step: usize, c: usize, expected: i32, actual: i32) {
        if expected != actual {
            self.push(
                what,
                &case.name,
                format!(
                    "{what}: case {} step {step} channel {c}: expected {expected} actual {actual}",
                    case.name
                ),
            );
        }
    }
}

/// What was compared, so that a test cannot pass by checking nothing.
#[derive(Default, Debug, PartialEq)]
struct Checked {
    observer_channel_states: usize,
    fused_channel_states: usize,
    skipped_steps: usize,
}

/// Runs every case through an observer made by `create` (which returns a function that does one
/// calibration step and returns `y`, and one that reads the state) and compares the state after
/// every step with PyTorch's.
fn check_cases<O>(
    cases: &[Case],
    label: &str,
    bad: &mut Mismatches,
    mut create: impl FnMut(&Case) -> O,
    mut step: impl FnMut(&mut O, &Case, &[f32]) -> Vec<f32>,
    mut state: impl FnMut(&O, &Case) -> ObserverState,
) -> Checked {
    let mut checked = Checked::default();
    for case in cases {
        let mut observer = create(case);
        for (k, s) in case.steps.iter().enumerate() {
            if s.observe {
                let y = step(&mut observer, case, &s.x);
                assert_eq!(y.len(), s.x.len(), "{}: step {k}: y length", case.name);
                for (i, (&yi, &xi)) in y.iter().zip(&s.x).enumerate() {
                    if yi.to_bits() != xi.to_bits() {
                        bad.push(
                            &format!("{label} calibrate y vs x"),
                            &case.name,
                            format!(
                                "{label} calibrate y vs x: case {} step {k} [{i}]: x {:#010x} \
                                 y {:#010x}",
                                case.name,
                                xi.to_bits(),
                                yi.to_bits()
                            ),
                        );
                    }
                }
            } else {
                // PyTorch's observer_on = 0: nothing observed; the state must be unchanged.
                checked.skipped_steps += 1;
            }
            let got = state(&observer, case);
            assert_eq!(
                got.channels(),
                case.channels,
                "{}: step {k}: channels",
                case.name
            );
            for c in 0..case.channels {
                bad.bits(
                    &format!("{label} running min"),
                    case,
                    k,
                    c,
                    s.min[c],
                    got.running.min[c],
                );
                bad.bits(
                    &format!("{label} running max"),
                    case,
                    k,
                    c,
                    s.max[c],
                    got.running.max[c],
                );
                match case.kind {
                    Kind::Observer => {
                        let scales = s.scales.as_ref().unwrap();
                        let zero_points = s.zero_points.as_ref().unwrap();
                        bad.bits(
                            &format!("{label} scale"),
                            case,
                            k,
                            c,
                            scales[c],
                            got.scales[c],
                        );
                        bad.int(
                            &format!("{label} zero point"),
                            case,
                            k,
                            c,
                            zero_points[c],
                            got.zero_points[c],
                        );
                        checked.observer_channel_states += 1;
                    }
                    Kind::Fused => checked.fused_channel_states += 1,
                }
            }
        }
    }
    checked
}

fn expected_checked() -> Checked {
    Checked {
        observer_channel_states: EXPECTED_OBSERVER_CHANNEL_STATES,
        fused_channel_states: EXPECTED_FUSED_CHANNEL_STATES,
        skipped_steps: EXPECTED_SKIPPED_STEPS,
    }
}

#[test]
fn data_file_has_the_expected_cases() {
    let cases = cases();
    // Every op of the source is present.
    for op in OBSERVER_OPS.iter().chain([&FUSED_OP]) {
        assert!(cases.iter().any(|c| c.op == *op), "no case of {op}");
    }
    // Both schemes, per-tensor and per-channel (on both axes), signed, unsigned and reduced ranges,
    // running min/max and moving averages.
    let any = |f: &dyn Fn(&Case) -> bool| cases.iter().any(f);
    assert!(any(
        &|c| c.scheme == QScheme::Symmetric && c.kind == Kind::Observer
    ));
    assert!(any(
        &|c| c.scheme == QScheme::Affine && c.kind == Kind::Observer
    ));
    assert!(any(&|c| c.axis.is_none() && c.kind == Kind::Observer));
    assert!(any(&|c| c.axis == Some(0) && c.kind == Kind::Observer));
    assert!(any(&|c| c.axis == Some(1) && c.kind == Kind::Observer));
    assert!(any(&|c| c.axis.is_none() && c.kind == Kind::Fused));
    assert!(any(&|c| c.axis == Some(0) && c.kind == Kind::Fused));
    assert!(any(&|c| (c.qmin, c.qmax) == (-128, 127)));
    assert!(any(&|c| (c.qmin, c.qmax) == (0, 255)));
    assert!(any(&|c| (c.qmin, c.qmax) == (0, 127)), "reduce_range");
    assert!(any(&|c| c.averaging == Averaging::MinMax));
    assert!(any(&|c| matches!(c.averaging, Averaging::MovingAverage(_))));

    let (mut observer_states, mut fused_states, mut skipped) = (0, 0, 0);
    for case in &cases {
        let per_step = case.channels;
        match case.kind {
            Kind::Observer => observer_states += per_step * case.steps.len(),
            Kind::Fused => fused_states += per_step * case.steps.len(),
        }
        for (k, step) in case.steps.iter().enumerate() {
            if step.observe {
                continue;
            }
            skipped += 1;
            // PyTorch's own data: a step that does not observe leaves the running range alone.
            let previous = &case.steps[k - 1];
            for c in 0..case.channels {
                assert_eq!(
                    (step.min[c].to_bits(), step.max[c].to_bits()),
                    (previous.min[c].to_bits(), previous.max[c].to_bits()),
                    "{}: step {k} channel {c}: PyTorch changed the range without observing",
                    case.name
                );
            }
        }
    }
    assert_eq!(
        Checked {
            observer_channel_states: observer_states,
            fused_channel_states: fused_states,
            skipped_steps: skipped,
        },
        expected_checked(),
        "(step, channel) states in the data"
    );
}

#[test]
fn cpu_reference_matches_pytorch_observers() {
    let cases = cases();
    let mut bad = Mismatches::default();
    let checked = check_cases(
        &cases,
        "CPU",
        &mut bad,
        |case| {
            Observer::new(
                case.config(),
                &crate::common::channel_shape(&case.config(), case.channels),
            )
            .unwrap_or_else(|e| panic!("{}: reference observer: {e}", case.name))
        },
        |observer, case, x| {
            observer
                .step(x, &case.shape, Mode::Calibrate)
                .unwrap_or_else(|e| panic!("{}: reference step failed: {e}", case.name))
                .y
        },
        |observer, _| observer.state().clone(),
    );
    bad.assert_none("CPU reference vs PyTorch observers");
    assert_eq!(checked, expected_checked(), "states checked");
}

#[test]
fn gpu_matches_pytorch_observers() {
    for ctx in common::contexts() {
        let adapter = ctx.adapter_name();
        let cases = cases();
        let mut bad = Mismatches::default();
        let checked = check_cases(
            &cases,
            "GPU",
            &mut bad,
            |case| {
                ctx.create_observer(
                    &case.config(),
                    &crate::common::channel_shape(&case.config(), case.channels),
                )
                .unwrap_or_else(|e| panic!("{}: GPU observer on {adapter}: {e}", case.name))
            },
            |observer, case, x| {
                observer
                    .step(x, &case.shape, Mode::Calibrate)
                    .unwrap_or_else(|e| panic!("{}: GPU step on {adapter} failed: {e}", case.name))
                    .y
            },
            |observer, case| {
                observer
                    .read_state()
                    .unwrap_or_else(|e| panic!("{}: GPU read_state on {adapter}: {e}", case.name))
            },
        );
        bad.assert_none(&format!("GPU ({adapter}) vs PyTorch observers"));
        assert_eq!(checked, expected_checked(), "states checked on {adapter}");
    }
}
