"""How the learnable quantizer parameters spread during training (QuantSR's Figures 1 and 2).

:class:`QuantizerStatsRecorder` snapshots three groups of values of a quantized model:

- ``weight_step``: the step of every weight quantizer (one per layer, or per output channel);
- ``act_step``: the step of every activation quantizer (one per layer);
- ``act_shift``: every element of the activation shifts tau (one per input channel).

Each record summarises each group over the whole model: min, max, mean, variance, count
and quantiles. Records are saved to JSON (:meth:`TrainingStats.save`), plotted as box plots
over training with the variance below (:meth:`TrainingStats.plot`), and can be logged to
tensorboard as scalars and histograms (:meth:`QuantizerStatsRecorder.log_to_tensorboard`).

Example:
    >>> recorder = QuantizerStatsRecorder(model, every=50)
    >>> train_qat(model, sampler, steps=500, callbacks=[recorder])
    >>> recorder.stats.save("stats.json"); recorder.stats.plot("stats.png")
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._files import atomic_output
from .quantizers import quantizers_of

GROUPS = {
    "weight_step": "weight steps",
    "act_step": "activation steps",
    "act_shift": "activation shifts tau",
}
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
FORMAT_VERSION = 1


def quantizer_values(model: nn.Module) -> dict[str, torch.Tensor]:
    """The current learnable quantizer values of ``model``, flattened, by group.

    Groups without any value (e.g. no shifts with ``method="lsq"``) are left out.

    Raises:
        ValueError: ``model`` holds no quantizer with a learnable step or shift.
    """
    collected: dict[str, list[torch.Tensor]] = {group: [] for group in GROUPS}
    for _, quantizer in quantizers_of(model):
        step = getattr(quantizer, "step", None)
        shift = getattr(quantizer, "shift", None)
        if isinstance(step, torch.Tensor):
            group = "weight_step" if quantizer.role == "weight" else "act_step"
            collected[group].append(step.detach().float().flatten().cpu())
        if isinstance(shift, torch.Tensor):
            collected["act_shift"].append(shift.detach().float().flatten().cpu())
    values = {group: torch.cat(parts) for group, parts in collected.items() if parts}
    if not values:
        raise ValueError(
            f"{type(model).__name__} has no quantizer with a learnable step or shift; "
            "quantize it with qsr_plugin.quantize(model, method='quantsr' or 'lsq') first"
        )
    return values


def summarize(values: torch.Tensor) -> dict[str, Any]:
    """min, max, mean, variance (population), count and :data:`QUANTILES` of ``values``."""
    values = values.double()
    quantiles = torch.quantile(values, torch.tensor(QUANTILES, dtype=values.dtype))
    return {
        "min": values.min().item(),
        "max": values.max().item(),
        "mean": values.mean().item(),
        "variance": values.var(unbiased=False).item(),
        "count": values.numel(),
        "quantiles": {f"{q:g}": v for q, v in zip(QUANTILES, quantiles.tolist(), strict=True)},
    }


@dataclass
class TrainingStats:
    """Recorded quantizer statistics: ``records`` is a list of ``{"step": int, group: summary}``.

    Attributes:
        records: one entry per recorded step, in order.
        title: a label for plots (e.g. ``"QuantSR-C w4/a4"``).
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The statistics as JSON-ready data."""
        return {"format": FORMAT_VERSION, "title": self.title, "records": self.records}

    @classmethod
    def from_dict(cls, data: Any, source: str = "data") -> TrainingStats:
        """Rebuilds statistics from :meth:`to_dict` output.

        Raises:
            ValueError: ``data`` is not in that layout (``source`` names it in the message).
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{source} is not a qsr_plugin training-statistics file (expected a JSON "
                f'object with "format": {FORMAT_VERSION}, as written by TrainingStats.save)'
            )
        records = data.get("records")
        if not isinstance(records, list) or not all(_is_record(r) for r in records):
            raise ValueError(
                f'{source}: "records" must be a list of {{"step": int, group: summary}} '
                f"objects with groups among {', '.join(GROUPS)}"
            )
        return cls(records=records, title=str(data.get("title", "")))

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the statistics as JSON (atomically); returns the path."""
        with atomic_output(path) as temporary:
            temporary.write_text(json.dumps(self.to_dict(), indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainingStats:
        """Reads statistics written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not JSON in the layout of :meth:`to_dict`.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error})") from error
        return cls.from_dict(data, source=str(path))

    def groups(self) -> list[str]:
        """The groups present in the records, in :data:`GROUPS` order."""
        return [g for g in GROUPS if any(g in record for record in self.records)]

    def plot(self, path: str | os.PathLike) -> Path:
        """Draws one box plot per group over training, with the variance below; writes a PNG.

        Boxes span the 25-75 % quantiles with the median marked; whiskers reach the minimum
        and maximum. Returns the path.

        Raises:
            ValueError: there is nothing to plot (no records).
        """
        if not self.records:
            raise ValueError("no statistics recorded yet; record at least one step before plotting")
        from matplotlib.figure import Figure

        groups = self.groups()
        figure = Figure(figsize=(4.2 * len(groups), 5.6))
        axes = figure.subplots(
            2,
            len(groups),
            squeeze=False,
            gridspec_kw={"height_ratios": [3, 1.3]},
            sharex="col",
        )
        for column, group in enumerate(groups):
            records = [r for r in self.records if group in r]
            steps = [r["step"] for r in records]
            positions = list(range(len(records)))
            boxes = [_box(r[group]) for r in records]
            top, bottom = axes[0][column], axes[1][column]
            top.bxp(boxes, positions=positions, showfliers=False, widths=0.6)
            top.set_title(GROUPS[group])
            top.grid(axis="y", alpha=0.3)
            bottom.plot(positions, [r[group]["variance"] for r in records], marker="o", ms=3)
            bottom.set_ylabel("variance")
            bottom.grid(alpha=0.3)
            every = max(1, len(steps) // 8)
            bottom.set_xticks(positions[::every], [str(s) for s in steps[::every]])
            bottom.set_xlabel("training step")
        figure.suptitle(self.title or "quantizer parameters during training")
        figure.tight_layout()
        with atomic_output(path) as temporary:
            figure.savefig(temporary, format="png", dpi=100)
        return Path(path)


def _is_record(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("step"), int)
        and all(key == "step" or key in GROUPS for key in record)
    )


