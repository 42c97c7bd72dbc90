"""``run_demo``: train a small SRResNet, quantize it with QuantSR, measure, export, draw."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._basicsr_compat import import_basicsr
from .._files import atomic_output
from .._version import __version__
from ..rewrite.quantize import quantize
from ..rewrite.variants import iter_depths
from ..sr_data import (
    PatchSampler,
    bicubic_upscale,
    evaluate_bicubic,
    evaluate_sr,
    make_pairs,
    to_tensor,
    to_uint8,
)
from ..sr_training import calibrate_from_sampler, progress_bar, train_float, train_qat
from ..training_stats import QuantizerStatsRecorder
from .deployment import REPORT_INPUT_SIZE, export_and_measure, export_float
from .figures import TradeoffPoint, comparison_strip, hardest_crop, save_png, tradeoff_plot
from .settings import DemoSettings, check_numbers, check_quantizable, load_inputs
from .table import ResultRow, format_table
from .threads import choose_threads

MODELS_FOLDER = "models"


@dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        rows: bicubic, float, then every bit width and depth, in table order.
        table: the printed table.
        files: output files by role (``results``, ``table``, ``comparison``, ...).
        seconds: wall time of each phase and in all.
    """

    rows: list[ResultRow]
    table: str
    files: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def build_srresnet(settings: DemoSettings) -> nn.Module:
    """BasicSR's MSRResNet with the demo's width, depth and scale, seeded by ``settings``."""
    import_basicsr()
    from basicsr.archs.srresnet_arch import MSRResNet

    torch.manual_seed(settings.seed)
    return MSRResNet(
        num_in_ch=3,
        num_out_ch=3,
        num_feat=settings.features,
        num_block=settings.blocks,
        upscale=settings.scale,
    )


def run_demo(settings: DemoSettings, log: Callable[[str], None] = print) -> DemoResult:
    """Runs the whole demo and writes its outputs to ``settings.out``.

    Every input is checked before training starts (:class:`DemoInputError` otherwise).
    torch's thread count is set for the run (:func:`~qsr_plugin.demo.threads.choose_threads`)
    and restored afterwards. Steps: float training; for each bit width, QuantSR quantization
    of a copy of the float model with the depth variants, calibration and joint QAT of all
    depths; evaluation of bicubic, float and every bit width and depth on the held-out
    images; export; the table, the comparison crop, the trade-off plot, the training
    statistics and ``results.json``.

    Example:
        >>> result = run_demo(DemoSettings(float_steps=50, qat_steps=20, out=Path("demo")))
        >>> print(result.table)
    """
    started = time.perf_counter()
    check_numbers(settings)
    inputs = load_inputs(settings)
    threads, reason = choose_threads(settings.threads)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_checked(settings, inputs, log, started, f"{threads}: {reason}")
    finally:
        torch.set_num_threads(previous_threads)


