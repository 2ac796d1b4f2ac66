//! The GPU context: adapter choice, device, limits, the kernel cache, error capture, and the
//! device-resident tensors.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, RwLock};

use wgpu::util::DeviceExt;

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::quant::{PackedMask, Rounding};

/// Element tile of every elementwise kernel; chunks of a large tensor start on multiples of it.
pub(crate) const CHUNK_GRANULE_ELEMS: u64 = 1 << 16;

/// How large one dispatch may be. By default the device's own limits; tests lower them to drive
/// the multi-binding and grid-stride paths with small tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchLimits {
    /// Bytes one storage binding may cover (`max_storage_buffer_binding_size`). Tensors larger than
    /// this are processed in several bindings.
    pub max_binding_bytes: u64,
    /// Workgroups one dispatch may launch along x (`max_compute_workgroups_per_dimension`). The
    /// kernels loop over the rest.
    pub max_workgroups: u32,
}

/// Which kernel variant a pipeline implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum KernelKey {
    /// One of the elementwise kernels over tensors of `dtype`: the vec4 variant
    /// (`shaders/elementwise_wide.wgsl`) taking `per_thread` groups per invocation and tile, or
    /// the scalar one (`shaders/elementwise.wgsl`) when `per_thread` is 0.
    Elementwise {
        op: ElementwiseOp,
        dtype: DType,
        per_thread: u32,
    },
    /// One of the observer kernels (`shaders/observer.wgsl`), for tensors of an element type.
    Observer(ObserverKernel, DType),
    /// One of the LSQ kernels (`shaders/lsq.wgsl`), for tensors of an element type.
    Lsq(LsqKernel, DType),
}

/// What an elementwise kernel computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ElementwiseOp {
    /// Fused forward: rounding, per-channel, with mask.
    Forward {
        rounding: Rounding,
        per_channel: bool,
        with_mask: bool,
    },
    /// `y = x` with every mask bit set (an observer's calibration mode).
    PassThrough { with_mask: bool },
    /// Straight-through backward.
    SteBackward,
}

/// The entry points of `shaders/lsq.wgsl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum LsqKernel {
    Params,
    Backward,
    InitTerms,
    /// One level of the tree; `counts` when the second word is an integer count.
    Sum {
        counts: bool,
    },
    Finish,
    InitFinish,
    FromObserver,
}

impl LsqKernel {
    pub(crate) fn entry_point(self) -> &'static str {
        match self {
            LsqKernel::Params => "lsq_params",
            LsqKernel::Backward => "lsq_backward",
            LsqKernel::InitTerms => "lsq_init_terms",
            LsqKernel::Sum { .. } => "lsq_sum",
            LsqKernel::Finish => "lsq_finish",
            LsqKernel::InitFinish => "lsq_init_finish",
            LsqKernel::FromObserver => "lsq_from_observer",
        }
    }
}

/// The entry points of `shaders/observer.wgsl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ObserverKernel {
    MinMaxRows,
    MinMaxCols,
    FinalizeBatch,
    FinalizeBatchNarrow,
    MergeBatch,
    Update,
}

impl ObserverKernel {
    pub(crate) fn entry_point(self) -> &'static str {
        match self {
            ObserverKernel::MinMaxRows => "minmax_rows",
            ObserverKernel::MinMaxCols => "minmax_cols",
            ObserverKernel::FinalizeBatch => "finalize_batch",
            ObserverKernel::FinalizeBatchNarrow => "finalize_batch_narrow",
            ObserverKernel::MergeBatch => "merge_batch",
            ObserverKernel::Update => "update",
        }
    }
}

/// Bindings 1.. of each kernel family (binding 0 is the dispatch uniform): `true` read-only.
/// Elementwise: parameters, x (or dy), y (or dx), mask.
const ELEMENTWISE_BINDINGS: [bool; 4] = [true, true, false, false];
/// Observers: source (tensor or other statistics), partials, batch statistics, state, parameters.
const OBSERVER_BINDINGS: [bool; 5] = [true, false, false, false, false];
/// LSQ: x, dy, dx, parameters, partials, scale, zero point, reduced gradients (8 storage buffers:
/// WebGPU's default per-stage limit).
pub(crate) const LSQ_BINDINGS: [bool; 8] = [true, true, false, false, false, false, false, false];

/// One bind group layout shared by a kernel family's pipelines; kernels that do not use a binding
/// get a dummy buffer there.
pub(crate) struct Family {
    layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
    read_only: &'static [bool],
}

impl Family {
    fn new(device: &wgpu::Device, label: &'static str, read_only: &'static [bool]) -> Self {
        let buffer = |binding, ty| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let entries: Vec<wgpu::BindGroupLayoutEntry> =
            std::iter::once(buffer(0, wgpu::BufferBindingType::Uniform))
                .chain(read_only.iter().enumerate().map(|(i, &read_only)| {
                    buffer(i as u32 + 1, wgpu::BufferBindingType::Storage { read_only })
                }))
                .collect();
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(label),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        Self {
            layout,
            pipeline_layout,
            read_only,
        }
    }
}

