//! A throughput report anyone can rerun: every op at 64K, 1M, 16M and 64M elements against a
//! `copy_buffer_to_buffer` of the same number of bytes on the same adapter, and the cost of many
//! small tensors recorded into one submission against one submission per op.
//!
//! `cargo run --release --example bench_report` prints a table; `-- --json` prints one JSON object
//! per measurement (keys `adapter`, `backend`, `op`, `dtype`, `elements`, `bytes_per_element`,
//! `seconds`, `gbps`, `ratio_to_copy`). `-- --max-elements N` stops at N elements (default 64M).
//!
//! Timing: wall clock around one submission and its completion (`submit_and_wait`), median of 7
//! runs after 2 warm-up runs. The copy baseline is timed the same way, so the ratio compares like
//! with like (timestamp queries would remove the submission overhead from both; not used yet).

use std::time::Instant;

use fakequant::{
    DType, FakeQuant, GpuContext, LsqConfig, Mode, ObserverConfig, QuantParams, QuantRange,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const WARMUP: usize = 2;
const RUNS: usize = 7;

fn median_seconds(mut run: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..WARMUP {
        run()?;
    }
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        run()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[RUNS / 2])
}

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = 0x2545_f491_4f6c_dd1du64 ^ seed;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 6.0
        })
        .collect()
}

