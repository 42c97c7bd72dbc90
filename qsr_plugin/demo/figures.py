"""The demo's pictures: a labelled side-by-side crop, and the accuracy/cost trade-off plot."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._files import atomic_output
from ..sr_data import Pair, bicubic_upscale

LABEL_HEIGHT = 40
GAP = 4
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


@dataclass(frozen=True)
class Crop:
    """A square window of one evaluation pair, in LR pixels."""

    image: int
    y: int
    x: int
    size: int

    def of_hr(self, img: np.ndarray, scale: int) -> np.ndarray:
        """The window in an HR-sized image (HR, bicubic or SR output)."""
        y, x, s = self.y * scale, self.x * scale, self.size * scale
        return img[y : y + s, x : x + s]


def hardest_crop(pairs: Sequence[Pair], scale: int, size: int = 40) -> Crop:
    """The window where bicubic upscaling errs most, over every pair (on a half-size grid).

    That is where super-resolution has the most to show. ``size`` (LR pixels) is reduced to
    fit the smallest LR image.
    """
    size = min([size] + [min(lr.shape[:2]) for _, lr, _ in pairs])
    stride = max(1, size // 2)
    best, best_error = None, -1.0
    for index, (_, lr, hr) in enumerate(pairs):
        difference = bicubic_upscale(lr, scale).astype(np.float64) - hr
        error = (difference**2).mean(axis=2)
        for y in range(0, lr.shape[0] - size + 1, stride):
            for x in range(0, lr.shape[1] - size + 1, stride):
                crop = Crop(index, y, x, size)
                window_error = float(crop.of_hr(error, scale).mean())
                if window_error > best_error:
                    best, best_error = crop, window_error
    return best


def comparison_strip(panels: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
    """Lays equally sized HxWx3 uint8 panels side by side, each under its label.

    Labels may hold a line break. The result is ``LABEL_HEIGHT + H`` high and
    ``n * W + (n - 1) * GAP`` wide.
    """
    from PIL import Image, ImageDraw, ImageFont

    height, width = panels[0][1].shape[:2]
    if any(img.shape[:2] != (height, width) for _, img in panels):
        raise ValueError("comparison panels must all have the same size")
    canvas = Image.new(
        "RGB", (len(panels) * width + (len(panels) - 1) * GAP, LABEL_HEIGHT + height), BACKGROUND
    )
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)
    for i, (label, img) in enumerate(panels):
        left = i * (width + GAP)
        canvas.paste(Image.fromarray(img), (left, LABEL_HEIGHT))
        draw.multiline_text((left + 3, 3), label, fill=TEXT, font=font, spacing=2)
    return np.asarray(canvas)


def save_png(img: np.ndarray, path: str | os.PathLike) -> Path:
    """Writes an HxWx3 uint8 image as PNG, atomically."""
    from PIL import Image

    with atomic_output(path) as temporary:
        Image.fromarray(img).save(temporary, format="PNG")
    return Path(path)


@dataclass(frozen=True)
class TradeoffPoint:
    """One model on the trade-off plot."""

    label: str
    psnr: float
    ops: float
    params: float
    bits: int


def tradeoff_plot(
    points: Sequence[TradeoffPoint],
    bicubic_psnr: float,
    path: str | os.PathLike,
    ops_label: str,
    params_label: str,
    title: str,
) -> Path:
    """PSNR against operations and against parameters, one marker per model; writes a PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.4))
    axes = figure.subplots(1, 2)
    markers = {32: "s", 8: "D", 6: "v", 5: "P", 4: "o", 3: "^", 2: "X"}
    for ax, attribute, label in ((axes[0], "ops", ops_label), (axes[1], "params", params_label)):
        for bits in sorted({p.bits for p in points}, reverse=True):
            group = sorted(
                (p for p in points if p.bits == bits), key=lambda p: getattr(p, attribute)
            )
            xs = [getattr(p, attribute) for p in group]
            ax.plot(
                xs,
                [p.psnr for p in group],
                marker=markers.get(bits, "o"),
                linestyle="-" if len(group) > 1 else "none",
                label="float (32-bit)" if bits == 32 else f"{bits}-bit",
            )
            for p, x in zip(group, xs, strict=True):
                ax.annotate(
                    p.label, (x, p.psnr), textcoords="offset points", xytext=(4, 4), fontsize=8
                )
        ax.axhline(bicubic_psnr, color="grey", linestyle="--", label="bicubic")
        ax.set_xlabel(label)
        ax.set_ylabel("PSNR on Y (dB), held-out images")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    return Path(path)