/// Shader modules, layouts and the pipeline cache: built once per device, shared by every
/// context that wraps it.
pub(crate) struct Kernels {
    elementwise: Family,
    fake_quant_module: wgpu::ShaderModule,
    fake_quant_half_module: wgpu::ShaderModule,
    wide_module: wgpu::ShaderModule,
    observer: Family,
    observer_module: wgpu::ShaderModule,
    lsq: Family,
    lsq_module: wgpu::ShaderModule,
    pipelines: RwLock<HashMap<KernelKey, wgpu::ComputePipeline>>,
    /// Bound where a kernel variant does not use a read-only or a read-write binding. Two
    /// buffers, because one buffer bound both ways in one dispatch is a usage conflict.
    pub(crate) dummy_read: wgpu::Buffer,
    pub(crate) dummy_write: wgpu::Buffer,
}

/// The WGSL source of the fake-quant kernel family (f32 elements), with its exact helpers.
pub fn fake_quant_shader_source() -> String {
    [
        include_str!("../../shaders/exact_f32.wgsl"),
        include_str!("../../shaders/half.wgsl"),
        include_str!("../../shaders/quantize.wgsl"),
        include_str!("../../shaders/fake_quant.wgsl"),
        include_str!("../../shaders/elementwise_dispatch.wgsl"),
        include_str!("../../shaders/elementwise.wgsl"),
    ]
    .join("\n")
}

/// The WGSL source of the fake-quant kernel family for 16-bit elements (f16, bf16).
pub fn fake_quant_half_shader_source() -> String {
    [
        include_str!("../../shaders/exact_f32.wgsl"),
        include_str!("../../shaders/half.wgsl"),
        include_str!("../../shaders/quantize.wgsl"),
        include_str!("../../shaders/fake_quant_half.wgsl"),
        include_str!("../../shaders/elementwise_dispatch.wgsl"),
        include_str!("../../shaders/elementwise.wgsl"),
    ]
    .join("\n")
}

/// The WGSL source of the wide elementwise kernels (one vec4 of any element type per invocation).
pub fn wide_shader_source() -> String {
    [
        include_str!("../../shaders/exact_f32.wgsl"),
        include_str!("../../shaders/half.wgsl"),
        include_str!("../../shaders/quantize.wgsl"),
        include_str!("../../shaders/elementwise_dispatch.wgsl"),
        include_str!("../../shaders/elementwise_wide.wgsl"),
    ]
    .join("\n")
}

/// The WGSL source of the observer kernel family, with its exact helpers prepended.
pub fn observer_shader_source() -> String {
    [
        include_str!("../../shaders/exact_f32.wgsl"),
        include_str!("../../shaders/half.wgsl"),
        include_str!("../../shaders/quantize.wgsl"),
        include_str!("../../shaders/observer.wgsl"),
    ]
    .join("\n")
}

/// The WGSL source of the LSQ kernel family, with its exact helpers prepended.
pub fn lsq_shader_source() -> String {
    [
        include_str!("../../shaders/exact_f32.wgsl"),
        include_str!("../../shaders/half.wgsl"),
        include_str!("../../shaders/quantize.wgsl"),
        include_str!("../../shaders/lsq.wgsl"),
    ]
    .join("\n")
}

/// Every kernel source the library compiles, by name: the files of `shaders/`, as composed.
pub fn kernel_sources() -> Vec<(&'static str, String)> {
    vec![
        ("fake_quant", fake_quant_shader_source()),
        ("fake_quant_half", fake_quant_half_shader_source()),
        ("elementwise_wide", wide_shader_source()),
        ("observer", observer_shader_source()),
        ("lsq", lsq_shader_source()),
    ]
}

/// Read-back staging buffers are at least this large, so that small reads share one.
const STAGING_MIN_BYTES: u64 = 1 << 20;
/// The largest staging buffer kept between reads.
const STAGING_KEEP_BYTES: u64 = 64 << 20;

struct Shared {
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// The staging buffer of the last read-back, reused by the next (see `read_buffer`).
    staging: std::sync::Mutex<Option<wgpu::Buffer>>,
    adapter_info: Option<wgpu::AdapterInfo>,
    device_limits: wgpu::Limits,
    kernels: Kernels,
}

/// A GPU device with this library's kernels. Cheap to clone (clones share the device, the kernels
/// and the pipeline cache); `Send + Sync`.
#[derive(Clone)]
pub struct GpuContext {
    shared: Arc<Shared>,
    limits: DispatchLimits,
    /// Groups each invocation of the wide elementwise kernels takes per tile (`PER_THREAD` in
    /// elementwise_wide.wgsl).
    wide_per_thread: u32,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field(
                "adapter",
                &self
                    .shared
                    .adapter_info
                    .as_ref()
                    .map(|i| (&i.name, i.backend)),
            )
            .field("limits", &self.limits)
            .finish()
    }
}

