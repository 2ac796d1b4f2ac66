//! LSQ on the CPU backend: the reference's parameters and checks, the forward, `dx` and the
//! fixed-order gradient sums on the fast kernels.

use super::convert::widen;
use super::elementwise::{lsq_dx_task, lsq_terms, lsq_terms_and_dx, ChannelTable};
use super::reduce::ChannelBlocks;
use super::Cpu;
use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::lsq::{LsqConfig, LsqGrads};
use crate::observer::ObserverState;
use crate::reference::lsq::{check_param_counts, check_params, effective_op, lsq_layout, mul, Lsq};
use crate::reference::FakeQuantOutput;

/// An LSQ quantizer on the [`Cpu`] backend (the counterpart of [`crate::GpuLsq`]).
#[derive(Debug, Clone)]
pub struct CpuLsq {
    cpu: Cpu,
    lsq: Lsq,
}

impl CpuLsq {
    pub(super) fn new(
        cpu: &Cpu,
        config: &LsqConfig,
        scales: &[f32],
        zero_points: &[f32],
    ) -> Result<Self> {
        Ok(Self {
            cpu: cpu.clone(),
            lsq: Lsq::new(config.clone(), scales, zero_points)?,
        })
    }

    pub(super) fn from_observer(
        cpu: &Cpu,
        config: &LsqConfig,
        state: &ObserverState,
    ) -> Result<Self> {
        Ok(Self {
            cpu: cpu.clone(),
            lsq: Lsq::from_observer(config.clone(), state)?,
        })
    }

    /// The learnable scales.
    pub fn scales(&self) -> &[f32] {
        self.lsq.scales()
    }

    /// The learnable zero points.
    pub fn zero_points(&self) -> &[f32] {
        self.lsq.zero_points()
    }

    /// The forward with the current parameters (see [`crate::reference::lsq::forward`]).
    pub fn forward<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<FakeQuantOutput<T>> {
        let config = self.lsq.config();
        let layout = lsq_layout(config, shape, x.len())?;
        check_params(&layout, self.scales(), self.zero_points())?;
        let op = effective_op(config, self.scales(), self.zero_points())?;
        self.cpu.fake_quant(&op, x, shape)
    }

    /// The backward with the current parameters (see [`crate::reference::lsq::backward`]): `dx`
    /// and each channel's gradient terms, summed block by block in the reference's order.
    pub fn backward<T: Element>(&self, x: &[T], dy: &[T], shape: &[usize]) -> Result<LsqGrads<T>> {
        let config = self.lsq.config();
        let layout = lsq_layout(config, shape, x.len())?;
        check_params(&layout, self.scales(), self.zero_points())?;
        if dy.len() != x.len() {
            return Err(Error::LengthMismatch {
                what: "dy vs x",
                expected: x.len(),
                actual: dy.len(),
            });
        }
        if let Some((groups, view_shape)) = config.granularity().groups_last(shape)? {
            // Strided groups on their groups-last view: each group's terms in the same order,
            // so the same tree sums; dx moved back.
            let grads = self.backward(
                &groups.to_groups_last(x),
                &groups.to_groups_last(dy),
                &view_shape,
            )?;
            return Ok(LsqGrads {
                dx: groups.from_groups_last(&grads.dx),
                ..grads
            });
        }
        let layout = layout.kernel_layout();
        let table = ChannelTable::new(&effective_op(config, self.scales(), self.zero_points())?);
        let mut dx = super::try_output::<T>("LSQ dx", x.len())?;
        let blocks = ChannelBlocks::new(&layout);
        let isa = self.cpu.isa;
        let sums = if blocks.contiguous() {
            // One pass: each block's dx and terms together.
            blocks.tree_sums_with_output::<2, T>(&self.cpu, &mut dx, |c, start, _, out, dx| {
                lsq_terms_and_dx(isa, table.get(c), x, dy, start, out, dx);
                0
            })
        } else {
            // The channel's elements are strided: dx element-wise, then the terms gathered per
            // block (recomputed from x and dy, not stored).
            self.cpu.for_each_output(&mut dx, |start, dx| {
                lsq_dx_task(isa, &table, &layout, start, x, dy, dx)
            });
            blocks.tree_sums::<2>(&self.cpu, |c, start, len, out| {
                lsq_terms(isa, table.get(c), x, dy, start, len, out);
                0
            })
        };
        let g = config.grad_factor(x.len());
        Ok(LsqGrads {
            dx,
            dscale: sums.iter().map(|([s, _], _)| mul(*s, g)).collect(),
            dzero_point: sums.iter().map(|([_, z], _)| mul(*z, g)).collect(),
        })
    }

    /// Initializes the scales from data (see [`crate::reference::lsq::init_scales`]) and returns
    /// them.
    pub fn init_from_data<T: Element>(&mut self, x: &[T], shape: &[usize]) -> Result<Vec<f32>> {
        let config = self.lsq.config();
        let layout = lsq_layout(config, shape, x.len())?;
        if let Some((groups, view_shape)) = config.granularity().groups_last(shape)? {
            // Strided groups on their groups-last view: the same terms in the same order.
            return self.init_from_data(&groups.to_groups_last(x), &view_shape);
        }
        let layout = layout.kernel_layout();
        let sums = ChannelBlocks::new(&layout).tree_sums::<1>(&self.cpu, |_, start, len, out| {
            let mut finite = 0u64;
            out[0].extend(x[start..start + len].iter().map(|v| {
                let v = widen(*v);
                finite += u64::from(v.is_finite());
                if v.is_finite() {
                    v.abs()
                } else {
                    0.0
                }
            }));
            finite
        });
        let sqrt_qmax = (config.range().qmax() as f32).sqrt();
        let scales: Vec<f32> = sums
            .iter()
            .map(|&([sum], count)| {
                if count == 0 {
                    return 1.0;
                }
                let mean = sum / count as f32;
                (2.0 * mean) / sqrt_qmax
            })
            .collect();
        check_param_counts(config, scales.len(), self.zero_points().len())?;
        let zero_points = self.zero_points().to_vec();
        self.lsq.load_params(&scales, &zero_points)?;
        Ok(scales)
    }

    /// Replaces the learnable parameters.
    pub fn load_params(&mut self, scales: &[f32], zero_points: &[f32]) -> Result<()> {
        self.lsq.load_params(scales, zero_points)
    }
}
