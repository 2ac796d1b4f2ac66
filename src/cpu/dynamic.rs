//! Dynamic fake-quantization (per group, per token) on the CPU backend: the groups' qparams in
//! parallel (each group's min/max on the fast reduction, its qparams by the reference's own
//! function), then the fake-quant on the fast kernels (integer zero points) or the reference's
//! per-element arithmetic in parallel (the float zero-point domain).
//!
//! The reference's group min/max keeps the first zero it sees, either sign; the fast reduction
//! gives `+0.0`. The qparams do not depend on that sign: a zero bound only meets `min(.., 0)`,
//! `max(.., 0)`, a subtraction from or of a nonzero bound (whose result has no signed zero), a
//! division whose `+-0` result is raised to `eps`, or an addition of a positive `s * mid`; so both
//! give the same bits (and the tests' groups mix signed zeros to check it).

use super::convert::widen;
use super::reduce::{self as min_max, min_max_run};
use super::Cpu;
use crate::dtype::Element;
use crate::dynamic::{DynamicConfig, DynamicOutput, DynamicScheme};
use crate::error::{Error, Result};
use crate::quant::{ChannelLayout, PackedMask};
use crate::reference::dynamic::{group_qparams, integer_output, FloatDomain};

/// A dynamic fake-quantization on the [`Cpu`] backend (the counterpart of
/// [`crate::GpuDynamic`]).
#[derive(Debug, Clone)]
pub struct CpuDynamic {
    cpu: Cpu,
    config: DynamicConfig,
    groups: usize,
}

/// Groups per task of the qparams pass: about four tasks per thread.
fn groups_per_task(cpu: &Cpu, groups: usize) -> usize {
    groups.div_ceil(cpu.threads() * 4).max(1)
}

impl CpuDynamic {
    pub(super) fn new(cpu: &Cpu, config: &DynamicConfig, shape: &[usize]) -> Result<Self> {
        Ok(Self {
            cpu: cpu.clone(),
            config: config.clone(),
            groups: config.granularity().channels(shape)?,
        })
    }

    /// The finite min and max of each group (`(+inf, -inf)` for none). Per group and per token
    /// the groups are consecutive runs (the layout `[1, groups, size]`): tasks of whole groups,
    /// one fast reduction per group. Other granularities (a dynamic per-tensor or per-channel
    /// configuration) take the observers' per-channel reduction.
    fn group_ranges<T: Element>(&self, layout: &ChannelLayout, x: &[T]) -> Vec<(f32, f32)> {
        if layout.outer != 1 {
            let m = min_max::channel_min_max(&self.cpu, layout, x);
            return m.min.into_iter().zip(m.max).collect();
        }
        let size = layout.inner;
        let isa = self.cpu.instruction_set();
        let per_task = groups_per_task(&self.cpu, layout.channels);
        let tasks = layout.channels.div_ceil(per_task);
        self.cpu
            .map_indices(
                tasks,
                x.len(),
                || (),
                |_, k| {
                    let groups = k * per_task..((k + 1) * per_task).min(layout.channels);
                    groups
                        .map(|g| {
                            let group = &x[g * size..(g + 1) * size];
                            min_max_run(isa, group, f32::INFINITY, f32::NEG_INFINITY)
                        })
                        .collect::<Vec<_>>()
                },
            )
            .into_iter()
            .flatten()
            .collect()
    }

    /// Each group's qparams from `x` itself, then `y`, the mask and the qparams (see
    /// [`crate::reference::dynamic::fake_quant_dynamic`]).
    pub fn forward<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<DynamicOutput<T>> {
        let config = &self.config;
        let layout = config.granularity().param_layout(shape, x.len())?;
        if layout.channels() != self.groups {
            return Err(Error::LengthMismatch {
                what: "groups of the shape",
                expected: self.groups,
                actual: layout.channels(),
            });
        }
        if let Some((groups, view_shape)) = config.granularity().groups_last(shape)? {
            // Strided groups on their groups-last view: each group's values (its qparams) and
            // each element's output are the same; y and the mask moved back.
            let out = self.forward(&groups.to_groups_last(x), &view_shape)?;
            return Ok(DynamicOutput {
                y: groups.from_groups_last(&out.y),
                mask: groups.mask_from_groups_last(&out.mask),
                ..out
            });
        }
        let layout = layout.kernel_layout();
        let eps = config.eps_for(T::DTYPE);
        let (scales, zero_points): (Vec<f32>, Vec<f32>) = self
            .group_ranges(&layout, x)
            .into_iter()
            .map(|(lo, hi)| {
                // A group without a finite value: (0, 0), as the reference.
                let (lo, hi) = if lo > hi { (0.0, 0.0) } else { (lo, hi) };
                group_qparams::<T>(config, eps, lo, hi)
            })
            .unzip();
        if config.scheme() != DynamicScheme::AsymmetricFloat {
            return integer_output(config, layout.channels, scales, zero_points, |op| {
                self.cpu.fake_quant(op, x, shape)
            });
        }
        let domain = FloatDomain::new::<T>(config);
        let isa = self.cpu.instruction_set();
        let mut y = super::try_output::<T>("dynamic output", x.len())?;
        let mut words = super::try_output::<u32>("dynamic mask", PackedMask::words_for(x.len()))?;
        self.cpu
            .for_each_task(&mut y, &mut words, |start, y, words| {
                let mut lanes = [0i32; super::elementwise::CHUNK];
                let x = &x[start..start + y.len()];
                for (k, ((x, y), words)) in x
                    .chunks(super::elementwise::CHUNK)
                    .zip(y.chunks_mut(super::elementwise::CHUNK))
                    .zip(words.chunks_mut(super::elementwise::CHUNK / 32))
                    .enumerate()
                {
                    let base = start + k * super::elementwise::CHUNK;
                    for (i, ((x, y), lane)) in
                        x.iter().zip(y.iter_mut()).zip(&mut lanes).enumerate()
                    {
                        let g = layout.channel_of(base + i);
                        let in_range;
                        (*y, in_range) =
                            domain.fake_quant_value::<T>(widen(*x), scales[g], zero_points[g]);
                        *lane = -i32::from(in_range);
                    }
                    super::elementwise::pack_lanes(isa, &lanes[..x.len()], words);
                }
            });
        Ok(DynamicOutput {
            y,
            mask: PackedMask::from_words(words, x.len())?,
            scales,
            zero_points,
        })
    }
}