/// Reads `FAKEQUANT_BACKEND` (`vulkan`, `gl`, `metal`, `dx12`; several separated by commas).
fn backends_from_env() -> Result<wgpu::Backends> {
    let Ok(value) = std::env::var("FAKEQUANT_BACKEND") else {
        return Ok(wgpu::Backends::all());
    };
    let mut backends = wgpu::Backends::empty();
    for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        backends |= match name.to_ascii_lowercase().as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "gl" | "gles" | "opengl" => wgpu::Backends::GL,
            "metal" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            other => {
                return Err(Error::NoAdapter(format!(
                    "FAKEQUANT_BACKEND={value:?}: unknown backend {other:?} (use vulkan, gl, metal or dx12)"
                )))
            }
        };
    }
    if backends.is_empty() {
        return Err(Error::NoAdapter(format!(
            "FAKEQUANT_BACKEND={value:?} names no backend"
        )));
    }
    Ok(backends)
}

fn preference(device_type: wgpu::DeviceType) -> u8 {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl GpuContext {
    /// Every compute-capable adapter that `FAKEQUANT_BACKEND` and `FAKEQUANT_ADAPTER` (a
    /// case-insensitive substring of the adapter's name) allow, best first (discrete, integrated,
    /// virtual, other, CPU).
    pub fn adapters() -> Result<Vec<wgpu::Adapter>> {
        let backends = backends_from_env()?;
        let name_filter = std::env::var("FAKEQUANT_ADAPTER")
            .ok()
            .map(|s| s.to_lowercase());
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            flags: wgpu::InstanceFlags::from_env_or_default(),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let mut adapters: Vec<wgpu::Adapter> =
            pollster::block_on(instance.enumerate_adapters(backends))
                .into_iter()
                .filter(|a| {
                    a.get_downlevel_capabilities()
                        .flags
                        .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
                })
                .filter(|a| {
                    name_filter
                        .as_ref()
                        .is_none_or(|f| a.get_info().name.to_lowercase().contains(f))
                })
                .collect();
        adapters.sort_by_key(|a| preference(a.get_info().device_type));
        Ok(adapters)
    }

    /// A context on the best adapter that [`GpuContext::adapters`] finds.
    pub fn new() -> Result<Self> {
        let adapter = Self::adapters()?.into_iter().next().ok_or_else(|| {
            Error::NoAdapter(format!(
                "no compute-capable adapter found (FAKEQUANT_BACKEND={:?}, FAKEQUANT_ADAPTER={:?})",
                std::env::var("FAKEQUANT_BACKEND").ok(),
                std::env::var("FAKEQUANT_ADAPTER").ok()
            ))
        })?;
        Self::from_adapter(&adapter)
    }

    /// A context on `adapter`, with a new device that has the adapter's own limits (wgpu's defaults
    /// would cap buffers at 256 MiB).
    pub fn from_adapter(adapter: &wgpu::Adapter) -> Result<Self> {
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("fakequant"),
            // Optional, enabled where the adapter has them so that callers (and bench_report)
            // can time GPU work; no kernel needs them.
            required_features: adapter.features()
                & (wgpu::Features::TIMESTAMP_QUERY
                    | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS),
            required_limits: adapter.limits(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&descriptor))
            .map_err(|e| Error::RequestDevice(e.to_string()))?;
        // Errors inside this library's calls are caught by error scopes and returned; anything
        // else is reported here rather than panicking in wgpu's default handler.
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
            eprintln!("fakequant: uncaptured wgpu error: {e}")
        }));
        Self::build(device, queue, Some(adapter.get_info()))
    }

    /// A context on a device and queue that the caller already owns (a framework sharing its
    /// device). The caller's uncaptured-error handler is left alone.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Result<Self> {
        Self::build(device, queue, None)
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter_info: Option<wgpu::AdapterInfo>,
    ) -> Result<Self> {
        let device_limits = device.limits();
        // CPU adapters (llvmpipe) run a workgroup as a loop over SIMD lanes: fewer, longer
        // workgroups cost less there. GPUs want the most loads in flight: one group per thread.
        let wide_per_thread = match adapter_info.as_ref().map(|i| i.device_type) {
            Some(wgpu::DeviceType::Cpu) => 4,
            _ => 1,
        };
        let kernels = capture(&device, || Ok(Kernels::new(&device)))?;
        let limits = DispatchLimits {
            max_binding_bytes: device_limits
                .max_storage_buffer_binding_size
                .min(device_limits.max_buffer_size),
            max_workgroups: device_limits.max_compute_workgroups_per_dimension,
        };
        if limits.max_binding_bytes < CHUNK_GRANULE_ELEMS * 4 {
            return Err(Error::RequestDevice(format!(
                "max_storage_buffer_binding_size {} is below the {} bytes this library needs",
                limits.max_binding_bytes,
                CHUNK_GRANULE_ELEMS * 4
            )));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                device,
                queue,
                adapter_info,
                device_limits,
                kernels,
                staging: std::sync::Mutex::new(None),
            }),
            limits,
            wide_per_thread,
        })
    }

    /// The same device with lower dispatch limits (never higher than the device's). Every result is
    /// identical; only the number of bindings and of workgroups per dispatch change.
    pub fn with_dispatch_limits(&self, limits: DispatchLimits) -> Result<Self> {
        let device = &self.shared.device_limits;
        if limits.max_binding_bytes < CHUNK_GRANULE_ELEMS * 4
            || limits.max_binding_bytes > device.max_storage_buffer_binding_size
        {
            return Err(Error::TooLarge {
                what: "max_binding_bytes (must be at least 262144 and at most the device's limit)",
                requested: limits.max_binding_bytes,
                limit: device.max_storage_buffer_binding_size,
            });
        }
        if limits.max_workgroups == 0
            || limits.max_workgroups > device.max_compute_workgroups_per_dimension
        {
            return Err(Error::TooLarge {
                what: "max_workgroups (must be at least 1 and at most the device's limit)",
                requested: limits.max_workgroups as u64,
                limit: device.max_compute_workgroups_per_dimension as u64,
            });
        }
        Ok(Self {
            limits,
            ..self.clone()
        })
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.shared.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.shared.queue
    }

    /// The adapter's description, when the context chose the adapter itself.
    pub fn adapter_info(&self) -> Option<&wgpu::AdapterInfo> {
        self.shared.adapter_info.as_ref()
    }

    /// A one-line description of the adapter, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)`.
    pub fn adapter_name(&self) -> String {
        match &self.shared.adapter_info {
            Some(info) => format!("{} ({:?})", info.name, info.backend),
            None => "caller-provided device".to_string(),
        }
    }

    /// The limits of the device.
    pub fn device_limits(&self) -> &wgpu::Limits {
        &self.shared.device_limits
    }

    /// Groups (vec4s) a workgroup of the wide elementwise kernels covers per tile.
    pub(crate) fn wide_tile_groups(&self) -> u64 {
        256 * self.wide_per_thread as u64
    }

    /// Vec4 groups each invocation of the elementwise kernels takes per tile, and with it the
    /// workgroups they launch.
    pub fn wide_groups_per_thread(&self) -> u32 {
        self.wide_per_thread
    }

    /// A context on the same device whose elementwise kernels take `groups` vec4 groups (4 f32 or
    /// 8 16-bit elements each) per invocation and tile, 1 to 4. A tuning knob: the results are the
    /// same bits for every value. The default is 1 on GPUs (the most workgroups, the most loads
    /// in flight) and 4 on CPU adapters such as llvmpipe (fewer workgroup launches).
    pub fn with_wide_groups_per_thread(&self, groups: u32) -> Result<Self> {
        if !(1..=4).contains(&groups) {
            return Err(Error::InvalidSetting(format!(
                "wide groups per thread must be 1 to 4, not {groups}"
            )));
        }
        Ok(Self {
            wide_per_thread: groups,
            ..self.clone()
        })
    }

    /// The dispatch limits in force.
    pub fn dispatch_limits(&self) -> DispatchLimits {
        self.limits
    }

    /// The pipeline for `key`, created on first use and cached for the context's lifetime.
    pub(crate) fn pipeline(&self, key: KernelKey) -> Result<wgpu::ComputePipeline> {
        let kernels = &self.shared.kernels;
        if let Some(p) = kernels.pipelines.read().map_err(|_| poisoned())?.get(&key) {
            return Ok(p.clone());
        }
        let pipeline = self.capture(|| Ok(kernels.create_pipeline(&self.shared.device, key)))?;
        let mut cache = kernels.pipelines.write().map_err(|_| poisoned())?;
        Ok(cache.entry(key).or_insert(pipeline).clone())
    }

    /// Runs `f` inside validation, out-of-memory and internal error scopes and turns whatever wgpu
    /// reported into an [`Error::Gpu`].
    pub(crate) fn capture<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        capture(&self.shared.device, f)
    }

    /// Checks a buffer size against the device's maximum.
    pub(crate) fn check_buffer_size(&self, what: &'static str, bytes: u64) -> Result<()> {
        let limit = self.shared.device_limits.max_buffer_size;
        if bytes > limit {
            return Err(Error::TooLarge {
                what,
                requested: bytes,
                limit,
            });
        }
        Ok(())
    }

    /// Records one compute pass of `key`'s pipeline: per dispatch a uniform value (bound at 0),
    /// the buffers of bindings 1.. (`None` binds a dummy, read-only or read-write as the kernel
    /// family's layout says) and the workgroup grid. The uniforms share one buffer at aligned
    /// offsets. Inside [`GpuContext::prerecord`] the pass is kept for replay instead.
    pub(crate) fn record_dispatches<U: bytemuck::Pod>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        key: KernelKey,
        dispatches: &[Dispatch<'_, U>],
    ) -> Result<()> {
        let pass = self.prepare_pass(key, dispatches)?;
        match super::prerecorded::keep(pass) {
            None => Ok(()),
            Some(pass) => self.capture(|| {
                let mut compute = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("fakequant"),
                    timestamp_writes: None,
                });
                pass.encode(&mut compute);
                Ok(())
            }),
        }
    }

    /// The pipeline, uniforms and bind groups of one pass of `key`'s kernel.
    fn prepare_pass<U: bytemuck::Pod>(
        &self,
        key: KernelKey,
        dispatches: &[Dispatch<'_, U>],
    ) -> Result<PreparedPass> {
        let pipeline = self.pipeline(key)?;
        let family = self.shared.kernels.family(key);
        let (layout, read_only) = (&family.layout, family.read_only);
        let size = std::mem::size_of::<U>();
        let alignment = self
            .shared
            .device_limits
            .min_uniform_buffer_offset_alignment as usize;
        let stride = size.next_multiple_of(alignment);
        let mut uniform_bytes = vec![0u8; stride * dispatches.len()];
        for (i, d) in dispatches.iter().enumerate() {
            uniform_bytes[i * stride..i * stride + size]
                .copy_from_slice(bytemuck::bytes_of(&d.uniform));
        }
        let kernels = &self.shared.kernels;
        self.capture(|| {
            let uniforms = self.uniform_buffer("fakequant dispatch", &uniform_bytes);
            let dispatches = dispatches
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &uniforms,
                            offset: (i * stride) as u64,
                            size: wgpu::BufferSize::new(size as u64),
                        }),
                    }];
                    for (slot, &ro) in read_only.iter().enumerate() {
                        let resource = match d.buffers.get(slot).cloned().flatten() {
                            Some(b) => wgpu::BindingResource::Buffer(b),
                            None if ro => kernels.dummy_read.as_entire_binding(),
                            None => kernels.dummy_write.as_entire_binding(),
                        };
                        entries.push(wgpu::BindGroupEntry {
                            binding: slot as u32 + 1,
                            resource,
                        });
                    }
                    let group = self
                        .shared
                        .device
                        .create_bind_group(&wgpu::BindGroupDescriptor {
                            label: Some("fakequant dispatch"),
                            layout,
                            entries: &entries,
                        });
                    (group, d.grid)
                })
                .collect();
            Ok(PreparedPass {
                pipeline,
                _uniforms: uniforms,
                dispatches,
            })
        })
    }

    /// A new storage buffer (`STORAGE | COPY_SRC | COPY_DST`) holding `data`.
    pub(crate) fn storage_buffer_init(
        &self,
        label: &'static str,
        data: &[u8],
    ) -> Result<wgpu::Buffer> {
        self.storage_buffer(label, data.len() as u64, Some(data))
    }

    fn storage_buffer(
        &self,
        label: &'static str,
        bytes: u64,
        contents: Option<&[u8]>,
    ) -> Result<wgpu::Buffer> {
        self.check_buffer_size(label, bytes)?;
        // A zero-sized tensor still gets a (4-byte) buffer so that it can be bound and passed around.
        let size = bytes.max(4).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        self.capture(|| {
            let buffer = self.shared.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: contents.is_some(),
            });
            if let Some(data) = contents {
                if !data.is_empty() {
                    // Mapped ranges are whole words; an odd number of 16-bit elements leaves the
                    // last two bytes zero.
                    let mapped = data.len().next_multiple_of(4);
                    let mut padded;
                    let whole = if mapped == data.len() {
                        data
                    } else {
                        padded = data.to_vec();
                        padded.resize(mapped, 0);
                        &padded
                    };
                    buffer
                        .get_mapped_range_mut(..mapped as u64)
                        .map_err(|e| Error::Gpu(e.to_string()))?
                        .copy_from_slice(whole);
                }
                buffer.unmap();
            }
            Ok(buffer)
        })
    }

    /// Uploads a tensor's values to a new device buffer.
    pub fn upload(&self, data: &[f32]) -> Result<GpuTensor> {
        self.upload_typed(data)
    }

    /// Uploads a tensor of any element type (`f32`, `half::f16`, `half::bf16`).
    pub fn upload_typed<T: Element>(&self, data: &[T]) -> Result<GpuTensor> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buffer = self.storage_buffer(
            "fakequant tensor",
            T::DTYPE.bytes_for(data.len()),
            Some(bytes),
        )?;
        Ok(GpuTensor {
            buffer,
            len: data.len(),
            dtype: T::DTYPE,
        })
    }

    /// A new f32 device tensor of `len` elements (contents unspecified until written).
    pub fn create_tensor(&self, len: usize) -> Result<GpuTensor> {
        self.create_tensor_typed(len, DType::F32)
    }

    /// A new device tensor of `len` elements of `dtype`.
    pub fn create_tensor_typed(&self, len: usize, dtype: DType) -> Result<GpuTensor> {
        let buffer = self.storage_buffer("fakequant tensor", dtype.bytes_for(len), None)?;
        Ok(GpuTensor { buffer, len, dtype })
    }

    /// A new device mask of `len` bits.
    pub fn create_mask(&self, len: usize) -> Result<GpuMask> {
        let buffer = self.storage_buffer(
            "fakequant mask",
            (PackedMask::words_for(len) as u64) * 4,
            None,
        )?;
        Ok(GpuMask { buffer, len })
    }

    /// Uploads a packed mask.
    pub fn upload_mask(&self, mask: &PackedMask) -> Result<GpuMask> {
        let buffer = self.storage_buffer(
            "fakequant mask",
            (mask.words().len() as u64) * 4,
            Some(bytemuck::cast_slice(mask.words())),
        )?;
        Ok(GpuMask {
            buffer,
            len: mask.len(),
        })
    }

    /// Reads an f32 device tensor back (waits for the queue).
    pub fn read_tensor(&self, tensor: &GpuTensor) -> Result<Vec<f32>> {
        self.read_tensor_typed(tensor)
    }

    /// Reads a device tensor of element type `T` back (waits for the queue).
    pub fn read_tensor_typed<T: Element>(&self, tensor: &GpuTensor) -> Result<Vec<T>> {
        T::DTYPE.check_same("read-back type", tensor.dtype)?;
        let bytes = self.read_buffer(&tensor.buffer, 0, tensor.dtype.bytes_for(tensor.len))?;
        let mut values: Vec<T> = bytemuck::pod_collect_to_vec(&bytes);
        values.truncate(tensor.len);
        Ok(values)
    }

    /// Reads a device mask back (waits for the queue).
    pub fn read_mask(&self, mask: &GpuMask) -> Result<PackedMask> {
        let bytes =
            self.read_buffer(&mask.buffer, 0, PackedMask::words_for(mask.len) as u64 * 4)?;
        PackedMask::from_words(bytemuck::pod_collect_to_vec(&bytes), mask.len)
    }

    /// Copies `size` bytes at `offset` of `buffer` (which needs `COPY_SRC`) to the host.
    pub fn read_buffer(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        if size == 0 {
            return Ok(Vec::new());
        }
        if !buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
            return Err(Error::InvalidBuffer {
                what: "read-back source",
                reason: "needs BufferUsages::COPY_SRC".into(),
            });
        }
        if !offset.is_multiple_of(4)
            || !size.is_multiple_of(4)
            || offset
                .checked_add(size)
                .is_none_or(|end| end > buffer.size())
        {
            return Err(Error::InvalidBuffer {
                what: "read-back source",
                reason: format!(
                    "range {offset}+{size} is not 4-byte aligned or exceeds the buffer ({} bytes)",
                    buffer.size()
                ),
            });
        }
        let device = &self.shared.device;
        // The staging buffer of an earlier read when it is large enough (taken out of the slot,
        // so that concurrent reads each have their own).
        let reused = self
            .shared
            .staging
            .lock()
            .map_err(|_| poisoned())?
            .take_if(|b| b.size() >= size);
        let staging = self.capture(|| {
            let staging = reused.unwrap_or_else(|| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("fakequant read-back"),
                    size: size.max(STAGING_MIN_BYTES),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            });
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fakequant read-back"),
            });
            encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
            self.shared.queue.submit([encoder.finish()]);
            Ok(staging)
        })?;
        let (sender, receiver) = mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, ..size, move |r| {
            let _ = sender.send(r);
        });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(e.to_string()))?;
        receiver
            .recv()
            .map_err(|_| Error::Gpu("the read-back was dropped before it completed".into()))?
            .map_err(|e| Error::Gpu(format!("mapping the read-back buffer failed: {e}")))?;
        let data = staging
            .get_mapped_range(..size)
            .map_err(|e| Error::Gpu(e.to_string()))?
            .to_vec();
        staging.unmap();
        // Kept for the next read unless it would hold a lot of memory idle.
        if staging.size() <= STAGING_KEEP_BYTES {
            let mut slot = self.shared.staging.lock().map_err(|_| poisoned())?;
            if slot.as_ref().is_none_or(|b| b.size() < staging.size()) {
                *slot = Some(staging);
            }
        }
        Ok(data)
    }

    /// Submits `encoder` and waits until the device has finished it.
    pub fn submit_and_wait(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        self.capture(|| {
            self.shared.queue.submit([encoder.finish()]);
            Ok(())
        })?;
        self.shared
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(e.to_string()))?;
        Ok(())
    }

    /// A new command encoder on this device.
    pub fn create_encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.shared
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// A new uniform buffer holding `data`.
    pub(crate) fn uniform_buffer(&self, label: &'static str, data: &[u8]) -> wgpu::Buffer {
        self.shared
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: data,
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// A new read-only storage buffer holding `data`.
    pub(crate) fn constant_storage(
        &self,
        label: &'static str,
        data: &[u8],
    ) -> Result<wgpu::Buffer> {
        self.check_buffer_size(label, data.len() as u64)?;
        self.capture(|| {
            Ok(self
                .shared
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: data,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                }))
        })
    }
}

