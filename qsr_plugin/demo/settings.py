"""The demo's settings, and every check of them that can fail before training starts."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from ..rewrite.quantize import quantize
from ..sr_data import builtin_images, load_hr_images

SCALES = (2, 3, 4)
HELDOUT_FRACTION = 5


class DemoInputError(ValueError):
    """A demo setting or input the demo cannot use; raised before any training starts."""


@dataclass(frozen=True)
class DemoSettings:
    """What ``qsr demo`` does. Messages name the matching command-line option.

    Attributes:
        scale: SR factor (``--scale``): 2, 3 or 4.
        bits: bit widths to quantize to (``--bits``), each 2..8; one QAT run per entry.
        depths: depth variants trained jointly (``--depths``); None for the QuantSR-C
            pattern relative to the float body: ``2N, N, N/2`` blocks for an N-block body.
        float_steps: float training steps (``--steps F Q``).
        qat_steps: QAT steps per bit width.
        seed: seed of the model initialisation and of every patch sampler (``--seed``).
        out: output folder (``--out``), created if needed.
        data: folder of HR images (``--data``); None for scikit-image's photos.
        patch: LR patch side in pixels (``--patch``); HR patches are ``patch * scale``.
        batch: patches per training step (``--batch``).
        features: channels of the SRResNet (``--features``).
        blocks: residual blocks of the float SRResNet body (``--blocks``).
        float_lr: initial learning rate of float training (cosine decay to 0).
        qat_lr: initial learning rate of QAT.
        distill: distil every variant from the float model during QAT (``--no-distill``
            turns it off; see :mod:`qsr_plugin.distillation`).
        calibration_batches: batches that initialise the quantizers before QAT.
        record_every: QAT steps between two records of the quantizer statistics.
        threads: CPU threads for torch (``--threads``); None chooses (see
            :func:`qsr_plugin.demo.threads.choose_threads`).
        progress: show progress bars.

    Example:
        >>> DemoSettings(bits=(4, 2), qat_steps=100).resolved_depths()
        (16, 8, 4)
    """

    scale: int = 4
    bits: tuple[int, ...] = (4,)
    depths: tuple[int, ...] | None = None
    float_steps: int = 400
    qat_steps: int = 100
    seed: int = 0
    out: Path = Path("qsr_demo_output")
    data: Path | None = None
    patch: int = 24
    batch: int = 16
    features: int = 32
    blocks: int = 8
    float_lr: float = 1e-3
    qat_lr: float = 2e-4
    distill: bool = True
    calibration_batches: int = 4
    record_every: int = 10
    threads: int | None = None
    progress: bool = True

    def resolved_depths(self) -> tuple[int, ...]:
        """The depth variants, deepest first."""
        if self.depths is None:
            return tuple(sorted({2 * self.blocks, self.blocks, max(1, self.blocks // 2)})[::-1])
        return tuple(sorted(self.depths, reverse=True))

    def to_dict(self) -> dict:
        """The settings as JSON-ready data (paths as strings, depths resolved)."""
        values = dataclasses.asdict(self)
        values.update(
            out=str(self.out),
            data=None if self.data is None else str(self.data),
            bits=list(self.bits),
            depths=list(self.resolved_depths()),
        )
        return values


@dataclass
class DemoInputs:
    """Checked inputs: named training and held-out HR images, and the output folder."""

    train: list[tuple[str, np.ndarray]]
    heldout: list[tuple[str, np.ndarray]]
    source: str
    out: Path


def _positive(value: object, option: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DemoInputError(f"{option} must be a positive integer, got {value!r}")


def check_numbers(settings: DemoSettings) -> None:
    """Checks the numeric settings.

    Raises:
        DemoInputError: naming the option.
    """
    if settings.scale not in SCALES:
        raise DemoInputError(
            f"--scale must be one of {', '.join(map(str, SCALES))} (what the SRResNet "
            f"upsampler supports), got {settings.scale!r}"
        )
    for value, option in [
        (settings.float_steps, "--steps (float)"),
        (settings.qat_steps, "--steps (QAT)"),
        (settings.patch, "--patch"),
        (settings.batch, "--batch"),
        (settings.features, "--features"),
        (settings.blocks, "--blocks"),
        (settings.calibration_batches, "calibration_batches"),
        (settings.record_every, "record_every"),
    ]:
        _positive(value, option)
    if settings.blocks < 2:
        raise DemoInputError(
            f"--blocks must be at least 2 (depth variants switch between repeated blocks), "
            f"got {settings.blocks}"
        )
    if isinstance(settings.seed, bool) or not isinstance(settings.seed, int) or settings.seed < 0:
        raise DemoInputError(f"--seed must be a non-negative integer, got {settings.seed!r}")
    if settings.threads is not None:
        _positive(settings.threads, "--threads")
    if not settings.bits:
        raise DemoInputError("--bits needs at least one bit width, e.g. --bits 4 2")
    if len(set(settings.bits)) != len(settings.bits):
        raise DemoInputError(f"--bits has duplicates: {list(settings.bits)}")
    for bits in settings.bits:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise DemoInputError(
                f"--bits {bits!r} is not a quantized bit width: give values in 2..8 (the "
                "float model is always trained and reported beside them); nothing was run"
            )


def check_quantizable(float_model: nn.Module, settings: DemoSettings) -> None:
    """Quantizes throw-away copies of the model with each bit width and the depth variants.

    Raises:
        DemoInputError: the model cannot take these bits or depths (the library's reason).
    """
    depths = list(settings.resolved_depths())
    for bits in settings.bits:
        trial = copy.deepcopy(float_model)
        try:
            quantize(trial, bits=bits, depth_variants=depths)
        except ValueError as error:
            raise DemoInputError(
                f"--bits {bits} --depths {' '.join(map(str, depths))}: the "
                f"{settings.blocks}-block SRResNet cannot take these settings: {error}"
            ) from error


def load_inputs(settings: DemoSettings) -> DemoInputs:
    """Loads and checks the images, and makes sure the output folder is writable.

    With ``settings.data`` the images are split by file name: the last fifth (at least one)
    is held out, the rest trains. Without it, scikit-image's photos are used as
    :func:`qsr_plugin.sr_data.builtin_images` splits them.

    Raises:
        DemoInputError: an unreadable or empty image folder, fewer than two images, an image
            smaller than the HR patch, or an output folder that cannot be written.
    """
    if settings.data is None:
        photos = builtin_images()
        train, heldout = list(photos["train"].items()), list(photos["heldout"].items())
        source = "scikit-image photos (skimage.data)"
    else:
        try:
            images = load_hr_images(settings.data)
        except (FileNotFoundError, ValueError) as error:
            raise DemoInputError(f"--data: {error}") from error
        if len(images) < 2:
            raise DemoInputError(
                f"--data {settings.data} holds {len(images)} image; the demo needs at least "
                "two (one to train on, one held out to measure)"
            )
        held = max(1, len(images) // HELDOUT_FRACTION)
        train, heldout = images[:-held], images[-held:]
        source = str(settings.data)
    hr_patch = settings.patch * settings.scale
    too_small = [
        f"{name} ({img.shape[0]}x{img.shape[1]})"
        for name, img in train + heldout
        if min(img.shape[:2]) < hr_patch
    ]
    if too_small:
        raise DemoInputError(
            f"images smaller than the HR patch of {hr_patch}x{hr_patch} pixels (--patch "
            f"{settings.patch} x --scale {settings.scale}) in {source}: "
            f"{', '.join(too_small)}; lower --patch or use larger images"
        )
    return DemoInputs(train, heldout, source, prepare_output_folder(settings.out))


def prepare_output_folder(folder: Path) -> Path:
    """Creates ``folder`` (with parents) and checks that files can be written in it.

    Raises:
        DemoInputError: the folder cannot be created or written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise DemoInputError(
            f"--out {folder}: cannot write there ({reason}); choose a writable folder"
        ) from error
    return folder
