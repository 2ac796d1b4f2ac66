//! The CPU reference implements the documented semantics (no adapter needed).

use fakequant::reference::{fake_quant, fake_quant_value, ste_backward, ste_grad_value};
use fakequant::{FakeQuant, PackedMask, QuantParams, QuantRange, Rounding};
use proptest::prelude::*;
use proptest::sample::select;

use crate::common::{adversarial, ranges, scale_sweep};

fn y_of(x: f32, scale: f32, zp: i32, range: QuantRange, rounding: Rounding) -> f32 {
    fake_quant_value(x, scale, zp, range, rounding).0
}

/// REFERENCE.md section 1: PyTorch multiplies by the reciprocal; dividing rounds differently.
#[test]
fn multiply_and_divide_rows_from_the_reference() {
    let rows = [
        (0xc06b_e5c7u32, 0x3e4c_04feu32, -18i32, -19i32),
        (0x3ec3_684e, 0x3ba5_a4b6, 76, 75),
        (0x41e5_d6a5, 0x3f79_50f9, 30, 29),
    ];
    for (x_bits, s_bits, k_mul, k_div) in rows {
        let (x, s) = (f32::from_bits(x_bits), f32::from_bits(s_bits));
        assert_eq!(
            y_of(x, s, 0, QuantRange::INT8, Rounding::Reciprocal).to_bits(),
            (k_mul as f32 * s).to_bits()
        );
        assert_eq!(
            y_of(x, s, 0, QuantRange::INT8, Rounding::Quotient).to_bits(),
            (k_div as f32 * s).to_bits()
        );
    }
    // PyTorch's printed output for the first row.
    let y = y_of(
        f32::from_bits(0xc06b_e5c7),
        f32::from_bits(0x3e4c_04fe),
        0,
        QuantRange::INT8,
        Rounding::Reciprocal,
    );
    assert_eq!(y, -3.586_280_3);
}

#[test]
fn ties_round_half_to_even() {
    let xs = [-3.5f32, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5];
    let expected = [-4f32, -2.0, -2.0, 0.0, 0.0, 2.0, 2.0, 4.0];
    for rounding in [Rounding::Reciprocal, Rounding::Quotient] {
        for (x, e) in xs.iter().zip(expected) {
            assert_eq!(
                y_of(*x, 1.0, 0, QuantRange::INT8, rounding).to_bits(),
                e.to_bits(),
                "x = {x}"
            );
        }
    }
}

#[test]
fn negative_zero_and_tiny_negatives_give_positive_zero() {
    for x in [-0.0f32, -1e-30, -f32::from_bits(1), -0.49] {
        for zp in [0, -128, 127] {
            let (y, m) = fake_quant_value(x, 1.0, zp, QuantRange::INT8, Rounding::Reciprocal);
            assert_eq!(y.to_bits(), 0, "x = {x:e}, zp = {zp}");
            assert!(m);
        }
    }
}

#[test]
fn specials_are_defined() {
    let range = QuantRange::UINT8;
    let (scale, zp) = (0.5f32, 10);
    let (y, m) = fake_quant_value(f32::INFINITY, scale, zp, range, Rounding::Reciprocal);
    assert_eq!((y, m), ((255 - 10) as f32 * 0.5, false));
    let (y, m) = fake_quant_value(f32::NEG_INFINITY, scale, zp, range, Rounding::Quotient);
    assert_eq!((y, m), ((0 - 10) as f32 * 0.5, false));
    for nan_bits in [0x7fc0_0000u32, 0xffc0_0000, 0x7f80_0001, 0xff81_2345] {
        let (y, m) = fake_quant_value(
            f32::from_bits(nan_bits),
            scale,
            zp,
            range,
            Rounding::Reciprocal,
        );
        assert_eq!(
            y.to_bits(),
            nan_bits | 0x0040_0000,
            "NaN {nan_bits:#x} is kept, quieted"
        );
        assert!(!m);
    }
    // Huge finite values clamp to the edges.
    assert_eq!(
        y_of(f32::MAX, scale, zp, range, Rounding::Reciprocal),
        245.0 * 0.5
    );
    assert_eq!(
        y_of(-f32::MAX, scale, zp, range, Rounding::Reciprocal),
        -10.0 * 0.5
    );
}

#[test]
fn mask_is_taken_before_the_clamp() {
    let range = QuantRange::INT4; // [-8, 7]
    let cases = [
        (7.0f32, true),
        (7.49, true),
        (7.5, false),
        (-8.0, true),
        (-8.5, true),
        (-8.51, false),
    ];
    for (x, inside) in cases {
        assert_eq!(
            fake_quant_value(x, 1.0, 0, range, Rounding::Reciprocal).1,
            inside,
            "x = {x}"
        );
    }
}

