//! Dispatch of the observer kernel family (`shaders/observer.wgsl`): per-channel min/max
//! reduction, the merge of replicas' statistics, the state and qparams update, and the fused
//! observe + fake-quantize step, with the whole state living on the device.

use std::sync::Mutex;

use super::context::{DeviceId, GpuContext};
use super::fake_quant::{ChannelParams, ElementwiseBindings, ElementwiseOp};
use super::kernel::planning::{
    contiguous_runs, element_window, per_channel_groups, Run, CHUNK_CHANNELS_GRANULE,
};
use super::kernel::recording::Dispatch;
use super::kernel::shaders::{Shader, OBSERVERS};
use super::kernel::{
    bindings, dtype_constant, uniform, EntryPointDecl, FamilyDecl, Kernel, Recorder, StructDecl,
};
use super::memory::{check_forward_lengths, check_len, GpuMask, GpuTensor, TensorBinding};
use super::permute::GroupsLastScratch;
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::observer::{Averaging, MinMax, Mode, ObserverConfig, ObserverState, QScheme};
use crate::quant::{ChannelLayout, ParamLayout};
use crate::reference::observer::{check_channels, observer_layout};
use crate::reference::FakeQuantOutput;

/// Threads per workgroup of every observer kernel.
const WG_SIZE: u64 = 256;
/// Elements one workgroup of `minmax_rows` reduces (`PIECE` in the shader).
const PIECE: u64 = 16384;
/// Rows at least this long are reduced row by row; shorter ones column-wise.
const MIN_ROW_LEN: u64 = 256;
/// Channels with at most this many partials are finalized by one invocation each.
const NARROW_SLOTS: u64 = 64;
/// Tensors up to 2^31 - 1 elements keep every index in a u32 on the device.
const MAX_OBSERVED_ELEMS: u64 = (1 << 31) - 1;

/// The entry points of `shaders/observer.wgsl`, for tensors of an element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ObserverKernel {
    entry: ObserverEntry,
    dtype: DType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ObserverEntry {
    MinMaxRows,
    MinMaxCols,
    FinalizeBatch,
    FinalizeBatchNarrow,
    MergeBatch,
    Update,
}

impl ObserverEntry {
    /// The kernel on f32 data (every entry point but the reductions reads only statistics).
    fn f32(self) -> ObserverKernel {
        ObserverKernel {
            entry: self,
            dtype: DType::F32,
        }
    }
}

impl Kernel for ObserverKernel {
    fn shader(&self) -> &'static Shader {
        &OBSERVERS
    }

    fn entry_point(&self) -> &'static str {
        match self.entry {
            ObserverEntry::MinMaxRows => "minmax_rows",
            ObserverEntry::MinMaxCols => "minmax_cols",
            ObserverEntry::FinalizeBatch => "finalize_batch",
            ObserverEntry::FinalizeBatchNarrow => "finalize_batch_narrow",
            ObserverEntry::MergeBatch => "merge_batch",
            ObserverEntry::Update => "update",
        }
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        vec![("DTYPE", dtype_constant(self.dtype))]
    }
}

bindings! {
    /// `minmax_rows`, `minmax_cols`: the tensor's window in, partial (min, max) keys out.
    ReduceBindings {
        src: Read @ 1,
        partials: ReadWrite @ 2,
    }
}

bindings! {
    /// `finalize_batch(_narrow)`: the partials in, the batch statistics out.
    FinalizeBindings {
        partials: Input @ 2,
        batch: ReadWrite @ 3,
        batch_hi: ReadWrite @ 6,
    }
}

bindings! {
    /// `merge_batch`: the other replica's statistics (`src`) merged into `batch`.
    MergeBindings {
        src: Read @ 1,
        batch: ReadWrite @ 3,
        batch_hi: ReadWrite @ 6,
        src_hi: Read @ 7,
    }
}

bindings! {
    /// `update`: the batch statistics folded into the state, which derives the parameters.
    UpdateBindings {
        batch: Input @ 3,
        state: ReadWrite @ 4,
        params: ReadWrite @ 5,
        batch_hi: Input @ 6,
    }
}

uniform! {
    /// The uniform of every observer dispatch (fields unused by an entry point stay zero).
    struct ObserveDispatch as "ObserveDispatch" {
        total: u32,
        shift: u32,
        window_base: u32,
        channels: u32,
        inner: u32,
        first_unit: u32,
        pieces_per_row: u32,
        slots: u32,
        width: u32,
        block_rows: u32,
        rows: u32,
        col_slots: u32,
        averaging: u32,
        average_constant: u32,
        scheme: u32,
        eps: u32,
        power_of_two: u32,
        qmin: i32,
        qmax: i32,
        symmetric_zero_point: i32,
        range_bits: u32,
        half_range_bits: u32,
        hi_shift: u32,
        src_hi_shift: u32,
    }
}

