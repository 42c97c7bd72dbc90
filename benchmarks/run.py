"""The one entry point of the benchmarks: run them and write their results.

Run: python -m benchmarks.run [--quick] [--only NAME] [NAME's options]
Without ``--only``, the accuracy and speed benchmarks run; every other benchmark runs only
when named (``--only NAME --help`` lists its options). ``--quick`` is the short
configuration (under 15 minutes on a 2-core CPU) of the benchmarks that have one; without
it, the full configuration (hours on a 2-core CPU). Each result is printed and saved as
``<results-dir>/<name>.json`` (every figure, the settings, the machine) and ``<name>.md``
(the tables). See benchmarks/README.md.

A benchmark module offers:

- ``run(args: argparse.Namespace) -> report.Result``: runs the benchmark and returns its
  result, without saving or printing it (progress lines are fine). ``args`` holds this
  module's options (``mode`` is ``"quick"`` or ``"full"``, ``threads``, ``cpu_time``,
  ``results_dir``) and the benchmark's own;
- ``add_arguments(parser: argparse.ArgumentParser) -> None`` (optional): its own options,
  added only when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import (
    accuracy,
    basicsr_iteration,
    compare_kernels,
    deployment_figures,
    figures,
    freeze_speed,
    gpu_check,
    inference,
    layer_overhead,
    speed,
)
from .report import RESULTS_DIR, save

BENCHMARKS = {
    "accuracy": accuracy,
    "speed": speed,
    "inference": inference,
    "gpu": gpu_check,
    "basicsr_iteration": basicsr_iteration,
    "compare_kernels": compare_kernels,
    "deployment_figures": deployment_figures,
    "figures": figures,
    "freeze_speed": freeze_speed,
    "layer_overhead": layer_overhead,
}
DEFAULT = ("accuracy", "speed")


def _parser(names: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short configuration")
    parser.add_argument(
        "--only",
        choices=tuple(BENCHMARKS),
        help=f"run one benchmark (default: {', '.join(DEFAULT)})",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time in CPU seconds of the process instead of wall time (speed, "
        "compare_kernels); steadier on a busy machine, with --threads 1",
    )
    for name in names:
        add_arguments = getattr(BENCHMARKS[name], "add_arguments", None)
        if add_arguments is not None:
            add_arguments(parser.add_argument_group(f"{name} options"))
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    """Runs the benchmarks that ``argv`` names; returns the Markdown files written."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--only", choices=tuple(BENCHMARKS))
    only = first.parse_known_args(argv)[0].only
    names = DEFAULT if only is None else (only,)
    args = _parser(names).parse_args(argv)
    args.mode = "quick" if args.quick else "full"
    if args.threads:
        torch.set_num_threads(args.threads)
    written = []
    for name in names:
        result = BENCHMARKS[name].run(args)
        written.append(save(result.name, result.data, result.markdown, args.results_dir))
        print(result.markdown)
    print("wrote", ", ".join(str(path) for path in written))
    return written


if __name__ == "__main__":
    main()
