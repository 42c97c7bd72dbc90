"""qsr_plugin: QuantSR quantization-aware training for super-resolution models.

Example:
    >>> import torch, qsr_plugin
    >>> layer = qsr_plugin.QuantConv2d.from_float(torch.nn.Conv2d(3, 8, 3))
    >>> _ = qsr_plugin.calibrate(layer, torch.rand(2, 3, 16, 16))

The main entry point is :func:`quantize`.
"""

from ._basicsr_compat import install_legacy_alias
from ._torch_logs import drop_no_cuda_runtime_warning
from ._version import __version__
from .calibration import calibrate
from .config import QuantizeConfig, QuantSpec
from .export import export_onnx, freeze, load, save
from .layers import QuantConv2d, QuantLinear
from .quantizers import (
    BitMeasurement,
    Quantizer,
    bit_cost_loss,
    list_methods,
    measure_bits,
    register_method,
)
from .quantizers._kernels import use_compiled_kernels
from .report import report
from .rewrite.quantize import dequantize, quantization_record, quantize
from .rewrite.summary import summary
from .rewrite.variants import (
    active_depth,
    depth_variants,
    iter_depths,
    joint_variant_loss,
    set_depth,
    use_depth,
)

install_legacy_alias()  # `from basicsr... import` then works on current torchvision
drop_no_cuda_runtime_warning()  # printed by torch.compile on CPU machines with nvcc

__all__ = [
    "BitMeasurement",
    "QuantConv2d",
    "QuantLinear",
    "QuantSpec",
    "QuantizeConfig",
    "Quantizer",
    "__version__",
    "active_depth",
    "bit_cost_loss",
    "calibrate",
    "depth_variants",
    "dequantize",
    "export_onnx",
    "freeze",
    "iter_depths",
    "joint_variant_loss",
    "list_methods",
    "load",
    "measure_bits",
    "quantization_record",
    "quantize",
    "register_method",
    "report",
    "save",
    "set_depth",
    "summary",
    "use_compiled_kernels",
    "use_depth",
]