uniform! {
    /// One channel of the state: f32 bits of the running range, the scale and the zero point.
    struct ObserverChannel as "ObserverChannel" {
        min: f32,
        max: f32,
        scale: f32,
        zero_point: i32,
    }
}

/// One batch's per-channel statistics on the device: `channels` f32 minima then `channels` f32
/// maxima, empty channels `(+inf, -inf)`. The layout a framework all-reduces (MIN over the first
/// half, MAX over the second) or merges with [`GpuContext::record_merge_batch_stats`].
#[derive(Debug, Clone)]
pub struct GpuBatchStats {
    buffer: wgpu::Buffer,
    channels: usize,
    owner: DeviceId,
}

impl GpuBatchStats {
    /// The buffer (`STORAGE | COPY_SRC | COPY_DST`), `8 * channels` bytes.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.channels
    }
}

/// Channels `first ..` reduced on their own: their sub-tensor's layout and its plan (none when
/// empty).
struct ReduceChunk {
    first: usize,
    layout: ChannelLayout,
    plan: Option<ReducePlan>,
}

impl ReduceChunk {
    /// Bytes of the chunk's partial results (8 a partial).
    fn partial_bytes(&self) -> u64 {
        let slots = self.plan.as_ref().map_or(0, |p| p.slots);
        (self.layout.channels as u64)
            .saturating_mul(slots)
            .saturating_mul(8)
    }
}

/// The reduction of one tensor: which kernel, how many partials per channel, and its dispatches.
struct ReducePlan {
    entry: ObserverEntry,
    /// Partial results per channel.
    slots: u64,
    uniform: ObserveDispatch,
    /// Per dispatch: its units and the elements of its window.
    dispatches: Vec<Run>,
    /// Workgroups along x for minmax_cols (they loop over the column blocks).
    column_blocks: u64,
}

impl ReducePlan {
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "sizes, offsets and counts here are bounded by checks made before: tensors and windows lie within buffers the binding checks accepted (at most the device's max_buffer_size), channel counts within one binding, so no product or sum approaches u64::MAX"
    )]
    fn new(layout: ChannelLayout, max_elems: u64, max_workgroups: u64) -> Self {
        let n = layout.numel() as u64;
        // One channel: the whole tensor is one row, cut into pieces for as many workgroups as it
        // needs (min and max of integer keys do not depend on the order they are taken in).
        let layout = if layout.channels == 1 {
            ChannelLayout {
                outer: 1,
                channels: 1,
                inner: layout.numel(),
            }
        } else {
            layout
        };
        let (channels, inner) = (layout.channels as u64, layout.inner as u64);
        let mut uniform = ObserveDispatch {
            total: n as u32,
            channels: channels as u32,
            inner: inner as u32,
            ..Default::default()
        };
        // Column-wise: `width` a multiple of channels * inner, at least one workgroup wide.
        let period = channels * inner;
        let width = if period < WG_SIZE {
            period * WG_SIZE.div_ceil(period)
        } else {
            period
        };
        let column_blocks = width.div_ceil(WG_SIZE);
        let use_cols = inner < MIN_ROW_LEN && width <= max_elems;
        if use_cols {
            let rows = n.div_ceil(width);
            // At least ~1024 blocks when the tensor allows: a GPU needs that many workgroups to
            // keep enough loads in flight.
            let block_rows = 64.max(rows.div_ceil(1024)).min(max_elems / width).min(rows);
            let blocks = rows.div_ceil(block_rows);
            let col_slots = width / channels;
            uniform.width = width as u32;
            uniform.block_rows = block_rows as u32;
            uniform.rows = rows as u32;
            uniform.col_slots = col_slots as u32;
            let per_dispatch = (max_elems / (block_rows * width)).clamp(1, max_workgroups);
            let dispatches = (0..blocks.div_ceil(per_dispatch))
                .map(|i| {
                    let first = i * per_dispatch;
                    let count = per_dispatch.min(blocks - first);
                    Run {
                        first_unit: first,
                        units: count,
                        start: first * block_rows * width,
                        end: ((first + count) * block_rows * width).min(n),
                    }
                })
                .collect();
            return Self {
                entry: ObserverEntry::MinMaxCols,
                slots: blocks * col_slots,
                uniform,
                dispatches,
                column_blocks: column_blocks.min(max_workgroups),
            };
        }
        // Row-wise: pieces of at most PIECE elements tile memory in order, so a run of pieces
        // is one contiguous window.
        let pieces_per_row = inner.div_ceil(PIECE).max(1);
        let pieces = layout.outer as u64 * channels * pieces_per_row;
        let start_of =
            |q: u64| ((q / pieces_per_row) * inner + (q % pieces_per_row) * PIECE).min(n);
        uniform.pieces_per_row = pieces_per_row as u32;
        let dispatches = contiguous_runs(pieces, start_of, max_elems, max_workgroups);
        Self {
            entry: ObserverEntry::MinMaxRows,
            slots: layout.outer as u64 * pieces_per_row,
            uniform,
            dispatches,
            column_blocks: 1,
        }
    }
}

