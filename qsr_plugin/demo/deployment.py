"""The demo's export-and-measure step: the one place that will call the deployment API.

PENDING: the packed export (``qsr_plugin.save``) and the cost report (``qsr_plugin.report``,
parameters and operations per depth variant with the paper's b/32 convention) are being
written on the ``deploy`` branch and are not in this code base yet. Until they are,
:func:`export_and_measure` writes no file and returns no figures, and the demo shows
"pending" in the Params / Ops / File columns and skips the trade-off plot. Nothing here
counts parameters or saves weights by itself, so no figure is invented meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

REPORT_INPUT_SIZE = (1, 3, 256, 256)


@dataclass(frozen=True)
class DeploymentFigures:
    """The exported file and the cost of one depth of a model.

    Attributes:
        params: parameters in thousands (quantized ones at bits/32).
        ops: operations in G for an input of :data:`REPORT_INPUT_SIZE`.
        file: the exported file.
        file_bytes: its size.
    """

    params: float
    ops: float
    file: Path
    file_bytes: int


def export_and_measure(
    model: nn.Module, folder: Path, name: str, depths: list[int] | None
) -> dict[int | None, DeploymentFigures] | None:
    """Exports ``model`` to ``folder/<name>`` and reports its cost per depth.

    Returns None while the deployment API is pending (see the module docstring).
    """
    return None
