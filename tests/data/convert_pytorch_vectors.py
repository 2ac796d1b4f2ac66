#!/usr/bin/env python3
"""Convert PyTorch's reference vectors to the line formats read by tests/pytorch_vectors.rs and
tests/pytorch_observers.rs.

Usage:
    python3 tests/data/convert_pytorch_vectors.py PATH/TO/vectors.json [OUTPUT [OBSERVERS_OUTPUT]]

Reads the shared `vectors.json` (see its README.md) and writes, in one run, two files:
`tests/data/pytorch_fake_quant.txt` (or OUTPUT) and `tests/data/pytorch_observers.txt` (or
OBSERVERS_OUTPUT; by default next to OUTPUT when OUTPUT is given). Standard library only.

The fake-quant file. Only the `fake_quantize_per_tensor_affine` cases and the
`fake_quantize_per_channel_affine` cases with an integer zero point are kept; the float zero point
cases use a different (FMA-contracted) rounding that this library does not implement.

Output format (one item per line, fields separated by single spaces):

    # comment
    case <name> <op> <tags,comma,separated> qmin=<int> qmax=<int> axis=<int|none> shape=<d0xd1x..>
    scale <f32 bits as 8 hex digits> ...      (one per channel; one for per-tensor)
    zp <int> ...                              (one per channel; one for per-tensor)
    x <hex bits> ...                          (row-major, flattened)
    y <hex bits> ...
    mask <string of 0/1, one per element>
    dy <hex bits> ...
    dx <hex bits> ...
    end

The observers file holds the observer modules' cases (MovingAverageMinMaxObserver,
PerChannelMinMaxObserver, MovingAveragePerChannelMinMaxObserver: kind `observer`) and the
`fused_moving_avg_obs_fake_quant` cases (kind `fused`). Each case is a sequence of steps on
tensors of one shape; the state is the one recorded AFTER each step. Format:

    # comment
    case <name> <op> <tags,comma,separated> kind=<observer|fused> qmin=<int> qmax=<int>
         scheme=<symmetric|affine> averaging=<minmax|f32 bits of the constant, 8 hex digits>
         axis=<int|none> channels=<int> steps=<int> shape=<d0xd1x..>      (all on one line)
    step <index> observe=<0|1>
    x <hex bits> ...                          (this step's tensor, row-major, flattened)
    min <hex bits> ...                        (running minimum per channel after the step)
    max <hex bits> ...                        (running maximum per channel after the step)
    scale <hex bits> ...                      (kind=observer only: scale per channel)
    zp <int> ...                              (kind=observer only: zero point per channel)
    ...                                       (`step` blocks for every step, in order)
    end

- qmin/qmax: an observer's dtype gives the range (torch.qint8 -> [-128, 127], torch.quint8 ->
  [0, 255]); `reduce_range` drops one bit ([-64, 63], [0, 127]). The fused op's quant_min/quant_max.
- scheme: the observer's qscheme (per_tensor_/per_channel_ symmetric or affine); the fused op's
  `symmetric_quant`.
- averaging: `minmax` for PerChannelMinMaxObserver (running min of mins and max of maxes); otherwise
  the averaging constant rounded to f32, as PyTorch multiplies the f32 running tensor by it in f32.
- axis: the channel axis of the per-step tensor (`ch_axis`; for the fused op ch_axis when
  `per_row_fake_quant`), `none` per-tensor. channels: per-step statistics per step (1 per-tensor).
- observe: 1 when the step observed (always for the observer modules; the fused op's observer_on).
  A step with observe=0 leaves the running state unchanged.
- The fused op's scale and zero point are not kept: they come from fbgemm's
  ChooseQuantizationParams, a different formula from the observers' (see the file's header).
"""

import json
import os
import struct
import sys

OPS = ("fake_quantize_per_tensor_affine", "fake_quantize_per_channel_affine")

HEADER = """\
# PyTorch reference vectors for fake_quantize_per_tensor_affine and
# fake_quantize_per_channel_affine (integer zero points only).
# Source: outputs of PyTorch {torch} CPU ({cpu} kernels), seed {seed}, generated with PyTorch's own
# functions (torch.fake_quantize_per_tensor_affine / torch.fake_quantize_per_channel_affine and
# their autograd backward). PyTorch is distributed under the BSD-3-Clause licence; these are its
# outputs, converted by tests/data/convert_pytorch_vectors.py from the shared vectors.json.
# Format: see the converter's docstring. f32 values are IEEE-754 bit patterns in hex.
# Cases: {cases}, elements: {elements}.
"""

