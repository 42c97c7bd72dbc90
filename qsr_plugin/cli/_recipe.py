"""A BasicSR option file's quantized network: ``network_g`` built and quantized with ``quantsr``.

The file is read and checked by :mod:`qsr_plugin.integrations.basicsr.options` (safe YAML
loader, registered arch, ``quantsr`` keys), as ``qsr-train`` reads it; only ``network_g`` and
the ``quantsr`` section are used here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..config import QuantizeConfig
from ..integrations.basicsr.options import (
    check_network_type,
    quantize_config,
    read_option_file,
)
from ..rewrite.quantize import quantize

CALIBRATION_PATCH = 32
CALIBRATION_BATCH = 2


@dataclass(frozen=True)
class Recipe:
    """The parts of an option file that build the quantized network.

    Attributes:
        path: the option file.
        arch: the BasicSR architecture name (``network_g.type``).
        arch_options: its keyword arguments (the rest of ``network_g``).
        config: the ``quantsr`` section.
    """

    path: Path
    arch: str
    arch_options: dict[str, Any]
    config: QuantizeConfig

    @property
    def scale(self) -> int:
        """The upscaling factor: ``network_g.upscale`` (BasicSR's archs default to 4)."""
        return int(self.arch_options.get("upscale", 4))

    @property
    def calibration_patch(self) -> int:
        """An LR patch side the network accepts: a multiple of its window size, if any."""
        window = int(self.arch_options.get("window_size", 1))
        return window * math.ceil(CALIBRATION_PATCH / window)


def read_recipe(path: str | Path) -> Recipe:
    """Parse an option file.

    Raises:
        ValueError: a missing file, not YAML, a Python object tag, an unknown arch, or a
            missing or bad ``quantsr`` section; the message names the file and the key.
    """
    path = Path(path)
    options = read_option_file(path)
    try:
        arch = check_network_type(options.get("network_g"))
        config = quantize_config(options)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    arch_options = {k: v for k, v in options["network_g"].items() if k != "type"}
    return Recipe(path, arch, arch_options, config)


def build_network(recipe: Recipe, example_input=None) -> nn.Module:
    """The float network of ``network_g``, from BasicSR's ARCH_REGISTRY, quantized.

    Raises:
        ValueError: settings the arch does not take, or a ``quantsr`` section it cannot
            take (naming the file).
    """
    from basicsr.utils.registry import ARCH_REGISTRY  # imported by read_recipe's checks

    try:
        network = ARCH_REGISTRY.get(recipe.arch)(**recipe.arch_options)
    except TypeError as error:
        raise ValueError(f"{recipe.path}: network_g does not fit {recipe.arch}: {error}") from error
    try:
        return quantize(network, config=recipe.config, example_input=example_input)
    except ValueError as error:
        raise ValueError(
            f"{recipe.path}: quantsr: cannot quantize {recipe.arch}: {error}"
        ) from error
