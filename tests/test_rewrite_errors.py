"""Errors raised while quantize() rewrites a model name the module and the fix."""

import pytest
import torch
from _deploy_models import arch
from torch import nn

import qsr_plugin
from qsr_plugin import layers


def msrresnet():
    return arch("MSRResNet", num_feat=16, num_block=4, upscale=4)


def test_a_weight_that_is_a_plain_tensor_is_kept_float_with_its_path_and_the_fix(real_batch):
    model = msrresnet()
    conv = model.body[1].conv1
    weight = conv.weight.detach().clone()
    del conv.weight
    conv.weight = weight
    with pytest.warns(
        UserWarning,
        match=r"body\.1\.conv1: its weight is a plain Tensor, not an nn\.Parameter.* "
        r"make it one \(layer\.weight = nn\.Parameter\(layer\.weight\)\)",
    ):
        qsr_plugin.quantize(model, bits=4)
    assert type(model.body[1].conv1) is nn.Conv2d
    assert isinstance(model.body[1].conv2, qsr_plugin.QuantConv2d)
    assert model(real_batch((1, 3, 16, 16))).shape == (1, 3, 64, 64)


def test_an_unexpected_failure_names_the_layer_and_leaves_the_model_as_it_was(monkeypatch):
    model = msrresnet()
    before = [type(m) for m in model.modules()]

    def broken(cls, conv, spec=None):
        raise TypeError("cannot assign 'torch.FloatTensor' as parameter 'weight'")

    monkeypatch.setattr(layers.QuantConv2d, "from_float", classmethod(broken))
    with pytest.raises(
        RuntimeError,
        match=r"rewriting body\.0\.conv1 \(Conv2d\) failed \(TypeError: cannot assign .*\); the "
        r"model is left as it was; keep it in float with exclude=\['body\.0\.conv1'\]",
    ):
        qsr_plugin.quantize(model, bits=4, depth_variants=[4, 2])
    assert [type(m) for m in model.modules()] == before
    assert qsr_plugin.quantization_record(model) is None
    assert torch.equal(model.body[0].conv1.weight, msrresnet().body[0].conv1.weight)