/// An observer whose running range, qparams and fake-quant parameters live on the device, so a
/// training step reads nothing back. Create with [`GpuContext::create_observer`].
#[derive(Debug)]
pub struct GpuObserver {
    ctx: GpuContext,
    config: ObserverConfig,
    channels: usize,
    /// `ObserverChannel` per channel.
    state: wgpu::Buffer,
    /// `ChannelParams` per channel, what the fake-quant kernel reads.
    params: wgpu::Buffer,
    /// This step's statistics (filled by the fused step).
    batch: GpuBatchStats,
    /// Reduction partials, grown on demand and reused.
    partials: Mutex<Option<wgpu::Buffer>>,
}

impl GpuContext {
    /// An observer used only for its exact per-channel min/max reduction
    /// ([`GpuObserver::record_batch_min_max`]) of tensors of `shape` with `granularity` (its own
    /// state is never used): what the dynamic, FP8 and histogram families reduce a batch with.
    /// None for a shape without a channel (an axis of length 0: no element to reduce).
    pub(crate) fn create_min_max_reducer(
        &self,
        granularity: crate::quant::Granularity,
        shape: &[usize],
    ) -> Result<Option<GpuObserver>> {
        if granularity.channels(shape)? == 0 {
            return Ok(None);
        }
        let config = ObserverConfig::new(
            crate::quant::QuantRange::INT8,
            crate::observer::QScheme::Symmetric,
            crate::observer::Averaging::MinMax,
            granularity,
        )?;
        Ok(Some(self.create_observer(&config, shape)?))
    }

    /// An observer for tensors of `shape` (only the channel axis matters: a per-tensor observer
    /// takes any shape, `&[]` included) that has seen nothing: empty range, scale 1, zero point 0.
    pub fn create_observer(&self, config: &ObserverConfig, shape: &[usize]) -> Result<GpuObserver> {
        let channels = config.channels_for(shape)?;
        check_channels(config, channels)?;
        // The tables are bound a window per chunk of channels; each must fit one buffer, checked
        // before anything is allocated on the host.
        let params_bytes = (channels as u64).saturating_mul(ChannelParams::BYTES);
        let max_buffer = self.device_limits().max_buffer_size;
        if params_bytes > max_buffer {
            return Err(Error::TooLarge {
                what: "observer channels (32 bytes of fake-quant parameters per channel, in one \
                       buffer)",
                requested: params_bytes,
                limit: max_buffer,
            });
        }
        let initial = ObserverState::initial(channels);
        let state = self.storage_buffer_init(
            "fakequant observer state",
            bytemuck::cast_slice(&state_words(&initial)),
        )?;
        let params = self.storage_buffer_init(
            "fakequant observer params",
            bytemuck::cast_slice(&channel_params(config, &initial)),
        )?;
        let batch = self.upload_batch_stats(&MinMax::empty(channels))?;
        Ok(GpuObserver {
            ctx: self.clone(),
            config: config.clone(),
            channels,
            state,
            params,
            batch,
            partials: Mutex::new(None),
        })
    }

    /// Batch statistics on the device, initialized from the host (validated like a state).
    pub fn upload_batch_stats(&self, stats: &MinMax) -> Result<GpuBatchStats> {
        let channels = stats.channels();
        let stats = stats.clone().validated(channels)?;
        let words: Vec<f32> = stats.min.iter().chain(&stats.max).copied().collect();
        Ok(GpuBatchStats {
            buffer: self
                .storage_buffer_init("fakequant batch stats", bytemuck::cast_slice(&words))?,
            channels,
            owner: self.device_id(),
        })
    }

    /// Reads batch statistics back (waits for the queue).
    pub fn read_batch_stats(&self, stats: &GpuBatchStats) -> Result<MinMax> {
        self.check_owner("stats", stats.owner)?;
        let bytes =
            self.read_buffer(&stats.buffer, 0, (stats.channels as u64).saturating_mul(8))?;
        let words: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        let (min, max) = words.split_at(stats.channels);
        Ok(MinMax {
            min: min.to_vec(),
            max: max.to_vec(),
        })
    }

