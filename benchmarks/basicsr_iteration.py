"""Seconds per QuantSRModel training iteration of a recipe at its real patch size and batch.

Run: python -m benchmarks.run --only basicsr_iteration recipes/quantsr_c_x4.yml [--iterations 4]
Saves benchmarks/results/basicsr_iteration_<recipe>.json and .md.

Builds the recipe's QuantSRModel on the CPU (no pretrained checkpoint, no dataset folders
needed) and times ``optimize_parameters`` on real photographs (scikit-image's bundled
training images) cut into the recipe's ``gt_size`` patches, ``batch_size_per_gpu`` per batch.
The first iteration also initialises the quantizers and, with compiled kernels (the default;
``QSR_COMPILE=0`` for eager), compiles them: it is reported apart from the median of the rest.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from qsr_plugin.integrations.basicsr.model import QuantSRModel
from qsr_plugin.integrations.basicsr.options import read_option_file
from qsr_plugin.quantizers._kernels import compiled_kernels_enabled
from qsr_plugin.sr_data import PatchSampler, builtin_images

from .report import Result, describe, machine, markdown_table


def model_for(recipe: str) -> tuple[QuantSRModel, dict]:
    """The recipe's model as BasicSR would build it for one CPU process, from scratch."""
    options = read_option_file(recipe)
    options.update(dist=False, rank=0, world_size=1, is_train=True, num_gpu=0)
    options["path"]["pretrain_network_g"] = None
    return QuantSRModel(options), options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's options."""
    parser.add_argument("recipe", help="a QuantSRModel option file, e.g. recipes/quantsr_c_x4.yml")
    parser.add_argument("--iterations", type=int, default=4, help="including the first")


def run(args: argparse.Namespace) -> Result:
    """Times ``args.iterations`` training iterations of the recipe's model."""
    model, options = model_for(args.recipe)
    train = options["datasets"]["train"]
    scale, batch = options["scale"], train["batch_size_per_gpu"]
    sampler = PatchSampler(builtin_images()["train"].items(), scale, train["gt_size"] // scale)
    times = []
    for iteration in range(1, args.iterations + 1):
        lq, gt = sampler.sample(batch)
        model.feed_data({"lq": lq, "gt": gt})
        start = time.perf_counter()
        model.optimize_parameters(iteration)
        times.append(time.perf_counter() - start)
        print(f"iteration {iteration}: {times[-1]:.2f} s  {dict(model.log_dict)}", flush=True)
    header = machine()
    result = {
        "recipe": args.recipe,
        "lr_patch": list(lq.shape),
        "compiled_kernels": compiled_kernels_enabled(),
        "machine": header,
        "first_iteration_s": round(times[0], 2),
        "median_s": round(statistics.median(times[1:]), 2) if len(times) > 1 else None,
        "later_iterations_s": [round(t, 2) for t in times[1:]],
    }
    table = markdown_table(
        ["recipe", "LR batch", "first iteration (s)", "median of the rest (s)"],
        [[args.recipe, "x".join(map(str, lq.shape)), result["first_iteration_s"],
          result["median_s"]]],
    )  # fmt: skip
    kernels = "compiled" if result["compiled_kernels"] else "eager"
    markdown = f"QuantSRModel.optimize_parameters, {kernels} kernels; {describe(header)}\n\n{table}"
    return Result(f"basicsr_iteration_{Path(args.recipe).stem}", result, markdown)
