"""Loading BasicSR checkpoints into quantized networks.

Two kinds of checkpoint can initialise a QuantSR network:

- a float BasicSR checkpoint (``params`` / ``params_ema`` of the unquantized arch): its
  tensors fill the float weights; the quantizers (initialised from data later) and the
  shortcut scales of depth-switchable bodies keep their defaults, and blocks grown for deeper
  variants start as copies of the blocks they were grown from, as when the body was grown;
- a QuantSR checkpoint (it holds quantizer state): it must match the network exactly.

Files are read with ``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field

import torch
from torch import nn

from qsr_plugin._files import write_atomically
from qsr_plugin.rewrite.depth import depth_switchable_bodies

from .options import OptionError
from .quantizer_state import quantizer_tensors

MODULE_PREFIX = "module."
SHOWN_KEYS = 8


@dataclass
class LoadReport:
    """What loading a checkpoint did, for the training log.

    Attributes:
        path: the checkpoint file.
        quantsr: True for a QuantSR checkpoint (loaded strictly).
        loaded: number of tensors taken from the file.
        defaults: keys that kept their initial value (quantizer state, shortcut scales).
        copied: grown-block keys filled from the block they were grown from.
        missing: float keys the file lacks, left as built (only with ``strict_load_g: false``).
        skipped: keys of the file left unused (only with ``strict_load_g: false``).
    """

    path: str
    quantsr: bool
    loaded: int
    defaults: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One paragraph for the log."""
        kind = "QuantSR" if self.quantsr else "float"
        lines = [f"Loaded {kind} checkpoint {self.path}: {self.loaded} tensors."]
        if self.defaults:
            lines.append(
                f"{len(self.defaults)} QuantSR tensors are not in it and keep their initial "
                f"values (quantizers are initialised from the first training batch): "
                f"{_shorten(self.defaults)}"
            )
        if self.copied:
            lines.append(
                f"{len(self.copied)} tensors of grown blocks copied from their source blocks: "
                f"{_shorten(self.copied)}"
            )
        if self.missing:
            lines.append(
                f"{len(self.missing)} tensors of the network not in the file, left as built "
                f"(strict_load_g: false): {_shorten(self.missing)}"
            )
        if self.skipped:
            lines.append(
                f"{len(self.skipped)} tensors of the file not loaded (strict_load_g: false): "
                f"{_shorten(self.skipped)}"
            )
        return "\n".join(lines)


