//! The histogram calibration family (see [`crate::histogram`]): per batch, the observers' exact
//! min/max reduction, then `shaders/histogram.wgsl`'s range growth (pairwise merges) and counting
//! (integer atomics); nothing is read back until the counts are asked for, once, at the end of
//! calibration.

use super::context::GpuContext;
use super::fake_quant::{plan_dispatch, DispatchUniform, ElementwiseBindings, Walk};
use super::kernel::planning::{chunk_elems, per_channel_groups, table_window, Window};
use super::kernel::recording::Dispatch;
use super::kernel::shaders::{Shader, HISTOGRAM_F32, HISTOGRAM_HALF, HISTOGRAM_SHADERS};
use super::kernel::{bindings, ElementShaders, EntryPointDecl, FamilyDecl, Kernel, Recorder};
use super::memory::{check_len, GpuTensor, TensorBinding};
use super::observer::GpuObserver;
use crate::dtype::{DType, Element};
use crate::error::Result;
use crate::histogram::{
    CalibrationMethod, Histogram, HistogramConfig, HistogramDomain, INITIAL_EXPONENT,
};
use crate::observer::{ObserverConfig, ObserverState};
use crate::quant::numel;

/// Workgroups of the private counting pass: each adds its bins to the global counts once.
const PRIVATE_WORKGROUPS: u32 = 64;

/// The histogram kernels for one configuration and input type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct HistogramKernel {
    signed: bool,
    log2_bins: u32,
    dtype: DType,
    /// `histogram_grow`, else a counting pass.
    grow: bool,
    /// The counting pass with per-workgroup counts (one histogram only).
    private: bool,
}

impl Kernel for HistogramKernel {
    fn shader(&self) -> &'static Shader {
        HISTOGRAM_SHADERS.for_dtype(self.dtype)
    }

    fn entry_point(&self) -> &'static str {
        match (self.grow, self.private) {
            (true, _) => "histogram_grow",
            (false, true) => "histogram_count_private",
            (false, false) => "histogram_count",
        }
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        let constants = vec![
            ("SIGNED", f64::from(u8::from(self.signed))),
            ("LOG2_BINS", f64::from(self.log2_bins)),
        ];
        ElementShaders::constants(self.dtype, constants)
    }
}

bindings! {
    /// `histogram_grow`: the batch's statistics in, the exponents and a window of the counts
    /// updated.
    GrowBindings {
        exponents: ReadWrite @ 5,
        counts: ReadWrite @ 6,
        stats: Read @ 8,
    }
}

bindings! {
    /// `histogram_count`: x's window in, the counts updated.
    CountBindings {
        x: Input @ 2,
        exponents: Input @ 5,
        counts: ReadWrite @ 6,
    }
}

/// Histograms of a tensor's values on the device, one per channel (or one), accumulated over
/// calibration batches. Create with [`GpuContext::create_histogram_observer`].
#[derive(Debug)]
pub struct GpuHistogramObserver {
    ctx: GpuContext,
    config: HistogramConfig,
    channels: usize,
    /// Reduces each batch's per-channel min and max (its own state is never used); none without
    /// a channel.
    reducer: Option<GpuObserver>,
    /// Per channel, the exponent of its range (i32).
    exponents: wgpu::Buffer,
    /// Per channel and bin, the count's low and high words.
    counts: wgpu::Buffer,
}

impl GpuContext {
    /// A histogram observer for tensors of `shape` (only the channel axis matters) that has seen
    /// nothing.
    pub fn create_histogram_observer(
        &self,
        config: &HistogramConfig,
        shape: &[usize],
    ) -> Result<GpuHistogramObserver> {
        let channels = config.granularity().channels(shape)?;
        let reducer = self.create_min_max_reducer(config.granularity(), shape)?;
        let exponents: Vec<i32> = vec![INITIAL_EXPONENT; channels];
        let bins = (channels as u64).saturating_mul(config.bins() as u64);
        Ok(GpuHistogramObserver {
            ctx: self.clone(),
            config: *config,
            channels,
            reducer,
            exponents: self.storage_buffer_init(
                "fakequant histogram exponents",
                bytemuck::cast_slice(&exponents),
            )?,
            counts: self
                .storage_buffer_zeroed("fakequant histogram counts", bins.saturating_mul(8))?,
        })
    }
}

