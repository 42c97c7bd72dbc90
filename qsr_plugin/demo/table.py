"""The demo's results as text: the seed's Table 1 columns, then Table 2's cost columns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class ResultRow:
    """One model's figures on the held-out images.

    Attributes:
        method: ``"Bicubic"``, ``"SRResNet"`` (float) or ``"QuantSR-C"``.
        bits: None for bicubic, 32 for float, else the weight/activation bits.
        depth: blocks run (None for bicubic).
        psnr, ssim: means over the held-out images (Y channel).
        per_image: ``{name: {"psnr": .., "ssim": ..}}``.
        params: parameters in thousands, quantized weights counted at ``bits/32``
            (:func:`qsr_plugin.report`); None for bicubic.
        ops: operations in G (multiply-accumulates) for a 3x256x256 input, same
            convention; None for bicubic.
        file_bytes: size of the exported model file (one file holds every depth of a bit
            width); None for bicubic.
        file: that file, relative to the output folder; None for bicubic.
    """

    method: str
    bits: int | None
    depth: int | None
    psnr: float
    ssim: float
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    params: float | None = None
    ops: float | None = None
    file_bytes: int | None = None
    file: str | None = None

    @property
    def label(self) -> str:
        """Short name: ``bicubic``, ``float``, ``w4 d16``."""
        if self.bits is None:
            return "bicubic"
        if self.bits == 32:
            return "float"
        return f"w{self.bits} d{self.depth}"


def _ratio(value: float, reference: float | None) -> str:
    if not reference:
        return f"{value:,.{_digits(value)}f}"
    drop = 100 * (1 - value / reference)
    if value == reference:
        return f"{value:,.{_digits(value)}f} (0%)"
    return f"{value:,.{_digits(value)}f} ({'↓' if drop >= 0 else '↑'}{abs(drop):.1f}%)"


def _digits(value: float) -> int:
    return 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2


def format_table(rows: Sequence[ResultRow], scale: int, heldout: Sequence[str]) -> str:
    """Aligned text table: Method, Scale, #Bit (w/a), #Blk, PSNR, SSIM, Params, Ops, File.

    Ratios in brackets are relative to the float model, as in the seed's Table 2.
    """
    reference = next((r for r in rows if r.bits == 32), None)
    header = [
        "Method",
        "Scale",
        "#Bit (w/a)",
        "#Blk",
        "PSNR",
        "SSIM",
        "Params (K)",
        "Ops (G)",
        "File (KB)",
    ]
    lines = []
    for row in rows:
        bits = "-/-" if row.bits is None else f"{row.bits}/{row.bits}"
        cost = row.bits is not None
        lines.append(
            [
                row.method,
                f"x{scale}",
                bits,
                "-" if row.depth is None else str(row.depth),
                f"{row.psnr:.2f}",
                f"{row.ssim:.4f}",
                _ratio(row.params, reference and reference.params) if cost else "-",
                _ratio(row.ops, reference and reference.ops) if cost else "-",
                f"{row.file_bytes / 1024:,.1f}" if cost else "-",
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    title = f"Held-out images ({len(heldout)}: {', '.join(heldout)}), PSNR/SSIM on Y"

    def render(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 4 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "-" * len(render(header))
    return "\n".join([title, rule, render(header), rule, *map(render, lines), rule])