def _shorten(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f", ... ({len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


def read_state_dict(
    path: str | os.PathLike, param_key: str | None, option: str = "path.pretrain_network_g"
) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict stored under ``param_key`` in a BasicSR checkpoint file.

    As in BasicSR, a missing ``param_key`` falls back to ``params`` (so ``params_ema`` of a
    checkpoint trained without EMA gives ``params``), ``param_key=None`` takes the whole
    file, and a leading ``module.`` (from DataParallel) is dropped from the keys.

    Returns:
        ``(state dict, the entry it was read from)``.

    Raises:
        OptionError: the file is missing, holds more than tensors, or lacks ``param_key``;
            the message names ``option`` and the file.
    """
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise OptionError(f"{option}: checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as err:
        raise OptionError(
            f"{option}: {path} holds Python objects besides tensors, so it is not loaded "
            f"(weights_only=True); save a BasicSR checkpoint of tensors only. ({err})"
        ) from None
    if param_key is not None:
        if not isinstance(stored, dict) or not (param_key in stored or "params" in stored):
            found = list(stored) if isinstance(stored, dict) else type(stored).__name__
            raise OptionError(
                f"{option}: {path} has no {param_key!r} entry (found {found}); set "
                "path.param_key_g to the entry that holds the network's state dict"
            )
        param_key = param_key if param_key in stored else "params"
        stored = stored[param_key]
    if not isinstance(stored, dict):
        raise OptionError(f"{option}: {path} does not hold a state dict under {param_key!r}")
    return {k.removeprefix(MODULE_PREFIX): v for k, v in stored.items()}, param_key


def save_atomically(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it to ``path``.

    A process killed while saving leaves the previous file (or none), never half of one,
    so ``--auto_resume`` always finds complete checkpoints.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomically(path, buffer.getvalue())


def quantsr_only_keys(net: nn.Module) -> set[str]:
    """Keys that a float network lacks: quantizer state and depth-switching parameters."""
    keys = set(quantizer_tensors(net))
    for name, body in depth_switchable_bodies(net):
        keys.update(f"{name}.{key}" for key in body.dqa_tensors())
    return keys


def _grown_block_sources(net: nn.Module) -> dict[str, str]:
    """Key prefix of each grown block -> key prefix of the block it was grown from."""
    sources = {}
    for name, body in depth_switchable_bodies(net):
        for grown, source in body.grown_blocks().items():
            sources[f"{name}.{grown}."] = f"{name}.{source}."
    return sources


def _is_quantsr_state(state: dict[str, torch.Tensor], quantsr_keys: set[str]) -> bool:
    """Whether ``state`` holds QuantSR tensors (this network's, or any quantizer's)."""
    return not quantsr_keys.isdisjoint(state) or any(k.endswith(".num_bits") for k in state)


def load_checkpoint(
    net: nn.Module, state: dict[str, torch.Tensor], path: str, strict: bool = True
) -> LoadReport:
    """Load a float or QuantSR state dict into the quantized ``net``.

    Args:
        net: a network quantized with :func:`qsr_plugin.quantize`.
        state: from :func:`read_state_dict`.
        path: the file it came from, for messages.
        strict: refuse float checkpoints with unexpected, missing or mis-shaped tensors
            (BasicSR's ``strict_load_g``); QuantSR checkpoints are always loaded strictly.

    Returns:
        What was loaded.

    Raises:
        OptionError: the checkpoint does not fit ``net``; the message lists the keys.
    """
    extra = quantsr_only_keys(net)
    if _is_quantsr_state(state, extra):
        try:
            net.load_state_dict(state, strict=True)
        except (RuntimeError, ValueError) as err:
            raise OptionError(
                f"path.pretrain_network_g: {path} is a QuantSR checkpoint that does not match "
                "this quantized network "
                f"(network_g and quantsr settings must be those it was trained with): {err}"
            ) from None
        return LoadReport(path, quantsr=True, loaded=len(state))
    own = net.state_dict()
    grown_blocks = _grown_block_sources(net)

    def fits(key: str) -> bool:  # a float checkpoint has no grown blocks
        return key in own and not key.startswith(tuple(grown_blocks))

    unexpected = sorted(k for k in state if not fits(k))
    mismatched = sorted(
        f"{k} (file {tuple(state[k].shape)}, network {tuple(own[k].shape)})"
        for k in state
        if fits(k) and state[k].shape != own[k].shape
    )
    usable = {k: v for k, v in state.items() if fits(k) and v.shape == own[k].shape}
    skipped = sorted(set(state) - set(usable))
    missing = sorted(k for k in own if fits(k) and k not in state and k not in extra)
    copied = []
    for grown, source in grown_blocks.items():
        for key in own:
            origin = source + key.removeprefix(grown)
            if key.startswith(grown) and key not in extra and origin in usable:
                usable[key] = usable[origin]
                copied.append(key)
    if strict and (unexpected or mismatched or missing):
        problems = [
            f"{label}: {_shorten(keys)}"
            for label, keys in (
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
                ("missing keys", missing),
            )
            if keys
        ]
        raise OptionError(
            f"path.pretrain_network_g: {path} does not fit network_g ({type(net).__name__}); "
            + "; ".join(problems)
            + ". Is it a checkpoint of another arch or other network_g settings? Set "
            "path.strict_load_g: false to load only the tensors that fit."
        )
    net.load_state_dict(usable, strict=False)
    return LoadReport(
        path,
        quantsr=False,
        loaded=len(usable) - len(copied),
        defaults=sorted(extra),
        copied=copied,
        missing=missing,
        skipped=skipped,
    )
