"""Fake quantizers and the registry of quantization methods."""

from .base import Quantizer, quantizers_of
from .cadyq import BitMeasurement, CADyQActivationQuantizer, bit_cost_loss, measure_bits
from .dorefa import DoReFaActivationQuantizer, DoReFaWeightQuantizer
from .learned_step import LearnedStepActivationQuantizer, LearnedStepWeightQuantizer
from .pams import PAMSActivationQuantizer, PAMSWeightQuantizer
from .registry import QuantMethod, get_method, list_methods, register_method

__all__ = [
    "BitMeasurement",
    "CADyQActivationQuantizer",
    "DoReFaActivationQuantizer",
    "DoReFaWeightQuantizer",
    "LearnedStepActivationQuantizer",
    "LearnedStepWeightQuantizer",
    "PAMSActivationQuantizer",
    "PAMSWeightQuantizer",
    "QuantMethod",
    "Quantizer",
    "bit_cost_loss",
    "get_method",
    "list_methods",
    "measure_bits",
    "quantizers_of",
    "register_method",
]
