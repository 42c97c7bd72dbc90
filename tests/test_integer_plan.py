"""Which frozen convolutions write the next layer's codes themselves (integer ONNX export)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _deploy_models import lr_patches
from torch import nn

import qsr_plugin
from qsr_plugin.export._integer_plan import fused_convolutions

pytestmark = pytest.mark.usefixtures("eager_kernels")


class Chains(nn.Module):
    """conv -> ReLU -> conv (fusable), conv -> LeakyReLU -> conv (not: the negative slope),
    and a conv whose output also feeds a residual sum (not: the sum needs the float)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.relu_a = nn.Conv2d(8, 8, 3, padding=1)
        self.relu_b = nn.Conv2d(8, 8, 3, padding=1)
        self.leaky_a = nn.Conv2d(8, 8, 3, padding=1)
        self.leaky_b = nn.Conv2d(8, 8, 3, padding=1)
        self.tail = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        x = self.head(x)
        x = x + self.relu_b(torch.relu(self.relu_a(x)))
        x = x + self.leaky_b(nn.functional.leaky_relu(self.leaky_a(x), 0.1))
        return self.tail(x)


def frozen_chains():
    model = qsr_plugin.quantize(Chains(), bits=4, scope="all", example_input=lr_patches(count=1))
    qsr_plugin.calibrate(model, lr_patches("Set14", count=4))
    return qsr_plugin.freeze(model.eval())


@pytest.mark.slow
def test_only_a_conv_reaching_the_next_quantizer_alone_is_fused():
    plan = fused_convolutions(frozen_chains())
    assert plan == {"relu_a": ("relu_b", "relu")}


def export_and_compare(frozen, tmp_path):
    x = lr_patches("Set5", count=2, seed=3)
    path = qsr_plugin.export_onnx(frozen, tmp_path / "m.onnx", x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        difference = np.abs(got - frozen(x).numpy()).max()
    return [n.op_type for n in onnx.load(path).graph.node], difference


@pytest.mark.slow
def test_the_fused_graph_computes_the_frozen_model(tmp_path):
    frozen = frozen_chains()
    with torch.no_grad():
        for module in frozen.modules():
            if isinstance(module, nn.Conv2d) and module.bias is not None:
                module.bias.zero_()
    ops, difference = export_and_compare(frozen, tmp_path)
    assert ops.count("QLinearConv") == 1 and ops.count("ConvInteger") == 3
    assert difference < 1e-5


@pytest.mark.slow
def test_no_fusion_where_the_int32_bias_would_move_codes(tmp_path):
    # A fresh Conv2d's random bias on 8 channels: rounding it to the int32 grid s_x * s_w / k
    # would move the value before relu_b's rounding by far more than 1e-3 of a step (about
    # 1 in 10 codes changed, measured); the conv stays ConvInteger and the graph exact.
    frozen = frozen_chains()
    ops, difference = export_and_compare(frozen, tmp_path)
    assert "QLinearConv" not in ops and ops.count("ConvInteger") == 4
    assert difference < 1e-5


def test_a_model_that_fx_cannot_trace_gets_no_fusion():
    class Branching(Chains):
        def forward(self, x):
            if x.mean() > 0:  # data-dependent control flow: fx cannot trace it
                return super().forward(x)
            return x

    model = qsr_plugin.quantize(Branching(), bits=4, scope="all", example_input=lr_patches(count=1))
    qsr_plugin.calibrate(model, lr_patches("Set14", count=4))
    assert fused_convolutions(qsr_plugin.freeze(model.eval())) == {}