struct Report {
    adapter: String,
    backend: String,
    json: bool,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        op: &str,
        dtype: &str,
        elements: usize,
        bytes_per_element: f64,
        seconds: f64,
        copy_seconds: Option<f64>,
    ) {
        let bytes = elements as f64 * bytes_per_element;
        let gbps = bytes / seconds / 1e9;
        // The baseline copy moved the same number of bytes: the ratio of throughputs.
        let ratio = copy_seconds.map(|c| c / seconds);
        if self.json {
            println!(
                "{{\"adapter\": {:?}, \"backend\": {:?}, \"op\": {:?}, \"dtype\": {:?}, \"elements\": {elements}, \"bytes_per_element\": {bytes_per_element}, \"seconds\": {seconds:.6e}, \"gbps\": {gbps:.4}, \"ratio_to_copy\": {}}}",
                self.adapter,
                self.backend,
                op,
                dtype,
                ratio.map_or("null".to_string(), |r| format!("{r:.3}"))
            );
        } else {
            println!(
                "| {op} | {dtype} | {elements} | {bytes_per_element} | {:.3} ms | {gbps:.3} | {} |",
                seconds * 1e3,
                ratio.map_or("-".to_string(), |r| format!("{r:.2}"))
            );
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let max_elements = match args.iter().position(|a| a == "--max-elements") {
        Some(i) => args
            .get(i + 1)
            .ok_or("--max-elements needs a value")?
            .parse::<usize>()?,
        None => 1 << 26,
    };
    let ctx = GpuContext::new()?;
    let (adapter, backend) = match ctx.adapter_info() {
        Some(info) => (info.name.clone(), format!("{:?}", info.backend)),
        None => ("caller-provided device".to_string(), "unknown".to_string()),
    };
    let report = Report {
        adapter: adapter.clone(),
        backend: backend.clone(),
        json,
    };
    if !json {
        println!("adapter: {adapter}\nbackend: {backend}\n");
        println!(
            "| op | dtype | elements | bytes/element | time per call | GB/s | ratio to copy |"
        );
        println!("|---|---|---|---|---|---|---|");
    }

    let copy_kernel = CopyKernel::new(&ctx);
    for n in [1usize << 16, 1 << 20, 1 << 24, 1 << 26] {
        if n > max_elements {
            break;
        }
        let x = ctx.upload(&data(n, 1))?;
        let dy = ctx.upload(&data(n, 2))?;
        let y = ctx.create_tensor(n)?;
        let dx = ctx.create_tensor(n)?;
        let mask = ctx.create_mask(n)?;
        // The copy baseline: copy_buffer_to_buffer of `bytes` bytes, same adapter, same timing.
        let copy = |bytes: u64| -> Result<f64> {
            let src = ctx.create_tensor_typed((bytes as usize).div_ceil(4), DType::F32)?;
            let dst = ctx.create_tensor_typed((bytes as usize).div_ceil(4), DType::F32)?;
            let size = src.buffer().size();
            median_seconds(|| {
                let mut encoder = ctx.create_encoder("copy");
                encoder.copy_buffer_to_buffer(src.buffer(), 0, dst.buffer(), 0, size);
                Ok(ctx.submit_and_wait(encoder)?)
            })
        };
        // A copy moves its bytes twice (read + write): the baseline for an op moving B bytes per
        // element is a copy of B/2 bytes per element.
        let baseline = |bytes_per_element: f64| copy((n as f64 * bytes_per_element / 2.0) as u64);
        let c = baseline(8.0)?;
        report.row("copy_buffer_to_buffer", "f32", n, 8.0, c, Some(c));
        // What the adapter's compute path can move at best: a trivial copy kernel, one u32 per
        // invocation and step, no arithmetic. An op's distance from copy_buffer_to_buffer that this
        // row shares is the adapter's, not the op's.
        let t = median_seconds(|| copy_kernel.run(&ctx, &x, &y, n))?;
        report.row(
            "copy_shader (limit of the compute path)",
            "f32",
            n,
            8.0,
            t,
            Some(c),
        );

        let op = FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(3.0 / 127.5, 0))?;
        let prepared = ctx.prepare(&op)?;
        let t = median_seconds(|| Ok(prepared.forward(&x, &[n], &y, None)?))?;
        report.row("fake_quant_forward", "f32", n, 8.0, t, Some(c));
        let with_mask = 8.0 + 1.0 / 8.0;
        let cm = baseline(with_mask)?;
        let t = median_seconds(|| Ok(prepared.forward(&x, &[n], &y, Some(&mask))?))?;
        report.row("fake_quant_forward_mask", "f32", n, with_mask, t, Some(cm));
        let t = median_seconds(|| Ok(ctx.ste_backward_device(&dy, &mask, &dx)?))?;
        report.row("ste_backward", "f32", n, with_mask, t, Some(cm));

        for (dtype, name) in [(DType::F16, "f16"), (DType::Bf16, "bf16")] {
            let x16 = ctx.create_tensor_typed(n, dtype)?;
            let y16 = ctx.create_tensor_typed(n, dtype)?;
            let c16 = baseline(4.0)?;
            let t = median_seconds(|| Ok(prepared.forward(&x16, &[n], &y16, None)?))?;
            report.row("fake_quant_forward", name, n, 4.0, t, Some(c16));
        }

        let c4 = baseline(4.0)?;
        let c12 = baseline(12.0)?;
        for (op_name, config, shape) in [
            (
                "min_max_per_tensor",
                ObserverConfig::qat_activation_int8(),
                vec![n],
            ),
            (
                "min_max_per_channel_axis0",
                ObserverConfig::qat_weight_int8(),
                vec![64, n / 64],
            ),
            (
                "min_max_per_channel_last_axis",
                ObserverConfig::new(
                    QuantRange::INT8,
                    fakequant::QScheme::Symmetric,
                    fakequant::Averaging::default(),
                    Some(1),
                )?,
                vec![n / 64, 64],
            ),
        ] {
            let observer = ctx.create_observer(&config, config.channels_for(&shape)?)?;
            let stats = observer.create_batch_stats()?;
            let t = median_seconds(|| {
                let mut encoder = ctx.create_encoder("report");
                observer.record_batch_min_max(&mut encoder, x.binding(), &shape, &stats)?;
                Ok(ctx.submit_and_wait(encoder)?)
            })?;
            report.row(op_name, "f32", n, 4.0, t, Some(c4));
            if op_name == "min_max_per_tensor" {
                let t = median_seconds(|| Ok(observer.step(&x, &shape, &y, None, Mode::Qat)?))?;
                report.row("fused_observe_fake_quant", "f32", n, 12.0, t, Some(c12));
            }
        }

        let lsq = ctx.create_lsq(&LsqConfig::activation_int8(), &[0.03], &[0.0])?;
        let grads = lsq.create_grads()?;
        let t = median_seconds(|| Ok(lsq.forward_device(&x, &[n], &y, None)?))?;
        report.row("lsq_forward", "f32", n, 8.0, t, Some(c));
        let t = median_seconds(|| Ok(lsq.backward_device(&x, &dy, &[n], &dx, &grads)?))?;
        report.row("lsq_backward", "f32", n, 12.0, t, Some(c12));
        let c20 = baseline(20.0)?;
        let t = median_seconds(|| {
            let mut encoder = ctx.create_encoder("report");
            lsq.record_forward(&mut encoder, x.binding(), &[n], y.binding(), None)?;
            lsq.record_backward(
                &mut encoder,
                x.binding(),
                dy.binding(),
                &[n],
                dx.binding(),
                &grads,
            )?;
            Ok(ctx.submit_and_wait(encoder)?)
        })?;
        report.row("lsq_forward_backward", "f32", n, 20.0, t, Some(c20));
    }

    // Many small tensors (a network's layers): per-op time when 1, 10 and 200 tensors of 4K to
    // 256K elements are recorded into one submission, against one submission per op.
    if !json {
        println!("\n| small tensors | ops | time per op, one submission | time per op, a submission each | ratio |");
        println!("|---|---|---|---|---|");
    }
    let op = FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(0.02, 0))?;
    let prepared = ctx.prepare(&op)?;
    for count in [1usize, 10, 200] {
        let sizes: Vec<usize> = (0..count).map(|i| 4096 << (i % 7)).collect();
        let tensors: Vec<_> = sizes
            .iter()
            .map(|&s| Ok((ctx.upload(&data(s, s as u64))?, ctx.create_tensor(s)?)))
            .collect::<Result<_>>()?;
        let batched = median_seconds(|| {
            let mut encoder = ctx.create_encoder("batched");
            for ((x, y), &s) in tensors.iter().zip(&sizes) {
                prepared.record_forward(&mut encoder, x.binding(), &[s], y.binding(), None)?;
            }
            Ok(ctx.submit_and_wait(encoder)?)
        })? / count as f64;
        let separate = median_seconds(|| {
            for ((x, y), &s) in tensors.iter().zip(&sizes) {
                prepared.forward(x, &[s], y, None)?;
            }
            Ok(())
        })? / count as f64;
        let elements: usize = sizes.iter().sum();
        if json {
            println!(
                "{{\"adapter\": {adapter:?}, \"backend\": {backend:?}, \"op\": \"small_tensors_batched\", \"dtype\": \"f32\", \"tensors\": {count}, \"elements\": {elements}, \"seconds_per_op_batched\": {batched:.6e}, \"seconds_per_op_separate\": {separate:.6e}, \"ratio\": {:.3}}}",
                separate / batched
            );
        } else {
            println!(
                "| {count} tensors of 4K-256K ({elements} elements) | {count} | {:.3} ms | {:.3} ms | {:.2}x |",
                batched * 1e3,
                separate * 1e3,
                separate / batched
            );
        }
    }
    Ok(())
}

