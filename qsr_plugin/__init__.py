"""qsr_plugin: QuantSR quantization-aware training for super-resolution models."""

__version__ = "0.1.0"

__all__ = ["__version__"]