fn poisoned() -> Error {
    Error::Gpu("the pipeline cache lock was poisoned by a panic in another thread".into())
}

fn capture<T>(device: &wgpu::Device, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let out_of_memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
    let result = f();
    // Scopes pop in reverse order of their creation.
    let errors = [
        pollster::block_on(internal.pop()),
        pollster::block_on(validation.pop()),
        pollster::block_on(out_of_memory.pop()),
    ];
    if let Some(e) = errors.into_iter().flatten().next() {
        return Err(Error::Gpu(e.to_string()));
    }
    result
}

impl Kernels {
    fn family(&self, key: KernelKey) -> &Family {
        match key {
            KernelKey::Elementwise { .. } => &self.elementwise,
            KernelKey::Observer(..) => &self.observer,
            KernelKey::Lsq(..) => &self.lsq,
        }
    }

    fn new(device: &wgpu::Device) -> Self {
        let elementwise = Family::new(device, "fakequant elementwise", &ELEMENTWISE_BINDINGS);
        let observer = Family::new(device, "fakequant observer", &OBSERVER_BINDINGS);
        let lsq = Family::new(device, "fakequant lsq", &LSQ_BINDINGS);
        let fake_quant_module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("fake_quant.wgsl"),
            source: wgpu::ShaderSource::Wgsl(fake_quant_shader_source().into()),
        });
        let fake_quant_half_module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("fake_quant_half.wgsl"),
            source: wgpu::ShaderSource::Wgsl(fake_quant_half_shader_source().into()),
        });
        let wide_module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("elementwise_wide.wgsl"),
            source: wgpu::ShaderSource::Wgsl(wide_shader_source().into()),
        });
        let observer_module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("observer.wgsl"),
            source: wgpu::ShaderSource::Wgsl(observer_shader_source().into()),
        });
        let lsq_module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("lsq.wgsl"),
            source: wgpu::ShaderSource::Wgsl(lsq_shader_source().into()),
        });
        let dummy = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 256,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        Self {
            elementwise,
            fake_quant_module,
            fake_quant_half_module,
            wide_module,
            observer,
            observer_module,
            lsq,
            lsq_module,
            pipelines: RwLock::new(HashMap::new()),
            dummy_read: dummy("fakequant unused read-only binding"),
            dummy_write: dummy("fakequant unused read-write binding"),
        }
    }

    fn create_pipeline(&self, device: &wgpu::Device, key: KernelKey) -> wgpu::ComputePipeline {
        let (entry_point, constants, module, layout): (&str, Vec<(&str, f64)>, _, _) = match key {
            KernelKey::Elementwise {
                op,
                dtype,
                per_thread,
            } => {
                let wide = per_thread > 0;
                let (entry, mut constants) = match op {
                    ElementwiseOp::Forward {
                        rounding,
                        per_channel,
                        with_mask,
                    } => (
                        "forward",
                        vec![
                            // quantize.wgsl's ROUNDING: 0 reciprocal, 1 quotient.
                            ("ROUNDING", (rounding == Rounding::Quotient) as u8 as f64),
                            ("PER_CHANNEL", per_channel as u8 as f64),
                            ("WITH_MASK", with_mask as u8 as f64),
                        ],
                    ),
                    ElementwiseOp::PassThrough { with_mask } => (
                        "forward",
                        vec![("WITH_MASK", with_mask as u8 as f64), ("IDENTITY", 1.0)],
                    ),
                    ElementwiseOp::SteBackward => ("ste_backward", vec![]),
                };
                // The wide module serves every element type; the scalar ones are per family.
                let module = match (wide, dtype) {
                    (true, _) => &self.wide_module,
                    (false, DType::F32) => &self.fake_quant_module,
                    (false, _) => &self.fake_quant_half_module,
                };
                if wide || dtype != DType::F32 {
                    constants.push(("DTYPE", dtype_constant(dtype)));
                }
                if wide {
                    constants.push(("PER_THREAD", per_thread as f64));
                }
                (entry, constants, module, &self.elementwise.pipeline_layout)
            }
            KernelKey::Observer(kernel, dtype) => (
                kernel.entry_point(),
                vec![("DTYPE", dtype_constant(dtype))],
                &self.observer_module,
                &self.observer.pipeline_layout,
            ),
            KernelKey::Lsq(kernel, dtype) => {
                let mut constants = vec![("DTYPE", dtype_constant(dtype))];
                if let LsqKernel::Sum { counts } = kernel {
                    constants.push(("COUNTS", counts as u8 as f64));
                }
                (
                    kernel.entry_point(),
                    constants,
                    &self.lsq_module,
                    &self.lsq.pipeline_layout,
                )
            }
        };
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry_point),
            layout: Some(layout),
            module,
            entry_point: Some(entry_point),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                // Every kernel writes its workgroup variables before reading them (the mask and
                // reduction tiles are written by each invocation, or zeroed explicitly, ahead of
                // a barrier), so the zeroing WebGPU adds by default is dead work. On GL, naga
                // emulates it with one invocation storing the whole array: it made the masked
                // forward 8.6x slower than the plain one on llvmpipe.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        })
    }
}

