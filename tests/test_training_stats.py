"""Quantizer statistics during training: recording, JSON, plots, tensorboard, `qsr stats`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import qsr_plugin
from qsr_plugin._basicsr_compat import import_basicsr
from qsr_plugin.cli import main
from qsr_plugin.sr_data import PatchSampler, builtin_images
from qsr_plugin.sr_training import calibrate_from_sampler, train_qat
from qsr_plugin.training_stats import (
    GROUPS,
    QUANTILES,
    QuantizerStatsRecorder,
    TrainingStats,
    quantizer_values,
)

pytestmark = pytest.mark.usefixtures("eager_kernels")


def quantized_srresnet(method="quantsr", num_block=3):
    import_basicsr()
    from basicsr.archs.srresnet_arch import MSRResNet

    torch.manual_seed(0)
    model = MSRResNet(num_feat=8, num_block=num_block, upscale=2)
    return qsr_plugin.quantize(model, bits=4, depth_variants=[num_block, 1], method=method)


@pytest.fixture(scope="module")
def sampler():
    photos = builtin_images()["train"]
    return PatchSampler([("astronaut", photos["astronaut"])], 2, patch_size=12, seed=0)


@pytest.fixture(scope="module")
def trained(sampler):
    """A QuantSR model after 6 QAT steps with a recorder that recorded every 2 steps."""
    model = quantized_srresnet()
    calibrate_from_sampler(model, sampler, batches=1, batch_size=4)
    recorder = QuantizerStatsRecorder(model, every=2, title="test run")
    recorder.record(0)
    train_qat(model, sampler, steps=6, lr=1e-2, batch_size=4, callbacks=[recorder])
    return model, recorder


def test_values_are_every_step_and_every_shift_element_of_the_model():
    model = quantized_srresnet()
    values = quantizer_values(model)
    layers = [m for m in model.modules() if isinstance(m, qsr_plugin.QuantConv2d)]
    assert len(layers) == 6  # two convolutions in each of 3 blocks
    assert values["weight_step"].numel() == len(layers)
    assert values["act_step"].numel() == len(layers)
    assert values["act_shift"].numel() == sum(layer.in_channels for layer in layers)


def test_lsq_has_no_shift_group_and_dorefa_is_refused():
    assert set(quantizer_values(quantized_srresnet("lsq"))) == {"weight_step", "act_step"}
    with pytest.raises(ValueError, match="no quantizer with a learnable step or shift"):
        QuantizerStatsRecorder(quantized_srresnet("dorefa"))
    with pytest.raises(ValueError, match="every must be a positive int"):
        QuantizerStatsRecorder(quantized_srresnet(), every=0)


def test_recorder_follows_training_and_summaries_match_the_values(trained):
    model, recorder = trained
    records = recorder.stats.records
    assert [r["step"] for r in records] == [0, 2, 4, 6]
    last = records[-1]
    for group, values in quantizer_values(model).items():
        values = values.double()
        assert last[group]["min"] == pytest.approx(values.min().item())
        assert last[group]["max"] == pytest.approx(values.max().item())
        assert last[group]["variance"] == pytest.approx(values.var(unbiased=False).item())
        assert last[group]["count"] == values.numel()
        assert list(last[group]["quantiles"]) == [f"{q:g}" for q in QUANTILES]
    # tau starts at 0 and spreads as training goes on (the seed's Figure 2).
    assert records[0]["act_shift"]["variance"] == 0.0
    assert records[-1]["act_shift"]["variance"] > 0.0
    assert records[-1]["weight_step"] != records[0]["weight_step"]


def test_json_round_trip_and_plot(trained, tmp_path):
    _, recorder = trained
    path = recorder.stats.save(tmp_path / "stats.json")
    loaded = TrainingStats.load(path)
    assert loaded == recorder.stats
    assert loaded.groups() == list(GROUPS)
    png = loaded.plot(tmp_path / "stats.png")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > image.height > 200
        pixels = np.asarray(image.convert("L"))
    assert pixels.min() < 100 and pixels.max() > 200  # something was drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json", "stats.png"]


def test_tensorboard_gets_scalars_and_histograms(trained, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    model, recorder = trained
    writer = SummaryWriter(log_dir=str(tmp_path))
    recorder.log_to_tensorboard(writer, step=5)
    recorder.log_to_tensorboard(writer, step=6)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0}).Reload()
    tags = events.Tags()
    expected_scalars = {
        f"quantizer/{group}/{key}" for group in GROUPS for key in ("min", "max", "mean", "variance")
    }
    assert expected_scalars <= set(tags["scalars"])
    assert {f"quantizer/{group}" for group in GROUPS} <= set(tags["histograms"])
    maxima = events.Scalars("quantizer/act_step/max")
    assert [e.step for e in maxima] == [5, 6]
    assert maxima[-1].value == pytest.approx(quantizer_values(model)["act_step"].max().item())
    histogram = events.Histograms("quantizer/act_shift")[-1].histogram_value
    assert histogram.num == quantizer_values(model)["act_shift"].numel()


def test_qsr_stats_plots_a_saved_file(trained, tmp_path, capsys):
    _, recorder = trained
    path = recorder.stats.save(tmp_path / "stats.json")
    assert main(["stats", str(path)]) == 0
    assert (tmp_path / "stats.png").is_file()
    assert main(["stats", str(path), "--out", str(tmp_path / "other.png")]) == 0
    with Image.open(tmp_path / "other.png") as image:
        assert image.format == "PNG"
    assert "4 records of weight_step, act_step, act_shift" in capsys.readouterr().out


def test_qsr_stats_reports_bad_files_in_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.json"
    assert main(["stats", str(missing)]) == 2
    assert f"qsr stats: error: [Errno 2] No such file or directory: '{missing}'" in (
        capsys.readouterr().err
    )
    not_json = tmp_path / "bad.json"
    not_json.write_text("{")
    assert main(["stats", str(not_json)]) == 2
    assert f"{not_json} is not valid JSON" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"records": []}))
    assert main(["stats", str(other)]) == 2
    assert "is not a qsr_plugin training-statistics file" in capsys.readouterr().err
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": 1, "records": [{"step": "x"}]}))
    assert main(["stats", str(wrong)]) == 2
    assert '"records" must be a list' in capsys.readouterr().err
    assert not any(p.suffix == ".png" for p in tmp_path.iterdir())


def test_plotting_nothing_or_to_an_unwritable_place_is_refused(trained, tmp_path):
    with pytest.raises(ValueError, match="no statistics recorded yet"):
        TrainingStats().plot(tmp_path / "empty.png")
    _, recorder = trained
    target = tmp_path / "no" / "such" / "folder" / "plot.png"
    with pytest.raises(OSError, match=f"cannot write {target}: the directory .* does not exist"):
        recorder.stats.plot(target)
