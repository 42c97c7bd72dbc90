"""Accuracy benchmark: PSNR/SSIM of 4- and 2-bit QAT methods from one float model.

An MSRResNet is trained in float on T91 patches (cached, see ``float_cache``), then each
method quantizes a copy of it and runs quantization-aware training with the same steps,
learning rate, batches (same sampler seed) and starting weights:

- qsr_plugin's ``quantsr`` with DQA (the body grown to twice its depth, variants 2N, N and
  N/2 trained jointly) under the ``spread`` and the ``importance`` depth policies, with
  and without distillation from the float model; ``quantsr`` at one depth, with and
  without distillation; ``lsq`` with and without distillation; ``pams``, ``dorefa`` and
  ``cadyq`` (its weights at the row's bits, its activations at the bits its selectors pick
  from that width, +2 and +4, averaged over the scored images);
- PyTorch's QAT (``torch.ao`` FX ``prepare_qat_fx``) and brevitas on the same layers;
- QuantSR ablations at one depth: straight-through rounding (phi_k=0), no learnable
  shift tau (shift=False).

Every model is scored on Set5 and Set14 (Y channel, ``scale`` pixels cropped at each
border), with bicubic upscaling and the float model as references. Rows are handed to a
``checkpoint`` callback as they come, and a run given the rows of an earlier run with the
same settings (``previous``) computes only the rows that are missing.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
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
from .report import Result, machine, markdown_table, save
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
    num_feat=48, num_block=8, scale=2, patch=24, batch=16,
    float_steps=4000, float_lr=1e-3, qat_steps=250, qat_lr=2e-4,
)  # fmt: skip


@dataclass(frozen=True)
class Method:
    """One row family of the table: how a float copy becomes a QAT model.

    Attributes:
        label: row label.
        tool: ``"qsr_plugin"``, ``"torch.ao"`` or ``"brevitas"``.
        quantize: ``qsr_plugin.quantize`` settings (tool ``qsr_plugin`` only).
        dqa: train the depth variants jointly and report every depth.
        distill: distil from the float model (output and per-block features, weights 1).
        ablation: part of the QuantSR ablation table rather than the comparison.
    """

    label: str
    tool: str = "qsr_plugin"
    quantize: dict = field(default_factory=dict)
    dqa: bool = False
    distill: bool = False
    ablation: bool = False


QUANTSR_DQA = "QuantSR (RLQ + DQA, spread)"
QUANTSR_IMPORTANCE = "QuantSR (RLQ + DQA, importance)"
IMPORTANCE = {"method": "quantsr", "depth_policy": "importance"}
METHODS = (
    Method(QUANTSR_DQA, quantize={"method": "quantsr"}, dqa=True),
    Method(QUANTSR_IMPORTANCE, quantize=IMPORTANCE, dqa=True),
    Method(f"{QUANTSR_IMPORTANCE} + distillation", quantize=IMPORTANCE, dqa=True, distill=True),
    Method("QuantSR, one depth", quantize={"method": "quantsr"}),
    Method("QuantSR, one depth + distillation", quantize={"method": "quantsr"}, distill=True),
    Method("LSQ", quantize={"method": "lsq"}),
    Method("LSQ + distillation", quantize={"method": "lsq"}, distill=True),
    Method("PAMS", quantize={"method": "pams"}),
    Method("DoReFa", quantize={"method": "dorefa"}),
    Method("torch.ao QAT (prepare_qat_fx)", tool="torch.ao"),
    Method("brevitas", tool="brevitas"),
    Method("CADyQ", quantize={"method": "cadyq"}),
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
    teacher = {"teacher": float_model} if method.distill else {}
    with sr_training.progress_bar(settings.qat_steps, f"{bits}-bit", enabled=progress) as bar:
        sr_training.train_qat(
            model,
            sampler,
            settings.qat_steps,
            lr=settings.qat_lr,
            batch_size=settings.batch,
            callbacks=[bar],
            **teacher,
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
                **_plan_of(model, depth, method),
                **score_with_bits(model, pairs, settings.scale),
            }
        )
    return rows


def _plan_of(model: nn.Module, depth: int, method: Method) -> dict:
    """The blocks a DQA variant ran (so the table can show what importance chose)."""
    if not method.dqa:
        return {}
    body = model.body
    return {"blocks": body.plan()[depth]}


def benchmark(
    settings: AccuracySettings,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    methods: tuple[Method, ...] = METHODS,
    log: Callable[[str], None] = print,
    progress: bool = True,
    checkpoint: Callable[[dict], None] | None = None,
    previous: dict | None = None,
) -> dict:
    """Train (or load) the float model, run every method at every bit width, score all.

    ``log`` receives one line per stage; ``progress`` shows progress bars while training;
    ``checkpoint`` receives the result so far after each method. Rows of ``previous`` (an
    earlier result) are kept when its settings are these, and their methods not rerun.
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
    result = {
        "settings": json.loads(json.dumps(asdict(settings))),  # as it reads back from JSON
        "backbone": backbone.name,
        "float_model": float_info,
        "references": references,
        "rows": [],
    }
    if previous is not None and previous.get("settings") == result["settings"]:
        result["rows"] = list(previous["rows"])
    done = {(row["method"], row["bits"]) for row in result["rows"]}
    for bits in settings.bits:
        for method in methods:
            if (method.label, bits) in done:
                continue
            log(f"QAT {method.label}, {bits} bits, {settings.qat_steps} steps")
            new = run_method(method, bits, float_model, sampler, pairs, settings, progress)
            result["rows"] += new
            log("  " + ", ".join(_cells(new[-1], settings.eval_sets)))
            if checkpoint is not None:
                checkpoint(result)
    pairs = itertools.product(settings.bits, methods)
    order = {(method.label, bits): i for i, (bits, method) in enumerate(pairs)}
    result["rows"].sort(key=lambda row: order.get((row["method"], row["bits"]), len(order)))
    return result


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