def _box(summary: dict[str, Any]) -> dict[str, float]:
    quantiles = summary["quantiles"]
    return {
        "whislo": summary["min"],
        "q1": quantiles["0.25"],
        "med": quantiles["0.5"],
        "q3": quantiles["0.75"],
        "whishi": summary["max"],
    }


class QuantizerStatsRecorder:
    """Records :func:`quantizer_values` summaries of a model while it trains.

    Use it as a training callback (it records every ``every`` steps and at the last step),
    or call :meth:`record` yourself. :meth:`log_to_tensorboard` writes the current values to a
    ``torch.utils.tensorboard.SummaryWriter`` (for BasicSR or any other training loop).

    Args:
        model: a quantized model.
        every: record every this many steps when used as a callback.
        title: label stored with the statistics and used in plots.

    Raises:
        ValueError: ``model`` has no learnable quantizer values (see :func:`quantizer_values`).

    Example:
        >>> recorder = QuantizerStatsRecorder(model, every=10)
        >>> recorder.record(0)  # before training
        >>> train_qat(model, sampler, 100, callbacks=[recorder])
        >>> len(recorder.stats.records)
        11
    """

    def __init__(self, model: nn.Module, every: int = 10, title: str = "") -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        quantizer_values(model)
        self.model = model
        self.every = every
        self.stats = TrainingStats(title=title)

    def record(self, step: int) -> dict[str, Any]:
        """Summarises the current values as the record of ``step``; returns the record."""
        record: dict[str, Any] = {"step": int(step)}
        for group, values in quantizer_values(self.model).items():
            record[group] = summarize(values)
        self.stats.records.append(record)
        return record

    def __call__(self, report) -> None:
        """Training callback: records at every ``every``-th step and at the last step."""
        if report.step % self.every == 0 or report.step == report.total:
            self.record(report.step)

    def log_to_tensorboard(self, writer, step: int, prefix: str = "quantizer") -> None:
        """Writes the current values to a tensorboard ``SummaryWriter``.

        Per group: scalars ``{prefix}/{group}/min``, ``max``, ``mean`` and ``variance``, and
        a histogram ``{prefix}/{group}`` of all values.

        Example:
            >>> writer = torch.utils.tensorboard.SummaryWriter("tb_logs")
            >>> recorder.log_to_tensorboard(writer, step=current_iter)
        """
        for group, values in quantizer_values(self.model).items():
            summary = summarize(values)
            for key in ("min", "max", "mean", "variance"):
                writer.add_scalar(f"{prefix}/{group}/{key}", summary[key], step)
            writer.add_histogram(f"{prefix}/{group}", values, step)
