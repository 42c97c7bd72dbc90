"""The deployment figures of QuantSR-C and QuantSR-T at 4 and 2 bits, as in docs/deployment.md.

For each backbone and bit width: the efficiency report (Table 2 layout, 3x256x256 input,
real saved-file sizes), then the paper-comparison depth is frozen, exported to ONNX and run
with onnxruntime on an LR crop of a Set14 image; the maximum absolute difference to the
frozen PyTorch model is printed. Quantizers are calibrated on two other Set14 LR crops
(untrained networks: sizes, counts and the ONNX agreement do not depend on training).

Run: python benchmarks/deployment_figures.py [--size 64] [--bits 4 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import qsr_plugin
from qsr_plugin import sr_data
from qsr_plugin._basicsr_compat import import_basicsr

BACKBONES = {
    "QuantSR-C": ("MSRResNet", {"num_feat": 64, "num_block": 16, "upscale": 4}, [32, 16, 8], 16),
    "QuantSR-T": (
        "SwinIR",
        {
            "upscale": 4,
            "img_size": 64,
            "window_size": 8,
            "depths": [6, 6, 6, 6],
            "embed_dim": 60,
            "num_heads": [6, 6, 6, 6],
            "mlp_ratio": 2,
            "upsampler": "pixelshuffledirect",
        },
        [4, 2, 1],
        4,
    ),
}


def set14_crops(size: int) -> list[torch.Tensor]:
    pairs = sr_data.make_pairs(sr_data.load_hr_images(sr_data.find_image_set("Set14")), 4)
    return [sr_data.to_tensor(lr[:size, :size]) for _, lr, _ in pairs if min(lr.shape[:2]) >= size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="LR crop side (multiple of 8)")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 2])
    args = parser.parse_args()
    import onnxruntime

    import_basicsr()
    from basicsr.utils.registry import ARCH_REGISTRY

    crops = set14_crops(args.size)
    calibration, x = torch.stack(crops[:2]), crops[2].unsqueeze(0)
    for label, (name, options, variants, depth) in BACKBONES.items():
        for bits in args.bits:
            torch.manual_seed(0)
            model = ARCH_REGISTRY.get(name)(**options)
            qsr_plugin.quantize(
                model, bits=bits, depth_variants=variants, example_input=calibration[:1]
            )
            qsr_plugin.calibrate(model, calibration)
            print(f"## {label}, {bits}-bit\n")
            print(qsr_plugin.report(model, input_size=(3, 256, 256)))
            frozen = qsr_plugin.freeze(model, depth=depth)
            with tempfile.TemporaryDirectory() as folder, torch.no_grad():
                path = qsr_plugin.export_onnx(frozen, Path(folder) / "model.onnx", x)
                session = onnxruntime.InferenceSession(
                    str(path), providers=["CPUExecutionProvider"]
                )
                got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
                difference = np.abs(got - frozen(x).numpy())
                size = path.stat().st_size
            psnr = 10 * np.log10(1 / max(np.mean(difference**2), 1e-30))
            print(
                f"\nONNX (depth {depth}, input 1x3x{args.size}x{args.size}): {size:,} bytes; "
                f"onnxruntime vs PyTorch: max abs difference {difference.max():.3g}, "
                f"{100 * np.mean(difference > 1e-4):.2f}% of values beyond 1e-4, "
                f"PSNR {psnr:.1f} dB\n"
            )


if __name__ == "__main__":
    main()
