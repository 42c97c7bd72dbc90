"""freeze(): inference models of one depth, equal to the quantized model in eval mode."""

import pytest
import torch
from _deploy_models import (
    arch,
    as_trained,
    lr_crops,
    lr_patches,
    small_msrresnet,
    small_swinir,
)
from archs import SWINIR_S
from torch.utils._python_dispatch import TorchDispatchMode

import qsr_plugin
from qsr_plugin.export import frozen_record
from qsr_plugin.export.frozen_body import ScaledResidualBlock, ScaledSkip
from qsr_plugin.export.frozen_layers import FrozenActivationQuantizer
from qsr_plugin.export.quantized_layers import ActivationGrid, activation_grid
from qsr_plugin.quantizers import LearnedStepActivationQuantizer, quantizers_of

pytestmark = pytest.mark.usefixtures("eager_kernels")

BUILDS = {
    "msrresnet-w4": lambda: small_msrresnet(4),
    "msrresnet-w2-per-channel": lambda: small_msrresnet(2, per_channel=True),
    "swinir-w4": lambda: small_swinir(4),
    "swinir-w2": lambda: small_swinir(2),
}


@pytest.mark.parametrize("name", BUILDS)
def test_frozen_model_equals_the_quantized_model_at_every_depth(name):
    model = as_trained(BUILDS[name]())
    x = lr_patches("Set5", count=2, seed=3)
    for depth in qsr_plugin.depth_variants(model):
        frozen = qsr_plugin.freeze(model, depth=depth)
        with torch.no_grad(), qsr_plugin.use_depth(model, depth):
            expected = model(x)
            assert torch.equal(frozen(x), expected), f"depth {depth} differs"


def test_frozen_model_keeps_only_the_active_blocks_in_execution_order():
    model = as_trained(small_msrresnet(4))  # 4 blocks grown to 8; variants 8, 4, 2
    container = model.body
    frozen = qsr_plugin.freeze(model, depth=4)
    steps = list(frozen.body.named_children())
    assert [int(name) for name, _ in steps] == list(container.execution_order)
    kinds = {int(name): type(step) for name, step in steps}
    members = set(container.plan()[4])
    assert {i for i, kind in kinds.items() if kind is not ScaledSkip} == members
    assert all(kinds[i] is ScaledResidualBlock for i in members)
    for name, step in steps:  # the learned scales travel with the steps
        assert torch.equal(step.alpha, container.shortcut_scale[int(name)].detach())
        if int(name) in members:
            _, scale = container.step_scales(4, int(name))
            assert step.scale is None if scale == 1 else torch.equal(step.scale, scale.detach())
    block_params = 2 * (16 * 16 * 9 + 16)
    removed = (8 - 4) * block_params
    quantizer_params = sum(p.numel() for _, q in quantizers_of(model) for p in q.parameters())
    dqa_params = container.shortcut_scale.numel() + container.residual_scale.numel()
    expected = sum(p.numel() for p in model.parameters()) - removed - quantizer_params - dqa_params
    assert sum(p.numel() for p in frozen.parameters()) == expected
    assert quantizers_of(frozen) == []
    assert not any(p.requires_grad for p in frozen.parameters())


class _CountRounding(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.round.default, torch.ops.aten.round_.default):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_frozen_model_quantizes_weights_once_not_on_every_call():
    model = as_trained(small_swinir(4))
    frozen = qsr_plugin.freeze(model, depth=2)
    layers = sum(1 for m in frozen.modules() if hasattr(m, "weight_codes"))
    x = lr_patches(count=1)
    with torch.no_grad(), qsr_plugin.use_depth(model, 2):
        with _CountRounding() as training_model:
            model(x)
        with _CountRounding() as inference_model:
            frozen(x)
    assert training_model.count == 2 * layers  # input and weight of every quantized layer
    assert inference_model.count == layers  # inputs only