    /// Recording level: `into = merge(into, from)` on the device, min of mins and max of maxes
    /// (see [`crate::reference::observer::merge`]): how replicas' statistics are combined so that
    /// every replica's next update is identical.
    pub fn record_merge_batch_stats(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        into: &GpuBatchStats,
        from: &GpuBatchStats,
    ) -> Result<()> {
        self.check_owner("into", into.owner)?;
        self.check_owner("from", from.owner)?;
        check_len(
            "channels of merged statistics",
            into.channels,
            from.channels,
        )?;
        if into.buffer == from.buffer {
            return Err(Error::InvalidBuffer {
                what: "from",
                reason: "merging statistics into themselves".into(),
            });
        }
        let dispatches: Vec<_> = self
            .channel_chunks(into.channels, 4)
            .into_iter()
            .map(|chunk| {
                let (lo, hi) = chunk.two_part(into.channels);
                Dispatch {
                    uniform: ObserveDispatch {
                        channels: chunk.count as u32,
                        hi_shift: hi.shift as u32,
                        src_hi_shift: hi.shift as u32,
                        ..Default::default()
                    },
                    bindings: MergeBindings {
                        src: lo.bind(&from.buffer),
                        batch: lo.bind(&into.buffer),
                        batch_hi: hi.bind(&into.buffer),
                        src_hi: hi.bind(&from.buffer),
                    },
                    grid: [chunk.groups, 1],
                }
            })
            .collect();
        self.record_pass(recorder, ObserverEntry::MergeBatch.f32(), &dispatches)
    }
}

fn state_words(state: &ObserverState) -> Vec<ObserverChannel> {
    (0..state.channels())
        .map(|c| ObserverChannel {
            min: state.running.min[c],
            max: state.running.max[c],
            scale: state.scales[c],
            zero_point: state.zero_points[c],
        })
        .collect()
}

fn channel_params(config: &ObserverConfig, state: &ObserverState) -> Vec<ChannelParams> {
    state
        .scales
        .iter()
        .zip(&state.zero_points)
        .map(|(&s, &zp)| ChannelParams::new(s, zp, config.range()))
        .collect()
}

