"""A body that holds the same block object twice (tied modules): save, load, freeze, DQA."""

import json

import onnxruntime
import pytest
import safetensors
import torch
from _deploy_models import (
    arch,
    as_trained,
    lr_patches,
)
from torch import nn

import qsr_plugin

pytestmark = pytest.mark.usefixtures("eager_kernels")


def tied_msrresnet(**settings):
    """MSRResNet (16 features, 4 blocks, x4) whose body runs block 0 twice, then 2 and 3."""
    model = arch("MSRResNet", num_feat=16, num_block=4, upscale=4)
    blocks = list(model.body)
    model.body = nn.Sequential(blocks[0], blocks[0], blocks[2], blocks[3])
    return qsr_plugin.quantize(model, bits=4, **settings)


def test_a_tied_block_is_saved_once_and_loads_back_bit_identically(tmp_path):
    model = as_trained(tied_msrresnet())
    path = qsr_plugin.save(model, tmp_path / "tied.safetensors")
    with safetensors.safe_open(path, "pt") as file:
        aliases = json.loads(file.metadata()["aliases"])
        stored = set(file.keys())
    assert aliases["body.1.conv1.weight"] == "body.0.conv1.weight"
    assert not any(key.startswith("body.1.") for key in stored)
    restored = qsr_plugin.load(tied_msrresnet(), path).eval()
    assert restored.body[0] is restored.body[1]
    x = lr_patches("Set5", count=2)
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))


def test_freeze_keeps_the_tie_and_computes_what_the_model_computes():
    model = as_trained(tied_msrresnet())
    frozen = qsr_plugin.freeze(model)
    assert frozen.body[0] is frozen.body[1]
    x = lr_patches("Set5", count=2)
    with torch.no_grad():
        assert torch.equal(frozen(x), model(x))


def test_depth_variants_on_a_tied_body_are_refused_naming_both_paths():
    with pytest.raises(ValueError, match=r"body\.0 and body\.1 are the same block object"):
        tied_msrresnet(depth_variants=[4, 2], body="body")


@pytest.mark.slow  # onnx export and onnxruntime
def test_onnx_export_of_the_frozen_tied_model_runs_like_pytorch(tmp_path):
    frozen = qsr_plugin.freeze(as_trained(tied_msrresnet()))
    x = lr_patches("Set5", count=2)
    path = qsr_plugin.export_onnx(frozen, tmp_path / "tied.onnx", x)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = frozen(x).numpy()
    assert abs(got - expected).max() <= 1e-6  # these small models: every value within 1e-6


def test_summary_lists_the_tied_block_under_both_paths():
    text = qsr_plugin.summary(tied_msrresnet())
    assert "body.0.conv1                                 QuantConv2d" in text
    assert "body.1.conv1                                 the same module as body.0.conv1" in text
