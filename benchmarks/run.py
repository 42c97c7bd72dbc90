"""Run the benchmarks and write their results under benchmarks/results/.

Run: python -m benchmarks.run [--quick] [--only speed|accuracy|inference|gpu|figures]
``--quick`` is the short configuration (under 15 minutes on a 2-core CPU); without it, the
full configuration (hours on a 2-core CPU). ``--only inference`` (deployed ONNX speed,
:mod:`benchmarks.inference`), ``--only gpu`` (the CUDA check, :mod:`benchmarks.gpu_check`)
and ``--only figures`` (the seed's Figures 3-8 from short runs, :mod:`benchmarks.figures`)
run only when named. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from . import accuracy, figures, gpu_check, inference, speed
from .float_cache import DEFAULT_CACHE_DIR
from .models import MSRRESNET, SWINIR_S
from .report import RESULTS_DIR, describe, machine, save

SPEED_MODES = {
    "quick": {"backbones": (MSRRESNET,), "rounds": 3, "warmup": 1},
    "full": {"backbones": (MSRRESNET, SWINIR_S), "rounds": 10, "warmup": 2},
}
ACCURACY_MODES = {"quick": accuracy.QUICK, "full": accuracy.FULL}
SPEED_BITS = 4


def run_speed(mode: str, results_dir: Path, cpu_time: bool) -> Path:
    settings = SPEED_MODES[mode]
    start = time.perf_counter()
    header = machine()
    clock = time.process_time if cpu_time else time.perf_counter
    clock_name = "CPU time of the process" if cpu_time else "wall time"
    backbones = [
        speed.benchmark_backbone(
            backbone, SPEED_BITS, settings["rounds"], settings["warmup"], clock
        )
        for backbone in settings["backbones"]
    ]
    result = {
        "mode": mode,
        "rounds": settings["rounds"],
        "clock": clock_name,
        "machine": header,
        "seconds": time.perf_counter() - start,
        "backbones": backbones,
    }
    intro = (
        f"Speed, {mode} mode: {settings['rounds']} interleaved rounds timed in {clock_name}, "
        f"medians of per-round ratios to float (quartiles in brackets). Machine: "
        f"{describe(header)}.\n\n"
    )
    text = intro + "\n".join(speed.markdown(b) for b in backbones)
    return save(f"speed_{mode}", result, text, results_dir)


def run_accuracy(mode: str, results_dir: Path, cache_dir: Path) -> Path:
    settings = ACCURACY_MODES[mode]
    start = time.perf_counter()
    header = machine()
    result = accuracy.benchmark(settings, cache_dir=cache_dir)
    result.update(mode=mode, machine=header, seconds=time.perf_counter() - start)
    text = accuracy.markdown(result)
    return save(f"accuracy_{mode}", result, text, results_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short configuration")
    parser.add_argument(
        "--only",
        choices=("speed", "accuracy", "inference", "gpu", "figures"),
        help="run one benchmark",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time the speed benchmark in CPU seconds of the process instead of wall time; "
        "steadier on a busy machine, with --threads 1",
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help="where the trained float model is kept between runs")  # fmt: skip
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    if args.threads:
        torch.set_num_threads(args.threads)
    written = []
    if args.only == "gpu":
        written.append(gpu_check.run(args.results_dir))
        print(written[-1].read_text())
    if args.only in (None, "accuracy"):
        written.append(run_accuracy(mode, args.results_dir, args.cache_dir))
        print(written[-1].read_text())
    if args.only in (None, "speed"):
        written.append(run_speed(mode, args.results_dir, args.cpu_time))
        print(written[-1].read_text())
    if args.only == "inference":
        written.append(inference.run(mode, args.results_dir))
        print(written[-1].read_text())
    if args.only == "figures":
        written.append(figures.run(mode, args.results_dir, args.cache_dir))
        print(written[-1].read_text())
    print("wrote", ", ".join(str(path) for path in written))


if __name__ == "__main__":
    main()
