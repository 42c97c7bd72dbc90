"""Accuracy benchmark: PSNR/SSIM of 4- and 2-bit QAT methods from one float model.

A small MSRResNet is trained in float on T91 patches (cached, see ``float_cache``), then
each method quantizes a copy of it and runs quantization-aware training with the same
steps, learning rate, batches (same sampler seed) and starting weights:

- qsr_plugin's ``quantsr`` (with DQA: depth variants trained jointly), ``lsq``, ``pams``,
  ``dorefa`` and ``cadyq`` (its weights at the row's bits, its activations at the bits its
  selectors pick from that width, +2 and +4, averaged over the scored images);
- PyTorch's QAT (``torch.ao`` FX ``prepare_qat_fx``) and brevitas on the same layers;
- QuantSR ablations: one depth instead of DQA, straight-through rounding (phi_k=0),
  no learnable shift tau (shift=False).

Every model is scored on Set5 and Set14 (Y channel, ``scale`` pixels cropped at each
border), with bicubic upscaling and the float model as references.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

import qsr_plugin
from qsr_plugin import sr_data, sr_training
from qsr_plugin.quantizers.cadyq import cadyq_quantizers

from .body_layers import body_layer_names
from .brevitas_qat import prepare_brevitas
from .float_cache import DEFAULT_CACHE_DIR, cached_float_model
from .models import Backbone, small_msrresnet
from .report import markdown_table
from .torch_ao_qat import prepare_torch_ao


@dataclass(frozen=True)
class AccuracySettings:
    """Model size and training schedule of one accuracy run.

    Attributes:
        num_feat: MSRResNet feature channels.
        num_block: MSRResNet residual blocks (DQA variants: 2x, 1x and 0.5x this).
        scale: SR factor.
        patch: LR training patch side.
        batch: patches per step.
        float_steps: float training steps.
        float_lr: float Adam learning rate (cosine decay to 0).
        qat_steps: QAT steps of every method.
        qat_lr: QAT Adam learning rate (cosine decay to 0).
        bits: weight and activation bit widths to compare.
        calibration_batches: batches that initialise qsr_plugin's quantizers.
        seed: seed of the weights and of the patch sampler.
        train_set: image set the models train on.
        eval_sets: image sets they are scored on.
    """

    num_feat: int
    num_block: int
    scale: int
    patch: int
    batch: int
    float_steps: int
    float_lr: float
    qat_steps: int
    qat_lr: float
    bits: tuple[int, ...] = (4, 2)
    calibration_batches: int = 4
    seed: int = 0
    train_set: str = "T91"
    eval_sets: tuple[str, ...] = ("Set5", "Set14")

    def backbone(self) -> Backbone:
        return small_msrresnet(self.num_feat, self.num_block, self.scale, self.patch, self.batch)


QUICK = AccuracySettings(
    num_feat=32, num_block=4, scale=2, patch=24, batch=8,
    float_steps=600, float_lr=1e-3, qat_steps=80, qat_lr=2e-4,
)  # fmt: skip
FULL = AccuracySettings(
    num_feat=32, num_block=8, scale=2, patch=32, batch=16,
    float_steps=3000, float_lr=1e-3, qat_steps=400, qat_lr=2e-4,
)  # fmt: skip


@dataclass(frozen=True)
class Method:
    """One row family of the table: how a float copy becomes a QAT model.

    Attributes:
        label: row label.
        tool: ``"qsr_plugin"``, ``"torch.ao"`` or ``"brevitas"``.
        quantize: ``qsr_plugin.quantize`` settings (tool ``qsr_plugin`` only).
        dqa: train the depth variants jointly and report every depth.
        ablation: part of the QuantSR ablation table rather than the comparison.
    """

    label: str
    tool: str = "qsr_plugin"
    quantize: dict = field(default_factory=dict)
    dqa: bool = False
    ablation: bool = False


QUANTSR_DQA = "QuantSR (RLQ + DQA)"
METHODS = (
    Method(QUANTSR_DQA, quantize={"method": "quantsr"}, dqa=True),
    Method("LSQ", quantize={"method": "lsq"}),
    Method("PAMS", quantize={"method": "pams"}),
    Method("DoReFa", quantize={"method": "dorefa"}),
    Method("torch.ao QAT (prepare_qat_fx)", tool="torch.ao"),
    Method("brevitas", tool="brevitas"),
    Method("CADyQ", quantize={"method": "cadyq"}),
    Method("QuantSR, one depth (no DQA)", quantize={"method": "quantsr"}, ablation=True),
    Method(
        "QuantSR, one depth, phi straight-through (phi_k=0)",
        quantize={"method": "quantsr", "phi_k": 0.0},
        ablation=True,
    ),
    Method(
        "QuantSR, one depth, no tau (shift=False)",
        quantize={"method": "quantsr", "shift": False},
        ablation=True,
    ),
)


def evaluation_pairs(scale: int, sets: tuple[str, ...]) -> dict[str, list]:
    """(name, LR, HR) pairs of each evaluation set."""
    return {
        name: sr_data.make_pairs(sr_data.load_hr_images(sr_data.find_image_set(name)), scale)
        for name in sets
    }


def score(run: Callable[[torch.Tensor], torch.Tensor], pairs: dict, scale: int) -> dict:
    """Mean PSNR/SSIM (Y) of ``run`` on each set."""
    results = {}
    for name, set_pairs in pairs.items():
        scores = sr_data.evaluate_sr(run, set_pairs, scale)
        results[name] = {"psnr": scores["psnr"], "ssim": scores["ssim"]}
    return results


def score_with_bits(model: nn.Module, pairs: dict, scale: int) -> dict:
    """:func:`score`, plus for a CADyQ model the average bits it used on the images."""
    if not cadyq_quantizers(model):
        return score(model, pairs, scale)
    with qsr_plugin.measure_bits(model) as bits:
        scores = score(model, pairs, scale)
    return {**scores, "avg_bits": bits.average, "bits_per_image": bits.per_image}


def _evaluation_mode(model: nn.Module, tool: str) -> nn.Module:
    model.eval()
    if tool == "torch.ao":  # observers would otherwise keep moving the ranges on test data
        from torch.ao.quantization import disable_observer

        model.apply(disable_observer)
    return model


def prepare(
    method: Method,
    float_model: nn.Module,
    bits: int,
    backbone: Backbone,
    sampler: sr_data.PatchSampler,
    settings: AccuracySettings,
) -> nn.Module:
    """A QAT-ready copy of ``float_model`` for ``method`` at ``bits`` bits."""
    example = backbone.example_input()
    if method.tool == "qsr_plugin":
        variants = list(backbone.depth_variants) if method.dqa else None
        model = qsr_plugin.quantize(
            copy.deepcopy(float_model),
            bits,
            depth_variants=variants,
            example_input=example,
            **method.quantize,
        )
        return sr_training.calibrate_from_sampler(
            model, sampler, batches=settings.calibration_batches, batch_size=settings.batch
        )
    names = body_layer_names(float_model, example)
    if method.tool == "torch.ao":
        return prepare_torch_ao(float_model, names, bits, example)
    if method.tool == "brevitas":
        return prepare_brevitas(float_model, names, bits, sampler.sample(settings.batch)[0])
    raise ValueError(f"unknown tool {method.tool!r} of method {method.label!r}")


def run_method(
    method: Method,
    bits: int,
    float_model: nn.Module,
    sampler: sr_data.PatchSampler,
    pairs: dict,
    settings: AccuracySettings,
    progress: bool = True,
) -> list[dict]:
    """QAT of one method at one bit width from the float model; one row per scored depth.

    The sampler is reseeded after the preparation (which may draw calibration batches), so
    every method trains on the same batches.
    """
    backbone = settings.backbone()
    sampler.generator.manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    model = prepare(method, float_model, bits, backbone, sampler, settings)
    sampler.generator.manual_seed(settings.seed)
    with sr_training.progress_bar(settings.qat_steps, f"{bits}-bit", enabled=progress) as bar:
        sr_training.train_qat(
            model,
            sampler,
            settings.qat_steps,
            lr=settings.qat_lr,
            batch_size=settings.batch,
            callbacks=[bar],
        )
    seconds = time.perf_counter() - start
    _evaluation_mode(model, method.tool)
    depths = backbone.depth_variants if method.dqa else (backbone.depth,)
    rows = []
    for depth in depths:
        if method.dqa:
            qsr_plugin.set_depth(model, depth)
        rows.append(
            {
                "method": method.label,
                "tool": method.tool,
                "ablation": method.ablation,
                "bits": bits,
                "depth": depth,
                "train_seconds": seconds,
                **score_with_bits(model, pairs, settings.scale),
            }
        )
    return rows


def benchmark(
    settings: AccuracySettings,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    methods: tuple[Method, ...] = METHODS,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    """Train (or load) the float model, run every method at every bit width, score all.

    ``log`` receives one line per stage; ``progress`` shows progress bars while training.
    """
    backbone = settings.backbone()
    images = sr_data.load_hr_images(sr_data.find_image_set(settings.train_set))
    sampler = sr_data.PatchSampler(images, settings.scale, settings.patch, seed=settings.seed)
    pairs = evaluation_pairs(settings.scale, settings.eval_sets)
    float_model, float_info = cached_float_model(
        backbone, sampler, settings, cache_dir, log, progress
    )
    references = [
        {"method": "Bicubic", "bits": None, "depth": None, **_bicubic(pairs, settings.scale)},
        {
            "method": "Float",
            "bits": 32,
            "depth": backbone.depth,
            **score(float_model.eval(), pairs, settings.scale),
        },
    ]
    rows = []
    for bits in settings.bits:
        for method in methods:
            log(f"QAT {method.label}, {bits} bits, {settings.qat_steps} steps")
            rows += run_method(method, bits, float_model, sampler, pairs, settings, progress)
            log("  " + ", ".join(_cells(rows[-1], settings.eval_sets)))
    return {
        "settings": asdict(settings),
        "backbone": backbone.name,
        "float_model": float_info,
        "references": references,
        "rows": rows,
    }


def _bicubic(pairs: dict, scale: int) -> dict:
    results = {}
    for name, set_pairs in pairs.items():
        scores = sr_data.evaluate_bicubic(set_pairs, scale)
        results[name] = {"psnr": scores["psnr"], "ssim": scores["ssim"]}
    return results


def _cells(row: dict, sets: tuple[str, ...]) -> list[str]:
    return [f"{row[name]['psnr']:.2f} / {row[name]['ssim']:.4f}" for name in sets]


def _bits(row: dict) -> str:
    if "avg_bits" in row:  # CADyQ: weights at row["bits"], activations as measured
        return f"{row['bits']} (a: {row['avg_bits']:.2f} avg)"
    return "-" if row["bits"] is None else str(row["bits"])


def markdown(result: dict) -> str:
    """The comparison table and the QuantSR ablation table."""
    sets = tuple(result["settings"]["eval_sets"])
    headers = ["method", "W/A bits", "blocks", *(f"{name} PSNR / SSIM" for name in sets)]

    def line(row):
        depth = "-" if row["depth"] is None else str(row["depth"])
        return [row["method"], _bits(row), depth, *_cells(row, sets)]

    float_depth = result["float_model"]["depth"]
    references = [line(row) for row in result["references"]]
    comparison = [line(row) for row in result["rows"] if not row["ablation"]]
    ablation = [
        line(row)
        for row in result["rows"]
        if row["ablation"] or (row["method"] == QUANTSR_DQA and row["depth"] == float_depth)
    ]
    settings = result["settings"]
    return (
        f"### {result['backbone']} on {settings['train_set']}: float "
        f"{settings['float_steps']} steps, QAT {settings['qat_steps']} steps per method "
        f"(batch {settings['batch']}, LR patch {settings['patch']})\n\n"
        + markdown_table(headers, references + comparison)
        + f"\n### QuantSR ablations (DQA model scored at the float depth, {float_depth} blocks)"
        "\n\n" + markdown_table(headers, references[1:] + ablation)
    )
