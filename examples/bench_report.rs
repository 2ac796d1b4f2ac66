//! A throughput report anyone can rerun: every op at 64K, 1M, 16M and 64M elements against a
//! `copy_buffer_to_buffer` of the same number of bytes on the same adapter, and the cost of many
//! small tensors recorded into one submission against one submission per op.
//!
//! `cargo run --release --example bench_report` prints a table; `-- --json` prints one JSON object
//! per measurement (keys `adapter`, `backend`, `op`, `dtype`, `elements`, `bytes_per_element`,
//! `seconds`, `gbps`, `ratio_to_copy`). `-- --max-elements N` stops at N elements (default 64M);
//! `-- --only NAMES` times only the ops whose name contains one of the comma-separated NAMES;
//! `-- --help` lists the options.
//!
//! Timing: GPU time between two timestamps written into the encoder around the recorded op, where
//! the adapter has `TIMESTAMP_QUERY_INSIDE_ENCODERS` (lavapipe and real GPUs); otherwise (GL)
//! wall clock around one submission and its completion. Median of 7 runs after 2 warm-up runs.
//! The copy baselines are timed the same way in the same run, so every ratio compares like with
//! like. The small-tensor section is wall clock on every adapter: submission overhead is what
//! it measures.

#[path = "common/cli.rs"]
mod cli;

use std::time::Instant;

use fakequant::{
    DType, FakeQuant, GpuContext, LsqConfig, Mode, ObserverConfig, QuantParams, QuantRange,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const WARMUP: usize = 2;
const RUNS: usize = 7;

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Wall-clock median of `run` (which submits and waits itself).
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
    Ok(median(times))
}

/// Times recorded GPU work: timestamps where the device has them, wall clock otherwise.
struct Timer<'a> {
    ctx: &'a GpuContext,
    queries: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer)>,
}

impl<'a> Timer<'a> {
    fn new(ctx: &'a GpuContext) -> Self {
        let needed =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let device = ctx.device();
        let queries = device.features().contains(needed).then(|| {
            let set = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench_report"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let buffer = |usage| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("bench_report timestamps"),
                    size: 16,
                    usage,
                    mapped_at_creation: false,
                })
            };
            let resolve = buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
            let read = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
            (set, resolve, read)
        });
        Self { ctx, queries }
    }

    fn method(&self) -> &'static str {
        if self.queries.is_some() {
            "GPU timestamps around the recorded op"
        } else {
            "wall clock around one submission (no timestamp queries on this adapter)"
        }
    }

    /// Median seconds of the work `record` puts into an encoder.
    fn time(&self, mut record: impl FnMut(&mut wgpu::CommandEncoder) -> Result<()>) -> Result<f64> {
        let mut times = Vec::with_capacity(RUNS);
        for run in 0..WARMUP + RUNS {
            let mut encoder = self.ctx.create_encoder("bench_report");
            let start = Instant::now();
            if let Some((set, _, _)) = &self.queries {
                encoder.write_timestamp(set, 0);
            }
            record(&mut encoder)?;
            if let Some((set, resolve, read)) = &self.queries {
                encoder.write_timestamp(set, 1);
                encoder.resolve_query_set(set, 0..2, resolve, 0);
                encoder.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
            }
            self.ctx.submit_and_wait(encoder)?;
            let wall = start.elapsed().as_secs_f64();
            let seconds = match &self.queries {
                Some((_, _, read)) => self.gpu_seconds(read)?,
                None => wall,
            };
            if run >= WARMUP {
                times.push(seconds);
            }
        }
        Ok(median(times))
    }

    fn gpu_seconds(&self, read: &wgpu::Buffer) -> Result<f64> {
        let (sender, receiver) = std::sync::mpsc::channel();
        read.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = sender.send(r);
        });
        self.ctx
            .device()
            .poll(wgpu::PollType::wait_indefinitely())?;
        receiver.recv()??;
        let ticks: [u64; 2] = {
            let view = read.slice(..).get_mapped_range()?;
            bytemuck::pod_read_unaligned(&view[..16])
        };
        read.unmap();
        let period = self.ctx.queue().get_timestamp_period() as f64;
        Ok(ticks[1].saturating_sub(ticks[0]) as f64 * period * 1e-9)
    }
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
    /// Only ops whose name contains one of these, comma-separated (`--only`); the rest are not
    /// run.
    only: Option<String>,
}

