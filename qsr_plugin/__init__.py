"""qsr_plugin: QuantSR quantization-aware training for super-resolution models.

Example:
    >>> import torch, qsr_plugin
    >>> layer = qsr_plugin.QuantConv2d.from_float(torch.nn.Conv2d(3, 8, 3))
    >>> _ = qsr_plugin.calibrate(layer, torch.rand(2, 3, 16, 16))
"""

__version__ = "0.1.0"

from .calibration import calibrate
from .config import QuantSpec
from .layers import QuantConv2d, QuantLinear
from .quantizers import Quantizer, list_methods, register_method

__all__ = [
    "QuantConv2d",
    "QuantLinear",
    "QuantSpec",
    "Quantizer",
    "__version__",
    "calibrate",
    "list_methods",
    "register_method",
]
