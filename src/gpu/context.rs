//! The GPU context: adapter choice, the device and its limits, and the tuning knobs. Memory is in
//! `memory.rs`, the kernel cache and recording in `kernel/`, the op families in their own modules.

use std::sync::Arc;

use super::errors;
use super::kernel::cache::Kernels;
use super::kernel::planning::CHUNK_GRANULE_ELEMS;
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

/// Read-back staging buffers are at least this large, so that small reads share one.
pub(crate) const STAGING_MIN_BYTES: u64 = 1 << 20;
/// The largest staging buffer kept between reads.
pub(crate) const STAGING_KEEP_BYTES: u64 = 64 << 20;

pub(crate) struct Shared {
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
                return Err(Error::InvalidEnvironment {
                    name: "FAKEQUANT_BACKEND",
                    value: value.clone(),
                    reason: format!(
                        "unknown backend {other:?} (use vulkan, gl, metal or dx12, separated by commas)"
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
            .map_err(|e| Error::RequestDevice(Arc::new(e)))?;
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

    /// The kernel cache of the device.
    pub(crate) fn kernels(&self) -> &Kernels {
        &self.shared.kernels
    }

    /// The staging buffer kept for the next read-back.
    pub(crate) fn staging(&self) -> &std::sync::Mutex<Option<wgpu::Buffer>> {
        &self.shared.staging
    }

    /// Runs `f` inside error scopes; what wgpu reports becomes an [`Error::Wgpu`] naming
    /// `operation`.
    pub(crate) fn capture<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        errors::capture(&self.shared.device, operation, f)
    }

    /// Submits `encoder` and waits until the device has finished it.
    pub fn submit_and_wait(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        self.capture("submitting work", || {
            self.shared.queue.submit([encoder.finish()]);
            Ok(())
        })?;
        self.shared
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::device("waiting for submitted work", e))?;
        Ok(())
    }

    /// A new command encoder on this device.
    pub fn create_encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.shared
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }
}
