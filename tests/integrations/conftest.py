"""Fixtures of the BasicSR integration tests: real SR data in BasicSR's layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from qsr_plugin.integrations.basicsr.prepare_data import prepare_image_set
from qsr_plugin.sr_data import find_image_set

TRAIN_IMAGES = 16  # of T91, enough for a few batches of 2 patches
VAL_IMAGES = ("bird", "butterfly")  # the two smallest of Set5, to keep validation quick


def _subset(folder: Path, names: list[str], into: Path) -> Path:
    """A folder of symbolic links to some of ``folder``'s images (no copies)."""
    into.mkdir(parents=True)
    for name in names:
        (into / name).symlink_to(folder / name)
    return into


@pytest.fixture(scope="session")
def sr_datasets(tmp_path_factory) -> Path:
    """``datasets/T91`` (16 images) and ``datasets/Set5`` (2 images) at x4, from ../shared/data."""
    root = tmp_path_factory.mktemp("sr_data")
    t91 = find_image_set("T91")
    set5 = find_image_set("Set5")
    train = _subset(t91, sorted(p.name for p in t91.iterdir())[:TRAIN_IMAGES], root / "hr_t91")
    val = _subset(set5, [f"{name}.png" for name in VAL_IMAGES], root / "hr_set5")
    prepare_image_set(train, root / "datasets" / "T91", scales=[4])
    prepare_image_set(val, root / "datasets" / "Set5", scales=[4])
    return root / "datasets"


@pytest.fixture
def workdir(tmp_path, sr_datasets, monkeypatch) -> Path:
    """An empty current directory whose ``datasets`` is the prepared data."""
    (tmp_path / "datasets").symlink_to(sr_datasets)
    monkeypatch.chdir(tmp_path)
    return tmp_path
