"""``qsr stats``: plot quantizer statistics saved during training (qsr_plugin.training_stats)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    """Adds ``qsr stats`` to the ``qsr`` command."""
    parser = subparsers.add_parser(
        "stats",
        help="plot quantizer step/shift statistics from a training-statistics JSON file",
        description="Draws box plots of the weight steps, activation steps and activation "
        "shifts recorded during QAT (qsr demo's training_stats_*.json, or any file written "
        "by TrainingStats.save) over training, with their variance.",
    )
    parser.add_argument("stats", type=Path, help="training-statistics JSON file")
    parser.add_argument(
        "--out", type=Path, default=None, help="PNG to write (default: STATS with .png)"
    )
    parser.set_defaults(func=run)


def run(arguments: argparse.Namespace) -> int:
    """Plots the file; a missing or malformed file is reported with exit status 2."""
    from qsr_plugin.training_stats import TrainingStats

    out = arguments.out or arguments.stats.with_suffix(".png")
    try:
        stats = TrainingStats.load(arguments.stats)
        stats.plot(out)
    except (OSError, ValueError) as error:
        print(f"qsr stats: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(stats.records)} records of {', '.join(stats.groups())})")
    return 0
