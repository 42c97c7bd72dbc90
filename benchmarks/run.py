"""Run the benchmarks and write their results under benchmarks/results/.

Run: python -m benchmarks.run [--quick] [--only speed|accuracy|inference|gpu]
``--quick`` is the short configuration (under 15 minutes on a 2-core CPU); without it, the
full configuration (hours on a 2-core CPU). ``--only inference`` (deployed ONNX speed,
:mod:`benchmarks.inference`) and ``--only gpu`` (the CUDA check, :mod:`benchmarks.gpu_check`)
run only when named. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from . import accuracy, gpu_check, inference, speed
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


def run_accuracy(mode: str, results_dir: Path, cache_dir: Path, resume: bool = False) -> Path:
    """The accuracy benchmark; the files are rewritten after every method, and ``resume``
    keeps the rows of an earlier run with the same settings instead of recomputing them."""
    settings = ACCURACY_MODES[mode]
    start = time.perf_counter()
    header = machine()
    name = f"accuracy_{mode}"
    earlier = results_dir / f"{name}.json"
    previous = json.loads(earlier.read_text()) if resume and earlier.is_file() else None

    def write(result: dict) -> Path:
        result.update(mode=mode, machine=header, seconds=time.perf_counter() - start)
        return save(name, result, accuracy.markdown(result), results_dir)

    result = accuracy.benchmark(settings, cache_dir=cache_dir, checkpoint=write, previous=previous)
    return write(result)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short configuration")
    parser.add_argument(
        "--only", choices=("speed", "accuracy", "inference", "gpu"), help="run one benchmark"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time the speed benchmark in CPU seconds of the process instead of wall time; "
        "steadier on a busy machine, with --threads 1",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="accuracy: keep the rows of the saved results (same settings)",
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
        written.append(run_accuracy(mode, args.results_dir, args.cache_dir, args.resume))
        print(written[-1].read_text())
    if args.only in (None, "speed"):
        written.append(run_speed(mode, args.results_dir, args.cpu_time))
        print(written[-1].read_text())
    if args.only == "inference":
        written.append(inference.run(mode, args.results_dir))
        print(written[-1].read_text())
    print("wrote", ", ".join(str(path) for path in written))


if __name__ == "__main__":
    main()