#[test]
fn per_channel_uses_the_channel_of_each_flat_index() {
    // shape [2, 3, 2], axis 1: channel of i is (i / 2) % 3.
    let op = FakeQuant::new(
        QuantRange::INT8,
        QuantParams::per_channel(1, vec![1.0, 2.0, 3.0], vec![0, 1, -1]),
    )
    .unwrap();
    let x = [5.0f32; 12];
    let out = fake_quant(&op, &x, &[2, 3, 2]).unwrap();
    let expected = [
        5.0f32, 5.0, 4.0, 4.0, 6.0, 6.0, 5.0, 5.0, 4.0, 4.0, 6.0, 6.0,
    ];
    assert_eq!(out.y, expected);
}

#[test]
fn straight_through_backward_is_dy_times_mask() {
    assert_eq!(ste_grad_value(-3.0, true), -3.0);
    assert_eq!(ste_grad_value(-3.0, false).to_bits(), 0x8000_0000);
    assert_eq!(ste_grad_value(3.0, false).to_bits(), 0);
    assert_eq!(ste_grad_value(f32::INFINITY, false).to_bits(), 0x7fc0_0000);
    assert_eq!(ste_grad_value(f32::NEG_INFINITY, true), f32::NEG_INFINITY);
    assert_eq!(
        ste_grad_value(f32::from_bits(0x7f80_0001), true).to_bits(),
        0x7fc0_0001
    );
    let mask = PackedMask::from_bools(&[true, false, true]);
    assert_eq!(
        ste_backward(&[1.0, 2.0, -4.0], &mask).unwrap(),
        vec![1.0, 0.0, -4.0]
    );
}

#[test]
fn packed_mask_layout_is_bit_i_of_word_i_over_32() {
    let bools: Vec<bool> = (0..70).map(|i| i % 3 == 0).collect();
    let mask = PackedMask::from_bools(&bools);
    assert_eq!(mask.words().len(), 3);
    assert_eq!(mask.words()[0] & 0b1001, 0b1001);
    assert_eq!(mask.to_bools(), bools);
    assert_eq!(mask.get(69), Some(true));
    assert_eq!(mask.get(70), None);
    assert_eq!(
        PackedMask::from_words(mask.words().to_vec(), 70).unwrap(),
        mask
    );
}

#[test]
fn range_constructors() {
    assert_eq!(
        (QuantRange::INT8.qmin(), QuantRange::INT8.qmax()),
        (-128, 127)
    );
    assert_eq!(QuantRange::signed(8).unwrap(), QuantRange::INT8);
    assert_eq!(
        QuantRange::signed_narrow(8).unwrap(),
        QuantRange::INT8_NARROW
    );
    assert_eq!(QuantRange::unsigned(8).unwrap(), QuantRange::UINT8);
    assert_eq!(QuantRange::signed(4).unwrap(), QuantRange::INT4);
    assert_eq!(QuantRange::unsigned(4).unwrap(), QuantRange::UINT4);
    assert_eq!(QuantRange::signed(16).unwrap(), QuantRange::INT16);
    assert_eq!(
        (
            QuantRange::signed(2).unwrap().qmin(),
            QuantRange::signed(2).unwrap().qmax()
        ),
        (-2, 1)
    );
    assert_eq!(QuantRange::unsigned(16).unwrap().qmax(), 65535);
}

// Properties over the adversarial corpus (`common::adversarial`: ties, their ulp neighbours, clamp
// edges, signed zeros, subnormals, FLT_MAX, infinities, NaNs) and random bit patterns, for every
// scale of `common::scale_sweep` and every range of `common::ranges`.

/// Both ways of forming the quotient.
fn roundings() -> impl Strategy<Value = Rounding> {
    select(vec![Rounding::Reciprocal, Rounding::Quotient])
}

/// A range of every documented width (and the custom ones) with a zero point inside it.
fn range_and_zero_point() -> impl Strategy<Value = (QuantRange, i32)> {
    (select(ranges()), any::<u32>()).prop_map(|(range, z)| {
        let span = (range.qmax() - range.qmin()) as u32 + 1;
        (range, range.qmin() + (z % span) as i32)
    })
}

/// Mostly values of `corpus`, sometimes any f32 bit pattern.
fn value_from(corpus: Vec<f32>) -> impl Strategy<Value = f32> {
    prop_oneof![
        3 => select(corpus),
        1 => any::<u32>().prop_map(f32::from_bits),
    ]
}

