//! The kernel cache: shader modules, bind group layouts and pipelines, each created on first use
//! from a family's declarations ([`Kernel`], [`Bindings`](super::Bindings)) and kept for the
//! device's lifetime. Op code asks it for a pipeline and never edits it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;

use super::shaders::Shader;
use super::{Access, Kernel, Slot};
use crate::error::{Error, Result};
use crate::gpu::errors::capture;

/// What identifies a pipeline: the module, the entry point, the constants and the bindings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: &'static str,
    entry_point: &'static str,
    /// Name and f64 bits of each override constant.
    constants: Vec<(&'static str, u64)>,
    slots: &'static [Slot],
}

/// A bind group layout (binding 0 the uniform, then the slots) and its pipeline layout.
pub(crate) struct Layout {
    pub(crate) bind_group: wgpu::BindGroupLayout,
    pipeline: wgpu::PipelineLayout,
}

/// Modules, layouts and pipelines of one device, shared by every context that wraps it.
pub(crate) struct Kernels {
    modules: RwLock<HashMap<&'static str, wgpu::ShaderModule>>,
    layouts: RwLock<HashMap<&'static [Slot], std::sync::Arc<Layout>>>,
    pipelines: RwLock<HashMap<PipelineKey, (wgpu::ComputePipeline, std::sync::Arc<Layout>)>>,
}

/// The cached value for `key`, created by `create` on a miss (outside the lock).
fn cached<K: Eq + Hash, V: Clone>(
    map: &RwLock<HashMap<K, V>>,
    key: K,
    create: impl FnOnce() -> Result<V>,
) -> Result<V> {
    if let Some(v) = map
        .read()
        .map_err(|_| Error::Poisoned("kernel cache"))?
        .get(&key)
    {
        return Ok(v.clone());
    }
    let value = create()?;
    let mut map = map.write().map_err(|_| Error::Poisoned("kernel cache"))?;
    Ok(map.entry(key).or_insert(value).clone())
}

impl Kernels {
    pub(crate) fn new() -> Self {
        Self {
            modules: RwLock::new(HashMap::new()),
            layouts: RwLock::new(HashMap::new()),
            pipelines: RwLock::new(HashMap::new()),
        }
    }

    fn module(&self, device: &wgpu::Device, shader: &'static Shader) -> Result<wgpu::ShaderModule> {
        cached(&self.modules, shader.name, || {
            capture(device, "compiling a shader module", || {
                Ok(device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader.name),
                    source: wgpu::ShaderSource::Wgsl(shader.source().into()),
                }))
            })
        })
    }

    fn layout(
        &self,
        device: &wgpu::Device,
        slots: &'static [Slot],
    ) -> Result<std::sync::Arc<Layout>> {
        cached(&self.layouts, slots, || {
            let entry = |binding, ty| wgpu::BindGroupLayoutEntry {
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
                std::iter::once(entry(0, wgpu::BufferBindingType::Uniform))
                    .chain(slots.iter().map(|s| {
                        let read_only = s.access == Access::Read;
                        entry(s.binding, wgpu::BufferBindingType::Storage { read_only })
                    }))
                    .collect();
            capture(device, "creating a bind group layout", || {
                let bind_group =
                    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                        label: Some("fakequant"),
                        entries: &entries,
                    });
                let pipeline = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some("fakequant"),
                    bind_group_layouts: &[Some(&bind_group)],
                    immediate_size: 0,
                });
                Ok(std::sync::Arc::new(Layout {
                    bind_group,
                    pipeline,
                }))
            })
        })
    }

    /// The pipeline of `kernel` with the storage bindings `slots`, and its layout.
    pub(crate) fn pipeline(
        &self,
        device: &wgpu::Device,
        kernel: &impl Kernel,
        slots: &'static [Slot],
    ) -> Result<(wgpu::ComputePipeline, std::sync::Arc<Layout>)> {
        let constants = kernel.constants();
        let key = PipelineKey {
            shader: kernel.shader().name,
            entry_point: kernel.entry_point(),
            constants: constants.iter().map(|&(n, v)| (n, v.to_bits())).collect(),
            slots,
        };
        cached(&self.pipelines, key, || {
            let module = self.module(device, kernel.shader())?;
            let layout = self.layout(device, slots)?;
            let entry_point = kernel.entry_point();
            let pipeline = capture(device, "creating a compute pipeline", || {
                Ok(
                    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(entry_point),
                        layout: Some(&layout.pipeline),
                        module: &module,
                        entry_point: Some(entry_point),
                        compilation_options: wgpu::PipelineCompilationOptions {
                            constants: &constants,
                            // Every kernel writes its workgroup variables before reading them (the
                            // mask and reduction tiles are written by each invocation, or zeroed
                            // explicitly, ahead of a barrier), so the zeroing WebGPU adds by default
                            // is dead work. On GL, naga emulates it with one invocation storing the
                            // whole array: it made the masked forward 8.6x slower than the plain one
                            // on llvmpipe.
                            zero_initialize_workgroup_memory: false,
                        },
                        cache: None,
                    }),
                )
            })?;
            Ok((pipeline, layout))
        })
    }
}
