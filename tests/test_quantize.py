"""quantize() on real BasicSR and timm architectures: rewrite, DQA, calibration, training."""

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
from archs import ARCHS, ARCHS_WITH_BODY, arch_by_name, arch_params

import qsr_plugin
from qsr_plugin import QuantConv2d, QuantLinear
from qsr_plugin.rewrite.depth import DepthSwitchableModuleList, DepthSwitchableSequential

# quantize() is under test, not the kernels (tests/test_rounding.py, tests/test_kernels.py):
# eager kernels spare each case the torch.compile time.
pytestmark = [
    pytest.mark.usefixtures("eager_kernels"),
    pytest.mark.filterwarnings("ignore:torch.meshgrid"),
]


def variants_for(depth: int) -> list[int]:
    return [depth, max(1, depth // 2)]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1 / F.mse_loss(a, b).item())


@pytest.mark.parametrize(
    "arch", arch_params(ARCHS_WITH_BODY, slow={"SwinIR_S", "timm-vit_tiny", "timm-swin_tiny"})
)
def test_quantize_trains_calibrates_and_switches_depth(arch, real_batch):
    model = arch.build()
    x = real_batch((2 if arch.is_sr else 1, *arch.input_shape[1:]))
    with torch.no_grad():
        float_out = model.eval()(x)
    depths = variants_for(arch.body_depth)
    returned = qsr_plugin.quantize(model, bits=4, depth_variants=depths, example_input=x[:1])
    assert returned is model, "quantize() works in place and returns the model"
    assert type(model) is type(arch.build()), "the model keeps its class"

    record = qsr_plugin.quantization_record(model)
    assert record.body.path == arch.body and record.body.depth == arch.body_depth
    assert qsr_plugin.depth_variants(model) == depths
    assert record.quantized and all(name.startswith(arch.body + ".") for name in record.quantized)

    qsr_plugin.calibrate(model, x)
    model.train()
    total, losses = qsr_plugin.joint_variant_loss(
        model, x, float_out.detach(), lambda out, target: (out - target).abs().mean()
    )
    assert set(losses) == set(depths) and torch.isfinite(total)
    total.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name

    model.eval()
    outputs = {}
    with torch.no_grad():
        for depth in qsr_plugin.iter_depths(model):
            outputs[depth] = model(x)
            assert outputs[depth].shape == float_out.shape
            assert torch.isfinite(outputs[depth]).all()
    # Randomly initialised SR nets have small residual branches (MSRResNet scales its
    # initial weights by 0.1), so depths differ by little, but by more than rounding noise.
    assert (outputs[depths[0]] - outputs[depths[1]]).abs().max() > 1e-6


@pytest.mark.parametrize("arch", arch_params(ARCHS, slow={"timm-swin_tiny"}))
def test_8_bit_calibrated_model_stays_close_to_float(arch, real_batch):
    """Tolerance: SR outputs within 30 dB PSNR of the float outputs; classifiers keep
    their top-1 class with logits at cosine similarity >= 0.99."""
    model = arch.build().eval()
    x = real_batch((2, *arch.input_shape[1:]))
    with torch.no_grad():
        reference = model(x)
    with pytest.warns(UserWarning, match="falls back") if arch.body is None else _no_warning():
        qsr_plugin.quantize(model, bits=8, example_input=x[:1])
    qsr_plugin.calibrate(model, x)
    with torch.no_grad():
        out = model.eval()(x)
    if arch.is_sr:
        assert psnr(out, reference) > 30
    else:
        assert (out.argmax(1) == reference.argmax(1)).all()
        assert F.cosine_similarity(out, reference, dim=1).min() > 0.99


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_float_checkpoint_loads_with_only_new_keys_missing():
    arch = arch_by_name("MSRResNet")
    float_model = arch.build()
    checkpoint = float_model.state_dict()
    model = qsr_plugin.quantize(arch.build(), bits=4, depth_variants=[4, 2])
    result = model.load_state_dict(checkpoint, strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys
    dqa_keys = {f"body.{name}" for name in model.body.dqa_tensors()}
    assert dqa_keys == {
        "body.shortcut_scale",
        "body.residual_scale",
        "body.membership",
    }
    assert all("_quant." in k or k in dqa_keys for k in result.missing_keys)
    for key, value in checkpoint.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_growing_the_body_keeps_the_float_function_before_quantization(real_batch):
    arch = arch_by_name("MSRResNet")
    model = arch.build().eval()
    x = real_batch((1, 3, 16, 16))
    with torch.no_grad():
        reference = model(x)
    qsr_plugin.quantize(model, bits=32, depth_variants=[8, 4, 2], example_input=x)
    body = model.body
    assert isinstance(body, DepthSwitchableSequential)
    assert len(body.block_names) == 8 and body.original_depth == 4
    assert body.members(4) == [0, 1, 2, 3]
    assert set(body.members(8)) == set(range(8))
    with torch.no_grad():
        with qsr_plugin.use_depth(model, 4):  # the original depth: exactly the float model
            assert torch.equal(model(x), reference)
        # The grown variant splits each block's residual between the block and its copy.
        assert torch.allclose(model(x), reference, atol=1e-5)
    assert not any(isinstance(m, QuantConv2d) and m.act_quant for m in model.modules())
    # The grown blocks start as copies of original blocks.
    assert torch.equal(body[4].conv1.weight, body[body.grown_from[0]].conv1.weight)


def test_growing_a_body_more_than_4x_is_refused_and_4x_is_allowed(real_batch):
    x = real_batch((1, 3, 16, 16))
    model = arch_by_name("MSRResNet").build()  # 4 blocks
    with pytest.raises(ValueError, match=r"grow the body of 4 blocks to 100, more than 4 x"):
        qsr_plugin.quantize(model, bits=4, depth_variants=[100], example_input=x)
    assert qsr_plugin.quantization_record(model) is None
    qsr_plugin.quantize(model, bits=4, depth_variants=[16, 4], example_input=x)
    assert len(model.body.block_names) == 16


def test_grown_blocks_get_gradients_from_the_first_step(real_batch):
    model = qsr_plugin.quantize(arch_by_name("MSRResNet").build(), bits=4, depth_variants=[6, 4])
    x = real_batch((2, 3, 16, 16))
    qsr_plugin.calibrate(model, x)
    model.train()(x).square().mean().backward()
    body = model.body
    assert body.residual_scale.grad[0].abs().sum() > 0  # the deepest variant's scales
    for grown in (4, 5):
        assert body[grown].conv1.weight.grad.abs().sum() > 0
        source = body.grown_from[grown - 4]
        assert body.step_scales(6, grown)[1].item() == 0.5  # split with its source block
        assert body.step_scales(6, source)[1].item() == 0.5
        assert body.step_scales(4, source)[1].item() == 1.0


def test_only_one_residual_scale_per_block_is_added_per_variant():
    counts = []
    for depths in ([4], [4, 3, 2, 1]):
        model = qsr_plugin.quantize(arch_by_name("EDSR").build(), bits=4, depth_variants=depths)
        counts.append(sum(p.numel() for p in model.parameters()))
    assert counts[1] - counts[0] == 3 * 4  # three more variants x four blocks; weights shared


@pytest.mark.slow
def test_swinir_keeps_working_after_tracing_and_its_mean_stays_a_tensor(real_batch):
    arch = arch_by_name("SwinIR_S")
    model = arch.build()
    x = real_batch((1, 3, 16, 16))
    qsr_plugin.quantize(model, bits=4, depth_variants=[4, 2, 1])
    assert type(model.mean) is torch.Tensor
    assert isinstance(model.layers, DepthSwitchableModuleList)
    record = qsr_plugin.quantization_record(model)
    assert record.analysis_method == "fx" and record.leaf_classes == ["SwinTransformerBlock"]
    qsr_plugin.calibrate(model, x)
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 3, 64, 64)


class ShapeBranchingNet(torch.nn.Module):
    """A model whose own forward branches on the input shape, so fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = torch.nn.Sequential(*[torch.nn.Conv2d(8, 8, 3, padding=1) for _ in range(3)])
        self.tail = torch.nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        if x.shape[-1] % 2:
            x = F.pad(x, (0, 1))
        self.last_size = x.shape[-1]
        return self.tail(self.blocks(self.head(x)))


def test_a_model_fx_cannot_trace_is_analysed_with_hooks_and_left_intact(real_batch):
    model = ShapeBranchingNet()
    x = real_batch((1, 3, 15, 15))
    reference = model(x)
    qsr_plugin.quantize(model, bits=8, depth_variants=[3, 1], example_input=x)
    record = qsr_plugin.quantization_record(model)
    assert record.analysis_method == "hooks" and "TraceError" in record.fx_error
    assert record.body.path == "blocks"
    assert model.last_size == 16  # the attribute the forward set before quantize()
    qsr_plugin.calibrate(model, x)
    assert model.eval()(x).shape == reference.shape
    assert "forward hooks" in qsr_plugin.summary(model)


def test_timm_notrace_modules_are_traced_as_leaves(real_batch):
    import timm.layers

    class WithSameConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = timm.layers.Conv2dSame(3, 8, 3)
            self.blocks = torch.nn.Sequential(
                *[torch.nn.Conv2d(8, 8, 3, padding=1) for _ in range(2)]
            )

        def forward(self, x):
            return self.blocks(self.stem(x))

    model = WithSameConv()
    from qsr_plugin.rewrite.analysis import analyze

    analysis = analyze(model, real_batch((1, 3, 16, 16)))
    assert "stem" in analysis.calls and analysis.calls["stem"].output == "stem"


def test_scope_all_keeps_the_first_and_last_layers_in_float():
    model = qsr_plugin.quantize(arch_by_name("MSRResNet").build(), bits=4, scope="all")
    assert type(model.conv_first) is torch.nn.Conv2d
    assert type(model.conv_last) is torch.nn.Conv2d
    assert isinstance(model.conv_hr, QuantConv2d) and isinstance(model.upconv1, QuantConv2d)


def test_include_and_exclude_patterns_refine_the_scope():
    model = qsr_plugin.quantize(
        arch_by_name("MSRResNet").build(),
        bits=4,
        include=["conv_hr"],
        exclude=["body.*.conv2"],
    )
    assert isinstance(model.conv_hr, QuantConv2d)
    assert isinstance(model.body[0].conv1, QuantConv2d)
    assert type(model.body[0].conv2) is torch.nn.Conv2d


@pytest.mark.slow
def test_timm_vit_linear_layers_and_explicit_body():
    model = qsr_plugin.quantize(
        arch_by_name("timm-vit_tiny").build(), bits=4, body="blocks", depth_variants=[12, 6, 3]
    )
    assert isinstance(model.blocks[0].attn.qkv, QuantLinear)
    assert type(model.head) is torch.nn.Linear


def test_set_depth_use_depth_and_errors():
    model = qsr_plugin.quantize(arch_by_name("EDSR").build(), bits=4, depth_variants=[4, 2, 1])
    qsr_plugin.set_depth(model, 2)
    assert qsr_plugin.active_depth(model) == 2
    with qsr_plugin.use_depth(model, 1):
        assert qsr_plugin.active_depth(model) == 1
    assert qsr_plugin.active_depth(model) == 2
    assert list(qsr_plugin.iter_depths(model)) == [4, 2, 1]
    with pytest.raises(ValueError, match=r"depth 3 is not a depth variant .* \[4, 2, 1\]"):
        qsr_plugin.set_depth(model, 3)
    with pytest.raises(ValueError, match="has no depth variants"):
        qsr_plugin.set_depth(qsr_plugin.quantize(arch_by_name("EDSR").build(), bits=4), 2)


def test_summary_reports_body_variants_and_layers():
    model = qsr_plugin.quantize(arch_by_name("MSRResNet").build(), bits=2, depth_variants=[8, 4])
    text = qsr_plugin.summary(model)
    assert "body: body (4 x ResidualBlockNoBN)" in text
    assert "grown to 8" in text and "4 blocks: 0-3" in text
    assert "body.0.conv1" in text and "quantsr w2/a2" in text
    assert "conv_first" in text and "float (outside the body 'body', scope='body')" in text


# -- bad input ------------------------------------------------------------------------------
def _snapshot(model):
    return (
        [(n, type(m)) for n, m in model.named_modules()],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def _assert_unchanged(model, snapshot):
    modules, state = snapshot
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert qsr_plugin.quantization_record(model) is None


def test_not_a_module_is_a_type_error():
    with pytest.raises(TypeError, match="needs a torch.nn.Module, got dict"):
        qsr_plugin.quantize({"weight": torch.ones(1)})


@pytest.mark.parametrize(
    ("depths", "message"),
    [
        ([], "depth_variants is empty"),
        ([4, 0], "depth_variants must be positive"),
        ([4, 2, 4], "depth_variants has duplicates"),
        ([4, 2.0], "depth_variants must be a list of ints"),
    ],
)
def test_bad_depth_variants_are_refused(depths, message):
    model = arch_by_name("EDSR").build()
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=message):
        qsr_plugin.quantize(model, bits=4, depth_variants=depths)
    _assert_unchanged(model, snapshot)


def test_depth_variants_for_a_model_without_body_are_refused():
    model = arch_by_name("SRVGGNetCompact").build()
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match="SRVGGNetCompact has none .* omit depth_variants"):
        qsr_plugin.quantize(model, bits=4, depth_variants=[2, 1])
    _assert_unchanged(model, snapshot)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("trunk", r"MSRResNet has no submodule 'trunk'; chains found: 'body' \(4 x"),
        ("body.0", r"body='body.0' is not a chain of blocks: it is a ResidualBlockNoBN"),
        ("conv_first", r"body='conv_first' is not a chain of blocks"),
    ],
)
def test_bad_body_names_are_refused(body, message):
    model = arch_by_name("MSRResNet").build()
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=message):
        qsr_plugin.quantize(model, bits=4, body=body, depth_variants=[2])
    _assert_unchanged(model, snapshot)


def test_no_layer_in_scope_is_refused_and_nothing_changes():
    model = arch_by_name("MSRResNet").build()
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=r"no Conv2d/Linear layer of MSRResNet is in scope"):
        qsr_plugin.quantize(model, bits=4, depth_variants=[4, 2], exclude=["body.*"])
    _assert_unchanged(model, snapshot)


def test_a_pattern_matching_nothing_is_refused():
    model = arch_by_name("MSRResNet").build()
    with pytest.raises(ValueError, match=r"include pattern 'bodyy\.\*' matches no Conv2d/Linear"):
        qsr_plugin.quantize(model, bits=4, include=["bodyy.*"])


def test_quantizing_twice_is_refused():
    model = qsr_plugin.quantize(arch_by_name("EDSR").build(), bits=4)
    with pytest.raises(ValueError, match=r"EDSR is already quantized \(body\.0\.conv1 is"):
        qsr_plugin.quantize(model, bits=2)


class IndexingNet(torch.nn.Module):
    """Its forward indexes a ModuleList instead of iterating it."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = torch.nn.ModuleList([torch.nn.Conv2d(8, 8, 3, padding=1) for _ in range(3)])

    def forward(self, x):
        x = self.head(x)
        for i in range(len(self.blocks)):
            x = self.blocks[i](x)
        return x


def test_a_modulelist_the_forward_indexes_is_refused_and_rolled_back():
    model = IndexingNet()
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match="'blocks' is a ModuleList that the model's forward"):
        qsr_plugin.quantize(model, bits=4, depth_variants=[3, 1])
    _assert_unchanged(model, snapshot)
    assert type(model.blocks) is torch.nn.ModuleList


def test_unknown_setting_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"unknown key\(s\) bitz \(did you mean bits\?\); valid keys: bits"
    ):
        qsr_plugin.quantize(arch_by_name("EDSR").build(), bitz=4)