impl GpuHistogramObserver {
    /// The configuration.
    pub fn config(&self) -> &HistogramConfig {
        &self.config
    }

    /// Recording level: counts the batch `x` of `shape` (any element type; NaN and infinities
    /// skipped), growing each channel's range first.
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "chunk bounds within the tensor the binding checks accepted"
    )]
    pub fn record_observe(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        x: TensorBinding<'_>,
        shape: &[usize],
    ) -> Result<()> {
        let layout = self.config.granularity().layout(shape, numel(shape)?)?;
        check_len(
            "channels of the shape vs the observer's",
            self.channels,
            layout.channels,
        )?;
        self.ctx.check_tensor("x", &x, layout.numel())?;
        let len = layout.numel() as u64;
        let Some(reducer) = self.reducer.as_ref().filter(|_| len > 0) else {
            return Ok(());
        };
        let stats = reducer.batch_stats();
        reducer.record_batch_min_max(recorder, x, shape, stats)?;
        let kernel = |grow, private| HistogramKernel {
            signed: self.config.domain() == HistogramDomain::Signed,
            log2_bins: self.config.bins().trailing_zeros(),
            dtype: x.dtype,
            grow,
            private,
        };
        // One histogram counts privately per workgroup, on few workgroups that each take many
        // tiles (fewer merges into the global counts).
        let private = self.channels == 1;
        let limits = self.ctx.dispatch_limits();
        let record = self.config.bins() as u64 * 8;
        let windows = count_windows(self.channels, record, limits.max_binding_bytes);
        let grow: Vec<_> = windows
            .iter()
            .map(|w| Dispatch {
                uniform: DispatchUniform::for_channels_with(
                    self.channels as u32,
                    self.channels as u32,
                )
                .with_counts_window(w.first as u32, w.count as u32),
                bindings: GrowBindings {
                    exponents: self.exponents.as_entire_buffer_binding(),
                    counts: w.counts.bind(&self.counts),
                    stats: stats.buffer().as_entire_buffer_binding(),
                },
                grid: [per_channel_groups(w.count, limits.max_workgroups), 1],
            })
            .collect();
        self.ctx.record_pass(recorder, kernel(true, false), &grow)?;
        let align = self.ctx.device_limits().min_storage_buffer_offset_alignment as u64;
        let slack = if x.dtype == DType::F32 { 0 } else { align };
        let chunk_len = chunk_elems(limits.max_binding_bytes, slack, x.dtype);
        // Only x is bound; the forward planner's y window is computed and not used.
        let b = ElementwiseBindings {
            x,
            y: x,
            mask: None,
            params: None,
        };
        let walk = Walk {
            group: 1,
            tile: 256 * 32,
            record,
        };
        // Where the channels are runs of the tensor (a leading channel axis), a chunk's elements
        // are counted by dispatches over its runs alone; elsewhere every chunk's pass reads the
        // whole tensor and counts the elements of its channels (one pass when the counts fit one
        // binding, as they do up to 8192 channels of 2048 bins on a 128 MiB binding).
        let runs = layout.outer == 1 && windows.len() > 1 && windows[0].count.is_multiple_of(32);
        let mut dispatches = Vec::new();
        for chunk in &windows {
            let inner = layout.inner as u64;
            let (first, last) = if runs {
                let first = chunk.first as u64 * inner;
                (first, (first + chunk.count as u64 * inner).min(len))
            } else {
                (0, len)
            };
            let counts = chunk.counts.bind(&self.counts);
            let mut start = first;
            while start < last {
                let end = (start + chunk_len).min(last);
                let p = plan_dispatch(&b, layout, start, end, walk, align, &limits);
                let workgroups = if private {
                    p.grid[0].min(PRIVATE_WORKGROUPS)
                } else {
                    p.grid[0]
                };
                dispatches.push(Dispatch {
                    uniform: p
                        .uniform
                        .with_table_shift(p.channels.first as u32)
                        .with_counts_window(chunk.first as u32, chunk.count as u32),
                    bindings: CountBindings {
                        x: p.x.bind(x.buffer),
                        exponents: self.exponents.as_entire_buffer_binding(),
                        counts: counts.clone(),
                    },
                    grid: [workgroups, 1],
                });
                start = end;
            }
        }
        self.ctx
            .record_pass(recorder, kernel(false, private), &dispatches)
    }

    /// Device level: [`Self::record_observe`] on a device tensor, submitted at once.
    pub fn observe_device(&self, x: &GpuTensor, shape: &[usize]) -> Result<()> {
        check_len("x vs product of shape", numel(shape)?, x.len())?;
        self.ctx
            .run_recorded("fakequant histogram observe", |encoder| {
                self.record_observe(encoder, x.binding(), shape)
            })
    }

    /// Host level: uploads and counts a batch.
    pub fn observe<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<()> {
        check_len("data length vs product of shape", numel(shape)?, x.len())?;
        let x = self.ctx.upload(x)?;
        self.observe_device(&x, shape)
    }

    /// Reads the histograms back (the one read-back of a calibration).
    pub fn read_histograms(&self) -> Result<Vec<Histogram>> {
        let bins = self.config.bins();
        let exponents: Vec<i32> = bytemuck::pod_collect_to_vec(&self.ctx.read_buffer(
            &self.exponents,
            0,
            (self.channels as u64).saturating_mul(4),
        )?);
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(
            &self.ctx.read_buffer(
                &self.counts,
                0,
                (self.channels as u64)
                    .saturating_mul(bins as u64)
                    .saturating_mul(8),
            )?,
        );
        Ok(exponents
            .iter()
            .enumerate()
            .map(|(c, &exponent)| Histogram {
                domain: self.config.domain(),
                exponent,
                counts: words
                    .chunks_exact(2)
                    .skip(c.saturating_mul(bins))
                    .take(bins)
                    .map(|w| u64::from(w[0]) | u64::from(w[1]) << 32)
                    .collect(),
            })
            .collect())
    }

    /// The observer state `method` picks for `observer` (see
    /// [`crate::reference::histogram::calibrate`]), from the histograms read back.
    pub fn calibrate(
        &self,
        method: &CalibrationMethod,
        observer: &ObserverConfig,
    ) -> Result<ObserverState> {
        crate::reference::histogram::calibrate(&self.read_histograms()?, method, observer)
    }
}