def test_freeze_leaves_the_quantized_model_unchanged():
    model = as_trained(small_msrresnet(2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    qsr_plugin.set_depth(model, 4)
    qsr_plugin.freeze(model, depth=2)
    assert qsr_plugin.active_depth(model) == 4
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert frozen_record(qsr_plugin.freeze(model)).depth == 4  # default: the active depth


def test_freezing_at_a_depth_that_is_not_a_variant_names_the_variants():
    model = as_trained(small_swinir(4))
    with pytest.raises(ValueError, match=r"depth=3 is not a depth variant of SwinIR; choose one o"):
        qsr_plugin.freeze(model, depth=3)


def test_a_depth_for_a_model_without_variants_is_refused():
    model = qsr_plugin.quantize(arch("MSRResNet", num_feat=16, num_block=4), bits=4)
    as_trained(model)
    with pytest.raises(ValueError, match=r"depth=4 was given but MSRResNet has no depth variants"):
        qsr_plugin.freeze(model, depth=4)
    x = lr_patches(count=1)
    with torch.no_grad():
        assert torch.equal(qsr_plugin.freeze(model)(x), model(x))


def test_freezing_a_float_or_uncalibrated_model_is_refused():
    with pytest.raises(ValueError, match=r"freeze\(\): MSRResNet was never quantized"):
        qsr_plugin.freeze(arch("MSRResNet", num_feat=16, num_block=4))
    with pytest.raises(RuntimeError, match=r"body\.0\.conv1\.act_quant was never initialised"):
        qsr_plugin.freeze(small_msrresnet(4))


def test_frozen_model_refuses_training_mode():
    frozen = qsr_plugin.freeze(as_trained(small_msrresnet(4)), depth=2)
    with pytest.raises(RuntimeError, match="is inference-only .* call model.eval()"):
        frozen.train()(lr_patches(count=1))


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_frozen_quantizer_hands_on_the_layout_of_the_training_quantizer(compiled):
    qsr_plugin.use_compiled_kernels(compiled)
    quantizer = LearnedStepActivationQuantizer(4, num_channels=12, channel_dim=-3)
    tokens = lr_patches(count=1, size=16).flatten(2).repeat(1, 4, 1).transpose(1, 2).contiguous()
    x = tokens.transpose(1, 2).view(1, 12, 16, 16)  # SwinIR's patch_unembed: a transposed view
    qsr_plugin.calibrate(quantizer, x)
    frozen = FrozenActivationQuantizer(activation_grid(quantizer)).eval()
    expected = quantizer.eval()(x)
    got = frozen(x)
    assert torch.equal(got, expected) and got.stride() == expected.stride()


@pytest.mark.slow
@pytest.mark.parametrize("compiled", [False, True])
def test_full_size_swinir_s_frozen_equals_quantized(compiled):
    qsr_plugin.use_compiled_kernels(compiled)
    model = arch("SwinIR", **SWINIR_S)
    crops = lr_crops("Set14", size=64, count=3)  # 64 = img_size: the stored attention masks
    x = crops[2:]
    qsr_plugin.quantize(model, bits=4, depth_variants=[4, 2, 1], example_input=x)
    qsr_plugin.calibrate(model, crops[:2])
    frozen = qsr_plugin.freeze(model.eval(), depth=4)
    with torch.no_grad():
        assert torch.equal(frozen(x), model(x))


@pytest.mark.slow
def test_frozen_model_equals_the_quantized_model_with_compiled_kernels():
    qsr_plugin.use_compiled_kernels(True)
    model = as_trained(small_swinir(2))
    x = lr_patches("Set5", count=2, seed=3)
    frozen = qsr_plugin.freeze(model, depth=2)
    with torch.no_grad(), qsr_plugin.use_depth(model, 2):
        assert torch.equal(frozen(x), model(x))


def _devices(module):
    return {t.device.type for t in [*module.parameters(), *module.buffers()]}


@pytest.mark.parametrize("name", ["msrresnet-w4", "swinir-w4"])
def test_frozen_model_on_the_meta_device_keeps_everything_there(name):
    model = as_trained(BUILDS[name]())
    x = lr_patches("Set5", count=2, seed=3)
    with torch.no_grad():
        expected = qsr_plugin.freeze(model)(x)
        frozen = qsr_plugin.freeze(model).to("meta")
        output = frozen(x.to("meta"))
    assert _devices(frozen) == {"meta"}
    assert output.device.type == "meta" and output.shape == expected.shape


def test_a_model_moved_before_freezing_gives_a_frozen_model_of_its_dtype():
    model = as_trained(small_msrresnet(4)).double()
    frozen = qsr_plugin.freeze(model)
    assert {
        t.dtype for t in [*frozen.parameters(), *frozen.buffers()] if t.is_floating_point()
    } == {torch.float64}
    x = lr_patches("Set5", count=2, seed=3).double()
    with torch.no_grad():
        assert torch.equal(frozen(x), model.eval()(x))


def test_frozen_quantizer_makes_its_code_bounds_on_the_step_device():
    step = torch.tensor(0.5, device="meta", dtype=torch.float64)
    quantizer = FrozenActivationQuantizer(ActivationGrid(None, step, 4, True))
    for bound in (quantizer.q_min, quantizer.q_max):
        assert bound.device.type == "meta" and bound.dtype == torch.float64
