"""Import BasicSR on current torchvision releases without touching site-packages.

basicsr 1.4.2 imports ``rgb_to_grayscale`` from ``torchvision.transforms.functional_tensor``,
a module that newer torchvision releases renamed to ``_functional_tensor``. When the old name
is gone, an alias is registered in ``sys.modules`` before basicsr is imported.
"""

import importlib
import sys
import types

_LEGACY_NAME = "torchvision.transforms.functional_tensor"
_PRIVATE_NAME = "torchvision.transforms._functional_tensor"


def _legacy_module_substitute() -> types.ModuleType:
    """Returns a module to stand in for the removed ``functional_tensor``."""
    try:
        return importlib.import_module(_PRIVATE_NAME)
    except ImportError:
        from torchvision.transforms.functional import rgb_to_grayscale

        module = types.ModuleType(_LEGACY_NAME, "qsr_plugin stand-in exposing rgb_to_grayscale.")
        module.rgb_to_grayscale = rgb_to_grayscale
        return module


def _ensure_legacy_functional_tensor() -> None:
    """Registers the ``functional_tensor`` alias when torchvision no longer provides it."""
    try:
        importlib.import_module(_LEGACY_NAME)
    except ModuleNotFoundError as err:
        if err.name != _LEGACY_NAME:
            raise
        sys.modules[_LEGACY_NAME] = _legacy_module_substitute()


def import_basicsr() -> types.ModuleType:
    """Imports basicsr, first aliasing the torchvision module it needs if that is missing.

    Safe to call any number of times; the alias is registered at most once and only when
    ``torchvision.transforms.functional_tensor`` cannot be imported.

    Returns:
        The imported ``basicsr`` package.

    Raises:
        ImportError: basicsr (or one of its dependencies) could not be imported.
    """
    try:
        _ensure_legacy_functional_tensor()
        return importlib.import_module("basicsr")
    except ImportError as err:
        raise ImportError(
            f"qsr_plugin could not import basicsr: {err}. Install basicsr>=1.4.2 together with "
            "a matching torch and torchvision (pip install 'basicsr>=1.4.2' torchvision)."
        ) from err
