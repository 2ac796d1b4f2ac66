//! Floating-point fake-quantization (FP8, MX, NVFP4) on the CPU backend: each block's amax in
//! parallel (order-free), its scale by the reference's per-block function, then every element in
//! parallel by the reference's per-element function.

use super::convert::{narrow, widen};
use super::{reduce, try_output, Cpu};
use crate::dtype::Element;
use crate::error::Result;
use crate::float_quant::{FloatQuantConfig, FloatQuantOutput};
use crate::quant::PackedMask;
use crate::reference::float_quant::{BlockScale, FloatPlan, FloatQuant};

/// A floating-point fake-quantization on the [`Cpu`] backend (the counterpart of
/// [`crate::GpuFloatQuant`]).
#[derive(Debug, Clone)]
pub struct CpuFloatQuant {
    cpu: Cpu,
    config: FloatQuantConfig,
    checks: FloatQuant,
}

impl CpuFloatQuant {
    pub(super) fn new(cpu: &Cpu, config: &FloatQuantConfig, shape: &[usize]) -> Result<Self> {
        Ok(Self {
            cpu: cpu.clone(),
            config: config.clone(),
            checks: FloatQuant::new(config.clone(), shape)?,
        })
    }

    /// `y`, the mask, the element codes and the scales of `x` (see
    /// [`crate::reference::float_quant::fake_quant_float`]).
    pub fn forward<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<FloatQuantOutput<T>> {
        self.checks.check_shape(shape)?;
        let granularity = self.config.granularity(shape);
        let layout = granularity.param_layout(shape, x.len())?;
        if let Some((groups, view_shape)) = granularity.groups_last(shape)? {
            // Strided blocks on their groups-last view: each block's amax and each element's
            // conversion are the same; y, the codes and the mask moved back.
            let out = self.forward(&groups.to_groups_last(x), &view_shape)?;
            return Ok(FloatQuantOutput {
                y: groups.from_groups_last(&out.y),
                codes: groups.from_groups_last(&out.codes),
                mask: groups.mask_from_groups_last(&out.mask),
                ..out
            });
        }
        let layout = layout.kernel_layout();
        let plan = FloatPlan::new(&self.config);
        let isa = self.cpu.instruction_set();
        let blocks: Vec<BlockScale> =
            reduce::channel_amax(&self.cpu, &layout, x, plan.finite_amax())
                .into_iter()
                .map(|a| plan.block::<T>(a))
                .collect();
        let mut y = try_output::<T>("floating-point output", x.len())?;
        let mut codes = try_output::<u8>("floating-point codes", x.len())?;
        let mut words = try_output::<u32>("floating-point mask", PackedMask::words_for(x.len()))?;
        self.cpu.for_each_task_with_codes(
            &mut y,
            &mut codes,
            &mut words,
            |start, y, codes, words| {
                let mut lanes = [0i32; super::elementwise::CHUNK];
                let chunks = y
                    .chunks_mut(super::elementwise::CHUNK)
                    .zip(codes.chunks_mut(super::elementwise::CHUNK))
                    .zip(words.chunks_mut(super::elementwise::CHUNK / 32));
                for (k, ((y, codes), words)) in chunks.enumerate() {
                    let base = start + k * super::elementwise::CHUNK;
                    for run in super::elementwise::runs(&layout, base, base + y.len()) {
                        let part = run.start - base..run.end - base;
                        let x = &x[run.start..run.end];
                        let outputs = y[part.clone()]
                            .iter_mut()
                            .zip(&mut codes[part.clone()])
                            .zip(&mut lanes[part]);
                        for (i, ((y, code), lane)) in outputs.enumerate() {
                            let block = blocks[run.channel + if run.consecutive { i } else { 0 }];
                            let (value, c, ok) = plan.element::<T>(widen(x[i]), block);
                            (*y, *code, *lane) = (narrow::<T>(value), c as u8, -i32::from(ok));
                        }
                    }
                    super::elementwise::pack_lanes(isa, &lanes[..y.len()], words);
                }
            },
        );
        Ok(FloatQuantOutput {
            y,
            mask: PackedMask::from_words(words, x.len())?,
            codes,
            scales: plan.scales(&blocks),
        })
    }
}
