"""benchmarks.figures: the seed's Figures 3-8 from short real runs, and their settings."""

from __future__ import annotations

import pytest
from PIL import Image

from benchmarks import accuracy, figures

TOY = accuracy.AccuracySettings(
    num_feat=8, num_block=2, scale=2, patch=12, batch=2, float_steps=2, float_lr=1e-3,
    qat_steps=1, qat_lr=1e-4, calibration_batches=1, train_set="Set5", eval_sets=("Set5",),
)  # fmt: skip


@pytest.mark.parametrize(
    ("methods", "feature_methods", "message"),
    [
        ((figures.PHI_METHOD,), ("DoReFa",), "feature_methods: the figures need 'DoReFa', which"),
        (("DoReFa",), ("DoReFa",), r"methods: the figures need 'QuantSR \(RLQ \+ DQA, spread\)'"),
        ((figures.PHI_METHOD, "EDSR"), (), "methods: 'EDSR' is not a method of the accuracy"),
    ],
)
def test_figures_of_untrained_methods_name_the_argument(
    tmp_path, methods, feature_methods, message
):
    settings = figures.FigureSettings(TOY, methods, feature_methods)
    with pytest.raises(ValueError, match=message):
        figures.figures(settings, tmp_path / "out", tmp_path / "cache", log=lambda _: None)
    assert not (tmp_path / "out").exists()  # refused before any training


@pytest.mark.slow
def test_figures_are_written_from_real_runs(eager_kernels, tmp_path):
    settings = figures.FigureSettings(TOY, (figures.PHI_METHOD, "DoReFa", "CADyQ"), ("DoReFa",))
    result = figures.figures(
        settings, tmp_path / "out", tmp_path / "cache", log=lambda _: None, progress=False
    )
    assert set(result["figures"]) == {"phi_gradient", "features", "comparison"}
    for path in result["figures"].values():
        with Image.open(path) as png:
            assert png.format == "PNG" and min(png.size) > 200
    assert set(result["psnr"]) == {f"{m} {b}" for m in settings.methods for b in (4, 2)}
    assert set(result["cadyq_bits"]) == {"CADyQ 4", "CADyQ 2"}
    # phi changes the gradients of the original blocks' weights (on the same batch)
    assert result["phi_gradient"]["body.0.conv1"]["max_abs"] > 0
    text = figures.markdown(result)
    assert "phi_gradient.png" in text and "CADyQ average activation bits" in text
