#!/usr/bin/env python3
"""Convert torchao's per-group and per-token fake-quant vectors to the line format read by
tests/all/torchao_per_group.rs, and its range-learning vectors to the one read by
tests/all/torchao_range_learning.rs.

Usage:
    python3 tests/data/convert_torchao_vectors.py PATH/TO/torchao-vectors/vectors.json [OUTPUT]
        [RANGE_LEARNING_OUTPUT] [FLOAT_FORMATS_OUTPUT]

Keeps the `IntxFakeQuantizer` cases of the `intx_per_group` and `per_token` families (torchao 0.18 on
PyTorch 2.15, CPU; see the shared README for the formulas and quirks) and writes
`tests/data/torchao_per_group.txt` (or OUTPUT). Standard library only.

Format (one item per line, fields separated by single spaces):

    # comment
    case <name> <tags,comma,separated> dtype=<f32|bf16|f16> qmin=<int> qmax=<int>
         mapping=<symmetric|asymmetric> domain=<INT|FLOAT> granularity=<group|channel|token>
         group=<int> scale_precision=<f32|bf16> zp_precision=<int32|f32|bf16>
         eps=<f32 bits, 8 hex digits|none> shape=<d0xd1x..>                 (all on one line)
    x <element bits> ...      (row-major; 8 hex digits per f32, 4 per bf16/f16 element)
    y <element bits> ...
    scale <f32 bits> ...      (one per group, in flat order; bf16 scales widened exactly)
    zp <f32 bits> ...         (one per group; int32 and bf16 zero points widened exactly)
    dy <element bits> ...
    dx <element bits> ...
    end

The range-learning file (`IntxFakeQuantizer(range_learning=True)`, int4 per group, f32;
`tests/data/torchao_range_learning.txt` or RANGE_LEARNING_OUTPUT) has, per case:

    case <name> <tags> mapping=<symmetric|asymmetric> variant=<init|trained> qmin=<int>
         qmax=<int> group=<int> shape=<d0xd1>                                 (one line)
    x, init_scale, init_zp, scale, zp, y, dy, dx, dscale: f32 bits (8 hex digits), one line each
    dzp <f32 bits> ...        (or `dzp none`: the symmetric zero point is not a parameter)
    end

The floating-point formats file (`float8`, `mx`, `nvfp4` families;
`tests/data/torchao_float_formats.txt` or FLOAT_FORMATS_OUTPUT) has, per case:

    case <name> <tags> family=<float8|mx|nvfp4|probe> dtype=<f32|bf16> format=<e4m3|e5m2|e2m3|e3m2|e2m1>
         granularity=<tensor|row|block> rule=<FLOOR|CEIL|EVEN|RCEIL|none> lb=<f32 bits|none>
         ub=<f32 bits|none> tensor_scale=<f32 bits|none> shape=<d0xd1>           (one line)
    x <element bits> ...
    y <element bits> ...      (the probe: its e5m2 codes)
    codes <2 hex digits> ...  (fp8 bytes, or fp6/fp4 codes, one per element)
    scales <f32 bits> ...     (float8), or <2 hex digits> ... (E8M0 or E4M3 bytes)
    dy <element bits> ...     (or `dy none`)
    dx <element bits> ...     (or `dx none`)
    end
"""
import json
import struct
import sys

FAMILIES = ("intx_per_group", "per_token")


def precision(name):
    return {"torch.float32": "f32", "torch.bfloat16": "bf16", "torch.int32": "int32"}[name]


def elements(array):
    width = 8 if array["dtype"] == "f32_bits" else 4
    return " ".join(f"{v:0{width}x}" for v in array["data"])


def as_f32_bits(array):
    kind = array["dtype"]
    if kind == "f32_bits":
        return array["data"]
    if kind == "bf16_bits":
        return [v << 16 for v in array["data"]]
    if kind == "int32":
        return [struct.unpack("<I", struct.pack("<f", float(v)))[0] for v in array["data"]]
    raise ValueError(kind)