/// A compute pass ready to encode: everything it binds is created, so encoding it (again) creates
/// nothing.
pub(crate) struct PreparedPass {
    pipeline: wgpu::ComputePipeline,
    /// Held for the bind groups, which refer to it.
    _uniforms: wgpu::Buffer,
    dispatches: Vec<(wgpu::BindGroup, [u32; 2])>,
}

impl PreparedPass {
    /// Sets the pipeline and issues the dispatches into `pass`.
    pub(crate) fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        for (group, grid) in &self.dispatches {
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(grid[0], grid[1], 1);
        }
    }

    pub(crate) fn dispatch_count(&self) -> usize {
        self.dispatches.len()
    }
}

/// One dispatch of [`GpuContext::record_dispatches`].
pub(crate) struct Dispatch<'a, U> {
    pub(crate) uniform: U,
    /// Bindings 1.. in order; `None` for a dummy.
    pub(crate) buffers: Vec<Option<wgpu::BufferBinding<'a>>>,
    pub(crate) grid: [u32; 2],
}

/// Binds elements `[start, end)` of a tensor: the binding starts at the byte offset aligned down to
/// `align`, ends on a whole word, and the returned shift is the index of `start` in it (in
/// elements). f32 tensors sit at aligned offsets, so f32 tensors bound over the same elements share
/// the shift.
pub(crate) fn window_binding<'a>(
    t: &TensorBinding<'a>,
    start: u64,
    end: u64,
    align: u64,
) -> (wgpu::BufferBinding<'a>, u64) {
    let size = t.dtype.size();
    let first = t.offset + start * size;
    let aligned = first / align * align;
    let shift = (first - aligned) / size;
    (
        wgpu::BufferBinding {
            buffer: t.buffer,
            offset: aligned,
            size: wgpu::BufferSize::new(((end - start + shift) * size).next_multiple_of(4)),
        },
        shift,
    )
}

