//! The GPU context: adapter choice, the device and its limits, and the tuning knobs. Memory is in
//! `memory.rs`, the kernel cache and recording in `kernel/`, the op families in their own modules.

use std::sync::Arc;

use super::errors;
use super::kernel::cache::Kernels;
use super::kernel::planning::{channel_chunks, ChannelChunk, CHUNK_GRANULE_ELEMS};
use super::kernel::recording::Prerecording;
use crate::error::{Error, Result};

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

/// The longest run of the one-pass dynamic kernel: its largest group.
const MAX_DYNAMIC_RUN: u32 = 4096;

/// Read-back staging buffers are at least this large, so that small reads share one.
pub(crate) const STAGING_MIN_BYTES: u64 = 1 << 20;
/// The largest staging buffer kept between reads.
pub(crate) const STAGING_KEEP_BYTES: u64 = 64 << 20;

/// The device a context and the objects created on it belong to: a number unique in the process
/// (wgpu's own ids are only unique within one wgpu instance, and a device cannot be asked which
/// instance it came from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeviceId(u64);

impl DeviceId {
    fn next() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// Every adapter of the one wgpu instance this library makes, enumerated once per process.
///
/// One instance: wgpu resolves an object inside the instance of the call, so an object of another
/// instance would be looked up by a number that means something else there (a panic, or silently
/// another buffer); within one instance wgpu itself refuses, as a validation error, a buffer of
/// another device. Enumerated once: each enumeration of the GL backend wraps the instance's one
/// EGL context in a new lock, and two devices behind different locks make it current on two
/// threads at once (EGL_BAD_ACCESS, a panic in wgpu); devices of one adapter share its lock.
fn instance_and_adapters() -> &'static (wgpu::Instance, Vec<wgpu::Adapter>) {
    static ADAPTERS: std::sync::OnceLock<(wgpu::Instance, Vec<wgpu::Adapter>)> =
        std::sync::OnceLock::new();
    ADAPTERS.get_or_init(|| {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::all(),
            flags: wgpu::InstanceFlags::from_env_or_default(),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        (instance, adapters)
    })
}

fn all_adapters() -> &'static [wgpu::Adapter] {
    &instance_and_adapters().1
}

/// The errors wgpu reported outside this library's error scopes: the first one kept, the rest
/// counted (see [`GpuContext::poll`]).
#[derive(Default)]
struct Uncaptured {
    first: Option<wgpu::Error>,
    more: usize,
}