impl Report {
    fn wants(&self, op: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.split(',').any(|name| op.contains(name)))
    }

    /// Times `op` with `time` and prints its row, unless `--only` leaves it out.
    fn measure(
        &self,
        op: &str,
        dtype: &str,
        elements: usize,
        bytes_per_element: f64,
        time: impl FnOnce() -> Result<f64>,
        copy_seconds: impl FnOnce() -> Result<f64>,
    ) -> Result<()> {
        if self.wants(op) {
            let t = time()?;
            self.row(
                op,
                dtype,
                elements,
                bytes_per_element,
                t,
                Some(copy_seconds()?),
            );
        }
        Ok(())
    }

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

/// Warm-up runs on the CPU backend: its first calls pay for the kernel's first huge pages
/// (compaction) and the pool's first wake-up, which a training loop pays once.
const CPU_WARMUP: usize = 6;

/// [`median_seconds`] after [`CPU_WARMUP`] warm-up runs in all.
fn cpu_median_seconds(mut run: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in WARMUP..CPU_WARMUP {
        run()?;
    }
    median_seconds(run)
}

/// The report on the CPU backend (`FAKEQUANT_BACKEND=cpu`): each op at every size against a
/// `memcpy` (`copy_from_slice`) of the same bytes into warm memory, wall clock, median of 7
/// runs after 6 warm-up runs. The `_into` rows write into the caller's (warm) buffers, as the
/// copy does; the host-level rows allocate their outputs per call, as PyTorch's ops do (compare
/// them with `benches/pytorch_cpu.py`).
fn cpu_report(json: bool, max_elements: usize, only: Option<String>) -> Result<()> {
    use fakequant::{Backend, Cpu, PackedMask};
    let cpu = Cpu::new()?;
    let report = Report {
        adapter: cpu.name(),
        backend: "cpu".to_string(),
        json,
        only,
    };
    if !json {
        println!(
            "adapter: {}\nbackend: cpu\ntiming: wall clock\n",
            cpu.name()
        );
        println!(
            "| op | dtype | elements | bytes/element | time per call | GB/s | ratio to copy |"
        );
        println!("|---|---|---|---|---|---|---|");
    }
    for n in [1usize << 16, 1 << 20, 1 << 24, 1 << 26] {
        if n > max_elements {
            break;
        }
        let x = data(n, 1);
        let dy = data(n, 2);
        let mut y = vec![0f32; n];
        let mut words = vec![0u32; PackedMask::words_for(n)];
        // A memcpy moves its bytes twice (read + write): the baseline for an op moving B bytes
        // per element is a copy of B/2 bytes per element, timed once per size.
        let copies = std::cell::RefCell::new(std::collections::HashMap::new());
        let baseline = |bytes_per_element: f64| -> Result<f64> {
            let bytes = (n as f64 * bytes_per_element / 2.0) as usize;
            if let Some(&t) = copies.borrow().get(&bytes) {
                return Ok(t);
            }
            let src = vec![1u8; bytes];
            let mut dst = vec![0u8; bytes];
            let t = cpu_median_seconds(|| {
                dst.copy_from_slice(std::hint::black_box(&src));
                Ok(())
            })?;
            copies.borrow_mut().insert(bytes, t);
            Ok(t)
        };
        let c = baseline(8.0)?;
        report.row("memcpy", "f32", n, 8.0, c, Some(c));
        // The same copy split over the backend's threads (what a parallel framework's copy
        // reaches), for reference: its ratio is to the one-thread memcpy above.
        let (src, mut dst) = (vec![1u8; n * 4], vec![0u8; n * 4]);
        let threaded = cpu_median_seconds(|| {
            let part = src.len().div_ceil(cpu.threads());
            std::thread::scope(|scope| {
                for (d, s) in dst.chunks_mut(part).zip(src.chunks(part)) {
                    scope.spawn(move || d.copy_from_slice(std::hint::black_box(s)));
                }
            });
            Ok(())
        })?;
        report.row("memcpy_threads", "f32", n, 8.0, threaded, Some(c));
        let with_mask = 8.0 + 1.0 / 8.0;
        let per_tensor = FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(3.0 / 127.5, 0))?;
        let rows = 256;
        let axis0 = FakeQuant::new(
            QuantRange::INT8,
            QuantParams::per_channel(0, vec![0.02; rows], vec![0; rows]),
        )?;
        let last = FakeQuant::new(
            QuantRange::INT8,
            QuantParams::per_channel(1, vec![0.02; rows], vec![0; rows]),
        )?;
        for (name, op, shape) in [
            ("fake_quant_forward_mask_into", &per_tensor, vec![n]),
            (
                "fake_quant_forward_per_channel_axis0_into",
                &axis0,
                vec![rows, n / rows],
            ),
            (
                "fake_quant_forward_per_channel_last_axis_into",
                &last,
                vec![n / rows, rows],
            ),
        ] {
            report.measure(
                name,
                "f32",
                n,
                with_mask,
                || {
                    cpu_median_seconds(|| {
                        Ok(cpu.fake_quant_into(op, &x, &shape, &mut y, &mut words)?)
                    })
                },
                || baseline(with_mask),
            )?;
        }
        let mask = cpu.fake_quant(&per_tensor, &x, &[n])?.mask;
        report.measure(
            "ste_backward_into",
            "f32",
            n,
            with_mask,
            || cpu_median_seconds(|| Ok(cpu.ste_backward_into(&dy, &mask, &mut y)?)),
            || baseline(with_mask),
        )?;
        let half_bytes = 4.0 + 1.0 / 8.0;
        let (x16, mut y16) = (half_data::<half::f16>(&x), vec![half::f16::ZERO; n]);
        let (xb16, mut yb16) = (half_data::<half::bf16>(&x), vec![half::bf16::ZERO; n]);
        let mut words16 = words.clone();
        report.measure(
            "fake_quant_forward_mask_into",
            "f16",
            n,
            half_bytes,
            || {
                cpu_median_seconds(|| {
                    Ok(cpu.fake_quant_into(&per_tensor, &x16, &[n], &mut y16, &mut words16)?)
                })
            },
            || baseline(half_bytes),
        )?;
        report.measure(
            "fake_quant_forward_mask_into",
            "bf16",
            n,
            half_bytes,
            || {
                cpu_median_seconds(|| {
                    Ok(cpu.fake_quant_into(&per_tensor, &xb16, &[n], &mut yb16, &mut words16)?)
                })
            },
            || baseline(half_bytes),
        )?;
        let (dy16, mut dx16) = (half_data::<half::f16>(&dy), vec![half::f16::ZERO; n]);
        let (dyb16, mut dxb16) = (half_data::<half::bf16>(&dy), vec![half::bf16::ZERO; n]);
        report.measure(
            "ste_backward_into",
            "f16",
            n,
            half_bytes,
            || cpu_median_seconds(|| Ok(cpu.ste_backward_into(&dy16, &mask, &mut dx16)?)),
            || baseline(half_bytes),
        )?;
        report.measure(
            "ste_backward_into",
            "bf16",
            n,
            half_bytes,
            || cpu_median_seconds(|| Ok(cpu.ste_backward_into(&dyb16, &mask, &mut dxb16)?)),
            || baseline(half_bytes),
        )?;
        // Dynamic qparams (torchao's recipes), rows of 4096: the qparams pass reads x, the
        // fake-quant reads it again.
        for (op, config) in [
            (
                "dynamic_per_group_g32",
                fakequant::DynamicConfig::int4_weight(32),
            ),
            (
                "dynamic_per_group_g128",
                fakequant::DynamicConfig::int4_weight(128),
            ),
            (
                "dynamic_per_token",
                fakequant::DynamicConfig::int8_per_token(),
            ),
        ] {
            if n < 4096 || !report.wants(op) {
                continue;
            }
            let shape = [n / 4096, 4096];
            let dynamic = cpu.create_dynamic(&config, &shape)?;
            report.measure(
                op,
                "f32",
                n,
                with_mask + 4.0,
                || {
                    cpu_median_seconds(|| {
                        drop(dynamic.forward(&x, &shape)?);
                        Ok(())
                    })
                },
                || baseline(with_mask + 4.0),
            )?;
        }
        // Floating-point formats on rows of 4096: y, the mask, a code byte per element.
        for (op, config) in [
            (
                "mxfp4_forward",
                fakequant::FloatQuantConfig::mx(
                    fakequant::ElementFormat::Fp4E2M1,
                    fakequant::MxScaleRule::Rceil,
                )?,
            ),
            ("nvfp4_forward", fakequant::FloatQuantConfig::nvfp4(None)?),
            (
                "fp8_per_row_forward",
                fakequant::FloatQuantConfig::fp8(
                    fakequant::ElementFormat::Fp8E4M3,
                    fakequant::Granularity::per_channel(0),
                )?,
            ),
        ] {
            if n < 4096 || !report.wants(op) {
                continue;
            }
            let shape = [n / 4096, 4096];
            let float = cpu.create_float_quant(&config, &shape)?;
            report.measure(
                op,
                "f32",
                n,
                with_mask + 1.0,
                || {
                    cpu_median_seconds(|| {
                        drop(float.forward(&x, &shape)?);
                        Ok(())
                    })
                },
                || baseline(with_mask + 1.0),
            )?;
        }
        if report.wants("histogram_observe") {
            let config = fakequant::HistogramConfig::new(
                2048,
                fakequant::HistogramDomain::Magnitude,
                fakequant::Granularity::PerTensor,
            )?;
            let mut histogram = cpu.create_histogram_observer(&config, &[n])?;
            report.measure(
                "histogram_observe",
                "f32",
                n,
                4.0,
                || cpu_median_seconds(|| Ok(histogram.observe(&x, &[n])?)),
                || baseline(4.0),
            )?;
        }
        // Host-level calls that allocate their outputs, as PyTorch's ops do.
        report.measure(
            "fake_quant_forward_mask",
            "f32",
            n,
            with_mask,
            || {
                cpu_median_seconds(|| {
                    drop(cpu.fake_quant(&per_tensor, &x, &[n])?);
                    Ok(())
                })
            },
            || baseline(with_mask),
        )?;
        report.measure(
            "fake_quant_forward_per_channel_axis0",
            "f32",
            n,
            with_mask,
            || {
                cpu_median_seconds(|| {
                    drop(cpu.fake_quant(&axis0, &x, &[rows, n / rows])?);
                    Ok(())
                })
            },
            || baseline(with_mask),
        )?;
        let config = ObserverConfig::qat_activation_int8();
        let mut observer = cpu.create_observer(&config, &[n])?;
        report.measure(
            "observer_step_qat",
            "f32",
            n,
            with_mask + 4.0,
            || {
                cpu_median_seconds(|| {
                    drop(observer.step(&x, &[n], Mode::Qat)?);
                    Ok(())
                })
            },
            || baseline(with_mask + 4.0),
        )?;
        let lsq_config = LsqConfig::new(QuantRange::INT8, fakequant::Granularity::PerTensor)?;
        let lsq = cpu.create_lsq(&lsq_config, &[3.0 / 127.5], &[0.0])?;
        report.measure(
            "lsq_forward_backward",
            "f32",
            n,
            20.0,
            || {
                cpu_median_seconds(|| {
                    drop(lsq.forward(&x, &[n])?);
                    drop(lsq.backward(&x, &dy, &[n])?);
                    Ok(())
                })
            },
            || baseline(20.0),
        )?;
    }
    Ok(())
}