/// A trivial copy compute shader: the best an elementwise kernel could do on this adapter.
struct CopyKernel {
    pipeline: wgpu::ComputePipeline,
}

const COPY_SHADER: &str = r"
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) num: vec3<u32>) {
    let n = arrayLength(&dst);
    for (var i = gid.x; i < n; i = i + num.x * 256u) {
        dst[i] = src[i];
    }
}
";

impl CopyKernel {
    fn new(ctx: &GpuContext) -> Self {
        let module = ctx
            .device()
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("copy"),
                source: wgpu::ShaderSource::Wgsl(COPY_SHADER.into()),
            });
        let pipeline = ctx
            .device()
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("copy"),
                layout: None,
                module: &module,
                entry_point: Some("copy"),
                compilation_options: Default::default(),
                cache: None,
            });
        Self { pipeline }
    }

    fn run(
        &self,
        ctx: &GpuContext,
        x: &fakequant::GpuTensor,
        y: &fakequant::GpuTensor,
        n: usize,
    ) -> Result<()> {
        // Chunks of at most one binding each, like the library's kernels.
        let total = n as u64 * 4;
        let chunk = ctx.dispatch_limits().max_binding_bytes / 256 * 256;
        let layout = self.pipeline.get_bind_group_layout(0);
        fn bind(t: &fakequant::GpuTensor, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: t.buffer(),
                offset,
                size: wgpu::BufferSize::new(size),
            })
        }
        let groups: Vec<(wgpu::BindGroup, u64)> = (0..total.div_ceil(chunk))
            .map(|c| {
                let (offset, size) = (c * chunk, chunk.min(total - c * chunk));
                let group = ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("copy"),
                    layout: &layout,
                    entries: &[
                        wgpu::BindGroupEntry {
                            binding: 0,
                            resource: bind(x, offset, size),
                        },
                        wgpu::BindGroupEntry {
                            binding: 1,
                            resource: bind(y, offset, size),
                        },
                    ],
                });
                (group, size)
            })
            .collect();
        let mut encoder = ctx.create_encoder("copy shader");
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("copy"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&self.pipeline);
            for (group, size) in &groups {
                pass.set_bind_group(0, group, &[]);
                let workgroups = (size / 4)
                    .div_ceil(256)
                    .min(ctx.dispatch_limits().max_workgroups as u64);
                pass.dispatch_workgroups(workgroups as u32, 1, 1);
            }
        }
        Ok(ctx.submit_and_wait(encoder)?)
    }
}