/// Channels `first .. first + count`, whose counts one binding holds.
#[derive(Debug, Clone, Copy)]
struct CountWindow {
    first: usize,
    count: usize,
    /// Their counts in the table. A channel's record (a power of two from 1 KiB) is a multiple of
    /// every offset alignment, so the window starts at the first channel's counts.
    counts: Window,
}

/// `channels` in windows of at most as many channels as one binding of `max_binding_bytes` holds
/// the counts of (`record` bytes a channel: at least 8 channels of the largest record, 32 KiB), a
/// multiple of 32 where 32 fit, so that a window's runs of a leading channel axis start on a mask
/// word.
#[allow(
    clippy::arithmetic_side_effects,
    reason = "record >= 1 KiB and max_binding_bytes >= 256 KiB: at least 8 channels a window"
)]
fn count_windows(channels: usize, record: u64, max_binding_bytes: u64) -> Vec<CountWindow> {
    let fit = ((max_binding_bytes / record) as usize).max(1);
    let most = if fit >= 32 { fit / 32 * 32 } else { fit };
    (0..channels.div_ceil(most))
        .map(|k| {
            let (first, count) = (k * most, most.min(channels - k * most));
            CountWindow {
                first,
                count,
                counts: table_window(record, 0, first as u64, count as u64, record),
            }
        })
        .collect()
}

/// What the layout tests check for this family.
pub(crate) fn declarations() -> FamilyDecl {
    FamilyDecl {
        entry_points: vec![
            EntryPointDecl::of::<GrowBindings>(&HISTOGRAM_F32, "histogram_grow"),
            EntryPointDecl::of::<CountBindings>(&HISTOGRAM_F32, "histogram_count"),
            EntryPointDecl::of::<CountBindings>(&HISTOGRAM_F32, "histogram_count_private"),
            EntryPointDecl::of::<GrowBindings>(&HISTOGRAM_HALF, "histogram_grow"),
            EntryPointDecl::of::<CountBindings>(&HISTOGRAM_HALF, "histogram_count"),
            EntryPointDecl::of::<CountBindings>(&HISTOGRAM_HALF, "histogram_count_private"),
        ],
        structs: vec![],
    }
}
