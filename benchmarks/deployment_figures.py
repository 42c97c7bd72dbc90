"""The deployment figures of QuantSR-C and QuantSR-T at 4 and 2 bits, as in docs/deployment.md.

For each backbone and bit width: the efficiency report (Table 2 layout, 3x256x256 input,
real saved-file sizes), then the paper-comparison depth is frozen, exported to ONNX and run
with onnxruntime on an LR crop of a Set14 image; the maximum absolute difference to the
frozen PyTorch model is printed. Quantizers are calibrated on two other Set14 LR crops
(untrained networks: sizes, counts and the ONNX agreement do not depend on training).
Everything is also saved to benchmarks/results/deployment_figures.json and .md.

Run: python -m benchmarks.run --only deployment_figures [--size 64] [--bits 4 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import qsr_plugin

from .models import MSRRESNET, SWINIR_S, set14_lr_crops
from .report import Result, describe, machine

BACKBONES = {"QuantSR-C": MSRRESNET, "QuantSR-T": SWINIR_S}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's options."""
    parser.add_argument("--size", type=int, default=64, help="LR crop side (multiple of 8)")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 2])


def run(args: argparse.Namespace) -> Result:
    """The figures of both backbones at every bit width; see the module docstring."""
    import onnxruntime

    crops = set14_lr_crops(args.size)
    calibration, x = torch.stack(crops[:2]), crops[2].unsqueeze(0)
    figures, sections = [], []
    for label, backbone in BACKBONES.items():
        depth = backbone.depth
        for bits in args.bits:
            model = backbone.build(seed=0)
            qsr_plugin.quantize(
                model,
                bits=bits,
                depth_variants=list(backbone.depth_variants),
                example_input=calibration[:1],
            )
            qsr_plugin.calibrate(model, calibration)
            efficiency = qsr_plugin.report(model, input_size=(3, 256, 256))
            frozen = qsr_plugin.freeze(model, depth=depth)
            with tempfile.TemporaryDirectory() as folder, torch.no_grad():
                path = qsr_plugin.export_onnx(
                    frozen, Path(folder) / "model.onnx", x, kernels="float"
                )
                session = onnxruntime.InferenceSession(
                    str(path), providers=["CPUExecutionProvider"]
                )
                got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
                difference = np.abs(got - frozen(x).numpy())
                size = path.stat().st_size
            psnr = 10 * np.log10(1 / max(np.mean(difference**2), 1e-30))
            onnx = {
                "depth": depth,
                "input": [1, 3, args.size, args.size],
                "file_bytes": size,
                "max_abs_difference": float(difference.max()),
                "share_beyond_1e-4": float(np.mean(difference > 1e-4)),
                "psnr_db": float(psnr),
            }
            figures.append({"model": label, "bits": bits, **efficiency.to_dict(), "onnx": onnx})
            sections.append(
                f"## {label}, {bits}-bit\n\n{efficiency}\n\n"
                f"ONNX (depth {depth}, input 1x3x{args.size}x{args.size}): {size:,} bytes; "
                f"onnxruntime vs PyTorch: max abs difference {onnx['max_abs_difference']:.3g}, "
                f"{100 * onnx['share_beyond_1e-4']:.2f}% of values beyond 1e-4, "
                f"PSNR {psnr:.1f} dB\n"
            )
            print(f"{label}, {bits}-bit: done", flush=True)
    header = machine()
    markdown = f"Deployment figures; {describe(header)}\n\n" + "\n".join(sections)
    return Result("deployment_figures", {"machine": header, "figures": figures}, markdown)
