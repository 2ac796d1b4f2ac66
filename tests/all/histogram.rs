//! Histogram calibration (reference): the counts exact and independent of batch order and range
//! growth; each method against an independent implementation on the same data (percentile vs a
//! sort, MSE and entropy vs brute-force searches written here in f64); PyTorch's
//! `HistogramObserver` search against PyTorch 2.15's vectors (`tests/data/pytorch_histogram.txt`).

use fakequant::histogram::{choose_range, pytorch_search, Histogram, INITIAL_EXPONENT};
use fakequant::reference::histogram::HistogramObserver;
use fakequant::reference::observer::Observer;
use fakequant::{
    Averaging, CalibrationMethod, Granularity, HistogramConfig, HistogramDomain, ObserverConfig,
    QScheme, QuantRange,
};

use crate::common::vectors::{data_lines, key_value, values};
use crate::common::Rng;

/// Heavy-tailed data with outliers, zeros, subnormals and specials, in batches of growing and
/// shrinking magnitude.
fn batches(rng: &mut Rng) -> Vec<Vec<f32>> {
    (0..6)
        .map(|b| {
            let scale = [1.0f32, 8.0, 0.25, 3.0, 1e-3, 40.0][b];
            (0..5000)
                .map(|i| match i % 97 {
                    0 => 0.0,
                    1 => -0.0,
                    2 => f32::from_bits(1 + rng.below(1000) as u32),
                    3 if b == 2 => f32::NAN,
                    4 if b == 3 => f32::INFINITY,
                    5 => scale * 50.0 * if i % 2 == 0 { 1.0 } else { -1.0 },
                    _ => {
                        let t = rng.normal() / (rng.unit() as f32 + 0.05).sqrt();
                        t * scale
                    }
                })
                .collect()
        })
        .collect()
}

/// Counts of `values` by the definition, at the smallest power of two above them all (f64).
fn direct_counts(values: &[f32], bins: usize, domain: HistogramDomain) -> (i32, Vec<u64>) {
    let finite: Vec<f64> = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| v as f64)
        .collect();
    let max = finite.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut e = INITIAL_EXPONENT;
    while 2f64.powi(e) <= max {
        e += 1;
    }
    let r = 2f64.powi(e);
    let mut counts = vec![0u64; bins];
    for v in finite {
        let i = match domain {
            HistogramDomain::Magnitude => (v.abs() / r * bins as f64).floor() as usize,
            HistogramDomain::Signed => ((v + r) / (2.0 * r) * bins as f64).floor() as usize,
        };
        counts[i] += 1;
    }
    (e, counts)
}

#[test]
fn counts_are_exact_and_independent_of_batch_order() {
    let mut rng = Rng::new(0x415);
    let data = batches(&mut rng);
    let all: Vec<f32> = data.concat();
    for domain in [HistogramDomain::Magnitude, HistogramDomain::Signed] {
        for bins in [128, 2048, 4096] {
            let config = HistogramConfig::new(bins, domain, Granularity::PerTensor).unwrap();
            let run = |order: &[usize]| {
                let mut obs = HistogramObserver::new(config, &[5000]).unwrap();
                for &b in order {
                    obs.observe(&data[b], &[5000]).unwrap();
                }
                obs.histograms()[0].clone()
            };
            let forward = run(&[0, 1, 2, 3, 4, 5]);
            assert_eq!(forward, run(&[5, 4, 3, 2, 1, 0]), "{domain:?} {bins}");
            assert_eq!(forward, run(&[2, 0, 5, 1, 4, 3]), "{domain:?} {bins}");
            let (e, counts) = direct_counts(&all, bins, domain);
            assert_eq!(forward.exponent, e, "{domain:?} {bins}");
            assert_eq!(forward.counts, counts, "{domain:?} {bins}");
            // NaN and infinities are skipped, everything else counted.
            let finite = all.iter().filter(|v| v.is_finite()).count() as u64;
            assert_eq!(forward.total(), finite);
        }
    }
}

