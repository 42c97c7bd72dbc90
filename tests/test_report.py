"""report() and the cost counter, checked against counts written out from the architectures."""

import pytest
from _deploy_models import (
    arch,
    as_trained,
    data_section_size,
    expected_msrresnet_data_bytes,
    lr_patches,
    small_msrresnet,
)
from archs import SWINIR_S
from torch import nn
from torch.nn import functional as F

import qsr_plugin
from qsr_plugin.cost_count import count_forward

pytestmark = pytest.mark.usefixtures("eager_kernels")

H = W = 256  # the paper's 3x256x256 input
P = H * W  # LR pixels, i.e. SwinIR tokens


def conv3(cin, cout):
    return cin * cout * 9


def msrresnet_rows(bits):
    """(blocks, params, ops) of MSRResNet x4 (64 features, 16 blocks grown to 32) per row."""
    feat = 64
    # conv_first, upconv1, upconv2, conv_hr, conv_last (weights + biases)
    head_tail = (conv3(3, feat) + feat) + 2 * (conv3(feat, 4 * feat) + 4 * feat)
    head_tail += (conv3(feat, feat) + feat) + (conv3(feat, 3) + 3)
    # MACs: conv_first and upconv1 at the LR size, upconv2 at 2x, conv_hr and conv_last at 4x
    head_tail_ops = conv3(3, feat) * P + conv3(feat, 4 * feat) * P
    head_tail_ops += conv3(feat, 4 * feat) * 4 * P + conv3(feat, feat) * 16 * P
    head_tail_ops += conv3(feat, 3) * 16 * P
    block_weights, block_biases = 2 * conv3(feat, feat), 2 * feat
    quantizer_numbers = 2 * (
        feat + 1 + 1
    )  # per block: 2 convs x (tau, activation step, weight step)
    dqa_numbers = 32 + 3 * 32  # a shortcut scale per block, a residual scale per variant and block
    rows = [
        (
            16,
            head_tail + 16 * (block_weights + block_biases),
            head_tail_ops + 16 * block_weights * P,
        )
    ]
    for depth in (32, 16, 8):
        params = head_tail + dqa_numbers
        params += depth * (block_weights * bits / 32 + block_biases + quantizer_numbers)
        ops = head_tail_ops + depth * block_weights * P * bits / 32
        rows.append((depth, params, ops))
    return rows