def main():
    source = sys.argv[1]
    output = sys.argv[2] if len(sys.argv) > 2 else "tests/data/torchao_per_group.txt"
    data = json.load(open(source))
    env = data.get("environment", {})
    lines = [
        "# torchao 0.18 per-group and per-token fake-quant vectors (IntxFakeQuantizer), computed by",
        "# torchao's own functions on PyTorch 2.15 CPU, seed 0; torchao and PyTorch are BSD-3-Clause",
        "# licensed, these are their outputs, converted by tests/data/convert_torchao_vectors.py.",
        f"# environment: {json.dumps(env, sort_keys=True)[:300]}",
    ]
    for case in data["cases"]:
        if case["family"] not in FAMILIES or case["op"] != "IntxFakeQuantizer":
            continue
        p, a = case["params"], case["arrays"]
        dtype = p["input_dtype"]
        granularity = {"PerToken": "token", "PerAxis(0)": "channel"}.get(
            p.get("granularity"), "group"
        )
        shape = a["x"]["shape"]
        group = p.get("group_size", shape[-1])
        if granularity != "group":
            group = shape[-1]
        eps = p.get("eps")
        eps_field = "none" if eps is None else "%08x" % struct.unpack("<I", struct.pack("<f", eps))[0]
        mapping = p["mapping"]
        domain = p.get("zero_point_domain", "INT")
        lines.append(
            " ".join(
                [
                    "case",
                    case["name"],
                    ",".join(case["tags"]),
                    f"dtype={dtype}",
                    f"qmin={p['quant_min']}",
                    f"qmax={p['quant_max']}",
                    f"mapping={mapping}",
                    f"domain={domain}",
                    f"granularity={granularity}",
                    f"group={group}",
                    f"scale_precision={precision(p['scale_precision'])}",
                    f"zp_precision={precision(p['zero_point_precision'])}",
                    f"eps={eps_field}",
                    "shape=" + "x".join(str(d) for d in shape),
                ]
            )
        )
        lines.append("x " + elements(a["x"]))
        lines.append("y " + elements(a["y"]))
        lines.append("scale " + " ".join("%08x" % v for v in as_f32_bits(a["scale"])))
        lines.append("zp " + " ".join("%08x" % v for v in as_f32_bits(a["zero_point"])))
        lines.append("dy " + elements(a["dy"]))
        lines.append("dx " + elements(a["dx"]))
        lines.append("end")
    with open(output, "w") as f:
        f.write("\n".join(lines) + "\n")
    range_output = sys.argv[3] if len(sys.argv) > 3 else "tests/data/torchao_range_learning.txt"
    write_range_learning(data, range_output)
    float_output = sys.argv[4] if len(sys.argv) > 4 else "tests/data/torchao_float_formats.txt"
    write_float_formats(data, float_output)


FORMATS = {
    "torch.float8_e4m3fn": "e4m3",
    "torch.float8_e5m2": "e5m2",
    "fp8_e4m3": "e4m3",
    "fp8_e5m2": "e5m2",
    "fp6_e2m3": "e2m3",
    "fp6_e3m2": "e3m2",
    "fp4_e2m1": "e2m1",
}


def f32_bits(v):
    return "none" if v is None else "%08x" % struct.unpack("<I", struct.pack("<f", v))[0]


def bytes_row(array):
    return " ".join("%02x" % v for v in array["data"])