fn half_data<T: fakequant::Element>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}

fn usage() -> String {
    format!(
        "\
Times every op at 64K, 1M, 16M and 64M elements against copy baselines on one adapter, then the
per-op cost of many small tensors; prints Markdown tables.

Usage: cargo run --release --example bench_report [-- OPTIONS]

Options:
  --json            one JSON object per measurement instead of the tables
  --max-elements N  stop at N elements (default 67108864, i.e. 64M)
  --only NAMES      time only the ops whose name contains one of the comma-separated NAMES
                    (the copy baselines and the small-tensor section always run)
  -h, --help        print this help and exit

{}",
        cli::ENVIRONMENT
    )
}

fn main() -> Result<()> {
    let mut args = cli::Args::new(&usage());
    let (mut json, mut max_elements, mut only) = (false, 1usize << 26, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--max-elements" => max_elements = args.parse("--max-elements"),
            "--only" => only = Some(args.value("--only")),
            _ => args.unknown(&arg),
        }
    }
    if fakequant::cpu::backend_from_env()? {
        return cpu_report(json, max_elements, only);
    }
    let ctx = GpuContext::new()?;
    let (adapter, backend) = match ctx.adapter_info() {
        Some(info) => (info.name.clone(), format!("{:?}", info.backend)),
        None => ("caller-provided device".to_string(), "unknown".to_string()),
    };
    let report = Report {
        adapter: adapter.clone(),
        backend: backend.clone(),
        json,
        only,
    };
    if !json {
        println!("adapter: {adapter}\nbackend: {backend}");
    }
    let timer = Timer::new(&ctx);
    if !json {
        println!("timing: {}", timer.method());
        println!(
            "tuning: wide groups per thread {}, dynamic run {}\n",
            ctx.wide_groups_per_thread(),
            ctx.dynamic_run()
        );
        println!(
            "| op | dtype | elements | bytes/element | time per call | GB/s | ratio to copy |"
        );
        println!("|---|---|---|---|---|---|---|");
    }
    let copy_kernels = [CopyKernel::new(&ctx, false), CopyKernel::new(&ctx, true)];
    for n in [1usize << 16, 1 << 20, 1 << 24, 1 << 26] {
        if n > max_elements {
            break;
        }
        let x = ctx.upload(&data(n, 1))?;
        let dy = ctx.upload(&data(n, 2))?;
        let y = ctx.create_tensor(n, fakequant::DType::F32)?;
        let dx = ctx.create_tensor(n, fakequant::DType::F32)?;
        let mask = ctx.create_mask(n)?;
        // The copy baseline: copy_buffer_to_buffer of `bytes` bytes, same adapter, same timing,
        // measured once per size.
        let copies = std::cell::RefCell::new(std::collections::HashMap::new());
        let copy = |bytes: u64| -> Result<f64> {
            if let Some(&t) = copies.borrow().get(&bytes) {
                return Ok(t);
            }
            let src = ctx.create_tensor((bytes as usize).div_ceil(4), DType::F32)?;
            let dst = ctx.create_tensor((bytes as usize).div_ceil(4), DType::F32)?;
            let size = src.buffer().size();
            let t = timer.time(|encoder| {
                encoder.copy_buffer_to_buffer(src.buffer(), 0, dst.buffer(), 0, size);
                Ok(())
            })?;
            copies.borrow_mut().insert(bytes, t);
            Ok(t)
        };
        // A copy moves its bytes twice (read + write): the baseline for an op moving B bytes per
        // element is a copy of B/2 bytes per element.
        let baseline = |bytes_per_element: f64| copy((n as f64 * bytes_per_element / 2.0) as u64);
        let c = baseline(8.0)?;
        report.row("copy_buffer_to_buffer", "f32", n, 8.0, c, Some(c));
        // What the adapter's compute path can move at best: trivial copy kernels (one u32, or one
        // vec4, per invocation and step; no arithmetic). An op's distance from
        // copy_buffer_to_buffer that these rows share is the adapter's, not the op's.
        for kernel in &copy_kernels {
            let bound = kernel.bind(&ctx, &x, &y, n);
            let t = timer.time(|encoder| {
                kernel.record(encoder, &bound);
                Ok(())
            })?;
            report.row(kernel.name(), "f32", n, 8.0, t, Some(c));
        }

        let op = FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(3.0 / 127.5, 0))?;
        let prepared = ctx.prepare(&op)?;
        report.measure(
            "fake_quant_forward",
            "f32",
            n,
            8.0,
            || {
                timer.time(|e| {
                    Ok(prepared.record_forward(e, x.binding(), &[n], y.binding(), None)?)
                })
            },
            || baseline(8.0),
        )?;
        let with_mask = 8.0 + 1.0 / 8.0;
        report.measure(
            "fake_quant_forward_mask",
            "f32",
            n,
            with_mask,
            || {
                timer.time(|e| {
                    Ok(prepared.record_forward(
                        e,
                        x.binding(),
                        &[n],
                        y.binding(),
                        Some(mask.binding()),
                    )?)
                })
            },
            || baseline(with_mask),
        )?;
        report.measure(
            "ste_backward",
            "f32",
            n,
            with_mask,
            || {
                timer.time(|e| {
                    Ok(ctx.record_ste_backward(e, dy.binding(), mask.binding(), dx.binding(), n)?)
                })
            },
            || baseline(with_mask),
        )?;
        let channels = ObserverConfig::qat_weight_int8().channels_for(&[64, n / 64])?;
        let per_channel = FakeQuant::new(
            QuantRange::INT8,
            QuantParams::per_channel(0, vec![0.02; channels], vec![0; channels]),
        )?;
        let per_channel = ctx.prepare(&per_channel)?;
        report.measure(
            "fake_quant_forward_per_channel_axis0",
            "f32",
            n,
            8.0,
            || {
                timer.time(|e| {
                    Ok(per_channel.record_forward(
                        e,
                        x.binding(),
                        &[64, n / 64],
                        y.binding(),
                        None,
                    )?)
                })
            },
            || baseline(8.0),
        )?;

        // Dynamic qparams (torchao's recipes): int4 weights in groups of 32 and 128 along the last
        // axis, int8 activations per token (rows of 4096). Two passes over x (min/max, then the
        // forward), so 12 bytes per element move where per-channel moves 8: compare its row.
        for (op, config, shape) in [
            (
                "dynamic_per_group_g32",
                fakequant::DynamicConfig::int4_weight(32),
                vec![n / 4096, 4096],
            ),
            (
                "dynamic_per_group_g128",
                fakequant::DynamicConfig::int4_weight(128),
                vec![n / 4096, 4096],
            ),
            (
                "dynamic_per_token",
                fakequant::DynamicConfig::int8_per_token(),
                vec![n / 4096, 4096],
            ),
        ] {
            if n < 4096 || !report.wants(op) {
                continue;
            }
            let dynamic = ctx.create_dynamic(&config, &shape)?;
            report.measure(
                op,
                "f32",
                n,
                8.0,
                || {
                    timer.time(|e| {
                        Ok(dynamic.record_forward(e, x.binding(), &shape, y.binding(), None)?)
                    })
                },
                || baseline(8.0),
            )?;
        }

        // Floating-point formats (issue 15): MX and NVFP4 in one pass over x writing y, the
        // element codes (a byte each) and a scale word per block: 9 bytes per element and a
        // little; FP8 per row too where an invocation takes a whole row (CPU adapters), else it
        // and FP8 per tensor read x once more for the amax (13 bytes).
        for (op, config) in [
            (
                "float_mxfp8_e4m3_rceil",
                fakequant::FloatQuantConfig::mx(
                    fakequant::ElementFormat::Fp8E4M3,
                    fakequant::MxScaleRule::Rceil,
                ),
            ),
            (
                "float_mxfp4_rceil",
                fakequant::FloatQuantConfig::mx(
                    fakequant::ElementFormat::Fp4E2M1,
                    fakequant::MxScaleRule::Rceil,
                ),
            ),
            (
                "float_nvfp4_two_level",
                fakequant::FloatQuantConfig::nvfp4(Some(1.0 / 2688.0)),
            ),
            (
                "float_fp8_e4m3_per_row",
                fakequant::FloatQuantConfig::fp8_per_row(fakequant::ElementFormat::Fp8E4M3),
            ),
            (
                "float_fp8_e4m3_per_tensor",
                fakequant::FloatQuantConfig::fp8(
                    fakequant::ElementFormat::Fp8E4M3,
                    fakequant::Granularity::PerTensor,
                ),
            ),
        ] {
            if n < 4096 || !report.wants(op) {
                continue;
            }
            let shape = vec![n / 4096, 4096];
            let float = ctx.create_float_quant(&config?, &shape)?;
            report.measure(
                op,
                "f32",
                n,
                9.0,
                || {
                    timer.time(|e| {
                        Ok(float.record_forward(e, x.binding(), &shape, y.binding(), None)?)
                    })
                },
                || baseline(9.0),
            )?;
        }

        for (dtype, name) in [(DType::F16, "f16"), (DType::Bf16, "bf16")] {
            let x16 = ctx.create_tensor(n, dtype)?;
            let y16 = ctx.create_tensor(n, dtype)?;
            let dy16 = ctx.create_tensor(n, dtype)?;
            let dx16 = ctx.create_tensor(n, dtype)?;
            report.measure(
                "fake_quant_forward",
                name,
                n,
                4.0,
                || {
                    timer.time(|e| {
                        Ok(prepared.record_forward(e, x16.binding(), &[n], y16.binding(), None)?)
                    })
                },
                || baseline(4.0),
            )?;
            let m16 = 4.0 + 1.0 / 8.0;
            report.measure(
                "ste_backward",
                name,
                n,
                m16,
                || {
                    timer.time(|e| {
                        Ok(ctx.record_ste_backward(
                            e,
                            dy16.binding(),
                            mask.binding(),
                            dx16.binding(),
                            n,
                        )?)
                    })
                },
                || baseline(m16),
            )?;
        }

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
                    fakequant::Granularity::per_channel(1),
                )?,
                vec![n / 64, 64],
            ),
        ] {
            let observer = ctx.create_observer(&config, &shape)?;
            let stats = observer.create_batch_stats()?;
            report.measure(
                op_name,
                "f32",
                n,
                4.0,
                || {
                    timer.time(|e| {
                        Ok(observer.record_batch_min_max(e, x.binding(), &shape, &stats)?)
                    })
                },
                || baseline(4.0),
            )?;
            if op_name == "min_max_per_tensor" {
                report.measure(
                    "fused_observe_fake_quant",
                    "f32",
                    n,
                    12.0,
                    || {
                        timer.time(|e| {
                            Ok(observer.record_step(
                                e,
                                x.binding(),
                                &shape,
                                y.binding(),
                                None,
                                Mode::Qat,
                            )?)
                        })
                    },
                    || baseline(12.0),
                )?;
            }
        }

        // Histogram calibration (issue 16): the batch's min/max reduction, the range growth and
        // the counting pass (x read twice: 8 bytes per element); compare with the min/max rows.
        for (op_name, granularity, shape) in [
            (
                "histogram_per_tensor",
                fakequant::Granularity::PerTensor,
                vec![n],
            ),
            (
                "histogram_per_channel_axis0",
                fakequant::Granularity::per_channel(0),
                vec![64, n / 64],
            ),
        ] {
            if n < 64 || !report.wants(op_name) {
                continue;
            }
            let config = fakequant::HistogramConfig::new(
                2048,
                fakequant::HistogramDomain::Magnitude,
                granularity,
            )?;
            let histogram = ctx.create_histogram_observer(&config, &shape)?;
            report.measure(
                op_name,
                "f32",
                n,
                8.0,
                || timer.time(|e| Ok(histogram.record_observe(e, x.binding(), &shape)?)),
                || baseline(8.0),
            )?;
        }

        let lsq = ctx.create_lsq(&LsqConfig::activation_int8(), &[0.03], &[0.0])?;
        let grads = lsq.create_grads()?;
        report.measure(
            "lsq_forward",
            "f32",
            n,
            8.0,
            || timer.time(|e| Ok(lsq.record_forward(e, x.binding(), &[n], y.binding(), None)?)),
            || baseline(8.0),
        )?;
        let backward = |e: &mut wgpu::CommandEncoder| -> Result<()> {
            Ok(lsq.record_backward(e, x.binding(), dy.binding(), &[n], dx.binding(), &grads)?)
        };
        report.measure(
            "lsq_backward",
            "f32",
            n,
            12.0,
            || timer.time(backward),
            || baseline(12.0),
        )?;
        report.measure(
            "lsq_forward_backward",
            "f32",
            n,
            20.0,
            || {
                timer.time(|e| {
                    lsq.record_forward(e, x.binding(), &[n], y.binding(), None)?;
                    backward(e)
                })
            },
            || baseline(20.0),
        )?;
    }

    // Many small tensors (a network's layers): per-op time when 1, 10 and 200 tensors of 4K to
    // 256K elements go into one submission (recorded afresh, or prerecorded once and replayed),
    // against one submission per op.
    if !json {
        println!("\n| small tensors | ops | per op, a submission each | per op, one submission | ratio | per op, one submission, prerecorded | ratio |");
        println!("|---|---|---|---|---|---|---|");
    }
    let op = FakeQuant::new(QuantRange::INT8, QuantParams::per_tensor(0.02, 0))?;
    let prepared = ctx.prepare(&op)?;
    for count in [1usize, 10, 200] {
        let sizes: Vec<usize> = (0..count).map(|i| 4096 << (i % 7)).collect();
        let tensors: Vec<_> = sizes
            .iter()
            .map(|&s| {
                Ok((
                    ctx.upload(&data(s, s as u64))?,
                    ctx.create_tensor(s, fakequant::DType::F32)?,
                ))
            })
            .collect::<Result<_>>()?;
        let record_all = |encoder: &mut dyn fakequant::Recorder| -> fakequant::Result<()> {
            for ((x, y), &s) in tensors.iter().zip(&sizes) {
                prepared.record_forward(encoder, x.binding(), &[s], y.binding(), None)?;
            }
            Ok(())
        };
        let separate = median_seconds(|| {
            for ((x, y), &s) in tensors.iter().zip(&sizes) {
                prepared.forward_device(x, &[s], y, None)?;
            }
            Ok(())
        })? / count as f64;
        let batched = median_seconds(|| {
            let mut encoder = ctx.create_encoder("batched");
            record_all(&mut encoder)?;
            Ok(ctx.submit_and_wait(encoder)?)
        })? / count as f64;
        let replay = ctx.prerecord(|recording| record_all(recording))?;
        let replayed = median_seconds(|| Ok(replay.run()?))? / count as f64;
        let elements: usize = sizes.iter().sum();
        if json {
            println!(
                "{{\"adapter\": {adapter:?}, \"backend\": {backend:?}, \"op\": \"small_tensors_fake_quant_forward\", \"dtype\": \"f32\", \"tensors\": {count}, \"elements\": {elements}, \"seconds_per_op_separate\": {separate:.6e}, \"seconds_per_op_batched\": {batched:.6e}, \"seconds_per_op_prerecorded\": {replayed:.6e}, \"ratio_batched\": {:.3}, \"ratio_prerecorded\": {:.3}}}",
                separate / batched,
                separate / replayed
            );
        } else {
            println!(
                "| {count} tensors of 4K-256K ({elements} elements) | {count} | {:.3} ms | {:.3} ms | {:.2}x | {:.3} ms | {:.2}x |",
                separate * 1e3,
                batched * 1e3,
                separate / batched,
                replayed * 1e3,
                separate / replayed
            );
        }
    }
    Ok(())
}

