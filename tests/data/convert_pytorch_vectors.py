#!/usr/bin/env python3
"""Convert PyTorch's reference vectors to the line formats read by tests/pytorch_vectors.rs,
tests/pytorch_observers.rs and tests/pytorch_lsq.rs.

Usage:
    python3 tests/data/convert_pytorch_vectors.py PATH/TO/vectors.json
        [OUTPUT [OBSERVERS_OUTPUT [LSQ_OUTPUT]]]

Reads the shared `vectors.json` (see its README.md) and writes, in one run, three files:
`tests/data/pytorch_fake_quant.txt` (or OUTPUT), `tests/data/pytorch_observers.txt` (or
OBSERVERS_OUTPUT) and `tests/data/pytorch_lsq.txt` (or LSQ_OUTPUT); the last two by default next to
OUTPUT when OUTPUT is given. Standard library only.

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

The LSQ file holds the learnable fake-quant cases: `_fake_quantize_learnable_per_tensor_affine`
(kind `per_tensor`), `_fake_quantize_learnable_per_channel_affine` (kind `per_channel`), each one
forward and one backward, and the `_LearnableFakeQuantize` module (kind `module`: one forward and
backward per step, with the scale and zero point its observer gave it at that step). Format:

    # comment
    case <name> <op> <tags,comma,separated> kind=<per_tensor|per_channel|module> qmin=<int>
         qmax=<int> axis=<int|none> channels=<int> grad_scale=<custom|lsq>
         grad_factor=<f32 bits, 8 hex digits> steps=<int> shape=<d0xd1x..>   (all on one line)
    step <index>
    scale <hex bits> ...                      (the learnable scale tensor, one per channel)
    zp <hex bits> ...                         (the learnable FLOAT zero point, one per channel)
    x <hex bits> ...                          (row-major, flattened)
    dy <hex bits> ...
    y <hex bits> ...
    dx <hex bits> ...
    dscale <hex bits> ...                     (reduced gradient of the scale, one per channel)
    dzp <hex bits> ...                        (reduced gradient of the zero point, one per channel)
    ...                                       (`step` blocks for every step, in order)
    end

- grad_factor: the factor PyTorch's kernels multiply every per-element scale / zero point
  gradient by, as the f32 the kernel takes (its C++ parameter is a float). grad_scale=custom: the
  op's `grad_factor` argument; grad_scale=lsq: the module's use_grad_scaling factor
  `1 / sqrt(numel * quant_max)` (numel of one step's tensor), computed here as the module does,
  in double, then rounded to f32.
- The module case's quant range is not among its recorded parameters: it is _LearnableFakeQuantize's
  default [0, 255] (the case is named `_u8_`, its zero point 137 is the affine zero point of its
  observer over [0, 255]); the test checks every forward output against it bit for bit.
- Every scale must be a normal f32 of at least 2^-23 (f32 machine epsilon): none of these cases
  relies on a clamp of the scale (the ops take the scale as given; the module would clamp it to
  its eps of 2^-23, a no-op here).
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

LSQ_KINDS = {
    "_fake_quantize_learnable_per_tensor_affine": "per_tensor",
    "_fake_quantize_learnable_per_channel_affine": "per_channel",
    "_LearnableFakeQuantize": "module",
}
# _LearnableFakeQuantize's default quant range (its recorded parameters do not list one).
MODULE_RANGE = (0, 255)
F32_EPS_BITS = 0x34000000  # 2^-23

LSQ_HEADER = """\
# PyTorch reference vectors for the learnable (LSQ) fake quantization:
# torch._fake_quantize_learnable_per_tensor_affine and
# torch._fake_quantize_learnable_per_channel_affine (forward and autograd backward) and the module
# torch.ao.quantization._LearnableFakeQuantize (use_grad_scaling=True, one step per observed batch).
# Source: outputs of PyTorch {torch} CPU ({cpu} kernels), seed {seed}, generated with PyTorch's own
# functions and module. PyTorch is distributed under the BSD-3-Clause licence; these are its
# outputs, converted by tests/data/convert_pytorch_vectors.py from the shared vectors.json.
# How tests/pytorch_lsq.rs compares them (see REFERENCE.md section 1 and the vectors' README):
# - y: bit for bit on every finite input (PyTorch's forward rounds the zero point half to even
#   and clamps it, as the library does). NaN inputs: PyTorch maps them to the qmin side, the
#   library keeps NaN; +-inf are compared too.
# - dx: bit for bit on every element, except where PyTorch's backward decides "in range"
#   differently from its own forward: its per-tensor backward rounds the zero point as
#   trunc(clamp(zp + 0.5)) (2.5 -> 3, -1.7 -> -1, 0.5 -> 1) and both backward kernels round
#   zp + x * inv in one FMA; each such element is identified and counted.
# - dscale, dzp: sums in PyTorch's own order, compared within the bound of f32 summation after
#   accounting exactly for the elements where PyTorch's per-element terms differ by design
#   (backward zero point and rounding of zp + x * inv, NaN/+inf/overflow taken as below qmin),
#   and for the order of operations of each term (PyTorch's build also contracts
#   `(q - zp) * scale - x` into one FMA where the library subtracts x from its rounded output).
# Format: see the converter's docstring. f32 values are IEEE-754 bit patterns in hex.
# Cases: {cases} ({per_tensor} per_tensor, {per_channel} per_channel, {module} module),
# steps: {steps}, elements: {elements}.
"""

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


def convert_lsq_case(case):
    name = case["name"]
    params = case["params"]
    arrays = case["arrays"]
    kind = LSQ_KINDS[case["op"]]
    for role, array in arrays.items():
        if array["dtype"] != "f32_bits":
            raise ValueError(f"{name}: {role} has dtype {array['dtype']}, expected f32_bits")
    x_shape = arrays["x"]["shape"]
    if kind == "module":
        if not truthy(params.get("use_grad_scaling")):
            raise ValueError(f"{name}: only use_grad_scaling=True is supported")
        steps, shape = x_shape[0], x_shape[1:]
        qmin, qmax = MODULE_RANGE
        axis = None
        channels = 1
        numel = 1
        for dim in shape:
            numel *= dim
        grad_scale = "lsq"
        grad_factor = f32_bits_of(1.0 / (numel * qmax) ** 0.5)
    else:
        steps, shape = 1, x_shape
        qmin, qmax = int(params["quant_min"]), int(params["quant_max"])
        grad_scale = "custom"
        grad_factor = f32_bits_of(float(params["grad_factor"]))
        if kind == "per_tensor":
            axis = None
            channels = 1
            if flatten(arrays["scale"]["data"]) != [f32_bits_of(params["scale"])]:
                raise ValueError(f"{name}: scale array and params disagree")
            if flatten(arrays["zero_point"]["data"]) != [
                f32_bits_of(params["zero_point_float"])
            ]:
                raise ValueError(f"{name}: zero_point array and params disagree")
        else:
            axis = int(params["axis"])
            if not 0 <= axis < len(shape):
                raise ValueError(f"{name}: axis {axis} out of range for shape {shape}")
            channels = shape[axis]
    per_step_roles = ("x", "dy", "y", "dx")
    channel_roles = ("scale", "zero_point", "dscale", "dzero_point")
    for role in per_step_roles:
        if arrays[role]["shape"] != x_shape:
            raise ValueError(f"{name}: {role} shape {arrays[role]['shape']} differs from x")
    data = {}
    for role in per_step_roles + channel_roles:
        if kind == "module":
            data[role] = steps_of(arrays[role], steps, name, role)
        else:
            data[role] = [flatten(arrays[role]["data"])]
    numel = 1
    for dim in shape:
        numel *= dim
    for k in range(steps):
        for role in per_step_roles:
            if len(data[role][k]) != numel:
                raise ValueError(f"{name}: step {k}: {role} length")
        for role in channel_roles:
            if len(data[role][k]) != channels:
                raise ValueError(f"{name}: step {k}: {role} has {len(data[role][k])} values")
        for bits in data["scale"][k]:
            if bits & 0x80000000 or not F32_EPS_BITS <= bits < 0x7F800000:
                raise ValueError(f"{name}: step {k}: scale {bits:08x} below 2^-23 or not finite")
    lines = [
        (
            "case {name} {op} {tags} kind={kind} qmin={qmin} qmax={qmax} axis={axis} "
            "channels={channels} grad_scale={grad_scale} grad_factor={grad_factor:08x} "
            "steps={steps} shape={shape}"
        ).format(
            name=name,
            op=case["op"],
            tags=",".join(case["tags"]) or "-",
            kind=kind,
            qmin=qmin,
            qmax=qmax,
            axis="none" if axis is None else axis,
            channels=channels,
            grad_scale=grad_scale,
            grad_factor=grad_factor,
            steps=steps,
            shape="x".join(str(d) for d in shape),
        )
    ]
    for k in range(steps):
        lines.append(f"step {k}")
        for role, label in (
            ("scale", "scale"),
            ("zero_point", "zp"),
            ("x", "x"),
            ("dy", "dy"),
            ("y", "y"),
            ("dx", "dx"),
            ("dscale", "dscale"),
            ("dzero_point", "dzp"),
        ):
            lines.append(label + " " + f32_hex(data[role][k]))
    lines.append("end")
    return lines, kind, steps, steps * numel


def write_lsq(source, out_path):
    body = []
    counts = {"per_tensor": 0, "per_channel": 0, "module": 0}
    steps = 0
    elements = 0
    for case in source["cases"]:
        if case["op"] not in LSQ_KINDS:
            continue
        lines, kind, case_steps, numel = convert_lsq_case(case)
        body.extend(lines)
        counts[kind] += 1
        steps += case_steps
        elements += numel
    env = source.get("environment", {})
    header = LSQ_HEADER.format(
        torch=env.get("torch", "?"),
        cpu=env.get("cpu_capability", "?"),
        seed=env.get("seed", "?"),
        cases=sum(counts.values()),
        per_tensor=counts["per_tensor"],
        per_channel=counts["per_channel"],
        module=counts["module"],
        steps=steps,
        elements=elements,
    )
    with open(out_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(header)
        f.write("\n".join(body))
        f.write("\n")
    print(
        f"wrote {out_path}: {counts['per_tensor']} per_tensor, {counts['per_channel']} "
        f"per_channel and {counts['module']} module cases, {steps} steps, {elements} elements"
    )


def main():
    if len(sys.argv) not in (2, 3, 4, 5):
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
        if len(sys.argv) >= 4
        else os.path.join(os.path.dirname(os.path.abspath(out_path)), "pytorch_observers.txt")
    )
    lsq_path = (
        sys.argv[4]
        if len(sys.argv) == 5
        else os.path.join(os.path.dirname(os.path.abspath(out_path)), "pytorch_lsq.txt")
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
    write_lsq(source, lsq_path)


if __name__ == "__main__":
    main()