impl GpuObserver {
    /// The configuration.
    pub fn config(&self) -> &ObserverConfig {
        &self.config
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The context it lives on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The state buffer (`ObserverChannel` per channel: min, max, scale bits, zero point).
    pub(crate) fn state_buffer(&self) -> &wgpu::Buffer {
        &self.state
    }

    /// The statistics of the last observed step (what [`GpuObserver::record_step`] reduced).
    pub fn batch_stats(&self) -> &GpuBatchStats {
        &self.batch
    }

    /// New batch statistics sized for this observer, empty.
    pub fn create_batch_stats(&self) -> Result<GpuBatchStats> {
        self.ctx.upload_batch_stats(&MinMax::empty(self.channels))
    }

    /// Reads the running range and qparams back (waits for the queue).
    pub fn read_state(&self) -> Result<ObserverState> {
        let bytes =
            self.ctx
                .read_buffer(&self.state, 0, (self.channels as u64).saturating_mul(16))?;
        let words: Vec<ObserverChannel> = bytemuck::pod_collect_to_vec(&bytes);
        Ok(ObserverState {
            running: MinMax {
                min: words.iter().map(|w| w.min).collect(),
                max: words.iter().map(|w| w.max).collect(),
            },
            scales: words.iter().map(|w| w.scale).collect(),
            zero_points: words.iter().map(|w| w.zero_point).collect(),
        })
    }

    /// Loads a state (for example calibrated values read from another observer or a file):
    /// validated first, written with `queue.write_buffer`, so it takes effect before the next
    /// submission. The fake-quant parameters are derived on the host exactly as the device would.
    pub fn load_state(&self, state: &ObserverState) -> Result<()> {
        let state = state.clone().validated(&self.config, self.channels)?;
        self.ctx.capture("loading an observer state", || {
            let queue = self.ctx.queue();
            queue.write_buffer(&self.state, 0, bytemuck::cast_slice(&state_words(&state)));
            queue.write_buffer(
                &self.params,
                0,
                bytemuck::cast_slice(&channel_params(&self.config, &state)),
            );
            Ok(())
        })
    }

    /// Forgets everything observed: back to the initial state.
    pub fn reset(&self) -> Result<()> {
        self.load_state(&ObserverState::initial(self.channels))
    }

    /// `shape` checked against the observer's channels.
    fn check_shape(&self, shape: &[usize]) -> Result<ParamLayout> {
        let n = crate::quant::numel(shape)?;
        let layout = observer_layout(&self.config, shape, n)?;
        if layout.channels() != self.channels {
            return Err(Error::ChannelCountMismatch {
                axis: self.config.granularity().axis().unwrap_or(0),
                channels: layout.channels(),
                params: self.channels,
            });
        }
        Ok(layout)
    }

    /// The kernels' layout of `shape`. Strided groups have none: they reach the kernels as
    /// their groups-last view ([`GroupsLastScratch`]).
    fn layout(&self, shape: &[usize]) -> Result<ChannelLayout> {
        self.check_shape(shape)?.channel_layout()
    }

    /// Recording level: reduces `x` (of `shape`) to per-channel statistics in `stats`, without
    /// touching the state: what a data-parallel step all-reduces before [`Self::record_update`].
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "sizes, offsets and counts here are bounded by checks made before: tensors and windows lie within buffers the binding checks accepted (at most the device's max_buffer_size), channel counts within one binding, so no product or sum approaches u64::MAX"
    )]
    pub fn record_batch_min_max(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        x: TensorBinding<'_>,
        shape: &[usize],
        stats: &GpuBatchStats,
    ) -> Result<()> {
        if let Some(view) = GroupsLastScratch::of(self.config.granularity(), shape)? {
            // Strided groups: reduced on their groups-last view (the same values per group).
            let xs = view.record_input(&self.ctx, recorder, x)?;
            return self.record_batch_min_max(recorder, xs.binding(), &view.shape, stats);
        }
        let layout = self.layout(shape)?;
        self.ctx.check_owner("stats", stats.owner)?;
        check_len("channels of the statistics", self.channels, stats.channels)?;
        let n = layout.numel() as u64;
        if n > MAX_OBSERVED_ELEMS {
            return Err(Error::TooLarge {
                what: "observed tensor (elements)",
                requested: n,
                limit: MAX_OBSERVED_ELEMS,
            });
        }
        self.ctx.check_tensor("x", &x, layout.numel())?;
        for chunk in self.reduce_chunks(layout, x.dtype)? {
            let sub_x = x.advanced((chunk.first * chunk.layout.inner) as u64);
            self.record_reduce_chunk(recorder, sub_x, &chunk, stats)?;
        }
        Ok(())
    }

    /// The channel ranges reduced one after the other, with their sub-tensors' layouts and plans:
    /// the whole tensor when its partial results fit one binding; otherwise, for channels that
    /// are runs of the tensor (`outer == 1`: per group, per token, per channel on a leading axis),
    /// chunks of channels (sub-tensors) each of whose own plan's partials fit. A chunk's plan
    /// may differ from its neighbours' (a short last chunk fits one window, where the column plan
    /// keeps a partial per column), so each is checked, and shrunk until it fits.
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "sizes, offsets and counts here are bounded by checks made before: tensors and windows lie within buffers the binding checks accepted (at most the device's max_buffer_size), channel counts within one binding, so no product or sum approaches u64::MAX"
    )]
    fn reduce_chunks(&self, layout: ChannelLayout, dtype: DType) -> Result<Vec<ReduceChunk>> {
        let limits = self.ctx.dispatch_limits();
        let align = self.ctx.device_limits().min_storage_buffer_offset_alignment as u64;
        // Elements a window may cover once its start is aligned down.
        let max_elems = (limits.max_binding_bytes - align) / dtype.size();
        let chunk = |first: usize, layout: ChannelLayout| ReduceChunk {
            first,
            layout,
            plan: (layout.numel() != 0)
                .then(|| ReducePlan::new(layout, max_elems, limits.max_workgroups as u64)),
        };
        let whole = chunk(0, layout);
        if whole.partial_bytes() <= limits.max_binding_bytes {
            return Ok(vec![whole]);
        }
        let too_large = |bytes: u64| Error::TooLarge {
            what: "min/max partial results (8 bytes per partial) of channels that are not runs \
                   of the tensor (per channel on a non-leading axis)",
            requested: bytes,
            limit: limits.max_binding_bytes,
        };
        if layout.outer != 1 {
            return Err(too_large(whole.partial_bytes()));
        }
        let sub = |channels| ChannelLayout {
            outer: 1,
            channels,
            inner: layout.inner,
        };
        let mut chunks = Vec::new();
        let (mut first, mut count) = (0, layout.channels);
        while first < layout.channels {
            count = count.min(layout.channels - first);
            let candidate = chunk(first, sub(count));
            let bytes = candidate.partial_bytes();
            if bytes <= limits.max_binding_bytes {
                first += count;
                chunks.push(candidate);
                continue;
            }
            // Fewer channels, as many as this plan's partials per channel allow (at least one
            // granule less: every chunk but the last starts and ends on a granule).
            let per_channel = (bytes / count as u64).max(8);
            let fitting = (limits.max_binding_bytes / per_channel) as usize;
            count = fitting.min(count - 1) / CHUNK_CHANNELS_GRANULE * CHUNK_CHANNELS_GRANULE;
            if count == 0 {
                return Err(too_large(bytes));
            }
        }
        Ok(chunks)
    }

    /// Reduces one chunk of channels, `x` its sub-tensor, into the chunk's windows of `stats`.
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "sizes, offsets and counts here are bounded by checks made before: tensors and windows lie within buffers the binding checks accepted (at most the device's max_buffer_size), channel counts within one binding, so no product or sum approaches u64::MAX"
    )]
    fn record_reduce_chunk(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        x: TensorBinding<'_>,
        chunk: &ReduceChunk,
        stats: &GpuBatchStats,
    ) -> Result<()> {
        let (first, count, plan) = (chunk.first, chunk.layout.channels, &chunk.plan);
        let limits = self.ctx.dispatch_limits();
        let align = self.ctx.device_limits().min_storage_buffer_offset_alignment as u64;
        let slots = plan.as_ref().map_or(0, |p| p.slots);
        // At most one binding: reduce_chunks chose the chunk so.
        let partial_bytes = chunk.partial_bytes().max(8);
        let partials_buffer = self.partials_buffer(partial_bytes)?;
        let partials = wgpu::BufferBinding {
            buffer: &partials_buffer,
            offset: 0,
            size: wgpu::BufferSize::new(partial_bytes),
        };
        if let Some(plan) = plan {
            let mut uniform = plan.uniform;
            uniform.slots = slots as u32;
            let dispatches: Vec<_> = plan
                .dispatches
                .iter()
                .map(|run| {
                    let window = element_window(x.offset, x.dtype, run.start, run.end, align);
                    let mut u = uniform;
                    u.first_unit = run.first_unit as u32;
                    u.window_base = run.start as u32;
                    u.shift = window.shift as u32;
                    let grid = match plan.entry {
                        ObserverEntry::MinMaxCols => [plan.column_blocks as u32, run.units as u32],
                        _ => [run.units as u32, 1],
                    };
                    Dispatch {
                        uniform: u,
                        bindings: ReduceBindings {
                            src: window.bind(x.buffer),
                            partials: partials.clone(),
                        },
                        grid,
                    }
                })
                .collect();
            let kernel = ObserverKernel {
                entry: plan.entry,
                dtype: x.dtype,
            };
            self.ctx.record_pass(recorder, kernel, &dispatches)?;
        }
        let (lo, hi) = self.ctx.channel_chunk(first, count).two_part(self.channels);
        let finalize = ObserveDispatch {
            channels: count as u32,
            slots: slots as u32,
            hi_shift: hi.shift as u32,
            ..Default::default()
        };
        let (entry, groups) = if slots <= NARROW_SLOTS {
            (
                ObserverEntry::FinalizeBatchNarrow,
                per_channel_groups(count, limits.max_workgroups),
            )
        } else {
            (
                ObserverEntry::FinalizeBatch,
                (count as u32).clamp(1, limits.max_workgroups),
            )
        };
        let bindings = FinalizeBindings {
            partials,
            batch: lo.bind(&stats.buffer),
            batch_hi: hi.bind(&stats.buffer),
        };
        self.ctx.record_pass(
            recorder,
            entry.f32(),
            &[Dispatch {
                uniform: finalize,
                bindings,
                grid: [groups, 1],
            }],
        )
    }

    fn partials_buffer(&self, bytes: u64) -> Result<wgpu::Buffer> {
        let mut cached = self
            .partials
            .lock()
            .map_err(|_| Error::Poisoned("observer partials"))?;
        if let Some(buffer) = cached.as_ref().filter(|b| b.size() >= bytes.max(8)) {
            return Ok(buffer.clone());
        }
        let buffer = self.ctx.capture("creating the observer partials", || {
            Ok(self.ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("fakequant observer partials"),
                size: bytes.max(8).next_multiple_of(256),
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            }))
        })?;
        *cached = Some(buffer.clone());
        Ok(buffer)
    }

    /// Recording level: folds `stats` into the running range and recomputes the qparams and the
    /// fake-quant parameters, on the device.
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "qmin and qmax are validated 16-bit values"
    )]
    pub fn record_update(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        stats: &GpuBatchStats,
    ) -> Result<()> {
        self.ctx.check_owner("stats", stats.owner)?;
        check_len("channels of the statistics", self.channels, stats.channels)?;
        let config = &self.config;
        let (qmin, qmax) = (config.range().qmin(), config.range().qmax());
        let uniform = ObserveDispatch {
            channels: self.channels as u32,
            averaging: match config.averaging() {
                Averaging::MinMax => 0,
                Averaging::MovingAverage(_) => 1,
            },
            average_constant: match config.averaging() {
                Averaging::MinMax => 0,
                Averaging::MovingAverage(c) => c.to_bits(),
            },
            scheme: match config.scheme() {
                QScheme::Symmetric => 0,
                QScheme::Affine => 1,
            },
            eps: config.eps().to_bits(),
            power_of_two: config.power_of_two() as u32,
            qmin,
            qmax,
            symmetric_zero_point: config.symmetric_zero_point(),
            range_bits: ((qmax - qmin) as f32).to_bits(),
            half_range_bits: ((qmax - qmin) as f32 / 2.0).to_bits(),
            ..Default::default()
        };
        // A window of every table per chunk of channels (the parameters, 32 bytes a channel,
        // are the largest), so the tables need not fit one binding.
        let record = ChannelParams::BYTES;
        let dispatches: Vec<_> = self
            .ctx
            .channel_chunks(self.channels, record)
            .into_iter()
            .map(|chunk| {
                let (lo, hi) = chunk.two_part(self.channels);
                Dispatch {
                    uniform: ObserveDispatch {
                        channels: chunk.count as u32,
                        hi_shift: hi.shift as u32,
                        ..uniform
                    },
                    bindings: UpdateBindings {
                        batch: lo.bind(&stats.buffer),
                        state: chunk.table(16).bind(&self.state),
                        params: chunk.table(record).bind(&self.params),
                        batch_hi: hi.bind(&stats.buffer),
                    },
                    grid: [chunk.groups, 1],
                }
            })
            .collect();
        self.ctx
            .record_pass(recorder, ObserverEntry::Update.f32(), &dispatches)
    }

    /// Recording level: fake-quantizes `x` into `y` (and the mask) with the qparams in force,
    /// without observing (frozen).
    pub fn record_fake_quant(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        x: TensorBinding<'_>,
        shape: &[usize],
        y: TensorBinding<'_>,
        mask: Option<TensorBinding<'_>>,
    ) -> Result<()> {
        if let Some(view) = GroupsLastScratch::of(self.config.granularity(), shape)? {
            // Strided groups: on their groups-last view, y and the mask moved back.
            self.ctx
                .check_forward(&x, &y, mask.as_ref(), view.groups.numel())?;
            return view.record_forward(&self.ctx, recorder, (x, y, mask), |r, x, shape, y, m| {
                self.record_fake_quant(r, x, shape, y, m)
            });
        }
        let layout = self.layout(shape)?;
        self.ctx.record_forward_with(
            recorder,
            &self.params,
            self.config.rounding(),
            layout,
            (x, y, mask),
        )
    }

    /// Recording level: observes `x` (reduces it and folds the statistics into the state) with
    /// no output: calibration without a copy.
    pub fn record_observe(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        x: TensorBinding<'_>,
        shape: &[usize],
    ) -> Result<()> {
        self.record_batch_min_max(recorder, x, shape, &self.batch)?;
        self.record_update(recorder, &self.batch)
    }

    /// Device level: observes a device tensor, submitted at once.
    pub fn observe_device(&self, x: &GpuTensor, shape: &[usize]) -> Result<()> {
        check_len(
            "data length vs product of shape",
            crate::quant::numel(shape)?,
            x.len(),
        )?;
        self.ctx.run_recorded("fakequant observe", |encoder| {
            self.record_observe(encoder, x.binding(), shape)
        })
    }

    /// Host level: observes host data of any element type.
    pub fn observe<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<()> {
        self.check_shape(shape)?;
        check_len(
            "data length vs product of shape",
            crate::quant::numel(shape)?,
            x.len(),
        )?;
        self.observe_device(&self.ctx.upload(x)?, shape)
    }

    /// Recording level: the fused step, in one encoder (see [`Mode`]). Passes over `x`:
    /// calibration reads it twice (reduce, copy), QAT twice (reduce, fake-quant: the scale of this
    /// step depends on this step's min/max), frozen once.
    pub fn record_step(
        &self,
        recorder: &mut (impl Recorder + ?Sized),
        x: TensorBinding<'_>,
        shape: &[usize],
        y: TensorBinding<'_>,
        mask: Option<TensorBinding<'_>>,
        mode: Mode,
    ) -> Result<()> {
        if let Some(view) = GroupsLastScratch::of(self.config.granularity(), shape)? {
            // Strided groups: the whole step on their groups-last view (x moved once), y and the
            // mask moved back.
            self.ctx
                .check_forward(&x, &y, mask.as_ref(), view.groups.numel())?;
            return view.record_forward(&self.ctx, recorder, (x, y, mask), |r, x, shape, y, m| {
                self.record_step(r, x, shape, y, m, mode)
            });
        }
        let layout = self.layout(shape)?;
        // Everything is checked before anything is recorded, so a failed call leaves the encoder
        // (and the state it would update) untouched.
        self.ctx
            .check_forward(&x, &y, mask.as_ref(), layout.numel())?;
        if mode != Mode::Frozen {
            self.record_batch_min_max(recorder, x, shape, &self.batch)?;
            self.record_update(recorder, &self.batch)?;
        }
        match mode {
            Mode::Calibrate => {
                // The pass-through binds the observer's parameters, which it does not read.
                let bindings = ElementwiseBindings {
                    x,
                    y,
                    mask,
                    params: Some(&self.params),
                };
                let op = ElementwiseOp::PassThrough {
                    with_mask: bindings.mask.is_some(),
                };
                self.ctx.record_elementwise(recorder, op, bindings, layout)
            }
            Mode::Qat | Mode::Frozen => self.record_fake_quant(recorder, x, shape, y, mask),
        }
    }

    /// Device level: the fused step on device tensors, submitted at once.
    pub fn step_device(
        &self,
        x: &GpuTensor,
        shape: &[usize],
        y: &GpuTensor,
        mask: Option<&GpuMask>,
        mode: Mode,
    ) -> Result<()> {
        check_forward_lengths(x, shape, y, mask)?;
        self.ctx.run_recorded("fakequant observer step", |encoder| {
            self.record_step(
                encoder,
                x.binding(),
                shape,
                y.binding(),
                mask.map(GpuMask::binding),
                mode,
            )
        })
    }

    /// Host level: the fused step on host data of any element type (`f32`, `half::f16`,
    /// `half::bf16`), results read back (`y` in the input's type, and the mask).
    pub fn step<T: Element>(
        &self,
        x: &[T],
        shape: &[usize],
        mode: Mode,
    ) -> Result<FakeQuantOutput<T>> {
        self.check_shape(shape)?;
        self.ctx.forward_on_host(x, shape, |x, y, mask| {
            self.step_device(x, shape, y, Some(mask), mode)
        })
    }

    /// Host level: reduces `x` to statistics without touching the state, and reads them back.
    pub fn batch_min_max<T: Element>(&self, x: &[T], shape: &[usize]) -> Result<MinMax> {
        check_len(
            "data length vs product of shape",
            crate::quant::numel(shape)?,
            x.len(),
        )?;
        let x_dev = self.ctx.upload(x)?;
        let stats = self.create_batch_stats()?;
        self.ctx
            .run_recorded("fakequant batch min/max", |encoder| {
                self.record_batch_min_max(encoder, x_dev.binding(), shape, &stats)
            })?;
        self.ctx.read_batch_stats(&stats)
    }
}

