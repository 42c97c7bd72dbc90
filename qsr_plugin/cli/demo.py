"""``qsr demo``: train, quantize, measure and export a small SRResNet (see qsr_plugin.demo)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULTS_NOTE = (
    "Without --data it trains on photographs shipped with scikit-image and measures on two "
    "held-out ones; with --data DIR the last fifth of DIR's images (by file name) is held out."
)


def register(subparsers) -> None:
    """Adds ``qsr demo`` to the ``qsr`` command."""
    from qsr_plugin.demo import DemoSettings

    defaults = DemoSettings()
    parser = subparsers.add_parser(
        "demo",
        help="train a small SRResNet, quantize it to 4 bits with depth variants, show results",
        description="Trains a small float SRResNet briefly, then QuantSR QAT at each --bits "
        "with all --depths in one set of weights; prints PSNR/SSIM and cost per variant and "
        "writes models, pictures and a JSON of every figure to --out. " + DEFAULTS_NOTE,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--scale", type=int, default=defaults.scale, help="SR factor: 2, 3 or 4")
    parser.add_argument(
        "--bits", type=int, nargs="+", default=list(defaults.bits), help="bit widths, 2..8"
    )
    parser.add_argument(
        "--depths",
        type=int,
        nargs="+",
        default=None,
        help="depth variants trained jointly (default: 2N, N, N/2 for an N-block body)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        nargs="+",
        metavar="N",
        default=[defaults.float_steps, defaults.qat_steps],
        help="training steps: FLOAT QAT, or one number for both",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    parser.add_argument("--out", type=Path, default=defaults.out, help="output folder")
    parser.add_argument(
        "--data", type=Path, default=None, help="folder of HR images instead of the built-in"
    )
    parser.add_argument(
        "--patch", type=int, default=defaults.patch, help="LR training patch side (pixels)"
    )
    parser.add_argument("--batch", type=int, default=defaults.batch, help="patches per step")
    parser.add_argument("--features", type=int, default=defaults.features, help="SRResNet channels")
    parser.add_argument(
        "--blocks", type=int, default=defaults.blocks, help="SRResNet residual blocks (float)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: one per core, or 1 when the load average "
        "already reaches the core count, where one thread runs several times faster)",
    )
    parser.add_argument(
        "--no-distill",
        action="store_true",
        help="QAT without distillation from the float model (on by default)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(arguments: argparse.Namespace) -> int:
    """Runs the demo; bad input is reported in one line with exit status 2."""
    from qsr_plugin.demo import DemoInputError, DemoSettings, run_demo

    if len(arguments.steps) > 2:
        return _fail(f"--steps takes FLOAT QAT or one number, got {arguments.steps}")
    float_steps, qat_steps = (arguments.steps * 2)[:2]
    settings = DemoSettings(
        scale=arguments.scale,
        bits=tuple(arguments.bits),
        depths=None if arguments.depths is None else tuple(arguments.depths),
        float_steps=float_steps,
        qat_steps=qat_steps,
        seed=arguments.seed,
        out=arguments.out,
        data=arguments.data,
        patch=arguments.patch,
        batch=arguments.batch,
        features=arguments.features,
        blocks=arguments.blocks,
        threads=arguments.threads,
        distill=not arguments.no_distill,
        progress=not arguments.no_progress,
    )
    try:
        result = run_demo(settings)
    except DemoInputError as error:
        return _fail(str(error))
    print()
    print(result.table)
    print(f"\nwrote {', '.join(sorted(p.name for p in result.files.values()))} to {settings.out}")
    print(f"total time {result.seconds['total']:.0f} s")
    return 0


def _fail(message: str) -> int:
    print(f"qsr demo: error: {message}", file=sys.stderr)
    return 2
