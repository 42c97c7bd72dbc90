"""The scope in which our entry points run BasicSR's train and test pipelines.

BasicSR 1.4.2's pipelines need four changes, made only inside :func:`basicsr_runtime` and
undone when it exits (nothing is patched on import):

- safe YAML: ``parse_options`` reads the option file again with PyYAML's full loader; its
  loader factory is replaced by the safe one, so nothing in the file can run code even if
  the file changed after our own safe read;
- distributed training without CUDA: ``init_dist`` calls ``torch.cuda.set_device`` and uses
  NCCL, which fail on a CPU-only machine; there the process group is initialised with gloo
  from the ``torchrun`` environment instead (with CUDA, BasicSR's own code runs);
- checks before anything is built: after BasicSR parsed the options (including
  ``--force_yml``), :func:`~.options.check_options` runs, so a bad option stops the run
  before experiment folders, datasets or networks are made;
- resuming: ``load_resume_state`` maps the state to ``torch.cuda.current_device()``, which
  fails without CUDA; the state is read onto the CPU (the optimizers move it to their
  parameters' device) with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from qsr_plugin._basicsr_compat import import_basicsr

from .options import OptionError, SafeLoader, check_options


def _safe_ordered_yaml() -> tuple[type, type]:
    """Stand-in for BasicSR's ``ordered_yaml``: the safe loader (dicts keep their order)."""
    return SafeLoader, yaml.SafeDumper


def _init_dist_any_device(
    basicsr_init_dist: Callable, launcher: str, backend: str = "nccl", **kwargs
) -> None:
    """BasicSR's ``init_dist`` with CUDA; a gloo process group from ``torchrun`` without."""
    if torch.cuda.is_available():
        basicsr_init_dist(launcher, backend, **kwargs)
    elif launcher == "pytorch":
        dist.init_process_group(backend="gloo")
    else:
        raise OptionError(
            f"--launcher {launcher} needs CUDA GPUs; on a machine without them launch with "
            "torchrun --nproc_per_node=N ... --launcher pytorch (gloo backend)"
        )


def _parse_then_check(parse_options: Callable, root_path: str, is_train: bool = True):
    options, args = parse_options(root_path, is_train=is_train)
    check_options(options)
    return options, args


def load_resume_state(options: dict[str, Any]) -> dict[str, Any] | None:
    """The training state to resume from (BasicSR's ``--auto_resume`` / ``resume_state``).

    With ``auto_resume``, the state of the highest iteration in the experiment's
    ``training_states`` folder, if any. The network checkpoints of that iteration replace
    ``pretrain_network_*`` (BasicSR's ``check_resume``).

    Raises:
        OptionError: ``path.resume_state`` names a missing file.
    """
    from basicsr.utils import check_resume

    paths = options["path"]
    if options["auto_resume"]:
        folder = Path(paths["training_states"])
        iterations = [int(p.stem) for p in folder.glob("*.state") if p.stem.isdigit()]
        if not iterations:
            return None
        paths["resume_state"] = str(folder / f"{max(iterations)}.state")
    elif not paths.get("resume_state"):
        return None
    try:
        state = torch.load(paths["resume_state"], map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise OptionError(f"path.resume_state: {paths['resume_state']} does not exist") from None
    check_resume(options, state["iter"])
    return state


@contextlib.contextmanager
def _replaced(module: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


@contextlib.contextmanager
def basicsr_runtime() -> Iterator[None]:
    """Run BasicSR's ``train_pipeline`` / ``test_pipeline`` safely and on any device.

    Example:
        ``with basicsr_runtime(): basicsr.train.train_pipeline(os.getcwd())``
    """
    import_basicsr()
    import basicsr.test
    import basicsr.train
    import basicsr.utils.options as basicsr_options

    replacements = [
        (basicsr_options, "ordered_yaml", _safe_ordered_yaml),
        (
            basicsr_options,
            "init_dist",
            functools.partial(_init_dist_any_device, basicsr_options.init_dist),
        ),
        (basicsr.train, "load_resume_state", load_resume_state),
    ]
    replacements += [
        (module, "parse_options", functools.partial(_parse_then_check, module.parse_options))
        for module in (basicsr.train, basicsr.test)
    ]
    with contextlib.ExitStack() as stack:
        for module, name, value in replacements:
            stack.enter_context(_replaced(module, name, value))
        yield
