"""QuantSR training and testing with BasicSR option files.

Importing this package registers :class:`QuantSRModel` in BasicSR's ``MODEL_REGISTRY``.
The commands ``qsr-train`` / ``qsr-test`` (:func:`train_main`, :func:`test_main`) run
BasicSR's pipelines with QuantSR option files such as ``recipes/quantsr_t_x4.yml`` of the
repository (the recipes are not installed with the package; copy the ones you need).

Example:
    >>> from qsr_plugin.integrations.basicsr import QuantSRModel  # doctest: +SKIP
"""

from .entry import run_test, run_train, test_main, train_main
from .model import QuantSRModel
from .options import OptionError

__all__ = ["OptionError", "QuantSRModel", "run_test", "run_train", "test_main", "train_main"]
