#!/usr/bin/env python3
"""PyTorch's CPU side of the CPU backend's report (README, "Benchmarks": the CPU backend).

Times PyTorch's CPU kernels for the ops that `FAKEQUANT_BACKEND=cpu cargo run --release
--example bench_report` times, on the same sizes, with the same number of threads (2 by default,
the CI machine's cores), wall clock, median of 7 runs after 2 warm-up runs, as the report does.
PyTorch is not a dependency of the crate or of CI; run this by hand next to the report:

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch
    /tmp/torchenv/bin/python benches/pytorch_cpu.py [--threads 2] [--elements 16777216]
"""

import argparse
import statistics
import time

import torch

WARMUP, RUNS = 2, 7


def median_ms(fn):
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--elements", type=int, default=1 << 24)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.elements
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(n, generator=gen) - 0.5) * 6.0
    dy = torch.rand(n, generator=gen) - 0.5
    scale, zero_point = 3.0 / 127.5, 0
    rows = 256
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {n} f32 elements")
    print("| op | time per call |")
    print("|---|---|")

    def row(name, fn):
        print(f"| {name} | {median_ms(fn):.3f} ms |", flush=True)

    dst = torch.empty_like(x)
    row("memcpy (copy_ of the same tensor)", lambda: dst.copy_(x))
    row(
        "fake_quantize_per_tensor_affine",
        lambda: torch.fake_quantize_per_tensor_affine(x, scale, zero_point, -128, 127),
    )
    row(
        "fake_quantize_per_tensor_affine_cachemask (y and the mask)",
        lambda: torch._fake_quantize_per_tensor_affine_cachemask_tensor_qparams(
            x,
            torch.tensor([scale]),
            torch.tensor([zero_point], dtype=torch.int32),
            torch.tensor([1], dtype=torch.uint8),
            -128,
            127,
        ),
    )
    scales = torch.full((rows,), 0.02)
    zero_points = torch.zeros(rows, dtype=torch.int32)
    x2 = x.view(rows, n // rows)
    row(
        "fake_quantize_per_channel_affine (axis 0, 256 channels)",
        lambda: torch.fake_quantize_per_channel_affine(x2, scales, zero_points, 0, -128, 127),
    )
    running_min, running_max = torch.tensor([-1.0]), torch.tensor([1.0])
    obs_scale, obs_zp = torch.tensor([scale]), torch.tensor([0], dtype=torch.int32)
    on = torch.tensor([1], dtype=torch.long)
    row(
        "fused_moving_avg_obs_fake_quant (per tensor, symmetric)",
        lambda: torch.fused_moving_avg_obs_fake_quant(
            x, on, on, running_min, running_max, obs_scale, obs_zp, 0.01, -128, 127, 0, False, True
        ),
    )
    xl = x.clone().requires_grad_(True)
    s = torch.tensor([scale], requires_grad=True)
    z = torch.tensor([0.0], requires_grad=True)

    def learnable():
        y = torch._fake_quantize_learnable_per_tensor_affine(xl, s, z, -128, 127, 1.0)
        y.backward(dy)

    row("_fake_quantize_learnable_per_tensor_affine forward + backward", learnable)


if __name__ == "__main__":
    main()
