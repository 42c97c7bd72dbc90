"""``qsr export -opt recipe.yml --weights model.safetensors --out model.onnx``: deployment.

Builds the recipe's quantized network, loads the weights written by ``qsr_plugin.save``,
freezes each requested depth variant and writes it with :func:`qsr_plugin.export_onnx`
(integer kernels unless ``--kernels float``). Then it times each file against the float
network's ONNX file in ONNX Runtime (CPU provider), side by side in interleaved rounds, and
prints the latencies and file sizes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..export.freeze import freeze
from ..export.onnx_export import export_onnx
from ..export.safetensors_io import load
from ..rewrite.variants import variant_depths
from ._recipe import build_network, read_recipe


def register(subparsers) -> None:
    """Add the ``export`` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="write ONNX files of a trained recipe's depth variants and time them",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("-opt", required=True, type=Path, help="BasicSR option file (YAML)")
    parser.add_argument(
        "--weights", required=True, type=Path, help="the file written by qsr_plugin.save"
    )
    parser.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    parser.add_argument(
        "--depth",
        type=int,
        action="append",
        help="a depth variant to export (repeat for several; default: every variant); "
        "with several, each file is named OUT_d<depth>.onnx",
    )
    parser.add_argument(
        "--input-size",
        nargs=3,
        type=int,
        default=[3, 64, 64],
        metavar=("C", "H", "W"),
        help="the LR input the graph takes (default: 3 64 64)",
    )
    parser.add_argument("--kernels", choices=("integer", "float"), default="integer")
    parser.add_argument(
        "--requantize",
        action="store_true",
        help="also run the convolutions whose outputs the model keeps in float as QLinearConv "
        "onto an 8-bit grid (faster; changes the output, see docs/deployment.md)",
    )
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (default 5)")
    parser.set_defaults(func=run)


def _depths(model, requested: list[int] | None) -> list[int | None]:
    variants = variant_depths(model)
    if variants == [None]:
        if requested:
            raise ValueError(f"--depth {requested[0]}: the recipe's network has no depth variants")
        return variants
    for depth in requested or []:
        if depth not in variants:
            raise ValueError(f"--depth {depth} is not a depth variant; choose from {variants}")
    return list(requested or variants)


def _out_path(out: Path, depth: int | None, several: bool) -> Path:
    return out if not several else out.with_name(f"{out.stem}_d{depth}{out.suffix}")


def _float_onnx(recipe, path: Path, x: torch.Tensor) -> Path:
    from basicsr.utils.registry import ARCH_REGISTRY

    network = ARCH_REGISTRY.get(recipe.arch)(**recipe.arch_options).eval()
    with torch.no_grad():
        program = torch.onnx.export(network, (x,), dynamo=True, external_data=False)
    program.save(str(path))
    return path


def latencies(paths: dict[str, Path], x: torch.Tensor, threads: int, rounds: int) -> dict:
    """Median milliseconds per run of each ONNX file, timed in interleaved rounds."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {
        name: onnxruntime.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
        for name, p in paths.items()
    }
    feeds = {name: {s.get_inputs()[0].name: x.numpy()} for name, s in sessions.items()}
    samples = {name: [] for name in sessions}
    for round_index in range(rounds + 1):  # the first round warms up
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds[name])
            if round_index:
                samples[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(times) for name, times in samples.items()}


def run(arguments: argparse.Namespace) -> int:
    """Export and time; print a table. Returns the exit status."""
    try:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as error:
            raise ValueError(
                f"qsr export times the files with onnxruntime ({error}); "
                "install it with: pip install 'qsr-plugin[onnx]'"
            ) from error
        if arguments.rounds < 1 or arguments.threads < 1:
            raise ValueError("--rounds and --threads must be at least 1")
        recipe = read_recipe(arguments.opt)
        x = torch.rand(1, *arguments.input_size, generator=torch.Generator().manual_seed(0))
        model = build_network(recipe, example_input=x)
        load(model, arguments.weights)
        depths = _depths(model, arguments.depth)
        written = {}
        for depth in depths:
            path = _out_path(arguments.out, depth, len(depths) > 1)
            frozen = freeze(model, depth=depth)
            written[f"depth {depth}" if depth else "quantized"] = export_onnx(
                frozen, path, x, kernels=arguments.kernels, requantize=arguments.requantize
            )
        with tempfile.TemporaryDirectory() as folder:
            paths = {"float": _float_onnx(recipe, Path(folder) / "float.onnx", x), **written}
            times = latencies(paths, x, arguments.threads, arguments.rounds)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"qsr export: {error}", file=sys.stderr)
        return 2
    print(
        f"{recipe.path}: {recipe.arch}, input {tuple(x.shape)}, ONNX Runtime CPU, "
        f"{arguments.threads} thread(s), median of {arguments.rounds} interleaved rounds"
    )
    print(f"{'model':<12} {'file':<40} {'ms':>8} {'vs float':>9}")
    print(f"{'float':<12} {'(not kept)':<40} {times['float']:8.1f} {'1.00x':>9}")
    for name, path in written.items():
        ratio = times["float"] / times[name]
        size = f"{path} ({path.stat().st_size / 1e6:.2f} MB)"
        print(f"{name:<12} {size:<40} {times[name]:8.1f} {ratio:8.2f}x")
    return 0
