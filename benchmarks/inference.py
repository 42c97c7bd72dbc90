"""Deployed inference speed: qsr_plugin's integer ONNX export against float and int8 tools.

For each backbone, LR size and thread count, one process times side by side, in interleaved
rounds: ONNX Runtime float (the float model's ONNX file), qsr_plugin's ONNX export at 4 and 2
bits (integer kernels, the default) and at 4 bits with ``kernels="float"``, ONNX Runtime's own
``quantize_static`` int8 (QDQ, U8S8, per-channel weights, calibrated on Set14 crops) of the
float model, PyTorch float and PyTorch ``freeze()`` at 4 bits. Ratios are float ONNX Runtime
time over each candidate's time (above 1: faster than float). Agreement: PSNR between the
exported 4- and 2-bit graphs' outputs and the frozen PyTorch model's, on Set5 crops.

The quantized models are calibrated on Set14 LR crops, not trained: speed and exactness do
not depend on training.

Run: python -m benchmarks.run --only inference [--quick]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import qsr_plugin

from ._timing import interleaved_samples, ratio_summary
from .models import MSRRESNET, SWINIR_S, set14_lr_crops
from .report import Result, describe, machine

FULL = {"backbones": (MSRRESNET, SWINIR_S), "sizes": (64, 128), "threads": (1, 2), "rounds": 7}
QUICK = {"backbones": (MSRRESNET,), "sizes": (64, 128), "threads": (1, 2), "rounds": 5}
BITS = (4, 2)


def _import_onnxruntime():
    try:
        import onnxruntime
        from onnxruntime import quantization
    except ImportError as error:
        raise ImportError(
            f"the inference benchmark needs onnxruntime ({error}); "
            "install it with: pip install 'qsr-plugin[onnx]'"
        ) from error
    return onnxruntime, quantization


def _frozen(backbone, bits: int, calibration: torch.Tensor, scope: str = "body"):
    model = qsr_plugin.quantize(
        backbone.build(), bits=bits, scope=scope, example_input=calibration[:1]
    )
    qsr_plugin.calibrate(model, [calibration])
    return qsr_plugin.freeze(model.eval())


def _float_onnx(model: torch.nn.Module, path: Path, x: torch.Tensor) -> Path:
    with torch.no_grad():
        program = torch.onnx.export(model.eval(), (x,), dynamo=True, external_data=False)
    program.save(str(path))
    return path


def _quantize_static(float_path: Path, path: Path, calibration: torch.Tensor) -> Path:
    onnxruntime, quantization = _import_onnxruntime()
    name = onnxruntime.InferenceSession(str(float_path)).get_inputs()[0].name

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: image[None].numpy()} for image in calibration])

        def get_next(self):
            return next(self.batches, None)

    quantization.quantize_static(
        str(float_path),
        str(path),
        Reader(),
        quant_format=quantization.QuantFormat.QDQ,
        activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8,
        per_channel=True,
    )
    return path


def _session(path: Path, threads: int):
    onnxruntime, _ = _import_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of ``a`` against ``b`` for images in [0, 1] (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def _agreement(run, frozen, images: torch.Tensor) -> dict:
    with torch.no_grad():
        expected = frozen(images).numpy()
    got = np.concatenate([run(image[None].numpy()) for image in images])
    return {
        "psnr_db": psnr(got, expected),
        "max_abs_difference": float(np.abs(got - expected).max()),
    }


def benchmark_backbone(backbone, size: int, settings: dict, folder: Path) -> dict:
    """Export every candidate for one backbone and LR size, then time them per thread count."""
    calibration = torch.stack(set14_lr_crops(size)[:4])
    test_images = torch.stack(set14_lr_crops(size, image_set="Set5"))
    x = calibration[:1]
    float_model = backbone.build().eval()
    float_path = _float_onnx(float_model, folder / f"float_{size}.onnx", x)
    files = {"onnxruntime float": float_path}
    files["quantize_static int8"] = _quantize_static(
        float_path, folder / f"int8_{size}.onnx", calibration
    )
    frozen = {bits: _frozen(backbone, bits, calibration) for bits in BITS}
    frozen_all = _frozen(backbone, 4, calibration, scope="all")
    exports = {  # candidate: (frozen model, export options)
        **{f"qsr_plugin {b}-bit (integer)": (frozen[b], {}) for b in BITS},
        "qsr_plugin 4-bit (integer, requantize=True)": (frozen[4], {"requantize": True}),
        "qsr_plugin 4-bit (kernels='float')": (frozen[4], {"kernels": "float"}),
        "qsr_plugin 4-bit scope='all' (integer)": (frozen_all, {}),
        "qsr_plugin 4-bit scope='all' (integer, requantize=True)": (
            frozen_all,
            {"requantize": True},
        ),
    }
    agreement = {}
    for index, (name, (model, options)) in enumerate(exports.items()):
        files[name] = qsr_plugin.export_onnx(
            model, folder / f"qsr{index}_{size}.onnx", x, **options
        )
        agreement[name] = _agreement(_session(files[name], 1), model, test_images)
    rows = []
    for threads in settings["threads"]:
        torch.set_num_threads(threads)
        runs = {name: _session(path, threads) for name, path in files.items()}
        lr_numpy = x.numpy()
        candidates = {name: (lambda r=run, x=lr_numpy: r(x)) for name, run in runs.items()}
        with torch.no_grad():
            candidates["PyTorch float"] = lambda: float_model(x)
            candidates["PyTorch freeze() 4-bit"] = lambda: frozen[4](x)
            samples = interleaved_samples(candidates, settings["rounds"], warmup=1)
        reference = samples["onnxruntime float"]
        rows.append(
            {
                "threads": threads,
                "float_ms": 1000 * float(np.median(reference)),
                "speedup": {
                    name: ratio_summary(reference, times) for name, times in samples.items()
                },
                "median_ms": {name: 1000 * float(np.median(t)) for name, t in samples.items()},
            }
        )
    sizes = {name: path.stat().st_size for name, path in files.items()}
    return {
        "backbone": backbone.name,
        "lr_size": size,
        "file_bytes": sizes,
        "agreement_with_freeze": agreement,
        "rows": rows,
    }


def markdown(result: dict) -> str:
    """The speed-ups (ONNX Runtime float time / candidate time) as Markdown tables."""
    lines = []
    for entry in result["entries"]:
        names = list(entry["rows"][0]["speedup"])
        lines.append(f"### {entry['backbone']}, LR {entry['lr_size']}x{entry['lr_size']}\n")
        lines.append(
            "| candidate | "
            + " | ".join(f"{r['threads']} thread(s)" for r in entry["rows"])
            + " | file |"
        )
        lines.append("|---|" + "---|" * (len(entry["rows"]) + 1))
        for name in names:
            cells = []
            for row in entry["rows"]:
                s = row["speedup"][name]
                cells.append(f"{s['median']:.2f}x ({row['median_ms'][name]:.0f} ms)")
            size = entry["file_bytes"].get(name)
            size_text = "" if size is None else f"{size / 1e6:.2f} MB"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {size_text} |")
        lines.append("\nEach export against its PyTorch freeze() model, Set5 crops:\n")
        lines.append("| export | PSNR to freeze() | max abs difference |\n|---|---|---|")
        for name, a in entry["agreement_with_freeze"].items():
            lines.append(f"| {name} | {a['psnr_db']:.1f} dB | {a['max_abs_difference']:.1e} |")
        lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> Result:
    """Every backbone, size and thread count of ``args.mode`` ("quick" or "full")."""
    mode = args.mode
    settings = QUICK if mode == "quick" else FULL
    start = time.perf_counter()
    header = machine()
    entries = []
    with tempfile.TemporaryDirectory() as folder:
        for backbone in settings["backbones"]:
            for size in settings["sizes"]:
                entries.append(benchmark_backbone(backbone, size, settings, Path(folder)))
    result = {
        "mode": mode,
        "rounds": settings["rounds"],
        "machine": header,
        "seconds": time.perf_counter() - start,
        "entries": entries,
    }
    intro = (
        f"Inference, {mode} mode: speed-up over ONNX Runtime float (its time / the "
        f"candidate's; median of {settings['rounds']} interleaved rounds, median time in "
        f"brackets), batch 1. Machine: {describe(header)}.\n\n"
    )
    return Result(f"inference_{mode}", result, intro + markdown(result))
