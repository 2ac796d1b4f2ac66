#!/usr/bin/env python3
"""Convert PyTorch's HistogramObserver vectors (`histogram_observer.json`, made by
`gen_histogram_vectors.py` beside this file, PyTorch 2.15, seed 0) to the line format read by
tests/all/histogram.rs.

Usage:
    python3 tests/data/convert_histogram_vectors.py PATH/TO/histogram_observer.json [OUTPUT]

Format (fields separated by single spaces; f32 values as 8 hex digits of their bits):

    case <name> config=<quint8_affine|qint8_symmetric> bins=<int> qmin=<int> qmax=<int>
         batches=<int> new_min=<bits> new_max=<bits> scale=<bits> zero_point=<int>   (one line)
    x <bits> ...              (one line per batch, in order)
    final <min bits> <max bits>
    histogram <bits> ...      (PyTorch's float32 counts after the last batch)
    end
"""
import json
import sys


def hexes(values):
    return " ".join("%08x" % v for v in values)


def main():
    source = sys.argv[1]
    output = sys.argv[2] if len(sys.argv) > 2 else "tests/data/pytorch_histogram.txt"
    data = json.load(open(source))
    lines = [
        "# PyTorch 2.15 HistogramObserver vectors (torch.ao.quantization.observer), computed by",
        "# tests/data/gen_histogram_vectors.py (seed 0); PyTorch is BSD-3-Clause licensed, these are its",
        "# outputs, converted by tests/data/convert_histogram_vectors.py.",
        "# environment: " + json.dumps(data.get("environment", {}), sort_keys=True),
    ]
    for case in data["cases"]:
        search = case["search"]
        lines.append(
            " ".join(
                [
                    "case",
                    case["name"],
                    "config=" + case["config"],
                    "bins=%d" % case["bins"],
                    "qmin=%d" % case["quant_min"],
                    "qmax=%d" % case["quant_max"],
                    "batches=%d" % len(case["steps"]),
                    "new_min=%08x" % search["new_min"][0],
                    "new_max=%08x" % search["new_max"][0],
                    "scale=%08x" % case["scale"][0],
                    "zero_point=%d" % case["zero_point"][0],
                ]
            )
        )
        for step in case["steps"]:
            lines.append("x " + hexes(step["x"]))
        last = case["steps"][-1]
        lines.append("final %08x %08x" % (last["min_val"][0], last["max_val"][0]))
        lines.append("histogram " + hexes(last["histogram"]))
        lines.append("end")
    with open(output, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
