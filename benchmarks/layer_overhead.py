"""Cost of one quantized Conv2d forward+backward relative to the float Conv2d.

Run: python benchmarks/layer_overhead.py [--out results/layer_overhead]
Writes <out>.json and <out>.md with the median times and their ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from torch import nn

from qsr_plugin import QuantConv2d, QuantSpec

try:
    from benchmarks._timing import interleaved_median_times
except ImportError:  # run as a script from benchmarks/
    from _timing import interleaved_median_times


def fwd_bwd(layer: nn.Module, x: torch.Tensor):
    def run():
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/layer_overhead")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    torch.manual_seed(0)
    shape = (args.batch, args.channels, args.size, args.size)
    x = torch.randn(shape, requires_grad=True)
    conv = nn.Conv2d(args.channels, args.channels, 3, padding=1)
    candidates = {"float": fwd_bwd(conv, x)}
    for method in ("quantsr", "lsq", "pams", "dorefa"):
        layer = QuantConv2d.from_float(conv, QuantSpec(method=method, weight_bits=4, act_bits=4))
        layer.train()(x)
        candidates[method] = fwd_bwd(layer, x)
    times = interleaved_median_times(candidates, rounds=args.rounds)
    rows = [
        {"layer": name, "ms": 1000 * t, "ratio_to_float": t / times["float"]}
        for name, t in times.items()
    ]
    result = {
        "what": "Conv2d 3x3 forward+backward, input " + "x".join(map(str, shape)),
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        "rows": rows,
    }
    table = ["| layer | ms | ratio to float |", "| --- | --- | --- |"]
    table += [f"| {r['layer']} | {r['ms']:.2f} | {r['ratio_to_float']:.2f} |" for r in rows]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(
        f"{result['what']} ({result['machine']})\n\n" + "\n".join(table) + "\n"
    )
    print(result["what"], "|", result["machine"])
    print("\n".join(table))


if __name__ == "__main__":
    main()
