"""Every recipe in recipes/: safe YAML, valid sections, consistent pairs, buildable networks."""

from __future__ import annotations

import re

import pytest
from basicsr_helpers import RECIPES

from qsr_plugin import quantization_record
from qsr_plugin.integrations.basicsr.model import build_quantized_network
from qsr_plugin.integrations.basicsr.options import (
    MODEL_TYPE,
    check_network_type,
    quantize_config,
    read_option_file,
    variant_loss_weights,
)
from qsr_plugin.rewrite.depth import depth_switchable_bodies

from basicsr.archs import build_network  # isort: skip
from basicsr.utils.registry import MODEL_REGISTRY  # isort: skip

pytestmark = pytest.mark.usefixtures("eager_kernels")

ALL = sorted(RECIPES.glob("*.yml"))
TESTS = [p for p in ALL if p.name.startswith("test_")]
TRAINING = [p for p in ALL if p not in TESTS]
PAPER = [p for p in TRAINING if p.name.startswith(("quantsr_", "float_"))]
QUANTSR_PAPER = [p for p in PAPER if p.name.startswith("quantsr_")]
# QUANTSR.md section 3 (float parameter counts at x4) and section 2 (depth variants)
BACKBONES = {
    "c": {"type": "MSRResNet", "num_feat": 64, "num_block": 16, "variants": [32, 16, 8]},
    "t": {"type": "SwinIR", "embed_dim": 60, "depths": [6, 6, 6, 6], "variants": [4, 2, 1]},
}
X4_FLOAT_PARAMETERS = {"float_srresnet_x4.yml": 1.52e6, "float_swinir_s_x4.yml": 0.93e6}


def names(paths):
    return [p.name for p in paths]


def load(path):
    return read_option_file(path)


@pytest.mark.parametrize("path", ALL, ids=names(ALL))
def test_recipe_is_a_valid_option_file(path):
    options = load(path)
    check_network_type(options["network_g"])
    assert options["model_type"] in MODEL_REGISTRY
    assert options["network_g"]["upscale"] == options["scale"]
    if options["model_type"] == MODEL_TYPE:
        config = quantize_config(options)
        if "train" in options:
            variant_loss_weights(options, list(config.depth_variants))
    else:
        assert "quantsr" not in options
    for metric in options["val"]["metrics"].values():
        assert metric["test_y_channel"] is True and metric["crop_border"] == options["scale"]
    for phase, dataset in options["datasets"].items():
        if phase != "train":
            assert re.search(rf"[xX]{options['scale']}$", dataset["dataroot_lq"]), phase


@pytest.mark.parametrize("path", PAPER, ids=names(PAPER))
def test_training_recipe_follows_the_published_settings(path):
    train = load(path)["train"]
    assert train["optim_g"] == {
        "type": "Adam",
        "lr": 2e-4,
        "weight_decay": 0,
        "betas": [0.9, 0.99],
    }
    assert train["scheduler"] == {
        "type": "MultiStepLR",
        "milestones": [250000, 400000, 450000, 475000],
        "gamma": 0.5,
    }
    assert train["total_iter"] == 500000
    assert train["pixel_opt"]["type"] == "L1Loss"
    dataset = load(path)["datasets"]["train"]
    assert "DIV2K" in dataset["dataroot_gt"] and "DIV2K" in dataset["dataroot_lq"]


@pytest.mark.parametrize("path", QUANTSR_PAPER, ids=names(QUANTSR_PAPER))
def test_quantsr_recipe_matches_its_paper_row_and_float_recipe(path):
    kind, bits = re.fullmatch(r"quantsr_([ct])_x\d(_2bit)?\.yml", path.name).groups()
    options = load(path)
    backbone = BACKBONES[kind]
    assert options["quantsr"]["bits"] == (2 if bits else 4)
    assert options["quantsr"]["depth_variants"] == backbone["variants"]
    for key, value in backbone.items():
        if key != "variants":
            assert options["network_g"][key] == value, key
    float_checkpoint = options["path"]["pretrain_network_g"]
    float_name = re.fullmatch(r"experiments/(\w+)/models/net_g_latest\.pth", float_checkpoint)[1]
    assert load(RECIPES / f"{float_name}.yml")["network_g"] == options["network_g"]


@pytest.mark.parametrize("path", TESTS, ids=names(TESTS))
def test_test_recipe_matches_its_training_recipe(path):
    options = load(path)
    trained = load(RECIPES / path.name.removeprefix("test_"))
    for key in ("model_type", "scale", "network_g", "quantsr"):
        assert options[key] == trained[key], key
    expected = f"experiments/{trained['name']}/models/net_g_latest.pth"
    assert options["path"]["pretrain_network_g"] == expected
    if path.name != "test_smoke_quantsr_c_x4.yml":
        sets = [dataset["name"] for dataset in options["datasets"].values()]
        assert sets == ["Set5", "Set14", "B100", "Urban100", "Manga109"]


def test_readme_table_lists_every_training_recipe():
    readme = (RECIPES / "README.md").read_text()
    rows = re.findall(r"^\| `([\w.]+\.yml)` \|", readme, flags=re.MULTILINE)
    assert sorted(rows) == names(TRAINING)
    for path in TESTS:
        assert f"`{path.name}`" in readme


def distinct_networks():
    """Recipes with distinct (network_g, quantsr) settings; a test recipe repeats its pair."""
    seen, unique = [], []
    for path in TRAINING:
        options = load(path)
        key = (options["network_g"], options.get("quantsr"))
        if key not in seen:
            seen.append(key)
            unique.append(path)
    return unique


BUILT = distinct_networks()


@pytest.mark.slow
@pytest.mark.parametrize("path", BUILT, ids=names(BUILT))
def test_recipe_network_is_built_and_quantized(path):
    options = load(path)
    if options["model_type"] != MODEL_TYPE:
        net = build_network(options["network_g"])
        parameters = sum(p.numel() for p in net.parameters())
        if path.name in X4_FLOAT_PARAMETERS:
            assert round(parameters, -4) == X4_FLOAT_PARAMETERS[path.name]
        return
    config = quantize_config(options)
    net = build_quantized_network(options["network_g"], config)
    (body_name, body), *others = depth_switchable_bodies(net)
    assert not others and list(body.depth_variants) == list(config.depth_variants)
    record = quantization_record(net)
    assert record.quantized and all(n.startswith(f"{body_name}.") for n in record.quantized)
    assert record.config.layer_spec().weight_bits == options["quantsr"]["bits"]
