"""The ``qsr`` command. Each module of this package adds one subcommand.

A subcommand module defines ``register(subparsers)``, which adds its parser with
``subparsers.add_parser(...)`` and sets ``func`` (called with the parsed arguments;
it returns the exit status) through ``parser.set_defaults(func=...)``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    """The ``qsr`` argument parser with every subcommand of this package."""
    parser = argparse.ArgumentParser(
        prog="qsr", description="QuantSR quantization-aware training for super-resolution"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``qsr`` with ``argv`` (default: the command line); return the exit status."""
    arguments = build_parser().parse_args(argv)
    return arguments.func(arguments)


if __name__ == "__main__":
    sys.exit(main())