/// The table of `fakequant::reference` (the module documentation), row by row: `(y bits, mask)`.
fn table_row(x: f32, scale: f32, zp: i32, range: QuantRange, rounding: Rounding) -> (u32, bool) {
    let (qmin, qmax, zp) = (range.qmin() as i64, range.qmax() as i64, zp as i64);
    // `(q - zp) * s` for an integer q in the range; through an integer, so a zero is +0.0.
    let grid = |q: i64| ((q - zp) as f32 * scale).to_bits();
    if x.is_nan() {
        return (x.to_bits() | 0x0040_0000, false);
    }
    if x == f32::INFINITY {
        return (grid(qmax), false);
    }
    if x == f32::NEG_INFINITY {
        return (grid(qmin), false);
    }
    let quotient = match rounding {
        Rounding::Reciprocal => x * (1.0f32 / scale),
        Rounding::Quotient => x / scale,
    };
    // round_half_even(..) + zp, exactly (an integer-valued f32, or +-inf when the quotient
    // overflows, plus a small integer).
    let q = f64::from(quotient.round_ties_even()) + zp as f64;
    let in_range = qmin as f64 <= q && q <= qmax as f64;
    (grid(q.clamp(qmin as f64, qmax as f64) as i64), in_range)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every value of the adversarial corpus (and random patterns) follows the documented table,
    /// bit for bit, and no result is -0.0.
    #[test]
    fn fake_quant_value_follows_the_documented_table(
        (scale, (range, zp), rounding, xs) in (select(scale_sweep()), range_and_zero_point(), roundings())
            .prop_flat_map(|(scale, (range, zp), rounding)| {
                let xs = prop::collection::vec(value_from(adversarial(scale, zp, range)), 1..64);
                (Just(scale), Just((range, zp)), Just(rounding), xs)
            })
    ) {
        for x in xs {
            let (y, m) = fake_quant_value(x, scale, zp, range, rounding);
            let (expected, expected_mask) = table_row(x, scale, zp, range, rounding);
            prop_assert_eq!(
                y.to_bits(),
                expected,
                "x = {:#010x} ({:e}), scale {:e}, zp {}, {:?}, {:?}",
                x.to_bits(), x, scale, zp, range, rounding
            );
            prop_assert_eq!(m, expected_mask, "mask of x = {:#010x}", x.to_bits());
            prop_assert_ne!(y.to_bits(), 0x8000_0000u32, "-0.0 from x = {:#010x}", x.to_bits());
        }
    }

    /// The tensor form takes the channel of flat index `i` as `(i / inner) % shape[axis]` (inner:
    /// the product of the dimensions after the axis) and is `fake_quant_value` element by element.
    #[test]
    fn per_channel_fake_quant_is_fake_quant_value_of_each_channel(
        (shape, axis, scales, zps, range, rounding, x) in (
            prop::collection::vec(1usize..6, 1..=4),
            range_and_zero_point(),
            roundings(),
        )
            .prop_flat_map(|(shape, (range, _), rounding)| {
                let rank = shape.len();
                (Just(shape), 0..rank, Just(range), Just(rounding))
            })
            .prop_flat_map(|(shape, axis, range, rounding)| {
                let channels = shape[axis];
                let n: usize = shape.iter().product();
                let span = (range.qmax() - range.qmin()) as u32 + 1;
                let zps = prop::collection::vec(
                    any::<u32>().prop_map(move |z| range.qmin() + (z % span) as i32),
                    channels,
                );
                (
                    Just(shape),
                    Just(axis),
                    prop::collection::vec(select(scale_sweep()), channels),
                    zps,
                    Just(range),
                    Just(rounding),
                    prop::collection::vec(value_from(adversarial(0.05, 0, QuantRange::INT8)), n),
                )
            })
    ) {
        let op = FakeQuant::new(range, QuantParams::per_channel(axis, scales.clone(), zps.clone()))
            .unwrap()
            .with_rounding(rounding);
        let out = fake_quant(&op, &x, &shape).unwrap();
        let mask = out.mask;
        let inner: usize = shape[axis + 1..].iter().product();
        for (i, &xi) in x.iter().enumerate() {
            let c = (i / inner) % shape[axis];
            let (y, m) = fake_quant_value(xi, scales[c], zps[c], range, rounding);
            prop_assert_eq!(out.y[i].to_bits(), y.to_bits(), "[{}] of {:?} axis {}", i, shape, axis);
            prop_assert_eq!(mask.get(i), Some(m), "mask [{}] of {:?} axis {}", i, shape, axis);
        }
    }

    /// `ste_grad_value` is IEEE `dy * (in_range ? 1 : 0)` wherever IEEE fixes the bits (a NaN
    /// quieted, the default NaN for `inf * 0`), and `ste_backward` applies it element by element.
    #[test]
    fn straight_through_backward_is_ieee_dy_times_mask(
        (dy, in_range) in prop::collection::vec(value_from(adversarial(1.0, 0, QuantRange::INT8)), 0..200)
            .prop_flat_map(|dy| {
                let n = dy.len();
                (Just(dy), prop::collection::vec(any::<bool>(), n))
            })
    ) {
        for (&g, &m) in dy.iter().zip(&in_range) {
            let got = ste_grad_value(g, m).to_bits();
            let expected = if g.is_nan() {
                g.to_bits() | 0x0040_0000
            } else if g.is_infinite() && !m {
                0x7fc0_0000
            } else {
                (g * if m { 1.0f32 } else { 0.0 }).to_bits()
            };
            prop_assert_eq!(got, expected, "dy = {:#010x}, in range {}", g.to_bits(), m);
        }
        let dx = ste_backward(&dy, &PackedMask::from_bools(&in_range)).unwrap();
        prop_assert_eq!(dx.len(), dy.len());
        for i in 0..dy.len() {
            prop_assert_eq!(dx[i].to_bits(), ste_grad_value(dy[i], in_range[i]).to_bits());
        }
    }
}