#[test]
fn per_channel_histograms_on_every_axis() {
    let mut rng = Rng::new(0xc4a);
    let shape = [4, 6, 50];
    let x: Vec<f32> = (0..1200)
        .map(|i| rng.normal() * (1 + i % 7) as f32)
        .collect();
    for axis in 0..3 {
        let config =
            HistogramConfig::new(256, HistogramDomain::Signed, Granularity::per_channel(axis))
                .unwrap();
        let mut obs = HistogramObserver::new(config, &shape).unwrap();
        obs.observe(&x, &shape).unwrap();
        let layout = Granularity::per_channel(axis)
            .layout(&shape, x.len())
            .unwrap();
        for (c, h) in obs.histograms().iter().enumerate() {
            let mine: Vec<f32> = (0..x.len())
                .filter(|&i| layout.channel_of(i) == c)
                .map(|i| x[i])
                .collect();
            let (e, counts) = direct_counts(&mine, 256, HistogramDomain::Signed);
            assert_eq!(
                (h.exponent, &h.counts),
                (e, &counts),
                "axis {axis} channel {c}"
            );
        }
    }
    // Settings and shapes are checked.
    assert!(HistogramConfig::new(100, HistogramDomain::Signed, Granularity::PerTensor).is_err());
    assert!(HistogramConfig::new(8192, HistogramDomain::Signed, Granularity::PerTensor).is_err());
    assert!(HistogramConfig::new(256, HistogramDomain::Signed, Granularity::PerToken).is_err());
    let config =
        HistogramConfig::new(256, HistogramDomain::Signed, Granularity::per_channel(1)).unwrap();
    let mut obs = HistogramObserver::new(config, &shape).unwrap();
    assert!(obs.observe(&x, &[4, 5, 60]).is_err());
}

fn magnitude_histogram(values: &[f32], bins: usize) -> Histogram {
    let mut h = Histogram::new(bins, HistogramDomain::Magnitude);
    h.add(values.iter().copied());
    h
}

#[test]
fn percentile_is_within_a_bin_of_the_sorted_data() {
    let mut rng = Rng::new(0x9e5);
    let data: Vec<f32> = batches(&mut rng).concat();
    let mut sorted: Vec<f64> = data
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| v.abs() as f64)
        .collect();
    sorted.sort_by(f64::total_cmp);
    for bins in [128, 2048] {
        let h = magnitude_histogram(&data, bins);
        for p in [50.0, 99.0, 99.9, 99.99, 100.0] {
            let (lo, hi) = choose_range(&h, &CalibrationMethod::Percentile(p), QuantRange::INT8)
                .unwrap()
                .unwrap();
            assert_eq!(lo, -hi);
            let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            let exact = sorted[rank - 1];
            assert!(
                hi >= exact && hi - exact <= h.bin_width(),
                "p {p}, bins {bins}: {hi} vs the data's {exact} (bin {})",
                h.bin_width()
            );
        }
    }
}

/// The MSE criterion written out directly: every candidate, every bin center.
fn brute_force_mse(h: &Histogram, range: QuantRange) -> f64 {
    let last = h.counts.iter().rposition(|&c| c > 0).unwrap();
    let amax = (last + 1) as f64 * h.bin_width();
    let half_levels = (range.qmax() - range.qmin()) as f64 / 2.0;
    let error = |t: f64| -> f64 {
        let mut e = 0.0;
        for (i, &c) in h.counts.iter().enumerate() {
            let center = (i as f64 + 0.5) * h.bin_width();
            let scale = t / half_levels;
            let level = (center / scale).round_ties_even().min(range.qmax() as f64);
            e += c as f64 * (center - level * scale).powi(2);
        }
        e
    };
    let mut best = (amax, error(amax));
    for k in 1..100 {
        let t = amax * (1.0 - k as f64 / 100.0);
        let e = error(t);
        if e < best.1 {
            best = (t, e);
        }
    }
    best.0
}

