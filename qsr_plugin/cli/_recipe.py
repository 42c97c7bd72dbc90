"""Reading a BasicSR option file with a ``quantsr:`` section and building its quantized network.

Only two parts of the file matter here: ``network_g`` (``type``, a BasicSR architecture
name, and that architecture's keyword arguments) and ``quantsr`` (the fields of
:class:`qsr_plugin.QuantizeConfig`). The file is read with ``yaml.safe_load``, so Python
object tags are refused instead of executed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from .._basicsr_compat import import_basicsr
from ..config import QuantizeConfig
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
        FileNotFoundError: no file at ``path``.
        ValueError: not YAML, Python tags, or a missing/malformed ``network_g`` or
            ``quantsr`` section; the message names the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"option file {path} does not exist")
    try:
        options = yaml.safe_load(path.read_text())
    except yaml.constructor.ConstructorError as error:
        raise ValueError(
            f"{path}: refused: it contains a Python object tag ({error.problem}); option "
            "files must be plain YAML"
        ) from error
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(options, dict):
        raise ValueError(f"{path}: expected a mapping of options, got {type(options).__name__}")
    network = options.get("network_g")
    if not isinstance(network, dict) or not isinstance(network.get("type"), str):
        raise ValueError(f"{path}: network_g must be a mapping with a 'type' (a BasicSR arch)")
    section = options.get("quantsr")
    if not isinstance(section, dict):
        raise ValueError(f"{path}: needs a 'quantsr:' section with the quantization settings")
    try:
        config = QuantizeConfig.from_dict(section, where="quantsr.")
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error
    arch_options = {k: v for k, v in network.items() if k != "type"}
    return Recipe(path, network["type"], arch_options, config)


def build_network(recipe: Recipe, example_input=None) -> nn.Module:
    """The float network of ``network_g``, from BasicSR's ARCH_REGISTRY, quantized.

    Raises:
        ValueError: an unknown arch type or arguments it does not take (naming the key).
    """
    import_basicsr()
    from basicsr.utils.registry import ARCH_REGISTRY

    if recipe.arch not in ARCH_REGISTRY:
        known = ", ".join(sorted(name for name, _ in ARCH_REGISTRY))
        raise ValueError(
            f"{recipe.path}: network_g.type {recipe.arch!r} is not a registered BasicSR arch; "
            f"registered: {known}"
        )
    try:
        network = ARCH_REGISTRY.get(recipe.arch)(**recipe.arch_options)
    except TypeError as error:
        raise ValueError(f"{recipe.path}: network_g does not fit {recipe.arch}: {error}") from error
    return quantize(network, config=recipe.config, example_input=example_input)