def _run_checked(settings: DemoSettings, inputs, log, started: float, threads: str) -> DemoResult:
    model = build_srresnet(settings)
    check_quantizable(model, settings)
    scale, depths = settings.scale, list(settings.resolved_depths())
    sampler = PatchSampler(inputs.train, scale, settings.patch, seed=settings.seed)
    pairs = make_pairs(inputs.heldout, scale)
    log(
        f"data: {inputs.source}; training on {', '.join(n for n, _ in inputs.train)}; "
        f"held out: {', '.join(n for n, _ in inputs.heldout)}"
    )
    log(f"threads: {threads}")
    log(
        f"model: MSRResNet x{scale}, {settings.features} channels, {settings.blocks} blocks, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters; QuantSR-C bits "
        f"{list(settings.bits)}, depth variants {depths}"
    )
    seconds: dict[str, float] = {}
    models_folder = inputs.out / MODELS_FOLDER

    phase = time.perf_counter()
    training = {}
    with progress_bar(settings.float_steps, "float training", settings.progress) as bar:
        training["float"] = train_float(
            model,
            sampler,
            settings.float_steps,
            lr=settings.float_lr,
            batch_size=settings.batch,
            callbacks=[bar],
        )
    seconds["float_training"] = time.perf_counter() - phase
    model.eval()
    crop = hardest_crop(pairs, scale)
    crop_name, crop_lr, crop_hr = pairs[crop.image]
    crop_input = to_tensor(crop_lr).unsqueeze(0)
    rows = [
        _row("Bicubic", None, None, evaluate_bicubic(pairs, scale)),
        _row("SRResNet", 32, settings.blocks, evaluate_sr(model, pairs, scale)),
    ]
    outputs = {"float": _upscale(model, crop_input)}
    float_file = export_float(model, models_folder, "srresnet_float")

    files: dict[str, Path] = {}
    for bits in settings.bits:
        phase = time.perf_counter()
        quantized = quantize(copy.deepcopy(model), bits=bits, depth_variants=depths)
        sampler.generator.manual_seed(settings.seed + 1)
        calibrate_from_sampler(quantized, sampler, settings.calibration_batches, settings.batch)
        recorder = QuantizerStatsRecorder(
            quantized,
            every=settings.record_every,
            title=f"QuantSR-C {bits}-bit, depths {depths}: quantizer parameters during QAT",
        )
        recorder.record(0)
        with progress_bar(settings.qat_steps, f"QAT {bits}-bit", settings.progress) as bar:
            training[f"w{bits}"] = train_qat(
                quantized,
                sampler,
                settings.qat_steps,
                lr=settings.qat_lr,
                teacher=model if settings.distill else None,
                batch_size=settings.batch,
                callbacks=[bar, recorder],
            )
        seconds[f"qat_{bits}bit"] = time.perf_counter() - phase
        quantized.eval()
        bits_rows = []
        for depth in iter_depths(quantized):
            bits_rows.append(_row("QuantSR-C", bits, depth, evaluate_sr(quantized, pairs, scale)))
            outputs[bits_rows[-1].label] = _upscale(quantized, crop_input)
        measured = export_and_measure(quantized, models_folder, f"quantsr_w{bits}", float_file)
        _attach([rows[1], *bits_rows], measured)
        rows.extend(bits_rows)
        stats_json = recorder.stats.save(inputs.out / f"training_stats_w{bits}.json")
        files[f"training_stats_w{bits}_json"] = stats_json
        files[f"training_stats_w{bits}_png"] = recorder.stats.plot(stats_json.with_suffix(".png"))

    training = {name: _loss_summary(history) for name, history in training.items()}
    table = format_table(rows, scale, [name for name, _ in inputs.heldout])
    files["comparison"] = save_png(
        _comparison(rows, outputs, crop, crop_lr, crop_hr, crop_name, scale),
        inputs.out / "comparison.png",
    )
    files["tradeoff"] = tradeoff_plot(
        [TradeoffPoint(r.label, r.psnr, r.ops, r.params, r.bits) for r in rows[1:]],
        rows[0].psnr,
        inputs.out / "tradeoff.png",
        "operations (G multiply-accumulates, quantized layers at b/32), input "
        + "x".join(map(str, REPORT_INPUT_SIZE)),
        "parameters (K, quantized weights at b/32)",
        f"held-out PSNR against cost, x{scale}",
    )
    files["table"] = inputs.out / "table.txt"
    with atomic_output(files["table"]) as temporary:
        temporary.write_text(table + "\n")
    seconds["total"] = time.perf_counter() - started
    files["results"] = inputs.out / "results.json"
    result = DemoResult(rows, table, files, seconds)
    comparison = {
        "image": crop_name,
        "lr_window": {"y": crop.y, "x": crop.x, "size": crop.size},
        "panels": ["HR", *(row.label for row in rows)],
    }
    _write_results(result, settings, inputs, comparison, training, threads)
    return result


def _row(method: str, bits: int | None, depth: int | None, scores: dict) -> ResultRow:
    return ResultRow(method, bits, depth, scores["psnr"], scores["ssim"], scores["per_image"])


def _attach(rows: list[ResultRow], measured: dict) -> None:
    """Fills the cost columns: the float row from key None, quantized rows by depth."""
    for row in rows:
        figures = measured[None if row.bits == 32 else row.depth]
        row.params, row.ops = figures.params, figures.ops
        row.file = f"{MODELS_FOLDER}/{figures.file.name}"
        row.file_bytes = figures.file_bytes


def _upscale(model: nn.Module, lr: torch.Tensor):
    with torch.no_grad():
        return to_uint8(model(lr)[0])


def _comparison(rows, outputs, crop, crop_lr, crop_hr, crop_name, scale):
    scores = {row.label: row.per_image[crop_name]["psnr"] for row in rows}
    panels = [(f"HR ({crop_name})\nPSNR on Y, whole image", crop.of_hr(crop_hr, scale))]
    panels.append(
        (f"Bicubic\n{scores['bicubic']:.2f} dB", crop.of_hr(bicubic_upscale(crop_lr, scale), scale))
    )
    for row in rows[1:]:
        blocks = f"{row.depth} block{'s' if row.depth > 1 else ''}"
        name = f"Float 32-bit, {blocks}" if row.bits == 32 else f"{row.bits}-bit, {blocks}"
        panels.append(
            (f"{name}\n{scores[row.label]:.2f} dB", crop.of_hr(outputs[row.label], scale))
        )
    return comparison_strip(panels)


def _loss_summary(history) -> dict:
    return {
        "steps": len(history),
        "first": history[0].losses,
        "last": history[-1].losses,
    }


def _write_results(
    result, settings, inputs, comparison: dict, training: dict, threads: str
) -> None:
    data = {
        "qsr_plugin": __version__,
        "settings": settings.to_dict(),
        "data": {
            "source": inputs.source,
            "train": [name for name, _ in inputs.train],
            "heldout": [name for name, _ in inputs.heldout],
        },
        "rows": [asdict(row) | {"label": row.label} for row in result.rows],
        "training_l1": training,
        "comparison": comparison,
        "seconds": result.seconds,
        "threads": torch.get_num_threads(),
        "threads_reason": threads,
        "files": {role: path.name for role, path in result.files.items()},
    }
    with atomic_output(result.files["results"]) as temporary:
        temporary.write_text(json.dumps(data, indent=1))