/// Splits `units` work units that tile memory in order (unit `u` starts at element `start_of(u)`,
/// `start_of(units)` is the end) into runs of at most `max_units` whose elements span at most
/// `max_elems`: `(first unit, units, first element, end element)` per run. One unit must fit.
pub(crate) fn contiguous_runs(
    units: u64,
    start_of: impl Fn(u64) -> u64,
    max_elems: u64,
    max_units: u64,
) -> Vec<(u64, u64, u64, u64)> {
    let mut runs = Vec::new();
    let mut first = 0;
    while first < units {
        let start = start_of(first);
        // The longest run that fits (start_of is monotone).
        let (mut lo, mut hi) = (first + 1, (first + max_units).min(units));
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if start_of(mid) - start <= max_elems {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        runs.push((first, lo - first, start, start_of(lo)));
        first = lo;
    }
    runs
}

/// The `DTYPE` override of the kernels that read 16-bit elements: 0 f32, 1 f16, 2 bf16.
pub(crate) fn dtype_constant(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 0.0,
        DType::F16 => 1.0,
        DType::Bf16 => 2.0,
    }
}

/// A whole buffer as a binding.
pub(crate) fn whole(buffer: &wgpu::Buffer) -> wgpu::BufferBinding<'_> {
    wgpu::BufferBinding {
        buffer,
        offset: 0,
        size: None,
    }
}

