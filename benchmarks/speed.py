"""Speed benchmark: training and inference cost of quantized models relative to float.

For each backbone, in one process and in interleaved rounds (see ``_timing``):

- one training step (forward, L1 loss, backward, Adam) of the float model, of the QuantSR
  model at one depth, of the DQA model at the float model's depth and with all its depth
  variants jointly, of torch.ao's ``prepare_qat_fx`` model and of the brevitas model;
- eval-mode inference (``torch.no_grad``) of the float, QuantSR, torch.ao and brevitas
  models, and of the frozen QuantSR model (``qsr_plugin.freeze``);
- the wall time of ``quantize()``, ``prepare_qat_fx`` and the brevitas rewrite;
- the peak memory of a training step (see ``memory``), relative to float.

Ratios are medians (and quartiles) of per-round ratios to the float model on the same batch.

Run: python -m benchmarks.run --only speed [--quick] [--threads 1 --cpu-time]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import qsr_plugin

from ._timing import interleaved_samples, ratio_summary
from .body_layers import body_layer_names
from .brevitas_qat import prepare_brevitas
from .memory import peak_step_memory
from .models import MSRRESNET, SWINIR_S, Backbone, training_step
from .report import Result, describe, machine, markdown_table
from .torch_ao_qat import prepare_torch_ao

FLOAT = "float"
QUANTSR = "QuantSR, one depth"
TORCH_AO = "torch.ao prepare_qat_fx"
BREVITAS = "brevitas"
FROZEN = "QuantSR frozen (qsr_plugin.freeze)"

MODES = {
    "quick": {"backbones": (MSRRESNET,), "rounds": 3, "warmup": 1},
    "full": {"backbones": (MSRRESNET, SWINIR_S), "rounds": 10, "warmup": 2},
}
BITS = 4


@dataclass
class PreparedModels:
    """The float model, its quantized counterparts, and what preparing each cost."""

    float: nn.Module
    quantized: dict[str, nn.Module] = field(default_factory=dict)
    prepare_seconds: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)


def _timed(build: Callable[[], nn.Module]) -> tuple[nn.Module, float]:
    start = time.perf_counter()
    model = build()
    return model, time.perf_counter() - start


def _failure(error: BaseException) -> str:
    first_line = (str(error).splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line[:200]}"


def dqa_label(depth: int) -> str:
    return f"QuantSR DQA, depth {depth}"


def joint_label(depths: tuple[int, ...]) -> str:
    return f"QuantSR DQA, depths {'/'.join(map(str, depths))} jointly"


def prepare_models(backbone: Backbone, bits: int, lr: torch.Tensor) -> PreparedModels:
    """Build the float model and quantize copies of it with every tool that can.

    QuantSR models are calibrated on ``lr``; a tool that cannot prepare the model (torch.fx
    cannot trace SwinIR, for instance) is listed in ``unavailable`` with its error.
    """
    example = backbone.example_input()
    models = PreparedModels(float=backbone.build())
    quantsr, seconds = _timed(
        lambda: qsr_plugin.quantize(copy.deepcopy(models.float), bits, example_input=example)
    )
    models.quantized[QUANTSR] = qsr_plugin.calibrate(quantsr, [lr])
    models.prepare_seconds["qsr_plugin quantize()"] = seconds
    dqa, seconds = _timed(
        lambda: qsr_plugin.quantize(
            copy.deepcopy(models.float),
            bits,
            depth_variants=list(backbone.depth_variants),
            example_input=example,
        )
    )
    with qsr_plugin.use_depth(dqa, backbone.depth_variants[0]):
        qsr_plugin.calibrate(dqa, [lr])
    models.prepare_seconds["qsr_plugin quantize(depth_variants)"] = seconds
    models.quantized[joint_label(backbone.depth_variants)] = dqa
    models.quantized[dqa_label(backbone.depth)] = qsr_plugin.set_depth(
        copy.deepcopy(dqa), backbone.depth
    )
    names = body_layer_names(models.float, example)
    for label, prepare in (
        (TORCH_AO, lambda: prepare_torch_ao(models.float, names, bits, example)),
        (BREVITAS, lambda: prepare_brevitas(models.float, names, bits, lr)),
    ):
        try:
            models.quantized[label], models.prepare_seconds[label] = _timed(prepare)
        except Exception as error:  # reported in the results, e.g. torch.fx's TraceError
            models.unavailable[label] = _failure(error)
            print(f"{label} cannot prepare {backbone.name}: {models.unavailable[label]}")
    return models


def _inference(model: nn.Module, lr: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def run():
        with torch.no_grad():
            model(lr)

    return run


def _joint_loss(model, lr, hr):
    total, _ = qsr_plugin.joint_variant_loss(model, lr, hr, nn.functional.l1_loss)
    return total


def _summaries(samples: dict[str, list[float]]) -> dict[str, dict]:
    reference = samples[FLOAT]
    return {
        name: {"median_s": sorted(times)[len(times) // 2], **ratio_summary(times, reference)}
        for name, times in samples.items()
    }


def compiled_graph_count() -> int:
    """Graphs ``torch.compile`` has built in this process (a recompilation storm shows here)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def benchmark_backbone(
    backbone: Backbone,
    bits: int,
    rounds: int,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
    memory: bool = True,
) -> dict:
    """Every speed figure of one backbone; see the module docstring.

    ``clock`` times each call (wall time by default; see ``_timing.interleaved_samples``).
    """
    torch.manual_seed(0)
    lr_shape, hr_shape = backbone.batch_shapes()
    lr, hr = torch.rand(lr_shape), torch.rand(hr_shape)
    models = prepare_models(backbone, bits, lr)
    joint = joint_label(backbone.depth_variants)

    steps = {FLOAT: training_step(models.float, lr, hr)}
    for label, model in models.quantized.items():
        loss = _joint_loss if label == joint else None
        steps[label] = training_step(model, lr, hr, loss=loss)
    training = _summaries(interleaved_samples(steps, rounds, warmup, clock))
    if memory:
        for label, step in steps.items():
            training[label]["peak_mb"] = peak_step_memory(step) / 2**20
        for row in training.values():
            row["memory_ratio"] = row["peak_mb"] / training[FLOAT]["peak_mb"]

    inference_models = {FLOAT: models.float}
    inference_models.update(
        (label, model)
        for label, model in models.quantized.items()
        if label in (QUANTSR, TORCH_AO, BREVITAS)
    )
    inference_models[FROZEN] = qsr_plugin.freeze(models.quantized[QUANTSR])
    runs = {label: _inference(model, lr) for label, model in inference_models.items()}
    inference = _summaries(interleaved_samples(runs, rounds, warmup, clock))
    return {
        "backbone": backbone.name,
        "bits": bits,
        "lr_batch": list(lr_shape),
        "training_step": training,
        "inference": inference,
        "prepare_seconds": models.prepare_seconds,
        "unavailable": models.unavailable,
        "compiled_graphs": compiled_graph_count(),
    }


