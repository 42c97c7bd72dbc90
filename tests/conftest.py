"""Shared fixtures: real images as model inputs; the data folder of the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from qsr_plugin import use_compiled_kernels
from qsr_plugin.sr_data import builtin_images, to_tensor

# Set5, Set14 and T91 beside the repository unless QSR_DATA_DIR says otherwise. Set here, at
# import, so that subprocesses (CLI, DDP, BasicSR runs) see it too.
os.environ.setdefault("QSR_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def photo() -> torch.Tensor:
    """A real photograph (scikit-image's astronaut), 3 x 512 x 512 in [0, 1]."""
    return to_tensor(builtin_images()["train"]["astronaut"])


@pytest.fixture(scope="session")
def real_batch(photo):
    """``real_batch(shape)``: crops of the photograph with that (N, 3, H, W) shape."""

    def make(shape: tuple[int, ...]) -> torch.Tensor:
        n, _, h, w = shape
        crops = [
            photo[:, 40 + 37 * i : 40 + 37 * i + h, 100 + 23 * i : 100 + 23 * i + w]
            for i in range(n)
        ]
        return torch.stack(crops).contiguous()

    return make


@pytest.fixture
def eager_kernels():
    """Eager quantizer kernels (no 20 s compile), then the previous choice: for tests about
    something other than the compiled kernels (``pytestmark = pytest.mark.usefixtures(...)``)."""
    with use_compiled_kernels(False):
        yield
