"""method='cadyq': settings, the image-gradient score, the selector's training, bits and cost."""

from __future__ import annotations

import copy

import pytest
import torch

import qsr_plugin
from qsr_plugin import QuantizeConfig, QuantSpec, sr_data, sr_training
from qsr_plugin.integrations.basicsr.options import OptionError, quantize_config
from qsr_plugin.quantizers.cadyq import (
    CADyQActivationQuantizer,
    cadyq_quantizers,
    default_candidate_bits,
    image_gradient_score,
)
from qsr_plugin.quantizers.pams import pams_activation_quantize
from tests.archs import ARCHS

MSRRESNET = next(arch for arch in ARCHS if arch.name == "MSRResNet")
SCALE = 2


@pytest.fixture(scope="module")
def sampler():
    images = sr_data.load_hr_images(sr_data.find_image_set("T91"))
    return sr_data.PatchSampler(images, SCALE, 24, seed=0)


@pytest.fixture(scope="module")
def set5():
    return sr_data.make_pairs(sr_data.load_hr_images(sr_data.find_image_set("Set5")), SCALE)


def cadyq_model(sampler, **settings):
    """A calibrated 4-block MSRResNet (x2) quantized with CADyQ."""
    model = qsr_plugin.quantize(
        MSRRESNET.build(),
        settings.pop("bits", 4),
        method="cadyq",
        example_input=torch.rand(MSRRESNET.input_shape),
        **settings,
    )
    sampler.generator.manual_seed(0)
    return sr_training.calibrate_from_sampler(model, sampler, batches=1, batch_size=4)


# -- settings ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"candidate_bits": [1, 4]}, r"candidate_bits must hold ints in 2\.\.8, got \[1, 4\]"),
        ({"candidate_bits": [4, 9]}, r"candidate_bits must hold ints in 2\.\.8"),
        ({"candidate_bits": []}, "candidate_bits is empty; give one or more bit widths"),
        ({"candidate_bits": 4}, "candidate_bits must be a list of ints"),
        ({"candidate_bits": [4, 4]}, "candidate_bits has duplicates"),
        ({"cost_weight": -0.1}, r"cost_weight must be a number >= 0"),
        ({"cost_weight": "high"}, r"cost_weight must be a number >= 0"),
        ({"act_bits": 32}, "act_bits=32 keeps activations in float, but method='cadyq'"),
    ],
)
def test_bad_settings_name_the_argument(settings, message):
    with pytest.raises(ValueError, match=message):
        QuantizeConfig(method="cadyq", **settings)


def test_cadyq_settings_are_refused_by_other_methods():
    with pytest.raises(ValueError, match="cost_weight=0.1 is not available with method='pams'"):
        QuantSpec(method="pams", cost_weight=0.1)


def test_yaml_section_maps_onto_the_settings():
    section = {"bits": 4, "method": "cadyq", "candidate_bits": [8, 4, 6], "cost_weight": 0.1}
    config = quantize_config({"quantsr": section})
    assert config.layer_spec().candidate_bits == (4, 6, 8)
    assert config.to_dict()["candidate_bits"] == [4, 6, 8]
    with pytest.raises(OptionError, match=r"invalid 'quantsr' section: cost_weight must be"):
        quantize_config({"quantsr": {**section, "cost_weight": -1}})


def test_default_candidates_start_at_the_activation_bits():
    assert default_candidate_bits(4) == (4, 6, 8)
    assert default_candidate_bits(2) == (2, 4, 6)
    assert default_candidate_bits(7) == (7, 8)


# -- the score and the selector --------------------------------------------------------------
def test_image_gradient_score_is_the_mean_normalised_sobel_magnitude():
    width = 16
    ramp = torch.arange(width, dtype=torch.float32).expand(1, 3, 8, width) / 100  # d/dx = 0.01
    score = image_gradient_score(ramp)
    # Interior columns see 0.01, the two replicate-padded border columns half of it.
    assert score[0, 0].item() == pytest.approx(1000 * 0.01 * (width - 1) / width, rel=1e-5)
    assert score[0, 1].item() == pytest.approx(0.0, abs=1e-4)
    assert image_gradient_score(torch.full((1, 3, 8, 8), 0.5)).abs().max() == 0
    with pytest.raises(ValueError, match="N x 3 x H x W or N x 1 x H x W images"):
        image_gradient_score(torch.rand(1, 2, 8, 8))


def test_forward_is_the_chosen_candidates_pams_quantization(real_batch):
    quantizer = CADyQActivationQuantizer((2, 4, 8), num_channels=3, channel_dim=-3)
    x = real_batch((3, 3, 12, 12)) - 0.5
    quantizer.image_score = image_gradient_score(x + 0.5)
    with torch.no_grad():
        quantizer.selector.weight.zero_()
        quantizer.selector.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))  # picks 4 bits
    output = quantizer.train()(x)
    assert quantizer.last_bits.tolist() == [4.0, 4.0, 4.0]
    assert torch.equal(output, pams_activation_quantize(x, quantizer.alpha[1], 4))