/// modelopt's entropy calibration written out directly (its numpy steps, one by one).
fn brute_force_entropy(h: &Histogram, num_bits: u32) -> f64 {
    let mut bins: Vec<f64> = h.counts.iter().map(|&c| c as f64).collect();
    bins[0] = bins[1];
    let nbins = 1usize << (num_bits - 1);
    let mut divergences = Vec::new();
    for i in nbins..=bins.len() {
        let space: Vec<f64> = (0..=nbins)
            .map(|k| k as f64 * i as f64 / nbins as f64)
            .collect();
        let digitized: Vec<i64> = (0..i)
            .map(|j| {
                if bins[j] == 0.0 {
                    -1
                } else {
                    (space.iter().filter(|&&s| s <= j as f64).count() as i64) - 1
                }
            })
            .collect();
        let mut new_density_counts = vec![0.0f64; nbins];
        for (j, &d) in digitized.iter().enumerate() {
            if d != -1 {
                new_density_counts[d as usize] += bins[j];
            }
        }
        for (k, count) in new_density_counts.iter_mut().enumerate() {
            let members = digitized.iter().filter(|&&d| d == k as i64).count();
            if members > 0 {
                *count /= members as f64;
            }
        }
        let mut q: Vec<f64> = digitized
            .iter()
            .map(|&d| {
                if d == -1 {
                    0.0
                } else {
                    new_density_counts[d as usize]
                }
            })
            .collect();
        let mut p: Vec<f64> = bins[..i].to_vec();
        p[i - 1] += bins[i..].iter().sum::<f64>();
        for v in [&mut p, &mut q] {
            let s: f64 = v.iter().sum();
            if s != 0.0 {
                v.iter_mut().for_each(|x| *x /= s);
            }
        }
        let mut kl = 0.0;
        for j in 0..i {
            if p[j] > 0.0 {
                kl += if q[j] > 0.0 {
                    p[j] * (p[j] / q[j]).ln()
                } else {
                    f64::INFINITY
                };
            }
        }
        divergences.push(kl);
    }
    let min = divergences.iter().cloned().fold(f64::INFINITY, f64::min);
    let last = divergences.iter().rposition(|&d| d == min).unwrap();
    (last + nbins) as f64 * h.bin_width()
}

#[test]
fn mse_and_entropy_match_brute_force_searches() {
    let mut rng = Rng::new(0xe27);
    for kind in 0..3 {
        let data: Vec<f32> = match kind {
            0 => batches(&mut rng).concat(),
            1 => (0..20000).map(|_| rng.normal()).collect(),
            _ => (0..20000)
                .map(|i| if i == 7 { 300.0 } else { rng.normal().abs() })
                .collect(),
        };
        for (bins, range) in [
            (2048, QuantRange::INT8),
            (512, QuantRange::INT8),
            (2048, QuantRange::INT4),
            (256, QuantRange::signed(3).unwrap()),
        ] {
            let h = magnitude_histogram(&data, bins);
            let mse = choose_range(&h, &CalibrationMethod::Mse, range)
                .unwrap()
                .unwrap();
            assert_eq!(
                mse.1,
                brute_force_mse(&h, range),
                "kind {kind} bins {bins} {range:?}"
            );
            let bits = (range.qmax() - range.qmin() + 1).ilog2();
            if bins >= 1 << (bits - 1) {
                let kl = choose_range(&h, &CalibrationMethod::Entropy, range)
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    kl.1,
                    brute_force_entropy(&h, bits),
                    "kind {kind} bins {bins} {range:?}"
                );
            }
            // Mix keeps the percentile with the smallest error: no worse than any one of them.
            let mix = choose_range(&h, &CalibrationMethod::mix(), range)
                .unwrap()
                .unwrap();
            assert!([99.99, 99.995, 99.999, 99.9999, 100.0].iter().any(|&p| {
                choose_range(&h, &CalibrationMethod::Percentile(p), range)
                    .unwrap()
                    .unwrap()
                    == mix
            }));
        }
    }
}

struct TorchCase {
    name: &'static str,
    symmetric: bool,
    bins: usize,
    range: QuantRange,
    batches: Vec<Vec<f32>>,
    new_min: f32,
    new_max: f32,
    min: f32,
    max: f32,
    histogram: Vec<f32>,
}

