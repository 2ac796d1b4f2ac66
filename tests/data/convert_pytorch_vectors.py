#!/usr/bin/env python3
"""Convert PyTorch's fake-quant reference vectors to the line format read by tests/pytorch_vectors.rs.

Usage: python3 tests/data/convert_pytorch_vectors.py PATH/TO/vectors.json [OUTPUT]

Reads the shared `vectors.json` (see its README.md) and writes `tests/data/pytorch_fake_quant.txt`
(or OUTPUT). Standard library only. Only the `fake_quantize_per_tensor_affine` cases and the
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


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        source = json.load(f)
    out_path = (
        sys.argv[2]
        if len(sys.argv) == 3
        else os.path.join(os.path.dirname(os.path.abspath(__file__)), "pytorch_fake_quant.txt")
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


if __name__ == "__main__":
    main()
