"""Inference time of frozen models against the quantized training models in eval mode.

QuantSR-C (MSRResNet 64x16 grown to [32, 16, 8], 16-block variant) and QuantSR-T (SwinIR_S,
4-layer variant), 4-bit, calibrated on two LR crops of Set14 images and timed on a third
(--size x --size LR pixels).
Quantized (eval mode, no grad) and frozen forwards alternate round by round; the table gives
median times and the speed-up. Outputs are checked to be equal first. The table and the
figures are saved to benchmarks/results/freeze_speed_<compiled|eager>.md and .json.

Run: python -m benchmarks.run --only freeze_speed [--size 64] [--rounds 10] [--compile 0|1]
"""

from __future__ import annotations

import argparse

import torch

import qsr_plugin

from ._timing import interleaved_median_times
from .models import MSRRESNET, SWINIR_S, set14_lr_crops
from .report import Result, describe, machine, markdown_table

BACKBONES = {
    "QuantSR-C (MSRResNet, depth 16)": MSRRESNET,
    "QuantSR-T (SwinIR_S, depth 4)": SWINIR_S,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's options."""
    parser.add_argument("--size", type=int, default=64, help="LR input side (multiple of 8)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--compile", type=int, choices=(0, 1), default=1)


def run(args: argparse.Namespace) -> Result:
    """Times both backbones quantized and frozen; see the module docstring."""
    qsr_plugin.use_compiled_kernels(bool(args.compile))

    crops = set14_lr_crops(args.size)
    if len(crops) < 3:
        raise SystemExit(f"--size {args.size}: fewer than 3 Set14 LR images are that large")
    calibration, x = torch.stack(crops[:2]), crops[2].unsqueeze(0)
    header = machine()
    rows = []
    for label, backbone in BACKBONES.items():
        depth = backbone.depth
        model = backbone.build(seed=0)
        qsr_plugin.quantize(
            model,
            bits=args.bits,
            depth_variants=list(backbone.depth_variants),
            example_input=calibration[:1],
        )
        qsr_plugin.calibrate(model, calibration)
        qsr_plugin.set_depth(model.eval(), depth)
        frozen = qsr_plugin.freeze(model, depth=depth)
        with torch.no_grad():
            if not torch.equal(model(x), frozen(x)):
                raise RuntimeError(f"{label}: frozen and quantized outputs differ")
            times = interleaved_median_times(
                {"quantized": lambda m=model: m(x), "frozen": lambda f=frozen: f(x)},
                rounds=args.rounds,
            )
        rows.append({"model": label, **times, "speed_up": times["quantized"] / times["frozen"]})
        print(f"{label}: {rows[-1]['speed_up']:.2f}x")
    table = markdown_table(
        ["model", "quantized eval (ms)", "frozen (ms)", "speed-up"],
        [
            [r["model"], f"{1000 * r['quantized']:.1f}", f"{1000 * r['frozen']:.1f}",
             f"{r['speed_up']:.2f}x"]
            for r in rows
        ],
    )  # fmt: skip
    markdown = (
        f"Input 1x3x{args.size}x{args.size}, {args.bits}-bit, compiled activation kernels: "
        f"{bool(args.compile)}; {describe(header)}\n\n{table}"
    )
    settings = {"size": args.size, "bits": args.bits, "rounds": args.rounds}
    kernels = "compiled" if args.compile else "eager"
    return Result(
        f"freeze_speed_{kernels}", {"machine": header, "settings": settings, "rows": rows}, markdown
    )