def _ratio(row: dict) -> str:
    return f"{row['median']:.2f} ({row['q1']:.2f}-{row['q3']:.2f})"


def markdown(result: dict) -> str:
    """The Markdown tables of one backbone's result."""
    headers = ["model", "train step s", "train ratio (q1-q3)", "peak train MB", "memory ratio"]
    rows = []
    for label, row in result["training_step"].items():
        memory = (
            [f"{row['peak_mb']:.0f}", f"{row['memory_ratio']:.2f}"]
            if "peak_mb" in row
            else ["-", "-"]
        )
        rows.append([label, f"{row['median_s']:.3f}", _ratio(row), *memory])
    for label, reason in result["unavailable"].items():
        rows.append([label, reason, "-", "-", "-"])
    inference_rows = [
        [label, f"{row['median_s']:.3f}", _ratio(row)] for label, row in result["inference"].items()
    ]
    prepare_rows = [[label, f"{s:.2f}"] for label, s in result["prepare_seconds"].items()]
    batch = "x".join(map(str, result["lr_batch"]))
    return (
        f"### {result['backbone']}, {result['bits']}-bit body, LR batch {batch}\n\n"
        + markdown_table(headers, rows)
        + "\nEval-mode inference (no grad), same batch:\n\n"
        + markdown_table(["model", "s", "ratio to float (q1-q3)"], inference_rows)
        + "\nPreparation wall time:\n\n"
        + markdown_table(["step", "s"], prepare_rows)
    )


def run(args: argparse.Namespace) -> Result:
    """Every backbone of ``args.mode``, timed by wall time or, with ``args.cpu_time``, CPU time."""
    settings = MODES[args.mode]
    start = time.perf_counter()
    header = machine()
    clock = time.process_time if args.cpu_time else time.perf_counter
    clock_name = "CPU time of the process" if args.cpu_time else "wall time"
    backbones = [
        benchmark_backbone(backbone, BITS, settings["rounds"], settings["warmup"], clock)
        for backbone in settings["backbones"]
    ]
    result = {
        "mode": args.mode,
        "rounds": settings["rounds"],
        "clock": clock_name,
        "machine": header,
        "seconds": time.perf_counter() - start,
        "backbones": backbones,
    }
    intro = (
        f"Speed, {args.mode} mode: {settings['rounds']} interleaved rounds timed in "
        f"{clock_name}, medians of per-round ratios to float (quartiles in brackets). "
        f"Machine: {describe(header)}.\n\n"
    )
    return Result(f"speed_{args.mode}", result, intro + "\n".join(markdown(b) for b in backbones))