def write_float_formats(data, output):
    env = data.get("environment", {})
    lines = [
        "# torchao 0.18 floating-point format vectors (Float8FakeQuantizer, MXTensor, NVFP4Tensor),",
        "# computed by torchao's own functions on PyTorch 2.15 CPU, seed 0; torchao and PyTorch are",
        "# BSD-3-Clause licensed, these are their outputs, converted by",
        "# tests/data/convert_torchao_vectors.py.",
        f"# environment: {json.dumps(env, sort_keys=True)[:300]}",
    ]
    for case in data["cases"]:
        family = case["family"]
        if family not in ("float8", "mx", "nvfp4"):
            continue
        p, a = case["params"], case["arrays"]
        header = ["case", case["name"], ",".join(case["tags"])]
        if case["name"] == "float8_raw_cast_probe":
            header += ["family=probe", "dtype=f32", "format=e4m3", "granularity=tensor",
                       "rule=none", "lb=none", "ub=none", "tensor_scale=none",
                       "shape=%d" % len(a["x"]["data"])]
            lines.append(" ".join(header))
            lines.append("x " + elements(a["x"]))
            lines.append("y " + bytes_row(a["e5m2"]))
            lines.append("codes " + bytes_row(a["e4m3fn"]))
            lines += ["scales none", "dy none", "dx none", "end"]
            continue
        if family == "float8":
            fmt = FORMATS[p["float8_dtype"]]
            granularity = {"PerRow": "row", "PerTensor": "tensor"}[p["granularity"]]
            rule, lb, ub, tensor_scale = "none", p["hp_value_lb"], p["hp_value_ub"], None
            codes, scales = a["q"], " ".join("%08x" % v for v in a["scale"]["data"])
        elif family == "mx":
            fmt = FORMATS[p["element"]]
            granularity, rule, lb, ub, tensor_scale = "block", p["scale_mode"], None, None, None
            codes = a["q"] if "q" in a else a["codes"]
            scales = bytes_row(a["scale_e8m0"])
        else:
            fmt, granularity, rule, lb, ub = "e2m1", "block", "none", None, None
            tensor_scale = None
            if "per_tensor_scale" in a:
                tensor_scale = struct.unpack("<f", struct.pack("<I", a["per_tensor_scale"]["data"][0]))[0]
            codes, scales = a["codes"], bytes_row(a["block_scale_e4m3"])
        header += [
            f"family={family}",
            f"dtype={p['input_dtype']}",
            f"format={fmt}",
            f"granularity={granularity}",
            f"rule={rule}",
            f"lb={f32_bits(lb)}",
            f"ub={f32_bits(ub)}",
            f"tensor_scale={f32_bits(tensor_scale)}",
            "shape=" + "x".join(str(d) for d in a["x"]["shape"]),
        ]
        lines.append(" ".join(header))
        lines.append("x " + elements(a["x"]))
        lines.append("y " + elements(a["y"]))
        lines.append("codes " + bytes_row(codes))
        lines.append("scales " + scales)
        for role in ("dy", "dx"):
            lines.append(role + " " + (elements(a[role]) if role in a else "none"))
        lines.append("end")
    with open(output, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_range_learning(data, output):
    env = data.get("environment", {})
    lines = [
        "# torchao 0.18 range-learning vectors (IntxFakeQuantizer(range_learning=True)), computed by",
        "# torchao's own functions on PyTorch 2.15 CPU, seed 0; torchao and PyTorch are BSD-3-Clause",
        "# licensed, these are their outputs, converted by tests/data/convert_torchao_vectors.py.",
        f"# environment: {json.dumps(env, sort_keys=True)[:300]}",
    ]
    for case in data["cases"]:
        if case["family"] != "range_learning":
            continue
        p, a = case["params"], case["arrays"]
        assert p["input_dtype"] == "f32", case["name"]
        lines.append(
            " ".join(
                [
                    "case",
                    case["name"],
                    ",".join(case["tags"]),
                    f"mapping={p['mapping']}",
                    f"variant={p['variant']}",
                    f"qmin={p['quant_min']}",
                    f"qmax={p['quant_max']}",
                    f"group={p['group_size']}",
                    "shape=" + "x".join(str(d) for d in a["x"]["shape"]),
                ]
            )
        )
        for role, key in [
            ("x", "x"),
            ("init_scale", "init_scale"),
            ("init_zp", "init_zero_point"),
            ("scale", "scale"),
            ("zp", "zero_point"),
            ("y", "y"),
            ("dy", "dy"),
            ("dx", "dx"),
            ("dscale", "dscale"),
            ("dzp", "dzero_point"),
        ]:
            if key not in a:
                lines.append(f"{role} none")
                continue
            lines.append(role + " " + " ".join("%08x" % v for v in as_f32_bits(a[key])))
        lines.append("end")
    with open(output, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
