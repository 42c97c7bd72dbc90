"""Opt-in mixed precision for the training loops: autocast, plus a GradScaler for fp16.

The quantizers compute in fp32 whatever autocast does (see ``quantizers._rounding``);
autocast changes the precision of the convolutions, matrix products and the rest.
"""

from __future__ import annotations

import warnings

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: object, option: str = "amp") -> str | None:
    """``amp`` if it is ``"bf16"``, ``"fp16"`` or None; else a ValueError naming ``option``."""
    if amp is not None and not (isinstance(amp, str) and amp in AMP_DTYPES):
        raise ValueError(f"{option} must be 'bf16', 'fp16' or unset (fp32), got {amp!r}")
    return amp


def _autocast_supports(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether autocast on ``device`` runs a matrix product in ``dtype`` (a one-op probe;
    an unsupported pair makes autocast warn and disable itself)."""
    if not torch.amp.is_autocast_available(device.type):
        return False
    ones = torch.ones(2, 2, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autocast(device.type, dtype=dtype):
            return torch.mm(ones, ones).dtype == dtype


class MixedPrecision:
    """Autocast in the ``amp`` dtype, and for fp16 a GradScaler; nothing when ``amp`` is None.

    Args:
        amp: ``"bf16"``, ``"fp16"`` or None (fp32).
        device: where the model trains.
        option: the setting's name, for error messages (``"amp"``, ``"quantsr.amp"``).

    Raises:
        ValueError: an unknown ``amp``, or one that ``device`` does not support.

    Example:
        >>> amp = MixedPrecision("bf16", torch.device("cpu"))
        >>> with amp.autocast():
        ...     loss = model(x).sub(y).abs().mean()  # doctest: +SKIP
        >>> amp.backward_and_step(loss, optimizer)  # doctest: +SKIP
    """

    def __init__(self, amp: str | None, device: torch.device, option: str = "amp") -> None:
        self.dtype = None if check_amp(amp, option) is None else AMP_DTYPES[amp]
        self.device_type = torch.device(device).type
        if self.dtype is not None and not _autocast_supports(torch.device(device), self.dtype):
            others = [name for name in AMP_DTYPES if name != amp]
            raise ValueError(
                f"{option}: {amp} autocast is not supported on {device} with torch "
                f"{torch.__version__}; set {option} to {others[0]} or leave it unset (fp32)"
            )
        self.scaler = (
            torch.amp.GradScaler(self.device_type) if self.dtype == torch.float16 else None
        )

    def autocast(self) -> torch.autocast:
        """The autocast context for the forward pass and the loss (disabled without amp)."""
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``loss.backward()`` and ``optimizer.step()``, through the GradScaler for fp16
        (which skips the step when a gradient is not finite and lowers its scale)."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