OBSERVER_OPS = (
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
)
FUSED_OP = "fused_moving_avg_obs_fake_quant"

OBSERVERS_HEADER = """\
# PyTorch reference vectors for the observers MovingAverageMinMaxObserver,
# PerChannelMinMaxObserver and MovingAveragePerChannelMinMaxObserver (running min/max, scale and
# zero point after every step, from calculate_qparams() with eps = f32 machine epsilon) and for
# torch.fused_moving_avg_obs_fake_quant (running min/max after every step only).
# Source: outputs of PyTorch {torch} CPU ({cpu} kernels), seed {seed}, generated with PyTorch's own
# modules and functions (torch.ao.quantization observers, torch.fused_moving_avg_obs_fake_quant).
# PyTorch is distributed under the BSD-3-Clause licence; these are its outputs, converted by
# tests/data/convert_pytorch_vectors.py from the shared vectors.json.
# The fused op's scale and zero point are left out on purpose: it chooses them with fbgemm's
# ChooseQuantizationParams (range widened to include 0, a scale of 0 replaced by 0.1), whose
# symmetric and affine formulas differ from the observers' calculate_qparams (a known PyTorch
# mismatch, PR #194816; see REFERENCE.md section 1 and the vectors' README). Its running min/max
# follow the same moving-average rule as the observers and are kept; its steps with
# observer_on=0 leave them unchanged.
# Format: see the converter's docstring. f32 values are IEEE-754 bit patterns in hex.
# Cases: {cases} ({observer_cases} observer, {fused_cases} fused), steps: {steps},
# elements: {elements}.
"""


def flatten(data):
    if isinstance(data, list):
        out = []
        for item in data:
            out.extend(flatten(item))
        return out
    return [data]


def f32_bits_of(value):
    return struct.unpack("<I", struct.pack("<f", value))[0]


def hex_line(role, array):
    if array["dtype"] != "f32_bits":
        raise ValueError(f"{role}: expected f32_bits, got {array['dtype']}")
    return role + " " + " ".join(f"{b:08x}" for b in flatten(array["data"]))


def convert_case(case):
    params = case["params"]
    arrays = case["arrays"]
    shape = arrays["x"]["shape"]
    numel = 1
    for dim in shape:
        numel *= dim
    if case["op"] == "fake_quantize_per_tensor_affine":
        scale_bits = params["scale_f32_bits"]
        if f32_bits_of(params["scale"]) != scale_bits:
            raise ValueError(f"{case['name']}: scale and scale_f32_bits disagree")
        scales = [scale_bits]
        zps = [int(params["zero_point"])]
        axis = "none"
    else:
        if arrays["zero_point"]["dtype"] not in ("int32", "int64"):
            raise ValueError(f"{case['name']}: integer zero point expected")
        scales = flatten(arrays["scale"]["data"])
        zps = [int(z) for z in flatten(arrays["zero_point"]["data"])]
        axis = str(int(params["axis"]))
        if len(scales) != shape[int(params["axis"])] or len(zps) != len(scales):
            raise ValueError(f"{case['name']}: channel count mismatch")
    for role in ("x", "y", "mask", "dy", "dx"):
        if arrays[role]["shape"] != shape:
            raise ValueError(f"{case['name']}: {role} shape differs from x")
    mask = flatten(arrays["mask"]["data"])
    if len(mask) != numel:
        raise ValueError(f"{case['name']}: mask length")
    lines = [
        "case {name} {op} {tags} qmin={qmin} qmax={qmax} axis={axis} shape={shape}".format(
            name=case["name"],
            op=case["op"],
            tags=",".join(case["tags"]) or "-",
            qmin=int(params["quant_min"]),
            qmax=int(params["quant_max"]),
            axis=axis,
            shape="x".join(str(d) for d in shape),
        ),
        "scale " + " ".join(f"{b:08x}" for b in scales),
        "zp " + " ".join(str(z) for z in zps),
        hex_line("x", arrays["x"]),
        hex_line("y", arrays["y"]),
        "mask " + "".join("1" if m else "0" for m in mask),
        hex_line("dy", arrays["dy"]),
        hex_line("dx", arrays["dx"]),
        "end",
    ]
    return lines, numel


