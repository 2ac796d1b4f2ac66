//! One wgpu device for burn and fakequant: burn's wgpu backend initialized on the library's
//! device, or the library on the device burn sets up. Either way both submit to one queue, so
//! the library's kernels see burn's writes and burn sees the kernels' outputs in submission order.

use burn::backend::wgpu::{
    graphics::{AutoGraphicsApi, GraphicsApi},
    try_init_device, try_init_setup, RuntimeOptions, WgpuDevice, WgpuSetup,
};
use burn::tensor::Device;
use fakequant::GpuContext;

use crate::{Error, Result};

/// A wgpu device shared by burn and fakequant: the burn [`Device`] to create tensors and modules
/// on, and the [`GpuContext`] the library's kernels run on.
#[derive(Clone)]
pub struct QatDevice {
    ctx: GpuContext,
    wgpu: WgpuDevice,
}

impl std::fmt::Debug for QatDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QatDevice")
            .field("adapter", &self.ctx.adapter_name())
            .field("burn", &self.wgpu)
            .finish()
    }
}

impl QatDevice {
    /// burn initialized on the library's choice of adapter ([`GpuContext::adapters`]: the best
    /// one that `FAKEQUANT_BACKEND` and `FAKEQUANT_ADAPTER` allow).
    pub fn new() -> Result<Self> {
        Self::from_adapter(&GpuContext::best_adapter()?)
    }

    /// burn initialized on a new device of `adapter` (take it from [`GpuContext::adapters`]).
    ///
    /// The device is requested as burn requests its own: with every feature and limit of the
    /// adapter. burn chooses its kernels from the adapter's features (64-bit integers on lavapipe,
    /// for one), and a device without them fails its first such kernel.
    pub fn from_adapter(adapter: &wgpu::Adapter) -> Result<Self> {
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("fakequant-burn"),
            required_features: adapter
                .features()
                .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
            required_limits: adapter.limits(),
            memory_hints: wgpu::MemoryHints::MemoryUsage,
            trace: wgpu::Trace::Off,
            // SAFETY: the experimental features are the passthrough shaders burn's runtime may
            // use; burn enables them on the devices it creates itself (cubecl-wgpu's
            // `try_request_device`), and this device is handed to it. fakequant's kernels are
            // WGSL and use none of them.
            experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&descriptor))
            .map_err(|e| Error::Library(fakequant::Error::RequestDevice(std::sync::Arc::new(e))))?;
        let ctx = GpuContext::from_adapter_device(adapter, device.clone(), queue.clone())?;
        let setup = WgpuSetup {
            instance: GpuContext::instance().clone(),
            adapter: adapter.clone(),
            device,
            queue,
            backend: adapter.get_info().backend,
        };
        let wgpu = try_init_device(setup, RuntimeOptions::default()).map_err(|e| Error::Burn {
            what: "initializing burn's wgpu runtime on the shared device",
            message: e.to_string(),
        })?;
        Ok(Self { ctx, wgpu })
    }

    /// The library on the device burn sets up for `device` (burn's own adapter choice, with
    /// burn's automatic graphics API). Call it before burn first uses `device`: burn sets a
    /// device up once, on its first use.
    pub fn from_burn(device: &WgpuDevice) -> Result<Self> {
        Self::from_burn_with_api::<AutoGraphicsApi>(device)
    }

    /// As [`QatDevice::from_burn`], on the graphics API `G` (`Vulkan`, `OpenGl`, ... from
    /// `burn::backend::wgpu::graphics`).
    pub fn from_burn_with_api<G: GraphicsApi>(device: &WgpuDevice) -> Result<Self> {
        let setup =
            try_init_setup::<G>(device, RuntimeOptions::default()).map_err(|e| Error::Burn {
                what: "setting up burn's wgpu device (was it used before QatDevice::from_burn?)",
                message: e.to_string(),
            })?;
        let ctx =
            GpuContext::from_adapter_device(&setup.adapter, setup.device.clone(), setup.queue)?;
        Ok(Self {
            ctx,
            wgpu: device.clone(),
        })
    }

    /// The burn device with autodiff: tensors created on it track gradients through the QAT ops.
    pub fn autodiff(&self) -> Device {
        Device::from(self.wgpu.clone()).autodiff()
    }

    /// The burn device without autodiff (inference, frozen QAT models).
    pub fn device(&self) -> Device {
        Device::from(self.wgpu.clone())
    }

    /// burn's handle on the device.
    pub fn wgpu_device(&self) -> &WgpuDevice {
        &self.wgpu
    }

    /// The library's context on the device.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Whether `device` (with or without autodiff) is this shared device.
    pub(crate) fn check_device(&self, what: &'static str, device: &Device) -> Result<()> {
        let inner = device.clone().inner();
        if inner == self.device() {
            Ok(())
        } else {
            Err(Error::DeviceMismatch {
                what,
                device: format!("{inner:?}"),
                expected: format!("{:?}", self.device()),
            })
        }
    }
}
