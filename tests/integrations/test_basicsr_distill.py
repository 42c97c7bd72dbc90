"""QuantSRModel with ``quantsr.distill`` and ``depth_policy: importance`` on the smoke recipe."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from test_basicsr_model import body_of, first_batch, parse

from qsr_plugin.integrations.basicsr.options import OptionError, check_options, read_option_file

from basicsr.archs import build_network  # isort: skip
from basicsr.models import build_model  # isort: skip
from basicsr_helpers import SMOKE_RECIPE  # isort: skip

pytestmark = pytest.mark.usefixtures("eager_kernels")


@pytest.fixture
def teacher_file(workdir):
    """A float checkpoint of the smoke recipe's network_g, in BasicSR's layout."""
    options = read_option_file(SMOKE_RECIPE)
    torch.manual_seed(1)
    net = build_network(copy.deepcopy(options["network_g"]))
    path = workdir / "float_net_g.pth"
    torch.save({"params": net.state_dict()}, path)
    return path


def with_distill(workdir, distill: dict, **quantsr) -> dict:
    options = read_option_file(SMOKE_RECIPE)
    options["quantsr"].update(distill=distill, **quantsr)
    options["train"]["ema_decay"] = 0.5
    return parse(workdir, options)


def test_distillation_trains_every_variant_against_the_teacher(workdir, teacher_file, caplog):
    options = with_distill(workdir, {"teacher": str(teacher_file), "features": 0.5})
    with caplog.at_level(logging.INFO, logger="basicsr"):
        model = build_model(options)
    assert "Distilling from the float teacher" in caplog.text
    model.feed_data(first_batch(options))
    model.optimize_parameters(1)
    depths = body_of(model.net_g).depth_variants
    expected = {
        f"l_{part}@{d}" for d in depths for part in ("pix", "distill_output", "distill_features")
    }
    assert set(model.step_losses) == expected
    assert all(torch.isfinite(v) and v > 0 for v in model.step_losses.values())
    # The teacher is the file's network, frozen.
    stored = torch.load(teacher_file, weights_only=True)["params"]
    teacher = model.teacher.model
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in stored.items())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_distillation_resumes_from_a_quantsr_checkpoint(workdir, teacher_file):
    options = with_distill(workdir, {"teacher": str(teacher_file)})
    model = build_model(options)
    model.feed_data(first_batch(options))
    model.optimize_parameters(1)
    Path(options["path"]["models"]).mkdir(parents=True)
    model.save_network([model.net_g, model.net_g_ema], "net_g", 1, ["params", "params_ema"])
    saved = Path(options["path"]["models"]) / "net_g_1.pth"
    resumed_options = with_distill(workdir, {"teacher": str(teacher_file)})
    resumed_options["path"]["pretrain_network_g"] = str(saved)
    resumed = build_model(resumed_options)
    assert not resumed.needs_quantizer_init
    resumed.feed_data(first_batch(options))
    resumed.optimize_parameters(2)
    assert "l_distill_output@8" in resumed.step_losses


@pytest.mark.parametrize(
    ("distill", "message"),
    [
        (
            {"teacher": "x.pth", "outptu": 1.0},
            r"quantsr\.distill\.outptu \(did you mean quantsr\.distill\.output\?\)",
        ),
        ({"output": 1.0}, r"quantsr\.distill\.teacher is required"),
        ({"teacher": "missing.pth"}, r"quantsr\.distill\.teacher: missing\.pth does not exist"),
        (
            {"teacher": "TEACHER", "features": -1},
            r"quantsr\.distill\.features must be a number >= 0, got -1",
        ),
        (
            {"teacher": "TEACHER", "output": "high"},
            r"quantsr\.distill\.output must be a number >= 0",
        ),
        ([1, 2], r"quantsr\.distill must be a mapping"),
    ],
)
def test_bad_distill_sections_are_refused_before_training(workdir, teacher_file, distill, message):
    options = read_option_file(SMOKE_RECIPE)
    if isinstance(distill, dict) and distill.get("teacher") == "TEACHER":
        distill["teacher"] = str(teacher_file)
    options["quantsr"]["distill"] = distill
    with pytest.raises(OptionError, match=message):
        check_options(options)


def test_a_teacher_of_another_architecture_is_named(workdir):
    options = read_option_file(SMOKE_RECIPE)
    other = build_network({**options["network_g"], "num_feat": 8})
    path = workdir / "other.pth"
    torch.save({"params": other.state_dict()}, path)
    with pytest.raises(
        OptionError,
        match=r"quantsr\.distill\.teacher: .*other\.pth \[params\]: .*size mismatch for conv_first",
    ):
        build_model(with_distill(workdir, {"teacher": str(path)}))


def test_importance_plans_are_logged_copied_to_ema_and_saved(workdir, caplog):
    options = read_option_file(SMOKE_RECIPE)
    options["quantsr"]["depth_policy"] = "importance"
    options["train"]["total_iter"] = 8
    options = parse(workdir, options)
    model = build_model(options)
    assert model.replan_iters == {0, 2, 4}
    model.feed_data(first_batch(options))
    with caplog.at_level(logging.INFO, logger="basicsr"):
        model.optimize_parameters(1)
    assert "Iteration 1: body re-planned by block importance" in caplog.text
    body, ema = body_of(model.net_g), body_of(model.net_g_ema)
    assert ema.plan() == body.plan() and torch.equal(ema.block_importance, body.block_importance)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="basicsr"):
        model.optimize_parameters(2)  # not a re-planning iteration
    assert "re-planned" not in caplog.text
    state = model.get_bare_model(model.net_g).state_dict()
    fresh = build_model(options)
    fresh.get_bare_model(fresh.net_g).load_state_dict(state)
    assert body_of(fresh.net_g).plan() == body.plan()
