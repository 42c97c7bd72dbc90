"""Compiled (fused) or eager arithmetic for the fake-quantize autograd function.

Eager PyTorch runs the quantizer's dozen element-wise steps as a dozen passes over memory,
which costs about as much as the convolution it feeds. ``torch.compile`` fuses them into
one loop forward and one backward (C++ on CPU, Triton on GPU), at the price of compiling
on first use (about 20 s on a laptop-class CPU; cached on disk afterwards). Both paths
compute the same values up to floating-point summation order.

Quantizers with one step per tensor (activations, per-tensor weights) use compiled kernels
by default; ``QSR_COMPILE=0`` in the environment or ``use_compiled_kernels(False)`` (a call,
or a ``with`` block) selects eager ones. A step per channel always uses the eager kernels.
If tracing or compiling fails (no C++ compiler, an unsupported platform), the eager kernels
take over for the rest of the process, with a one-line warning naming the cause; errors of
the computation itself (out of memory, wrong shapes) propagate.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
from torch._dynamo.exc import TorchDynamoException

_settings = {"compile": None}


def compiled_kernels_enabled() -> bool:
    """Whether activation quantizers use ``torch.compile``-d kernels."""
    if _settings["compile"] is None:
        value = os.environ.get("QSR_COMPILE", "1").strip().lower()
        if value not in {"0", "1", "false", "true", "off", "on"}:
            raise ValueError(f"QSR_COMPILE must be 0 or 1, got {value!r}")
        _settings["compile"] = value in {"1", "true", "on"}
    return _settings["compile"]


class use_compiled_kernels:  # noqa: N801  (a function to callers, like torch.no_grad)
    """Use ``torch.compile``-d (True) or eager (False) activation-quantizer kernels.

    Takes effect at once, for the whole process; used as a context manager, it restores
    the previous choice on leaving the block.

    Example:
        >>> use_compiled_kernels(False)  # e.g. for quick scripts that run a few steps
        use_compiled_kernels(False)
        >>> with use_compiled_kernels(True):  # compiled inside the block only
        ...     pass
    """

    def __init__(self, enabled: bool) -> None:
        self._previous = _settings["compile"]
        _settings["compile"] = bool(enabled)

    def __enter__(self) -> use_compiled_kernels:
        return self

    def __exit__(self, *exc_info) -> None:
        _settings["compile"] = self._previous

    def __repr__(self) -> str:  # what the interactive prompt shows after a plain call
        return f"use_compiled_kernels({_settings['compile']})"


class Kernels:
    """A forward and a backward function, optionally run through ``torch.compile``.

    Each instance should wrap its own functions (distinct code objects), so that the
    compiled versions keep separate, small caches of specialised graphs.
    """

    def __init__(self, forward: Callable, backward: Callable, compilable: bool) -> None:
        self._eager = (forward, backward)
        self._compiled: tuple[Callable, Callable] | None = None
        self._compilable = compilable

    def _call(self, index: int, *args):
        if not (self._compilable and compiled_kernels_enabled()):
            return self._eager[index](*args)
        if self._compiled is None:
            self._compiled = tuple(torch.compile(f, dynamic=True) for f in self._eager)
        try:
            return self._compiled[index](*args)
        except TorchDynamoException as error:
            # Tracing or compiling failed. Arguments that are wrong fail eagerly too, and
            # that error propagates; otherwise the compiler was at fault: fall back.
            result = self._eager[index](*args)
            use_compiled_kernels(False)
            cause = str(error).strip().splitlines()[0] if str(error).strip() else ""
            warnings.warn(
                f"torch.compile of the fake-quantize kernels failed ({type(error).__name__}: "
                f"{cause}); using the eager kernels, which are slower",
                stacklevel=4,
            )
            return result

    def forward(self, *args):
        return self._call(0, *args)

    def backward(self, *args):
        return self._call(1, *args)