/// A tensor's values in a device buffer owned by this library (`STORAGE | COPY_SRC | COPY_DST`).
#[derive(Debug, Clone)]
pub struct GpuTensor {
    buffer: wgpu::Buffer,
    len: usize,
    dtype: DType,
}

impl GpuTensor {
    /// The buffer, for recording into a caller's encoder.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a tensor of no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// A binding of the whole tensor.
    pub fn binding(&self) -> TensorBinding<'_> {
        TensorBinding::from(&self.buffer).with_dtype(self.dtype)
    }
}

/// A bit-packed mask in a device buffer owned by this library.
#[derive(Debug, Clone)]
pub struct GpuMask {
    buffer: wgpu::Buffer,
    len: usize,
}

impl GpuMask {
    /// The buffer, for recording into a caller's encoder.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Number of elements (bits).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a mask of no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A binding of the whole mask.
    pub fn binding(&self) -> TensorBinding<'_> {
        TensorBinding::from(&self.buffer)
    }
}

/// Where a tensor lives in a caller's buffer: the buffer, a byte offset and the element type. The
/// buffer needs `BufferUsages::STORAGE`. The offset of an f32 tensor (and of a mask) must be a
/// multiple of the device's `min_storage_buffer_offset_alignment` (256 on most devices); a 16-bit
/// tensor may start at any even byte offset in the elementwise ops (fake-quant, straight-through).
#[derive(Debug, Clone, Copy)]
pub struct TensorBinding<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of element 0.
    pub offset: u64,
    /// Element type.
    pub dtype: DType,
}

impl<'a> TensorBinding<'a> {
    /// An f32 tensor at `offset` bytes into `buffer`.
    pub fn new(buffer: &'a wgpu::Buffer, offset: u64) -> Self {
        Self {
            buffer,
            offset,
            dtype: DType::F32,
        }
    }

    /// The same place, holding `dtype` elements.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }
}

impl<'a> From<&'a wgpu::Buffer> for TensorBinding<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Self::new(buffer, 0)
    }
}
