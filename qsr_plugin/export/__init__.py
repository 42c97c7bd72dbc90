"""Deployment: packed safetensors files, frozen inference models and ONNX QDQ export."""

from .freeze import freeze, frozen_record
from .onnx_export import export_onnx
from .safetensors_io import load, save

__all__ = ["export_onnx", "freeze", "frozen_record", "load", "save"]
