"""Fake quantizers and the registry of quantization methods."""

from .base import Quantizer, quantizers_of
from .dorefa import DoReFaActivationQuantizer, DoReFaWeightQuantizer
from .learned_step import LearnedStepActivationQuantizer, LearnedStepWeightQuantizer
from .pams import PAMSActivationQuantizer, PAMSWeightQuantizer
from .registry import QuantMethod, get_method, list_methods, register_method

__all__ = [
    "DoReFaActivationQuantizer",
    "DoReFaWeightQuantizer",
    "LearnedStepActivationQuantizer",
    "LearnedStepWeightQuantizer",
    "PAMSActivationQuantizer",
    "PAMSWeightQuantizer",
    "QuantMethod",
    "Quantizer",
    "get_method",
    "list_methods",
    "quantizers_of",
    "register_method",
]
