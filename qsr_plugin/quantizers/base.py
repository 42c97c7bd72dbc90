"""The base class of every fake quantizer: bit width, data-driven initialisation, state.

A quantizer's lifecycle:

1. Built uninitialised (``initialized`` buffer False) unless it needs no data.
2. Initialised from data, either by :func:`qsr_plugin.calibrate` (statistics accumulated
   over several batches while the quantizer passes its input through unchanged) or by the
   first forward pass in training mode (statistics of that one batch). When
   ``torch.distributed`` is initialised, the statistics are reduced across ranks first, so
   every rank starts from identical quantizer parameters.
3. Quantizes. In eval mode an uninitialised quantizer refuses to run.

Everything that defines the quantizer's state (bit width, signedness, the initialised
flag, learnable parameters) lives in parameters and buffers, so it travels with
``state_dict()``, ``.to()``, ``copy.deepcopy`` and DDP.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .._distributed import all_reduce_
from .._validation import FLOAT_BITS, check_bits
from ._rounding import widened

REDUCTIONS = ("mean", "min", "max")


@dataclass
class _Accumulator:
    """Running reduction of one quantizer's statistics over calibration batches."""

    values: dict[str, torch.Tensor] = field(default_factory=dict)
    reductions: dict[str, str] = field(default_factory=dict)
    batches: int = 0

    def add(self, statistics: dict[str, tuple[str, torch.Tensor]]) -> None:
        for name, (reduction, value) in statistics.items():
            value = value.detach().double()
            if name not in self.values:
                self.values[name], self.reductions[name] = value.clone(), reduction
            elif reduction == "mean":
                self.values[name] += value
            elif reduction == "min":
                torch.minimum(self.values[name], value, out=self.values[name])
            else:
                torch.maximum(self.values[name], value, out=self.values[name])
        self.batches += 1

    def reduce(self, device: torch.device) -> dict[str, torch.Tensor] | None:
        """Final statistics, reduced across ranks; None when no rank saw any data."""
        batches = all_reduce_(torch.tensor(float(self.batches), device=device), "sum")
        if batches.item() == 0:
            return None
        if self.batches == 0:
            raise RuntimeError(
                "this rank saw no calibration data for a quantizer that other ranks did see; "
                "run the same model structure and depth on every rank"
            )
        result = {}
        for name, value in self.values.items():
            reduction = self.reductions[name]
            value = all_reduce_(value.to(device), "sum" if reduction == "mean" else reduction)
            result[name] = value / batches if reduction == "mean" else value
        return result


class Quantizer(nn.Module):
    """A fake quantizer with ``bits`` bits, initialised from data.

    Subclasses implement :meth:`quantize` and, when they need data to start,
    :meth:`statistics` and :meth:`initialize_from`.

    Args:
        bits: bit width, an int in 2..8.
        role: ``"activation"`` or ``"weight"``; used in messages.
    """

    needs_data: bool = True

    def __init__(self, bits: int, role: str) -> None:
        super().__init__()
        check_bits(bits, "bits")
        if bits == FLOAT_BITS:
            raise ValueError("bits=32 means no quantizer; do not build one")
        self.bits = bits
        self.role = role
        self.name: str | None = None
        self.register_buffer("num_bits", torch.tensor(bits, dtype=torch.int32))
        self.register_buffer("initialized", torch.tensor(not self.needs_data))
        self._accumulator: _Accumulator | None = None
        self._known_initialized = not self.needs_data

    # -- to implement --------------------------------------------------------------------
    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` (the quantizer is initialised)."""
        raise NotImplementedError

    def statistics(self, x: torch.Tensor) -> dict[str, tuple[str, torch.Tensor]]:
        """Statistics of one batch used for initialisation: name -> (reduction, value)."""
        raise NotImplementedError

    def initialize_from(self, statistics: dict[str, torch.Tensor]) -> None:
        """Set the quantizer's parameters from reduced statistics."""
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """Where this quantizer sits, for messages: its qualified name when known."""
        return f"{self.name or type(self).__name__} ({self.role} quantizer)"

    def state_changed(self) -> None:
        """Forget values cached from buffers; call after writing buffers directly.

        ``load_state_dict`` and initialisation call it themselves.
        """
        self._known_initialized = False

    def is_initialized(self) -> bool:
        """Whether the quantizer has its data-driven parameters."""
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return self._known_initialized

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._accumulator is not None:
            self._accumulator.add(self._checked_statistics(x))
            return x
        if not self.is_initialized():
            if not self.training:
                raise RuntimeError(
                    f"{self.label} was never initialised: call "
                    "qsr_plugin.calibrate(model, batches) or run a training step "
                    "(model.train()) before evaluating"
                )
            accumulator = _Accumulator()
            accumulator.add(self._checked_statistics(x))
            self._finish_initialization(accumulator.reduce(x.device))
        return self.quantize(x)

    def _checked_statistics(self, x: torch.Tensor) -> dict[str, tuple[str, torch.Tensor]]:
        x = widened(x.detach())
        if not torch.isfinite(x).all():
            raise ValueError(
                f"{self.label}: the initialisation batch contains NaN or Inf values; "
                "check the input data and the layers before this one"
            )
        return self.statistics(x)

    def start_calibration(self) -> None:
        """Pass inputs through unchanged and accumulate their statistics."""
        if self.needs_data:
            self._accumulator = _Accumulator()

    def finish_calibration(self) -> bool:
        """Initialise from the accumulated statistics; False if no data was seen."""
        accumulator, self._accumulator = self._accumulator, None
        if accumulator is None:
            return True
        device = self.num_bits.device
        return self._finish_initialization(accumulator.reduce(device))

    def abort_calibration(self) -> None:
        """Drop accumulated statistics (after an error), leaving the state unchanged."""
        self._accumulator = None

    def _finish_initialization(self, statistics: dict[str, torch.Tensor] | None) -> bool:
        if statistics is None:
            return False
        with torch.no_grad():
            self.initialize_from(statistics)
            self.initialized.fill_(True)
        self.state_changed()
        return True

    def _floor_step(self, step: torch.Tensor, floor: float) -> torch.Tensor:
        """Clamp a data-derived step to ``floor``, warning when data gave none."""
        if (step < floor).any():
            warnings.warn(
                f"{self.label}: the initialisation data has no magnitude (all zeros?), so "
                f"the step was set to its floor {floor:g}; calibrate with real data",
                stacklevel=4,
            )
        return step.clamp(min=floor)

    # -- state dict ------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "num_bits"
        if key in state_dict and int(state_dict[key]) != self.bits:
            raise ValueError(
                f"{key}: the checkpoint holds a {int(state_dict[key])}-bit quantizer but this "
                f"model's is {self.bits}-bit; quantize the model with the checkpoint's bits"
            )
        for name, tensor in [
            *self.named_parameters(recurse=False),
            *self.named_buffers(recurse=False),
        ]:
            incoming = state_dict.get(prefix + name)
            if incoming is not None and incoming.shape != tensor.shape:
                raise ValueError(
                    f"{prefix + name}: shape {tuple(incoming.shape)} in the checkpoint, "
                    f"{tuple(tensor.shape)} in this model; the checkpoint was quantized with "
                    "other settings (per-channel steps? other channel counts?)"
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.state_changed()

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def quantizers_of(module: nn.Module) -> list[tuple[str, Quantizer]]:
    """Every :class:`Quantizer` inside ``module`` with its qualified name."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, Quantizer)]