fn torch_cases() -> Vec<TorchCase> {
    let text: &'static str = include_str!("../data/pytorch_histogram.txt");
    let hex = |s: &str| f32::from_bits(u32::from_str_radix(s, 16).unwrap());
    let mut lines = data_lines(text);
    let mut out = Vec::new();
    while let Some(line) = lines.next() {
        let mut fields = line.split(' ');
        assert_eq!(fields.next(), Some("case"));
        let name = fields.next().unwrap();
        let mut field = |key| key_value(name, fields.next(), key);
        let symmetric = field("config") == "qint8_symmetric";
        let bins = field("bins").parse().unwrap();
        let range = QuantRange::new(
            field("qmin").parse().unwrap(),
            field("qmax").parse().unwrap(),
        )
        .unwrap();
        let n: usize = field("batches").parse().unwrap();
        let (new_min, new_max) = (hex(field("new_min")), hex(field("new_max")));
        let _scale_and_zero_point = (field("scale"), field("zero_point"));
        let batches = (0..n)
            .map(|_| {
                values(name, "x", lines.next())
                    .into_iter()
                    .map(hex)
                    .collect()
            })
            .collect();
        let last = values(name, "final", lines.next());
        let histogram = values(name, "histogram", lines.next())
            .into_iter()
            .map(hex)
            .collect();
        assert_eq!(lines.next(), Some("end"));
        out.push(TorchCase {
            name,
            symmetric,
            bins,
            range,
            batches,
            new_min,
            new_max,
            min: hex(last[0]),
            max: hex(last[1]),
            histogram,
        });
    }
    out
}

#[test]
fn pytorch_search_matches_pytorch_on_its_own_histograms() {
    let cases = torch_cases();
    assert_eq!(cases.len(), 24);
    for case in &cases {
        if case.min == case.max {
            continue; // PyTorch's calculate_qparams does not search a degenerate histogram
        }
        let width = (case.max as f64 - case.min as f64) / case.bins as f64;
        let counts: Vec<f64> = case.histogram.iter().map(|&c| c as f64).collect();
        let (start, end) = pytorch_search(&counts, width, 256);
        let (lo, hi) = (
            case.min as f64 + width * start as f64,
            case.min as f64 + width * (end + 1) as f64,
        );
        // PyTorch computes in f32, we in f64: the same bins, or one off.
        assert!(
            (lo - case.new_min as f64).abs() <= width * 1.01
                && (hi - case.new_max as f64).abs() <= width * 1.01,
            "{}: [{lo}, {hi}] vs PyTorch [{}, {}] (bin {width})",
            case.name,
            case.new_min,
            case.new_max
        );
    }
}

#[test]
fn pytorch_method_on_our_histograms_is_near_pytorch() {
    let mut report = Vec::new();
    for case in torch_cases() {
        let config =
            HistogramConfig::new(case.bins, HistogramDomain::Signed, Granularity::PerTensor)
                .unwrap();
        let mut obs = HistogramObserver::new(config, &[4096]).unwrap();
        for b in &case.batches {
            obs.observe(b, &[b.len()]).unwrap();
        }
        let scheme = if case.symmetric {
            QScheme::Symmetric
        } else {
            QScheme::Affine
        };
        let observer = ObserverConfig::new(
            case.range,
            scheme,
            Averaging::MinMax,
            Granularity::PerTensor,
        )
        .unwrap();
        let state = obs
            .calibrate(&CalibrationMethod::PyTorchL2, &observer)
            .unwrap();
        // Our bins are two to four times PyTorch's ([-R, R) with R a power of two above the
        // data, theirs the data's [min, max]).
        let ours = obs.histograms()[0].bin_width();
        let (lo, hi) = (state.running.min[0] as f64, state.running.max[0] as f64);
        let (dlo, dhi) = (lo - case.new_min as f64, hi - case.new_max as f64);
        report.push(format!(
            "{}: [{lo:.4}, {hi:.4}] vs [{:.4}, {:.4}], our bin {ours:.4}",
            case.name, case.new_min, case.new_max
        ));
        if case.min == case.max {
            continue;
        }
        // PyTorch's greedy search stops at the first increase of its error, so another binning
        // of the same data may stop a few bins away: within two of our bins, or 2% of the range.
        let tolerance = (2.0 * ours).max(0.02 * (case.new_max - case.new_min) as f64);
        assert!(
            dlo.abs() <= tolerance && dhi.abs() <= tolerance,
            "{}",
            report.last().unwrap()
        );
        // The state loads into an observer and continues as any calibrated one.
        let mut loaded = Observer::new(observer.clone(), &[4096]).unwrap();
        loaded.load_state(state.clone()).unwrap();
    }
    println!("{}", report.join("\n"));
}