/// A trivial copy compute shader: the best an elementwise kernel could do on this adapter, with
/// one u32 or one vec4<u32> per invocation and step.
struct CopyKernel {
    pipeline: wgpu::ComputePipeline,
    vec4: bool,
}

const COPY_SHADER: &str = r"
@group(0) @binding(0) var<storage, read> src: array<WORD>;
@group(0) @binding(1) var<storage, read_write> dst: array<WORD>;

@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) num: vec3<u32>) {
    let n = arrayLength(&dst);
    for (var i = gid.x; i < n; i = i + num.x * 256u) {
        dst[i] = src[i];
    }
}
";

impl CopyKernel {
    fn new(ctx: &GpuContext, vec4: bool) -> Self {
        let word = if vec4 { "vec4<u32>" } else { "u32" };
        let module = ctx
            .device()
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("copy"),
                source: wgpu::ShaderSource::Wgsl(COPY_SHADER.replace("WORD", word).into()),
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
        Self { pipeline, vec4 }
    }

    fn name(&self) -> &'static str {
        if self.vec4 {
            "copy_shader_vec4 (limit of the compute path)"
        } else {
            "copy_shader (limit of the compute path)"
        }
    }

    /// Bind groups over chunks of at most one binding each, like the library's kernels, with the
    /// workgroups each needs.
    fn bind(
        &self,
        ctx: &GpuContext,
        x: &fakequant::GpuTensor,
        y: &fakequant::GpuTensor,
        n: usize,
    ) -> Vec<(wgpu::BindGroup, u32)> {
        let total = n as u64 * 4;
        let chunk = ctx.dispatch_limits().max_binding_bytes / 256 * 256;
        let word = if self.vec4 { 16 } else { 4 };
        let layout = self.pipeline.get_bind_group_layout(0);
        fn bind(t: &fakequant::GpuTensor, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: t.buffer(),
                offset,
                size: wgpu::BufferSize::new(size),
            })
        }
        (0..total.div_ceil(chunk))
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
                let workgroups = (size / word)
                    .div_ceil(256)
                    .min(ctx.dispatch_limits().max_workgroups as u64);
                (group, workgroups as u32)
            })
            .collect()
    }

    fn record(&self, encoder: &mut wgpu::CommandEncoder, bound: &[(wgpu::BindGroup, u32)]) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("copy"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipeline);
        for (group, workgroups) in bound {
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(*workgroups, 1, 1);
        }
    }
}
