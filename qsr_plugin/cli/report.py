"""``qsr report -opt recipe.yml``: the efficiency table (QuantSR's Table 2) of a recipe's network.

The network of ``network_g`` is built from BasicSR's registry and quantized with the
``quantsr`` section. To measure the saved-file size its quantizers need values: with
``--weights`` they come from a file written by ``qsr_plugin.save``; otherwise they are
initialised on two LR patches of the photos bundled with scikit-image (no download). The
parameter and operation counts and the file size do not depend on these values.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..calibration import calibrate
from ..export.safetensors_io import load
from ..report import report
from ..sr_data import PatchSampler, builtin_images
from ._recipe import CALIBRATION_BATCH, build_network, read_recipe


def register(subparsers) -> None:
    """Add the ``report`` subcommand."""
    parser = subparsers.add_parser(
        "report",
        help="parameters, operations and file sizes per depth variant (QuantSR Table 2)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("-opt", required=True, type=Path, help="BasicSR option file (YAML)")
    parser.add_argument(
        "--input-size",
        nargs=3,
        type=int,
        default=[3, 256, 256],
        metavar=("C", "H", "W"),
        help="input size for counting operations (default: 3 256 256, as the paper)",
    )
    parser.add_argument(
        "--weights", type=Path, help="a file written by qsr_plugin.save to load first"
    )
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    parser.set_defaults(func=run)


def _given_settings(recipe) -> str:
    """``bits`` and ``method``, then every other setting that differs from its default."""
    settings = recipe.config.to_dict()
    defaults = type(recipe.config)().to_dict()
    shown = {k: settings[k] for k in ("bits", "method")}
    shown |= {k: v for k, v in settings.items() if v != defaults[k]}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def run(arguments: argparse.Namespace) -> int:
    """Build, quantize and report; print the table. Returns the exit status."""
    try:
        recipe = read_recipe(arguments.opt)
        sampler = PatchSampler(
            list(builtin_images()["train"].items()),
            recipe.scale,
            recipe.calibration_patch,
            augment=False,
        )
        lr_patches, _ = sampler.sample(CALIBRATION_BATCH)
        model = build_network(recipe, example_input=lr_patches[:1])
        if arguments.weights is not None:
            load(model, arguments.weights)
        else:
            calibrate(model, lr_patches)
        result = report(model, input_size=tuple(arguments.input_size))
    except (FileNotFoundError, ValueError) as error:
        print(f"qsr report: {error}", file=sys.stderr)
        return 2
    print(f"{recipe.path}: {recipe.arch}, quantsr: {_given_settings(recipe)}")
    print(result)
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0