pub(crate) struct Shared {
    id: DeviceId,
    /// Filled by the uncaptured-error handler of a context that installed one.
    uncaptured: Arc<std::sync::Mutex<Uncaptured>>,
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
    /// The longest run of elements an invocation of the one-pass dynamic kernel takes (`RUN` in
    /// dynamic_groups.wgsl, at most one group).
    dynamic_run: u32,
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
            "cpu" => {
                return Err(Error::InvalidEnvironment {
                    name: "FAKEQUANT_BACKEND",
                    value: value.clone(),
                    reason: "cpu names the CPU backend, not a GPU adapter (use fakequant::Cpu, \
                             or fakequant::BestBackend::select, which honours it)"
                        .into(),
                })
            }
            other => {
                return Err(Error::InvalidEnvironment {
                    name: "FAKEQUANT_BACKEND",
                    value: value.clone(),
                    reason: format!(
                        "unknown backend {other:?} (use vulkan, gl, metal or dx12, separated by commas, or cpu alone)"
                    ),
                })
            }
        };
    }
    if backends.is_empty() {
        return Err(Error::InvalidEnvironment {
            name: "FAKEQUANT_BACKEND",
            value,
            reason: "names no backend (use vulkan, gl, metal or dx12, separated by commas)".into(),
        });
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
    /// virtual, other, CPU). They come from one wgpu instance, enumerated once per process: a
    /// later call lists the same adapters (cloned), and one that appears later is not seen.
    pub fn adapters() -> Result<Vec<wgpu::Adapter>> {
        let backends = backends_from_env()?;
        let name_filter = std::env::var("FAKEQUANT_ADAPTER")
            .ok()
            .map(|s| s.to_lowercase());
        let mut adapters: Vec<wgpu::Adapter> = all_adapters()
            .iter()
            .filter(|a| backends.contains(wgpu::Backends::from(a.get_info().backend)))
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
            .cloned()
            .collect();
        adapters.sort_by_key(|a| preference(a.get_info().device_type));
        Ok(adapters)
    }

    /// The one wgpu instance that [`GpuContext::adapters`] come from, for a framework that shares
    /// a device with this library and needs the instance beside the adapter (burn's `WgpuSetup`).
    pub fn instance() -> &'static wgpu::Instance {
        &instance_and_adapters().0
    }

    /// The best adapter that [`GpuContext::adapters`] finds, or [`Error::NoAdapter`] naming the
    /// selection variables.
    pub fn best_adapter() -> Result<wgpu::Adapter> {
        Self::adapters()?.into_iter().next().ok_or_else(|| {
            Error::NoAdapter(format!(
                "no compute-capable adapter found (FAKEQUANT_BACKEND={:?}, FAKEQUANT_ADAPTER={:?})",
                std::env::var("FAKEQUANT_BACKEND").ok(),
                std::env::var("FAKEQUANT_ADAPTER").ok()
            ))
        })
    }

    /// A context on the best adapter that [`GpuContext::adapters`] finds.
    pub fn new() -> Result<Self> {
        Self::from_adapter(&Self::best_adapter()?)
    }

    /// A context on `adapter`, with a new device that has the adapter's own limits (wgpu's defaults
    /// would cap buffers at 256 MiB).
    ///
    /// wgpu errors in the caller's own use of the device (an encoder it finishes, a submission)
    /// are kept and returned, as [`Error::Uncaptured`], by the next call of this library into the
    /// device or by [`GpuContext::poll`]. Take `adapter` from [`GpuContext::adapters`]: an
    /// adapter of the caller's own wgpu instance works, but buffers of that instance's other
    /// devices cannot be told apart from this one's (see the README's reliability section).
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
            .map_err(|e| Error::RequestDevice(Arc::new(e)))?;
        // Errors inside this library's calls are caught by error scopes and returned; anything
        // else (the caller's own encoders and submissions) is kept for the next call, rather
        // than panicking in wgpu's default handler.
        let uncaptured = Arc::new(std::sync::Mutex::new(Uncaptured::default()));
        let slot = Arc::clone(&uncaptured);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            // A poisoned slot only means a panic elsewhere; the count is still worth keeping.
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            if slot.first.is_none() {
                slot.first = Some(e);
            } else {
                slot.more = slot.more.saturating_add(1);
            }
        }));
        Self::build(device, queue, Some(adapter.get_info()), uncaptured)
    }

    /// A context on a device and queue that the caller already owns (a framework sharing its
    /// device). The caller's uncaptured-error handler is left alone. Each call makes a context of
    /// its own: objects of one are refused by another ([`Error::ForeignObject`]) even on the same
    /// device, so clone the context to share it.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Result<Self> {
        Self::build(device, queue, None, Arc::default())
    }

    /// As [`GpuContext::from_device`], for a device the caller requested from `adapter` (a
    /// framework sharing its device): the adapter's kind tunes the kernels as
    /// [`GpuContext::from_adapter`] does (CPU adapters get fewer, longer workgroups).
    pub fn from_adapter_device(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Result<Self> {
        Self::build(device, queue, Some(adapter.get_info()), Arc::default())
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter_info: Option<wgpu::AdapterInfo>,
        uncaptured: Arc<std::sync::Mutex<Uncaptured>>,
    ) -> Result<Self> {
        let device_limits = device.limits();
        // CPU adapters (llvmpipe) run a workgroup as a loop over SIMD lanes: fewer, longer
        // workgroups cost less there. GPUs want the most loads in flight: one group per thread.
        let cpu = matches!(
            adapter_info.as_ref().map(|i| i.device_type),
            Some(wgpu::DeviceType::Cpu)
        );
        let wide_per_thread = if cpu { 4 } else { 1 };
        // A barrier costs more than a group's whole reduction on a CPU adapter (measured on
        // lavapipe at 16M f32: groups of 128 in runs of 32 took 99 ms, one run per group 62 ms);
        // GPUs want every invocation busy and a group's loads spread over many of them.
        let dynamic_run = if cpu { MAX_DYNAMIC_RUN } else { 32 };
        let kernels = Kernels::new();
        let limits = DispatchLimits {
            max_binding_bytes: device_limits
                .max_storage_buffer_binding_size
                .min(device_limits.max_buffer_size),
            max_workgroups: device_limits.max_compute_workgroups_per_dimension,
        };
        if limits.max_binding_bytes < CHUNK_GRANULE_ELEMS * 4 {
            return Err(Error::DeviceLimit {
                limit: "max_storage_buffer_binding_size",
                actual: limits.max_binding_bytes,
                required: CHUNK_GRANULE_ELEMS * 4,
            });
        }
        Ok(Self {
            shared: Arc::new(Shared {
                id: DeviceId::next(),
                uncaptured,
                device,
                queue,
                adapter_info,
                device_limits,
                kernels,
                staging: std::sync::Mutex::new(None),
            }),
            limits,
            wide_per_thread,
            dynamic_run,
        })
    }

    /// The same device with lower dispatch limits (never higher than the device's). Every result is
    /// identical; only the number of bindings and of workgroups per dispatch change.
    pub fn with_dispatch_limits(&self, limits: DispatchLimits) -> Result<Self> {
        let device = &self.shared.device_limits;
        let (min_bytes, max_bytes) = (
            CHUNK_GRANULE_ELEMS * 4,
            device.max_storage_buffer_binding_size,
        );
        if !(min_bytes..=max_bytes).contains(&limits.max_binding_bytes) {
            return Err(Error::InvalidSetting(format!(
                "max_binding_bytes {} must lie in [{min_bytes}, {max_bytes}] (the device's limit)",
                limits.max_binding_bytes
            )));
        }
        let max_groups = device.max_compute_workgroups_per_dimension;
        if !(1..=max_groups).contains(&limits.max_workgroups) {
            return Err(Error::InvalidSetting(format!(
                "max_workgroups {} must lie in [1, {max_groups}] (the device's limit)",
                limits.max_workgroups
            )));
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
        256u64.saturating_mul(self.wide_per_thread as u64)
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

    /// The longest run of consecutive elements, within one group, that an invocation of the
    /// one-pass dynamic kernel reduces and fake-quantizes.
    pub fn dynamic_run(&self) -> u32 {
        self.dynamic_run
    }

    /// A context on the same device whose one-pass dynamic kernel (per-group and per-token
    /// fake-quant with groups of 32 to 4096) gives each invocation runs of at most `elements`
    /// consecutive elements of one group: a power of two from 32 to 4096. A tuning knob: the
    /// results are the same bits for every value. Shorter runs than a group meet in workgroup
    /// memory (a barrier a tile); a run of a whole group needs none. The default is 32 on GPUs and
    /// 4096 (whole groups) on CPU adapters such as llvmpipe. FP8 amax scaling
    /// ([`crate::GpuFloatQuant::record_forward`]) takes its one-pass plan for blocks of at most
    /// this many elements, its three-pass plan for longer ones.
    pub fn with_dynamic_run(&self, elements: u32) -> Result<Self> {
        if !elements.is_power_of_two() || !(32..=MAX_DYNAMIC_RUN).contains(&elements) {
            return Err(Error::InvalidSetting(format!(
                "the dynamic run must be a power of two from 32 to {MAX_DYNAMIC_RUN}, not {elements}"
            )));
        }
        Ok(Self {
            dynamic_run: elements,
            ..self.clone()
        })
    }

    /// The dispatch limits in force.
    pub fn dispatch_limits(&self) -> DispatchLimits {
        self.limits
    }

    /// `channels` in chunks whose windows of a per-channel table of `record` bytes a channel fit
    /// one binding under the limits in force (see [`channel_chunks`]).
    pub(crate) fn channel_chunks(&self, channels: usize, record: u64) -> Vec<ChannelChunk> {
        channel_chunks(
            channels,
            record,
            self.limits.max_binding_bytes,
            self.limits.max_workgroups,
            self.device_limits().min_storage_buffer_offset_alignment as u64,
        )
    }

    /// Channels `first .. first + count` as a [`ChannelChunk`] under the limits in force.
    pub(crate) fn channel_chunk(&self, first: usize, count: usize) -> ChannelChunk {
        ChannelChunk::new(
            first,
            count,
            self.device_limits().min_storage_buffer_offset_alignment as u64,
            self.limits.max_workgroups,
        )
    }

    /// The kernel cache of the device.
    pub(crate) fn kernels(&self) -> &Kernels {
        &self.shared.kernels
    }

    /// The staging buffer kept for the next read-back.
    pub(crate) fn staging(&self) -> &std::sync::Mutex<Option<wgpu::Buffer>> {
        &self.shared.staging
    }

    /// Runs `f` inside error scopes; what wgpu reports becomes an [`Error::Wgpu`] naming
    /// `operation`. An error the caller's own work left since the last call is returned first
    /// (and `f` not run).
    pub(crate) fn capture<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.take_uncaptured()?;
        errors::capture(&self.shared.device, operation, f)
    }

    /// Returns, once, the first error wgpu reported outside this library's calls since the last
    /// one returned, with the count of those after it.
    fn take_uncaptured(&self) -> Result<()> {
        let mut slot = self
            .shared
            .uncaptured
            .lock()
            .map_err(|_| Error::Poisoned("uncaptured wgpu errors"))?;
        match slot.first.take() {
            None => Ok(()),
            Some(first) => {
                let more = std::mem::take(&mut slot.more);
                Err(Error::Uncaptured {
                    source: Arc::new(first),
                    more,
                })
            }
        }
    }

    /// Polls the device without waiting and returns what wgpu reported in the caller's own work
    /// since the last call of this library ([`Error::Uncaptured`], once), so that a caller who
    /// submits its own encoders learns of an invalid submission (wgpu drops such a submission
    /// whole). Contexts from [`GpuContext::from_device`] leave errors to the caller's handler and
    /// always return `Ok` here unless the poll itself fails.
    pub fn poll(&self) -> Result<()> {
        self.shared
            .device
            .poll(wgpu::PollType::Poll)
            .map_err(|e| Error::device("polling the device", e))?;
        self.take_uncaptured()
    }

    /// The device this context, and everything created on it, belongs to.
    pub(crate) fn device_id(&self) -> DeviceId {
        self.shared.id
    }

    /// An error unless `owner` is this context's device: `what` was created on another context.
    pub(crate) fn check_owner(&self, what: &'static str, owner: DeviceId) -> Result<()> {
        if owner != self.shared.id {
            return Err(Error::ForeignObject {
                what,
                owner: owner.0,
                device: self.shared.id.0,
            });
        }
        Ok(())
    }

    /// Submits `encoder` and waits until the device has finished it.
    pub fn submit_and_wait(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        self.submit(encoder)?;
        self.wait_for_submitted()
    }

    /// Submits `encoder` without waiting.
    pub(crate) fn submit(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        self.capture("submitting work", || {
            self.shared.queue.submit([encoder.finish()]);
            Ok(())
        })
    }

    /// Waits until the device has finished everything submitted.
    pub(crate) fn wait_for_submitted(&self) -> Result<()> {
        self.shared
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::device("waiting for submitted work", e))?;
        Ok(())
    }

    /// Whether device-level calls submit each dispatch on its own, as they do on the GL backend.
    ///
    /// wgpu's GL backend holds its one context lock for a whole submission, and llvmpipe runs
    /// every dispatch to completion inside it; any other thread that touches the device in that
    /// time (creating or dropping a buffer, polling) waits for the lock and panics in wgpu-hal
    /// after 6 s ("Could not lock adapter context. This is most-likely a deadlock."), as a test
    /// thread did on a 2-core CI machine while the suite's other threads submitted large
    /// multi-pass work (which thread held the lock was not recorded). A dispatch
    /// covers at most one binding's window, so a submission per dispatch holds the lock for a
    /// bounded time; the other backends take one submission per call.
    pub(crate) fn submits_each_dispatch(&self) -> bool {
        self.shared
            .adapter_info
            .as_ref()
            .is_some_and(|info| info.backend == wgpu::Backend::Gl)
    }

    /// Records with `record`, then submits the work and waits: a device-level call. Everything
    /// the work binds is created before anything is submitted, so a call that fails records
    /// nothing and runs nothing.
    pub(crate) fn run_recorded(
        &self,
        label: &str,
        record: impl FnOnce(&mut Prerecording) -> Result<()>,
    ) -> Result<()> {
        self.prerecord(record)?.run_labelled(label)
    }

    /// A new command encoder on this device.
    pub fn create_encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.shared
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }
}
