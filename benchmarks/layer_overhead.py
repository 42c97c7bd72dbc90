"""Cost of one quantized Conv2d forward+backward relative to the float Conv2d.

Run: python -m benchmarks.run --only layer_overhead [--rounds 20]
Writes benchmarks/results/layer_overhead.json and .md with the median times and their ratios.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from qsr_plugin import QuantConv2d, QuantSpec

from ._timing import interleaved_median_times
from .report import Result, describe, machine, markdown_table


def fwd_bwd(layer: nn.Module, x: torch.Tensor):
    def run():
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()

    return run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's options."""
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)


def run(args: argparse.Namespace) -> Result:
    """Times the float and the quantized layers of every method; see the module docstring."""
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
    header = machine()
    what = "Conv2d 3x3 forward+backward, input " + "x".join(map(str, shape))
    table = markdown_table(
        ["layer", "ms", "ratio to float"],
        [[r["layer"], f"{r['ms']:.2f}", f"{r['ratio_to_float']:.2f}"] for r in rows],
    )
    markdown = f"{what}, 4-bit weights and activations ({describe(header)})\n\n{table}"
    return Result("layer_overhead", {"what": what, "machine": header, "rows": rows}, markdown)
