"""The demo's export-and-measure step, on the deployment API.

Each quantized model is written with :func:`qsr_plugin.save` (one packed file holding every
depth variant) and measured with :func:`qsr_plugin.report` (parameters and operations per
depth with the paper's b/32 convention, for a 3x256x256 LR input as in the seed's Table 2).
The float model is written as a plain float32 safetensors checkpoint of its state dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
from torch import nn

from .._files import atomic_output
from ..export import save
from ..report import report

REPORT_INPUT_SIZE = (3, 256, 256)


@dataclass(frozen=True)
class DeploymentFigures:
    """The exported file and the cost of one model or depth variant.

    Attributes:
        params: parameters in thousands (quantized weights at bits/32).
        ops: operations in G (multiply-accumulates, quantized layers at bits/32) for one
            input of :data:`REPORT_INPUT_SIZE`.
        file: the exported file.
        file_bytes: its size.
    """

    params: float
    ops: float
    file: Path
    file_bytes: int


def export_float(model: nn.Module, folder: Path, name: str) -> Path:
    """Writes the float model's state dict as float32 safetensors ``folder/<name>.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    with atomic_output(path) as temporary:
        safetensors.torch.save_file(tensors, str(temporary))
    return path


def export_and_measure(
    quantized: nn.Module, folder: Path, name: str, float_file: Path
) -> dict[int | None, DeploymentFigures]:
    """Saves ``quantized`` to ``folder/<name>.safetensors`` and reports its cost.

    Returns:
        ``{depth: figures}`` for every depth variant, and ``{None: figures}`` for the float
        model the report derives from it (its original blocks in float), with ``float_file``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = save(quantized, folder / f"{name}.safetensors")
    efficiency = report(quantized, input_size=REPORT_INPUT_SIZE, saved_file=False)
    float_row, *rows = efficiency.rows

    def figures(row, file: Path) -> DeploymentFigures:
        ops = row.ops + row.product_ops
        return DeploymentFigures(row.params / 1e3, ops / 1e9, file, file.stat().st_size)

    measured = {row.blocks: figures(row, path) for row in rows}
    measured[None] = figures(float_row, float_file)
    return measured