def truthy(value):
    """A boolean parameter, which vectors.json stores as a bool or as the string 'True'/'False'."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("True", "False"):
        return value == "True"
    if value is None:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def dtype_range(dtype, reduce_range):
    """The [qmin, qmax] of an observer's dtype (PyTorch's defaults for quint8/qint8)."""
    if dtype == "torch.qint8":
        return (-64, 63) if reduce_range else (-128, 127)
    if dtype == "torch.quint8":
        return (0, 127) if reduce_range else (0, 255)
    raise ValueError(f"unsupported observer dtype {dtype!r}")


def steps_of(array, steps, name, role):
    """Splits an array stacked along axis 0 over `steps` steps into one flat list per step (the
    data may be nested or flat row-major)."""
    shape = array["shape"]
    data = flatten(array["data"])
    numel = 1
    for dim in shape:
        numel *= dim
    if not shape or shape[0] != steps or len(data) != numel:
        raise ValueError(f"{name}: {role} of shape {shape} is not stacked over {steps} steps")
    per_step = numel // steps
    return [data[k * per_step : (k + 1) * per_step] for k in range(steps)]


def f32_hex(values):
    return " ".join(f"{b:08x}" for b in values)


def convert_observer_case(case):
    name = case["name"]
    params = case["params"]
    arrays = case["arrays"]
    x_shape = arrays["x"]["shape"]
    steps, shape = x_shape[0], x_shape[1:]
    numel = 1
    for dim in shape:
        numel *= dim
    if case["op"] == FUSED_OP:
        kind = "fused"
        qmin, qmax = int(params["quant_min"]), int(params["quant_max"])
        scheme = "symmetric" if truthy(params["symmetric_quant"]) else "affine"
        averaging = f"{f32_bits_of(float(params['averaging_const'])):08x}"
        axis = int(params["ch_axis"]) if truthy(params["per_row_fake_quant"]) else None
        observe = [int(v) for v in flatten(arrays["observer_on"]["data"])]
        min_role, max_role = "running_min", "running_max"
        if params.get("initial_running_min") not in ("+inf", "empty -> +inf") or params.get(
            "initial_running_max"
        ) not in ("-inf", "empty -> -inf"):
            raise ValueError(f"{name}: the running state must start empty")
    else:
        kind = "observer"
        qscheme = params["qscheme"]
        schemes = {
            "torch.per_tensor_symmetric": ("symmetric", False),
            "torch.per_tensor_affine": ("affine", False),
            "torch.per_channel_symmetric": ("symmetric", True),
            "torch.per_channel_affine": ("affine", True),
        }
        if qscheme not in schemes:
            raise ValueError(f"{name}: unsupported qscheme {qscheme!r}")
        scheme, per_channel = schemes[qscheme]
        qmin, qmax = dtype_range(params["dtype"], truthy(params.get("reduce_range", False)))
        constant = params.get("averaging_constant")
        if case["op"] == "PerChannelMinMaxObserver":
            if constant is not None:
                raise ValueError(f"{name}: PerChannelMinMaxObserver has no averaging constant")
            averaging = "minmax"
        else:
            averaging = f"{f32_bits_of(float(constant)):08x}"
        axis = int(params["ch_axis"]) if per_channel else None
        if per_channel != case["op"].startswith(("PerChannel", "MovingAveragePerChannel")):
            raise ValueError(f"{name}: qscheme {qscheme} does not fit {case['op']}")
        observe = [1] * steps
        min_role, max_role = "min_val", "max_val"
    if axis is not None and not 0 <= axis < len(shape):
        raise ValueError(f"{name}: axis {axis} out of range for shape {shape}")
    channels = 1 if axis is None else shape[axis]
    if len(observe) != steps or any(v not in (0, 1) for v in observe):
        raise ValueError(f"{name}: observe flags")
    if arrays["x"]["dtype"] != "f32_bits":
        raise ValueError(f"{name}: x must be f32_bits")
    xs = steps_of(arrays["x"], steps, name, "x")
    per_step = {}
    roles = [min_role, max_role] + (["scale", "zero_point"] if kind == "observer" else [])
    for role in roles:
        array = arrays[role]
        want = "f32_bits" if role != "zero_point" else ("int32", "int64")
        if array["dtype"] not in (want if isinstance(want, tuple) else (want,)):
            raise ValueError(f"{name}: {role} has dtype {array['dtype']}")
        per_step[role] = steps_of(array, steps, name, role)
        for values in per_step[role]:
            if len(values) != channels:
                raise ValueError(f"{name}: {role} has {len(values)} values, {channels} channels")
    lines = [
        (
            "case {name} {op} {tags} kind={kind} qmin={qmin} qmax={qmax} scheme={scheme} "
            "averaging={averaging} axis={axis} channels={channels} steps={steps} shape={shape}"
        ).format(
            name=name,
            op=case["op"],
            tags=",".join(case["tags"]) or "-",
            kind=kind,
            qmin=qmin,
            qmax=qmax,
            scheme=scheme,
            averaging=averaging,
            axis="none" if axis is None else axis,
            channels=channels,
            steps=steps,
            shape="x".join(str(d) for d in shape),
        )
    ]
    for k in range(steps):
        if len(xs[k]) != numel:
            raise ValueError(f"{name}: step {k}: x length")
        lines.append(f"step {k} observe={observe[k]}")
        lines.append("x " + f32_hex(xs[k]))
        lines.append("min " + f32_hex(per_step[min_role][k]))
        lines.append("max " + f32_hex(per_step[max_role][k]))
        if kind == "observer":
            lines.append("scale " + f32_hex(per_step["scale"][k]))
            lines.append("zp " + " ".join(str(int(z)) for z in per_step["zero_point"][k]))
    lines.append("end")
    return lines, kind, steps, steps * numel


def write_observers(source, out_path):
    body = []
    counts = {"observer": 0, "fused": 0}
    steps = 0
    elements = 0
    for case in source["cases"]:
        if case["op"] not in OBSERVER_OPS and case["op"] != FUSED_OP:
            continue
        lines, kind, case_steps, numel = convert_observer_case(case)
        body.extend(lines)
        counts[kind] += 1
        steps += case_steps
        elements += numel
    env = source.get("environment", {})
    header = OBSERVERS_HEADER.format(
        torch=env.get("torch", "?"),
        cpu=env.get("cpu_capability", "?"),
        seed=env.get("seed", "?"),
        cases=counts["observer"] + counts["fused"],
        observer_cases=counts["observer"],
        fused_cases=counts["fused"],
        steps=steps,
        elements=elements,
    )
    with open(out_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(header)
        f.write("\n".join(body))
        f.write("\n")
    print(
        f"wrote {out_path}: {counts['observer']} observer and {counts['fused']} fused cases, "
        f"{steps} steps, {elements} elements"
    )


def main():
    if len(sys.argv) not in (2, 3, 4):
        sys.exit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        source = json.load(f)
    out_path = (
        sys.argv[2]
        if len(sys.argv) >= 3
        else os.path.join(os.path.dirname(os.path.abspath(__file__)), "pytorch_fake_quant.txt")
    )
    observers_path = (
        sys.argv[3]
        if len(sys.argv) == 4
        else os.path.join(os.path.dirname(os.path.abspath(out_path)), "pytorch_observers.txt")
    )
    body = []
    cases = 0
    elements = 0
    for case in source["cases"]:
        if case["op"] not in OPS:
            continue
        if case["params"].get("zero_point_dtype", "int32") not in ("int32", "int64"):
            continue
        lines, numel = convert_case(case)
        body.extend(lines)
        cases += 1
        elements += numel
    env = source.get("environment", {})
    header = HEADER.format(
        torch=env.get("torch", "?"),
        cpu=env.get("cpu_capability", "?"),
        seed=env.get("seed", "?"),
        cases=cases,
        elements=elements,
    )
    with open(out_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(header)
        f.write("\n".join(body))
        f.write("\n")
    print(f"wrote {out_path}: {cases} cases, {elements} elements")
    write_observers(source, observers_path)


if __name__ == "__main__":
    main()