/// This family's declarations, for the layout checks.
pub(crate) fn declarations() -> FamilyDecl {
    let entry = |e: ObserverEntry| e.f32().entry_point();
    FamilyDecl {
        entry_points: vec![
            EntryPointDecl::of::<ReduceBindings>(&OBSERVERS, entry(ObserverEntry::MinMaxRows)),
            EntryPointDecl::of::<ReduceBindings>(&OBSERVERS, entry(ObserverEntry::MinMaxCols)),
            EntryPointDecl::of::<FinalizeBindings>(&OBSERVERS, entry(ObserverEntry::FinalizeBatch)),
            EntryPointDecl::of::<FinalizeBindings>(
                &OBSERVERS,
                entry(ObserverEntry::FinalizeBatchNarrow),
            ),
            EntryPointDecl::of::<MergeBindings>(&OBSERVERS, entry(ObserverEntry::MergeBatch)),
            EntryPointDecl::of::<UpdateBindings>(&OBSERVERS, entry(ObserverEntry::Update)),
        ],
        structs: vec![
            StructDecl::of::<ObserveDispatch>(&OBSERVERS),
            StructDecl::of::<ObserverChannel>(&OBSERVERS),
            StructDecl::of::<ChannelParams>(&OBSERVERS),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(outer: usize, channels: usize, inner: usize) -> ChannelLayout {
        ChannelLayout {
            outer,
            channels,
            inner,
        }
    }

    /// The runs of a plan tile `[0, n)` in order and respect the limits.
    fn assert_covers(plan: &ReducePlan, n: u64, max_elems: u64, max_workgroups: u64) {
        let mut next = 0;
        for run in &plan.dispatches {
            assert_eq!(run.start, next.min(n));
            assert!(run.end - run.start <= max_elems, "{run:?}");
            assert!(run.units >= 1 && run.units <= max_workgroups, "{run:?}");
            next = run.end;
        }
        assert_eq!(next, n);
    }

    #[test]
    fn per_tensor_reduces_one_row_in_pieces() {
        let n = 5 * PIECE as usize + 17;
        let plan = ReducePlan::new(layout(n, 1, 1), 1 << 30, 65535);
        assert_eq!(plan.entry, ObserverEntry::MinMaxRows);
        assert_eq!(plan.slots, 6);
        assert_covers(&plan, n as u64, 1 << 30, 65535);
        // Lowered limits: more dispatches, the same tiling.
        let plan = ReducePlan::new(layout(n, 1, 1), 2 * PIECE, 2);
        assert_eq!(plan.dispatches.len(), 3);
        assert_covers(&plan, n as u64, 2 * PIECE, 2);
    }

    #[test]
    fn short_rows_are_reduced_by_columns() {
        // Channels on the last axis: inner 1, so columns of width channels * k.
        let plan = ReducePlan::new(layout(10_000, 64, 1), 1 << 30, 65535);
        assert_eq!(plan.entry, ObserverEntry::MinMaxCols);
        let u = plan.uniform;
        assert_eq!(u.width % 64, 0);
        assert!(u.width as u64 >= WG_SIZE);
        assert_eq!(
            plan.slots,
            u.rows.div_ceil(u.block_rows) as u64 * u.col_slots as u64
        );
        let n = 10_000 * 64;
        assert_covers(&plan, n, 1 << 30, 65535);
    }

    #[test]
    fn long_rows_are_reduced_by_rows() {
        let plan = ReducePlan::new(layout(3, 4, 100_000), 1 << 30, 65535);
        assert_eq!(plan.entry, ObserverEntry::MinMaxRows);
        // Each row of 100000 elements is cut into 7 pieces; 3 outer rows.
        assert_eq!(plan.uniform.pieces_per_row, 7);
        assert_eq!(plan.slots, 3 * 7);
        assert_covers(&plan, 3 * 4 * 100_000, 1 << 30, 65535);
    }
}