#[test]
fn device_counts_equal_the_reference() {
    use half::{bf16, f16};
    let mut rng = Rng::new(0xde71);
    let data = batches(&mut rng);
    for base in crate::common::contexts() {
        let small = base
            .with_dispatch_limits(fakequant::DispatchLimits {
                max_binding_bytes: 256 << 10,
                max_workgroups: 2,
            })
            .unwrap();
        for ctx in [base.clone(), small] {
            for domain in [HistogramDomain::Magnitude, HistogramDomain::Signed] {
                for (bins, granularity, shape) in [
                    (2048, Granularity::PerTensor, vec![5000]),
                    (128, Granularity::PerTensor, vec![5000]),
                    (256, Granularity::per_channel(0), vec![8, 625]),
                    (512, Granularity::per_channel(1), vec![25, 8, 25]),
                    (4096, Granularity::per_channel(2), vec![5, 100, 10]),
                    // Counts over one binding of the lowered limits (1 KiB and 2 KiB a channel):
                    // windows per chunk of channels, over the chunk's runs (a leading axis) or
                    // over the whole tensor per chunk.
                    (128, Granularity::per_channel(0), vec![625, 8]),
                    (128, Granularity::per_channel(1), vec![2, 625, 4]),
                    (256, Granularity::per_channel(1), vec![10, 500]),
                ] {
                    let config = HistogramConfig::new(bins, domain, granularity).unwrap();
                    let mut reference = HistogramObserver::new(config, &shape).unwrap();
                    let gpu = ctx.create_histogram_observer(&config, &shape).unwrap();
                    for (i, b) in data.iter().enumerate() {
                        // Batches of every element type.
                        match i % 3 {
                            0 => {
                                reference.observe(b, &shape).unwrap();
                                gpu.observe(b, &shape).unwrap();
                            }
                            1 => {
                                let h: Vec<bf16> = b.iter().map(|&v| bf16::from_f32(v)).collect();
                                reference.observe(&h, &shape).unwrap();
                                gpu.observe(&h, &shape).unwrap();
                            }
                            _ => {
                                let h: Vec<f16> = b.iter().map(|&v| f16::from_f32(v)).collect();
                                reference.observe(&h, &shape).unwrap();
                                gpu.observe(&h, &shape).unwrap();
                            }
                        }
                    }
                    let got = gpu.read_histograms().unwrap();
                    for (c, (g, e)) in got.iter().zip(reference.histograms()).enumerate() {
                        assert_eq!(
                            g.exponent,
                            e.exponent,
                            "{domain:?} {bins} {granularity:?} channel {c} on {}",
                            ctx.adapter_name()
                        );
                        if let Some(i) = (0..e.counts.len()).find(|&i| g.counts[i] != e.counts[i]) {
                            panic!(
                                "{domain:?} {bins} {granularity:?} channel {c} on {}: bin {i}: {} vs reference {}",
                                ctx.adapter_name(),
                                g.counts[i],
                                e.counts[i]
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A tensor over 128 MiB (more than one storage binding on the default limits): the counting pass
/// takes it in several bindings, with the same counts as the reference.
#[test]
fn device_counts_of_a_tensor_over_128_mib() {
    let n = (1usize << 25) + 1000;
    let mut rng = Rng::new(0xb16);
    let x: Vec<f32> = (0..n)
        .map(|i| {
            if i % 4099 == 0 {
                1e3
            } else {
                (i % 1000) as f32 * 1e-3 * rng.normal()
            }
        })
        .collect();
    let config =
        HistogramConfig::new(2048, HistogramDomain::Signed, Granularity::PerTensor).unwrap();
    let mut reference = HistogramObserver::new(config, &[n]).unwrap();
    reference.observe(&x, &[n]).unwrap();
    for ctx in crate::common::contexts() {
        let gpu = ctx.create_histogram_observer(&config, &[n]).unwrap();
        gpu.observe(&x, &[n]).unwrap();
        let got = gpu.read_histograms().unwrap();
        assert_eq!(got[0].exponent, reference.histograms()[0].exponent);
        assert!(
            got[0].counts == reference.histograms()[0].counts,
            "counts differ on {}",
            ctx.adapter_name()
        );
    }
}