def test_bits_follow_the_score_by_construction(real_batch):
    """A selector that reads the gradient score gives a flat patch fewer bits."""
    quantizer = CADyQActivationQuantizer((4, 8), num_channels=3, channel_dim=-3)
    textured = real_batch((1, 3, 24, 24))
    images = torch.cat([torch.full_like(textured, 0.5), textured])
    with torch.no_grad():
        quantizer.selector.weight.zero_()
        quantizer.selector.weight[1, :2] = 1.0  # the 8-bit logit grows with the score
        quantizer.selector.bias.copy_(torch.tensor([1.0, 0.0]))
    quantizer.image_score = image_gradient_score(images)
    quantizer.eval().initialized.fill_(True)
    quantizer.state_changed()
    with torch.no_grad():
        quantizer(images)
    assert quantizer.last_bits.tolist() == [4.0, 8.0]


def test_selector_gets_gradients_from_loss_and_cost(sampler):
    model = cadyq_model(sampler).train()
    lr, hr = sampler.sample(4)
    loss = torch.nn.functional.l1_loss(model(lr), hr) + qsr_plugin.bit_cost_loss(model)
    loss.backward()
    for name, quantizer in cadyq_quantizers(model):
        assert quantizer.selector.weight.grad.abs().sum() > 0, name
        assert quantizer.selector.bias.grad.abs().sum() > 0, name
    assert qsr_plugin.bit_cost_loss(model) is None  # reading it cleared the record


@pytest.mark.slow
def test_train_qat_trains_the_selectors_and_reports_the_cost(sampler):
    model = cadyq_model(sampler)
    before = copy.deepcopy(model.state_dict())
    history = sr_training.train_qat(model, sampler, steps=3, lr=1e-3, batch_size=4)
    assert set(history[-1].losses) == {"float", "bit_cost"}
    for name, _ in cadyq_quantizers(model):
        for part in ("selector.weight", "selector.bias"):
            key = f"{name}.{part}"
            assert not torch.equal(before[key], model.state_dict()[key]), key


@pytest.mark.slow
def test_higher_cost_weight_gives_fewer_bits(sampler, set5):
    averages = {}
    for cost_weight in (0.0, 0.05):
        torch.manual_seed(0)
        model = cadyq_model(sampler, cost_weight=cost_weight)
        sampler.generator.manual_seed(0)
        sr_training.train_qat(model, sampler, steps=10, lr=1e-3, batch_size=4)
        with qsr_plugin.measure_bits(model) as bits:
            sr_data.evaluate_sr(model.eval(), set5[:3], SCALE)
        assert len(bits.per_image) == 3 and len(bits.per_layer) == 8
        averages[cost_weight] = bits.average
    assert averages[0.05] < averages[0.0] == 8.0


# -- measuring, reporting, refusing ---------------------------------------------------------
@pytest.mark.slow
def test_report_counts_the_measured_bits_and_deployment_refuses(sampler, set5):
    model = cadyq_model(sampler).eval()
    with pytest.raises(ValueError, match="measure them on the evaluation images first"):
        qsr_plugin.report(model, input_size=(3, 16, 16), saved_file=False)
    with qsr_plugin.measure_bits(model) as bits:
        sr_data.evaluate_sr(model, set5[:1], SCALE)
    assert bits.per_image == [8.0]  # a fresh selector starts at the highest candidate
    assert set(bits.per_layer.values()) == {8.0}
    row = qsr_plugin.report(model, input_size=(3, 16, 16), saved_file=False).rows[1]
    assert row.bits == "4/8.00 (measured average)"
    for verb in (qsr_plugin.freeze, lambda m: qsr_plugin.report(m, input_size=(3, 16, 16))):
        with pytest.raises(ValueError, match="uses method 'cadyq', whose activation bit width"):
            verb(model)


def test_layer_called_alone_says_to_call_the_model(sampler):
    layer = cadyq_model(sampler).body[0].conv1
    with pytest.raises(RuntimeError, match="has no image-gradient score"):
        layer(torch.rand(1, 16, 8, 8))


def test_measure_bits_needs_a_cadyq_model():
    bits = qsr_plugin.measure_bits(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="measure_bits\\(\\): the model has no CADyQ layers"):
        bits.__enter__()


@pytest.mark.slow
def test_accuracy_benchmark_row_carries_the_measured_bits(eager_kernels, tmp_path):
    from benchmarks import accuracy

    settings = accuracy.AccuracySettings(
        num_feat=8, num_block=2, scale=2, patch=12, batch=2, float_steps=4, float_lr=1e-3,
        qat_steps=2, qat_lr=1e-4, bits=(2,), calibration_batches=1,
        train_set="Set5", eval_sets=("Set5",),
    )  # fmt: skip
    method = next(m for m in accuracy.METHODS if m.label == "CADyQ")
    result = accuracy.benchmark(settings, tmp_path, (method,), log=lambda _: None, progress=False)
    (row,) = result["rows"]
    assert len(row["bits_per_image"]) == 5 and 2 <= row["avg_bits"] <= 6
    assert f"| CADyQ | 2 (a: {row['avg_bits']:.2f} avg) |" in accuracy.markdown(result)
