"""Make BasicSR's benchmark folder layout from a folder of HR images.

For an image set ``<out>`` it writes ``<out>/GTmod12/<name>.png`` (the HR image cropped to
a multiple of 12, so that it divides by 2, 3 and 4) and ``<out>/LRbicx<s>/<name>.png`` (the
MATLAB-bicubic downscaled input, :func:`qsr_plugin.sr_data.bicubic_downscale`) for every
scale ``s``: the layout the recipes read (``dataroot_gt: datasets/Set5/GTmod12``,
``dataroot_lq: datasets/Set5/LRbicx4``). The folder appears complete or not at all.

Example:
    ``python integrations/basicsr/prepare_data.py ../shared/data/Set5/HR datasets/Set5``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from qsr_plugin.sr_data import bicubic_downscale, load_hr_images, modcrop

CROP_MULTIPLE = 12
GT_FOLDER = "GTmod12"


def lr_folder(scale: int) -> str:
    """Name of the LR folder for ``scale`` (``LRbicx4``)."""
    return f"LRbicx{scale}"


def _write_png(path: Path, rgb) -> None:
    import cv2
    import numpy as np

    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"could not write {path}")


def prepare_image_set(
    hr_folder: str | os.PathLike, out: str | os.PathLike, scales: Sequence[int] = (2, 4)
) -> Path:
    """Write ``out/GTmod12`` and ``out/LRbicx<s>`` for each scale from the HR images.

    Args:
        hr_folder: folder of HR images (PNG, JPEG, BMP, TIFF).
        out: the image set's folder to create, e.g. ``datasets/Set5``.
        scales: integer SR factors dividing 12.

    Returns:
        ``out``.

    Raises:
        FileExistsError: ``out`` exists already.
        FileNotFoundError / ValueError: no HR folder, no images, or a bad scale.
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists already; remove it or choose another folder")
    if not scales or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 or CROP_MULTIPLE % s for s in scales
    ):
        raise ValueError(f"scales must be integers dividing {CROP_MULTIPLE}, got {list(scales)}")
    images = load_hr_images(hr_folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        for folder in [GT_FOLDER, *map(lr_folder, scales)]:
            (staging / folder).mkdir()
        for name, image in images:
            hr = modcrop(image, CROP_MULTIPLE)
            _write_png(staging / GT_FOLDER / f"{name}.png", hr)
            for scale in scales:
                _write_png(staging / lr_folder(scale) / f"{name}.png", bicubic_downscale(hr, scale))
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``prepare_data.py HR_FOLDER OUT [--scales 2 4]``."""
    parser = argparse.ArgumentParser(
        prog="prepare_data.py",
        description="Write BasicSR's GTmod12 / LRbicx<s> folders (MATLAB bicubic) from HR images.",
    )
    parser.add_argument("hr_folder", help="folder of HR images, e.g. ../shared/data/Set5/HR")
    parser.add_argument("out", help="image set folder to create, e.g. datasets/Set5")
    parser.add_argument("--scales", type=int, nargs="+", default=[2, 4], help="default: 2 4")
    arguments = parser.parse_args(argv)
    try:
        out = prepare_image_set(arguments.hr_folder, arguments.out, arguments.scales)
    except (OSError, ValueError) as err:
        print(f"prepare_data.py: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}/{GT_FOLDER} and {', '.join(lr_folder(s) for s in arguments.scales)}")
    return 0
