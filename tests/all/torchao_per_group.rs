//! The reference dynamic per-group and per-token fake-quant against torchao 0.18's
//! `IntxFakeQuantizer` (`tests/data/torchao_per_group.txt`, see its converter): bit for bit where
//! torchao's arithmetic is well defined, and every departure counted by its cause and asserted to
//! be that cause and nothing else (the README lists them).

use std::collections::BTreeMap;

use crate::common::contexts;
use crate::common::vectors::{data_lines, key_value, values};
use fakequant::reference::dynamic::fake_quant_dynamic;
use fakequant::{reference, DType, DynamicConfig, DynamicScheme, Element, Granularity, QuantRange};
use half::{bf16, f16};

const DATA: &str = include_str!("../data/torchao_per_group.txt");

/// An element type read from the file's bit patterns.
trait FromBits: Element {
    fn from_bits_u32(bits: u32) -> Self;
}
impl FromBits for f32 {
    fn from_bits_u32(bits: u32) -> Self {
        f32::from_bits(bits)
    }
}
impl FromBits for f16 {
    fn from_bits_u32(bits: u32) -> Self {
        f16::from_bits(bits as u16)
    }
}
impl FromBits for bf16 {
    fn from_bits_u32(bits: u32) -> Self {
        bf16::from_bits(bits as u16)
    }
}

struct Case<'a> {
    name: &'a str,
    header: BTreeMap<&'a str, &'a str>,
    rows: BTreeMap<&'a str, Vec<u32>>,
}

impl Case<'_> {
    fn get(&self, key: &str) -> &str {
        self.header
            .get(key)
            .unwrap_or_else(|| panic!("{}: no {key}=", self.name))
    }

    fn config(&self) -> DynamicConfig {
        let range = QuantRange::new(
            self.get("qmin").parse().unwrap(),
            self.get("qmax").parse().unwrap(),
        )
        .unwrap();
        let scheme = match (self.get("mapping"), self.get("domain")) {
            ("symmetric", _) => DynamicScheme::Symmetric,
            ("asymmetric", "INT") => DynamicScheme::Asymmetric,
            ("asymmetric", "FLOAT") => DynamicScheme::AsymmetricFloat,
            other => panic!("{}: unknown scheme {other:?}", self.name),
        };
        let shape = self.shape();
        let granularity = match self.get("granularity") {
            "token" => Granularity::PerToken,
            // torchao's PerAxis(0): a group per row, i.e. per channel along axis 0.
            "channel" => Granularity::per_channel(0),
            _ => Granularity::per_group(shape.len() - 1, self.get("group").parse().unwrap()),
        };
        let mut config = DynamicConfig::new(range, scheme, granularity).unwrap();
        if self.get("scale_precision") == "bf16" {
            config = config.with_qparams_dtype(DType::Bf16).unwrap();
        }
        if self.get("eps") != "none" {
            config = config
                .with_eps(f32::from_bits(
                    u32::from_str_radix(self.get("eps"), 16).unwrap(),
                ))
                .unwrap();
        }
        config
    }

    fn shape(&self) -> Vec<usize> {
        self.get("shape")
            .split('x')
            .map(|d| d.parse().unwrap())
            .collect()
    }
}

fn cases() -> Vec<Case<'static>> {
    let mut lines = data_lines(DATA);
    let mut out = Vec::new();
    while let Some(line) = lines.next() {
        let mut fields = line.split(' ');
        assert_eq!(fields.next(), Some("case"));
        let name = fields.next().unwrap();
        let tags = fields.next().unwrap();
        let mut header: BTreeMap<&str, &str> = fields
            .map(|f| {
                let key = f.split('=').next().unwrap();
                (key, key_value(name, Some(f), key))
            })
            .collect();
        header.insert("tags", tags);
        let mut rows = BTreeMap::new();
        for role in ["x", "y", "scale", "zp", "dy", "dx"] {
            let parsed = values(name, role, lines.next())
                .into_iter()
                .map(|v| u32::from_str_radix(v, 16).unwrap())
                .collect();
            rows.insert(role, parsed);
        }
        assert_eq!(lines.next(), Some("end"), "{name}");
        out.push(Case { name, header, rows });
    }
    out
}

/// Why an output may differ from torchao's (the README's departures), or `None`: it must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Departure {
    /// torchao's asymmetric per-group INT domain uses the float-domain zero point truncated to
    /// an integer (its quirk 1); ours is the per-token rule.
    AsymmetricIntPerGroup,
    /// torchao truncates a float-domain zero point to int32 (quirk 2); we keep it as a float.
    TruncatedFloatZeroPoint,
    /// A group holding NaN or an infinity: torchao's qparams become NaN/inf, ours skip them.
    NonFiniteGroup,
    /// A group of finite values whose range `max - min` overflows f32: torchao's scale is +inf
    /// (its outputs NaN), ours is capped at 2^126.
    OverflowingRange,
}