def _blocks(row: dict) -> str:
    return ",".join(str(i) for i in row["blocks"])


def markdown(result: dict) -> str:
    """The comparison table, the depth-variant plans, and the QuantSR ablation table."""
    sets = tuple(result["settings"]["eval_sets"])
    headers = ["method", "W/A bits", "blocks", *(f"{name} PSNR / SSIM" for name in sets)]

    def line(row):
        depth = "-" if row["depth"] is None else str(row["depth"])
        return [row["method"], _bits(row), depth, *_cells(row, sets)]

    float_depth = result["float_model"]["depth"]
    references = [line(row) for row in result["references"]]
    comparison = [line(row) for row in result["rows"] if not row["ablation"]]
    plans = [
        [row["method"], _bits(row), str(row["depth"]), _blocks(row), f"{row[sets[0]]['psnr']:.2f}"]
        for row in result["rows"]
        if "blocks" in row
    ]
    ablation = [
        line(row)
        for row in result["rows"]
        if row["ablation"] or row["method"] == "QuantSR, one depth"
    ]
    settings = result["settings"]
    return (
        f"### {result['backbone']} on {settings['train_set']}: float "
        f"{settings['float_steps']} steps, QAT {settings['qat_steps']} steps per method "
        f"(batch {settings['batch']}, LR patch {settings['patch']})\n\n"
        + markdown_table(headers, references + comparison)
        + f"\n### Blocks each depth variant runs (0-{float_depth - 1} original, "
        f"{float_depth}+ grown)\n\n"
        + markdown_table(["method", "W/A bits", "depth", "blocks run", f"{sets[0]} PSNR"], plans)
        + f"\n### QuantSR ablations at one depth ({float_depth} blocks)\n\n"
        + markdown_table(headers, references[1:] + ablation)
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The accuracy benchmark's own options."""
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help="where the trained float model is kept between runs")  # fmt: skip
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows of the saved results when their settings are these",
    )


def run(args: argparse.Namespace) -> Result:
    """The accuracy benchmark in ``args.mode``; the result files are also rewritten after
    every method, so an interrupted run leaves the rows it finished."""
    settings = QUICK if args.mode == "quick" else FULL
    name = f"accuracy_{args.mode}"
    start = time.perf_counter()
    header = machine()
    earlier = Path(args.results_dir) / f"{name}.json"
    previous = json.loads(earlier.read_text()) if args.resume and earlier.is_file() else None

    def finished(result: dict) -> Result:
        result.update(mode=args.mode, machine=header, seconds=time.perf_counter() - start)
        return Result(name, result, markdown(result))

    def checkpoint(result: dict) -> None:
        partial = finished(result)
        save(partial.name, partial.data, partial.markdown, args.results_dir)

    return finished(
        benchmark(settings, cache_dir=args.cache_dir, checkpoint=checkpoint, previous=previous)
    )
