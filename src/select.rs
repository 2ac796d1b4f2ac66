//! Which backend a caller gets when it asks for "the best device": a hardware GPU when there is
//! one, else the CPU backend; `FAKEQUANT_BACKEND` names one explicitly.

use crate::cpu::{self, Cpu};
use crate::error::Result;
use crate::gpu::GpuContext;

/// The backend [`BestBackend::select`] chose. Both variants implement [`crate::Backend`]; match
/// on it once and run generic code on either (the results are the same bits).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum BestBackend {
    /// A GPU adapter (a hardware one, unless `FAKEQUANT_BACKEND` or `FAKEQUANT_ADAPTER` named
    /// another).
    Gpu(GpuContext),
    /// The multi-threaded CPU backend.
    Cpu(Cpu),
}

impl BestBackend {
    /// The choice, in this order:
    /// 1. `FAKEQUANT_BACKEND=cpu`: the CPU backend;
    /// 2. `FAKEQUANT_BACKEND` naming GPU backends, or `FAKEQUANT_ADAPTER` set: the best adapter
    ///    they allow ([`GpuContext::new`]), a software one (lavapipe, llvmpipe) included: that is
    ///    how the software GPUs are reached for testing;
    /// 3. neither set: the best hardware adapter (discrete, integrated, virtual, other); on a
    ///    machine with only software adapters, the CPU backend, which is several times faster
    ///    than a software GPU on the same cores (see the README's benchmarks).
    pub fn select() -> Result<Self> {
        if cpu::backend_from_env()? {
            return Ok(Self::Cpu(Cpu::new()?));
        }
        let named = std::env::var_os("FAKEQUANT_BACKEND").is_some()
            || std::env::var_os("FAKEQUANT_ADAPTER").is_some();
        if named {
            return Ok(Self::Gpu(GpuContext::new()?));
        }
        let hardware = GpuContext::adapters()?
            .into_iter()
            .find(|a| a.get_info().device_type != wgpu::DeviceType::Cpu);
        match hardware {
            Some(adapter) => Ok(Self::Gpu(GpuContext::from_adapter(&adapter)?)),
            None => Ok(Self::Cpu(Cpu::new()?)),
        }
    }

    /// The backend's one-line description.
    pub fn name(&self) -> String {
        use crate::Backend;
        match self {
            Self::Gpu(ctx) => ctx.name(),
            Self::Cpu(cpu) => cpu.name(),
        }
    }
}
