//! The seeded generator of the tests and the benches (`benches/common` includes this file): PCG64
//! (`rand_pcg::Pcg64`, seeded with `seed_from_u64`), whose stream is the same on every platform,
//! behind the small API the tests draw with.

use rand::{Rng as _, RngCore, SeedableRng};
use rand_pcg::Pcg64;

/// A deterministic source of random test data: the same seed gives the same values everywhere.
pub struct Rng(Pcg64);

#[allow(dead_code)] // each including crate uses part of it
impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(Pcg64::seed_from_u64(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    pub fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0.random::<f64>()
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }

    /// Uniform in [lo, hi), rounded to f32.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f32 {
        (lo + (hi - lo) * self.unit()) as f32
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// Any f32 bit pattern: NaNs, infinities, subnormals included.
    pub fn any_bits(&mut self) -> f32 {
        f32::from_bits(self.next_u32())
    }
}
