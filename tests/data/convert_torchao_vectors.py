#!/usr/bin/env python3
"""Convert torchao's per-group and per-token fake-quant vectors to the line format read by
tests/all/torchao_per_group.rs, and its range-learning vectors to the one read by
tests/all/torchao_range_learning.rs.

Usage:
    python3 tests/data/convert_torchao_vectors.py PATH/TO/torchao-vectors/vectors.json [OUTPUT]
        [RANGE_LEARNING_OUTPUT]

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
