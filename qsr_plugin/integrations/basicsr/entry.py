"""``qsr-train`` and ``qsr-test``: BasicSR's train and test pipelines for QuantSR recipes.

They take BasicSR's own flags and run ``basicsr.train.train_pipeline`` /
``basicsr.test.test_pipeline`` with the current directory as root, so ``experiments/``,
``results/`` and ``tb_logger/`` land where the command is run, and relative dataset
paths start there too. Before BasicSR runs, the option file is read with the safe YAML
loader and checked (:mod:`.options`); BasicSR then runs inside :func:`.runtime.basicsr_runtime`.
``QuantSRModel`` is registered by importing this package.

Example:
    ``qsr-train -opt recipes/quantsr_t_x4.yml`` (in a clone of the repository: ``recipes/``
    is not installed with the package), or on two processes without GPUs
    ``torchrun --nproc_per_node=2 integrations/basicsr/train.py -opt ... --launcher pytorch``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

from .options import OptionError, read_option_file
from .runtime import basicsr_runtime


def build_parser(prog: str, is_train: bool) -> argparse.ArgumentParser:
    """The arguments of BasicSR's ``train.py`` / ``test.py``, with help texts."""
    task = "Train" if is_train else "Test"
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"{task} a QuantSR (or any BasicSR) model from a BasicSR option file.",
    )
    parser.add_argument("-opt", required=True, help="the option YAML file")
    parser.add_argument(
        "--launcher",
        choices=["none", "pytorch", "slurm"],
        default="none",
        help="distributed launcher: pytorch under torchrun (gloo without CUDA)",
    )
    parser.add_argument(
        "--auto_resume",
        action="store_true",
        help="resume from the latest training state of this experiment, if any",
    )
    parser.add_argument("--debug", action="store_true", help="BasicSR's debug mode")
    parser.add_argument("--local_rank", type=int, default=0, help="set by old launchers")
    parser.add_argument(
        "--force_yml",
        nargs="+",
        default=None,
        help="override existing options, e.g. train:total_iter=1000 (keys joined by ':')",
    )
    return parser


@contextlib.contextmanager
def _command_line(prog: str, argv: Sequence[str]) -> Iterator[None]:
    """BasicSR parses ``sys.argv`` itself; show it ``argv``."""
    saved = sys.argv
    sys.argv = [prog, *argv]
    try:
        yield
    finally:
        sys.argv = saved


def _prog(is_train: bool) -> str:
    return "qsr-train" if is_train else "qsr-test"


def _checked_command_line(argv: Sequence[str] | None, is_train: bool) -> list[str]:
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = build_parser(_prog(is_train), is_train).parse_args(argv)
    read_option_file(arguments.opt)  # refuses unsafe YAML before anything runs
    return argv


def parse_options(argv: Sequence[str], is_train: bool = True) -> dict:
    """The options BasicSR's pipeline would run with, checked; nothing is run or written.

    Handy for building a model by hand: ``basicsr.models.build_model(parse_options(...))``.
    ``--launcher pytorch`` initialises the process group, as in a real run.

    Raises:
        OptionError: as :func:`run_train`.
    """
    argv = _checked_command_line(argv, is_train)
    with basicsr_runtime(), _command_line(_prog(is_train), argv):
        import basicsr.train

        return basicsr.train.parse_options(os.getcwd(), is_train=is_train)[0]


def _run(argv: Sequence[str] | None, is_train: bool) -> None:
    argv = _checked_command_line(argv, is_train)
    with basicsr_runtime(), _command_line(_prog(is_train), argv):
        if is_train:
            from basicsr.train import train_pipeline

            train_pipeline(os.getcwd())
        else:
            from basicsr.test import test_pipeline

            test_pipeline(os.getcwd())


def run_train(argv: Sequence[str] | None = None) -> None:
    """Run training with BasicSR's command-line arguments (default: ``sys.argv[1:]``).

    Raises:
        OptionError: a bad option file or option; nothing was built yet, except when a
            checkpoint turns out not to fit the network.
    """
    _run(argv, is_train=True)


def run_test(argv: Sequence[str] | None = None) -> None:
    """Run testing with BasicSR's command-line arguments (default: ``sys.argv[1:]``).

    Raises:
        OptionError: as :func:`run_train`.
    """
    _run(argv, is_train=False)


def _report(prog: str, function, argv: Sequence[str] | None) -> int:
    try:
        function(argv)
    except OptionError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0


def train_main(argv: Sequence[str] | None = None) -> int:
    """The ``qsr-train`` command; returns the exit status (2 for a bad option)."""
    return _report("qsr-train", run_train, argv)


def test_main(argv: Sequence[str] | None = None) -> int:
    """The ``qsr-test`` command; returns the exit status (2 for a bad option)."""
    return _report("qsr-test", run_test, argv)