fn case_departure(case: &Case<'_>) -> Option<Departure> {
    match (
        case.get("mapping"),
        case.get("domain"),
        case.get("granularity"),
        case.get("zp_precision"),
    ) {
        ("asymmetric", "INT", "group", _) => Some(Departure::AsymmetricIntPerGroup),
        ("asymmetric", "FLOAT", _, "int32") => Some(Departure::TruncatedFloatZeroPoint),
        _ => None,
    }
}

#[derive(Default)]
struct Tally {
    /// (case, what) -> mismatches with no departure to explain them.
    unexplained: BTreeMap<(String, &'static str), usize>,
    /// departure -> mismatches it explains.
    explained: BTreeMap<Departure, usize>,
    /// Every compared value (so that the test cannot pass by comparing nothing).
    compared: usize,
    /// dx against torchao: same bits, differing at qmin/qmax (torch's strict clamp mask), or by
    /// torchao's `dy * s * (1 / s)` rounding.
    dx_same: usize,
    dx_edge: usize,
    dx_rounding: usize,
    dx_other: Vec<String>,
}

impl Tally {
    fn compare(
        &mut self,
        case: &str,
        what: &'static str,
        departure: Option<Departure>,
        expected: u32,
        actual: u32,
    ) {
        self.compared += 1;
        if expected == actual {
            return;
        }
        match departure {
            Some(d) => *self.explained.entry(d).or_default() += 1,
            None => {
                *self
                    .unexplained
                    .entry((case.to_string(), what))
                    .or_default() += 1
            }
        }
    }
}

fn run<T: FromBits>(case: &Case<'_>, tally: &mut Tally) {
    let config = case.config();
    let shape = case.shape();
    let x: Vec<T> = case.rows["x"]
        .iter()
        .map(|&b| T::from_bits_u32(b))
        .collect();
    let dy: Vec<T> = case.rows["dy"]
        .iter()
        .map(|&b| T::from_bits_u32(b))
        .collect();
    let out = fake_quant_dynamic(&config, &x, &shape).unwrap();
    let groups = out.scales.len();
    assert_eq!(groups, case.rows["scale"].len(), "{}: groups", case.name);
    let group_len = x.len() / groups;
    let case_departure = case_departure(case);
    let group_departure: Vec<Option<Departure>> = x
        .chunks(group_len)
        .map(|g| {
            let v: Vec<f32> = g.iter().map(|v| v.to_f32()).collect();
            if v.iter().any(|v| !v.is_finite()) {
                return Some(Departure::NonFiniteGroup);
            }
            let lo = v.iter().copied().fold(0.0f32, f32::min);
            let hi = v.iter().copied().fold(0.0f32, f32::max);
            let symmetric = config.scheme() == DynamicScheme::Symmetric;
            (!symmetric && (hi - lo).is_infinite()).then_some(Departure::OverflowingRange)
        })
        .collect();
    let departure = |g: usize| case_departure.or(group_departure[g]);
    for g in 0..groups {
        let d = departure(g);
        tally.compare(
            case.name,
            "scale",
            d,
            case.rows["scale"][g],
            out.scales[g].to_bits(),
        );
        // Integer zero points come as exact f32 values; +0.0 and -0.0 are the same zero point.
        let zp = |bits: u32| {
            let v = f32::from_bits(bits);
            if v == 0.0 {
                0
            } else {
                bits
            }
        };
        tally.compare(
            case.name,
            "zero point",
            d,
            zp(case.rows["zp"][g]),
            zp(out.zero_points[g].to_bits()),
        );
    }
    for (i, y) in out.y.iter().enumerate() {
        tally.compare(
            case.name,
            "y",
            departure(i / group_len),
            case.rows["y"][i],
            y.to_bits_u32(),
        );
    }
    // Our backward is the straight-through estimator with the (inclusive) clip mask.
    let dx = reference::ste_backward(&dy, &out.mask).unwrap();
    for (i, ours) in dx.iter().enumerate() {
        if departure(i / group_len).is_some() {
            continue;
        }
        let theirs = T::from_bits_u32(case.rows["dx"][i]);
        let (o, t) = (ours.to_f32(), theirs.to_f32());
        if ours.to_bits_u32() == theirs.to_bits_u32() || (o == 0.0 && t == 0.0) {
            tally.dx_same += 1;
        } else if t == 0.0
            && out.mask.get(i) == Some(true)
            && y_at_edge(&config, &out, i, group_len)
        {
            tally.dx_edge += 1;
        } else if out.mask.get(i) == Some(true)
            && t == torchao_dx::<T>(&config, &out, dy[i], i / group_len)
        {
            tally.dx_rounding += 1;
        } else if tally.dx_other.len() < 20 {
            tally
                .dx_other
                .push(format!("{} [{i}]: ours {o:e}, torchao {t:e}", case.name));
        }
    }
}

/// Whether element `i` quantized exactly to qmin or qmax (where torch's clamp passes no gradient).
fn y_at_edge<T: Element>(
    config: &DynamicConfig,
    out: &fakequant::DynamicOutput<T>,
    i: usize,
    group_len: usize,
) -> bool {
    let g = i / group_len;
    let (s, zp) = (out.scales[g], out.zero_points[g]);
    let y = out.y[i].to_f32();
    let (qmin, qmax) = (config.range().qmin() as f32, config.range().qmax() as f32);
    [qmin, qmax].iter().any(|&q| {
        let edge = match config.scheme() {
            DynamicScheme::AsymmetricFloat => {
                let mid = ((config.range().qmin() + config.range().qmax() + 1) / 2) as f32;
                // In torchao's order and dtypes: `rd(rd((q - mid) * s) + zp)`, bf16 arithmetic
                // when x and the qparams are bf16.
                let p = |v: f32| {
                    if T::DTYPE == DType::Bf16 && config.qparams_dtype() == DType::Bf16 {
                        bf16::from_f32(v).to_f32()
                    } else {
                        v
                    }
                };
                let t = T::from_f32(p((q - mid) * s)).to_f32();
                T::from_f32(p(t + zp)).to_f32()
            }
            _ => T::from_f32((q - zp) * s).to_f32(),
        };
        edge == y
    })
}

/// torchao's gradient of a passed element: `dy` times the scale, rounded to the input's type, then
/// times the reciprocal (integer domain) or divided by the scale (float domain), rounded again.
fn torchao_dx<T: Element>(
    config: &DynamicConfig,
    out: &fakequant::DynamicOutput<T>,
    dy: T,
    g: usize,
) -> f32 {
    let s = out.scales[g];
    let scaled = T::from_f32(dy.to_f32() * s).to_f32();
    match config.scheme() {
        DynamicScheme::AsymmetricFloat => {
            let q = scaled / s;
            let q = if T::DTYPE == DType::Bf16 && config.qparams_dtype() == DType::Bf16 {
                bf16::from_f32(q).to_f32()
            } else {
                q
            };
            T::from_f32(q).to_f32()
        }
        _ => T::from_f32(scaled * (1.0f32 / s)).to_f32(),
    }
}

#[test]
fn dynamic_per_group_and_per_token_match_torchao() {
    let mut tally = Tally::default();
    let cases = cases();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    for case in &cases {
        match case.get("dtype") {
            "f32" => run::<f32>(case, &mut tally),
            "bf16" => run::<bf16>(case, &mut tally),
            "f16" => run::<f16>(case, &mut tally),
            other => panic!("{}: dtype {other}", case.name),
        }
    }
    eprintln!(
        "torchao per-group/per-token: {} values compared; departures: {:?}; dx: {} same, {} at \
         qmin/qmax (torch's strict clamp mask), {} by torchao's dy*s*(1/s) rounding",
        tally.compared, tally.explained, tally.dx_same, tally.dx_edge, tally.dx_rounding
    );
    assert!(tally.compared > 40_000, "{} compared", tally.compared);
    assert!(
        tally.unexplained.is_empty(),
        "mismatches no departure explains: {:?}",
        tally.unexplained
    );
    assert!(
        tally.dx_other.is_empty(),
        "dx differs otherwise: {:#?}",
        tally.dx_other
    );
    // Each documented departure is real (the vectors show it), so that the README's list stays true.
    for d in [
        Departure::AsymmetricIntPerGroup,
        Departure::TruncatedFloatZeroPoint,
        Departure::NonFiniteGroup,
        Departure::OverflowingRange,
    ] {
        assert!(
            tally.explained.get(&d).copied().unwrap_or(0) > 0,
            "{d:?} never seen"
        );
    }
    assert!(tally.dx_edge > 0 && tally.dx_rounding > 0);
}

/// The device on torchao's cases: the same bits as the reference (which the test above compares
/// with torchao), for every case the device takes (the float domain needs one-pass groups).
fn run_on_device<T: FromBits>(ctx: &fakequant::GpuContext, case: &Case<'_>) -> bool {
    let config = case.config();
    let shape = case.shape();
    let x: Vec<T> = case.rows["x"]
        .iter()
        .map(|&b| T::from_bits_u32(b))
        .collect();
    let Ok(dynamic) = ctx.create_dynamic(&config, &shape) else {
        return false;
    };
    let expected = fake_quant_dynamic(&config, &x, &shape).unwrap();
    let got = dynamic.forward(&x, &shape).unwrap();
    let label = format!("{} on {}", case.name, ctx.adapter_name());
    crate::common::assert_dynamic_eq(&label, &expected, &got);
    true
}

#[test]
fn the_device_matches_the_reference_on_torchao_cases() {
    let cases = cases();
    for ctx in contexts() {
        let mut ran = 0;
        for case in &cases {
            ran += match case.get("dtype") {
                "f32" => run_on_device::<f32>(ctx, case),
                "bf16" => run_on_device::<bf16>(ctx, case),
                "f16" => run_on_device::<f16>(ctx, case),
                other => panic!("{}: dtype {other}", case.name),
            } as usize;
        }
        assert_eq!(
            ran,
            cases.len(),
            "every torchao case runs on {}",
            ctx.adapter_name()
        );
    }
}