def swinir_s_rows(bits):
    """(blocks, params, ops, attention products) of SwinIR_S x4 per row: embed_dim 60, 4 RSTBs
    of 6 blocks, 6 heads, window 8, mlp_ratio 2, pixelshuffledirect."""
    dim, hidden, heads, window = 60, 120, 6, 8
    linear_weights = dim * 3 * dim + dim * dim + dim * hidden + hidden * dim  # qkv, proj, fc1, fc2
    linear_biases = 3 * dim + dim + hidden + dim
    norms = 2 * 2 * dim
    position_table = (2 * window - 1) ** 2 * heads
    taus_and_steps = (dim + 2) * 3 + (hidden + 2)  # inputs of qkv, proj, fc1 (dim) and fc2 (hidden)
    rstb_conv = conv3(dim, dim)
    # conv_first, patch_embed norm, final norm, conv_after_body, upsample conv (60 -> 3 * 4^2)
    outside = (conv3(3, dim) + dim) + 2 * dim + 2 * dim + (rstb_conv + dim) + (conv3(dim, 48) + 48)
    outside_ops = (conv3(3, dim) + rstb_conv + conv3(dim, 48)) * P
    rstb_float = 6 * (linear_weights + linear_biases + norms + position_table) + rstb_conv + dim
    rstb_ops = (6 * linear_weights + rstb_conv) * P
    # q @ k^T and attn @ v: per token, per head, window^2 keys times head_dim (10), twice
    rstb_attention = 6 * 2 * heads * window**2 * (dim // heads) * P
    rows = [(4, outside + 4 * rstb_float, outside_ops + 4 * rstb_ops, 4 * rstb_attention)]
    for depth in (4, 2, 1):
        rstb = 6 * (linear_weights * bits / 32 + linear_biases + norms + position_table)
        rstb += 6 * taus_and_steps + rstb_conv * bits / 32 + dim + (dim + 2)
        params = outside + 4 + 3 * 4 + depth * rstb  # shortcut scales, residual scales
        ops = outside_ops + depth * rstb_ops * bits / 32
        rows.append((depth, params, ops, depth * rstb_attention))
    return rows


@pytest.mark.parametrize("bits", [4, 2])
def test_msrresnet_counts_match_the_architecture(bits):
    model = arch("MSRResNet", num_feat=64, num_block=16, upscale=4)
    qsr_plugin.quantize(
        model, bits=bits, depth_variants=[32, 16, 8], example_input=lr_patches(count=1)
    )
    result = qsr_plugin.report(model, input_size=(3, H, W), saved_file=False)
    assert [r.label for r in result.rows] == ["float", "quantsr", "quantsr", "quantsr"]
    assert [r.bits for r in result.rows] == ["32/32"] + [f"{bits}/{bits}"] * 3
    for row, (blocks, params, ops) in zip(result.rows, msrresnet_rows(bits), strict=True):
        assert (row.blocks, row.params, row.ops, row.product_ops) == (blocks, params, ops, 0)


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.slow
def test_swinir_s_counts_match_the_architecture(bits):
    model = arch("SwinIR", **SWINIR_S)
    qsr_plugin.quantize(
        model, bits=bits, depth_variants=[4, 2, 1], example_input=lr_patches(count=1)
    )
    result = qsr_plugin.report(model, input_size=(3, H, W), saved_file=False)
    for row, expected in zip(result.rows, swinir_s_rows(bits), strict=True):
        assert (row.blocks, row.params, row.ops, row.product_ops) == expected
    assert "| float | 32/32 | 4 | 929.6 (0%) | 57.72 (0%) | 12.08 | 69.80 (0%) |" in str(result)


def test_file_sizes_are_the_real_files(tmp_path):
    bits = 4
    model = as_trained(small_msrresnet(bits))
    result = qsr_plugin.report(model, input_size=(3, 16, 16))
    saved = qsr_plugin.save(model, tmp_path / "model.safetensors")
    assert result.files.saved == saved.stat().st_size
    layers = 2 * 8  # 8 blocks of 2 convolutions
    signedness_flags = layers  # one byte each in the file, not model numbers
    assert result.files.limit == data_section_size(saved)[0] - signedness_flags - 3 * 8
    plan = 3 * 8  # the membership buffer: one byte per variant and block, bookkeeping
    expected = expected_msrresnet_data_bytes(16, 4, 8, bits) - signedness_flags - plan
    assert result.files.limit == expected
    float_numbers = sum(p.numel() for p in arch("MSRResNet", num_feat=16, num_block=4).parameters())
    assert 4 * float_numbers < result.files.float32 < 4 * float_numbers + 4096
    assert f"saved file (qsr_plugin.save, all blocks): {saved.stat().st_size:,} bytes" in str(
        result
    )


def test_report_refuses_a_float_model_and_bad_sizes_and_needs_values_to_save():
    with pytest.raises(ValueError, match=r"report\(\): MSRResNet was never quantized"):
        qsr_plugin.report(arch("MSRResNet", num_feat=16, num_block=4))
    model = small_msrresnet(4)
    with pytest.raises(
        ValueError, match=r"input_size must be a tuple of positive ints, got \(3, 0"
    ):
        qsr_plugin.report(model, input_size=(3, 0, 16))
    with pytest.raises(
        RuntimeError,
        match=r"^report\(\) \(pass saved_file=False to count only\): body\.0\.conv1\.act_quant "
        r"was never initial",
    ):
        qsr_plugin.report(model, input_size=(3, 16, 16))
    counted = qsr_plugin.report(model, input_size=(3, 16, 16), saved_file=False)
    assert counted.files is None and len(counted.rows) == 4


def test_counter_handles_strides_groups_token_inputs_and_fused_attention():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, groups=1)
            self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.qkv = nn.Linear(8, 24)

        def forward(self, x):
            tokens = self.depthwise(self.stem(x)).flatten(2).transpose(1, 2)  # (1, 64, 8)
            q, k, v = self.qkv(tokens).reshape(1, 64, 3, 2, 4).permute(2, 0, 3, 1, 4)
            return F.scaled_dot_product_attention(q, k, v)

    cost = count_forward(Attention(), (3, 16, 16))
    assert [(c.name, c.macs) for c in cost.layers] == [
        ("stem", 8 * 8 * 8 * 3 * 9),  # 8x8 output after stride 2
        ("depthwise", 8 * 8 * 8 * 1 * 9),  # one input channel per group
        ("qkv", 64 * 24 * 8),
    ]
    assert cost.product_macs == 2 * 2 * 64 * 64 * 4  # q @ k^T and attn @ v, 2 heads of 4
    assert sum(cost.parameters.values()) == sum(p.numel() for p in Attention().parameters())
