"""Import BasicSR on current torchvision releases without touching site-packages.

basicsr 1.4.2 imports ``rgb_to_grayscale`` from ``torchvision.transforms.functional_tensor``,
a module that newer torchvision releases renamed to ``_functional_tensor``. When the old name
is gone, an import finder that ``import qsr_plugin`` installs supplies it (so that
``from basicsr.archs... import ...`` works in user code too).
"""

import importlib
import importlib.abc
import importlib.util
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


class _LegacyAliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Supplies ``functional_tensor`` when it is imported and no other finder has it."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name == _LEGACY_NAME else None

    def create_module(self, spec):
        return _legacy_module_substitute()

    def exec_module(self, module) -> None:
        """Nothing to run: the substitute is complete."""


def install_legacy_alias() -> None:
    """Let ``torchvision.transforms.functional_tensor`` import on torchvision releases without it.

    ``import qsr_plugin`` calls this, so user code can import from ``basicsr`` directly
    afterwards. The finder goes last on ``sys.meta_path``: a torchvision that still has the
    module provides it itself, and nothing is imported until basicsr asks for it.
    """
    if not any(isinstance(finder, _LegacyAliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_LegacyAliasFinder())


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
        install_legacy_alias()
        return importlib.import_module("basicsr")
    except ImportError as err:
        raise ImportError(
            f"qsr_plugin could not import basicsr: {err}. Install basicsr>=1.4.2 together with "
            "a matching torch and torchvision (pip install 'basicsr>=1.4.2' torchvision)."
        ) from err