def test_config_object_and_settings_are_exclusive():
    config = qsr_plugin.QuantizeConfig(bits=2)
    model = qsr_plugin.quantize(copy.deepcopy(arch_by_name("EDSR").build()), config=config)
    assert qsr_plugin.quantization_record(model).config == config
    with pytest.raises(ValueError, match=r"also scope='all'; pass either config="):
        qsr_plugin.quantize(arch_by_name("EDSR").build(), config=config, scope="all")


@pytest.mark.parametrize(
    "given",
    [{"bits": 4}, {"bits": 2}, {"depth_variants": [4, 2]}, {"bits": 4, "method": "lsq"}],
    ids=["default-bits", "bits", "depth_variants", "bits-and-method"],
)
def test_settings_beside_a_config_are_refused_even_when_equal_to_the_default(given):
    model = arch_by_name("EDSR").build()
    snapshot = _snapshot(model)
    changes = ", ".join(f"{k}={v!r}" for k, v in given.items())
    with pytest.raises(ValueError, match=re.escape(f"dataclasses.replace(config, {changes})")):
        qsr_plugin.quantize(model, config=qsr_plugin.QuantizeConfig(bits=2), **given)
    _assert_unchanged(model, snapshot)


# -- dequantize ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["MSRResNet", "SwinIR-classical"])
def test_dequantize_gives_back_the_float_model_with_the_trained_weights(name, real_batch):
    arch = arch_by_name(name)
    float_model = arch.build().eval()
    x = real_batch(arch.input_shape)
    model = qsr_plugin.quantize(
        copy.deepcopy(float_model), bits=4, depth_variants=[2 * arch.body_depth, 2]
    )
    first = next(m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear)))
    weight = first.weight
    assert qsr_plugin.dequantize(model) is model
    assert [(n, type(m)) for n, m in model.named_modules()] == [
        (n, type(m)) for n, m in float_model.named_modules()
    ]
    assert qsr_plugin.quantization_record(model) is None
    state, expected = model.state_dict(), float_model.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    assert any(p is weight for p in model.parameters()), "the trained weights are shared"
    with torch.no_grad():
        assert torch.equal(model.eval()(x), float_model(x))


def test_dequantize_can_keep_the_depth_variants():
    model = qsr_plugin.quantize(arch_by_name("EDSR").build(), bits=2, depth_variants=[4, 2])
    qsr_plugin.dequantize(model, bodies=False)
    assert qsr_plugin.depth_variants(model) == [4, 2]
    assert not any(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules())
    assert isinstance(model.body, DepthSwitchableSequential)


def test_dequantize_refuses_a_model_that_was_not_quantized():
    with pytest.raises(ValueError, match=r"dequantize\(\): EDSR was not quantized"):
        qsr_plugin.dequantize(arch_by_name("EDSR").build())
    with pytest.raises(TypeError, match="needs a torch.nn.Module, got str"):
        qsr_plugin.dequantize("model.safetensors")
