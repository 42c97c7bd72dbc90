"""Training step with the fake-quantize kernels of this tree against those of a git revision.

Run: python -m benchmarks.run --only compare_kernels --baseline <git ref> [--backbone msrresnet]
Loads ``qsr_plugin/quantizers/_rounding.py`` and ``_kernels.py`` as they are at the
revision, then times, in interleaved rounds, one training step of the float model, of the
QuantSR model with the revision's kernels and of the same model with this tree's kernels.
Writes results/kernels_<backbone>_vs_<ref>.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import qsr_plugin
from qsr_plugin.quantizers import learned_step

from ._timing import interleaved_samples, ratio_summary
from .models import SPEED_BACKBONES, training_step
from .report import Result, describe, machine, markdown_table

REPOSITORY = Path(__file__).resolve().parents[1]
KERNEL_FILES = ("_rounding.py", "_kernels.py")


def load_kernels_at(revision: str):
    """The ``_rounding`` module of ``revision``, imported under a private package name.

    The files are written to a temporary folder, imported, and the folder removed.
    """
    package = "qsr_kernels_" + re.sub(r"\W", "_", revision)
    sources = {}
    for name in KERNEL_FILES:
        path = f"qsr_plugin/quantizers/{name}"
        shown = subprocess.run(
            ["git", "-C", str(REPOSITORY), "show", f"{revision}:{path}"],
            capture_output=True,
            text=True,
        )
        if shown.returncode != 0:
            raise ValueError(
                f"cannot read {path} at revision {revision!r}: {shown.stderr.strip()}; "
                "pass a commit, branch or tag of this repository"
            )
        sources[name] = shown.stdout
    with tempfile.TemporaryDirectory(prefix="qsr-kernels-") as temporary:
        folder = Path(temporary) / package
        folder.mkdir()
        for name, text in {**sources, "__init__.py": ""}.items():
            (folder / name).write_text(text)
        spec = importlib.util.spec_from_file_location(
            package, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        spec.loader.exec_module(module)
        return importlib.import_module(f"{package}._rounding")


@contextlib.contextmanager
def kernels_of(rounding_module):
    """Make the learned-step quantizers call ``rounding_module``'s fake-quantize function."""
    current = learned_step.learned_step_fake_quantize
    learned_step.learned_step_fake_quantize = rounding_module.learned_step_fake_quantize
    try:
        yield
    finally:
        learned_step.learned_step_fake_quantize = current


def with_kernels(rounding_module, step):
    def run():
        with kernels_of(rounding_module):
            step()

    return run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's options (``--threads`` and ``--cpu-time`` are :mod:`.run`'s)."""
    parser.add_argument("--baseline", required=True, help="git revision with the old kernels")
    parser.add_argument("--backbone", choices=sorted(SPEED_BACKBONES), default="msrresnet")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)


def run(args: argparse.Namespace) -> Result:
    """Times the float, the baseline-kernel and this tree's-kernel training steps."""
    clock = time.process_time if args.cpu_time else time.perf_counter

    baseline = load_kernels_at(args.baseline)
    backbone = SPEED_BACKBONES[args.backbone]
    lr_shape, hr_shape = backbone.batch_shapes()
    torch.manual_seed(0)
    lr, hr = torch.rand(lr_shape), torch.rand(hr_shape)
    float_model = backbone.build()
    quantized = {}
    for label, kernels in (("baseline", baseline), ("this tree", None)):
        model = copy.deepcopy(float_model)
        qsr_plugin.quantize(model, bits=args.bits, example_input=backbone.example_input())
        step = training_step(model, lr, hr)
        quantized[label] = step if kernels is None else with_kernels(kernels, step)
    candidates = {"float": training_step(float_model, lr, hr), **quantized}
    samples = interleaved_samples(candidates, rounds=args.rounds, warmup=2, clock=clock)

    rows = []
    for name, times in samples.items():
        ratio = ratio_summary(times, samples["float"])
        rows.append({"candidate": name, "median_s": sorted(times)[len(times) // 2], **ratio})
    result = {
        "what": f"{backbone.name} training step, batch {lr_shape}, quantsr {args.bits}-bit body",
        "baseline": args.baseline,
        "rounds": args.rounds,
        "clock": "CPU time" if args.cpu_time else "wall time",
        "machine": machine(),
        "rows": rows,
    }
    table = markdown_table(
        ["candidate", "median s", "ratio to float (median)", "ratio q1-q3"],
        [
            [
                r["candidate"],
                f"{r['median_s']:.3f}",
                f"{r['median']:.3f}",
                f"{r['q1']:.3f}-{r['q3']:.3f}",
            ]
            for r in rows
        ],
    )
    name = f"kernels_{args.backbone}_vs_" + re.sub(r"\W", "_", args.baseline)
    intro = f"{result['what']}; kernels of {args.baseline!r} vs this tree; {result['clock']}"
    return Result(name, result, f"{intro}; {describe(result['machine'])}\n\n{table}")
