"""QuantSRModel in-process, on the smoke recipe's real data: init, joint training, validation."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch
import yaml
from basicsr_helpers import SMOKE_RECIPE

from qsr_plugin import mixed_precision, quantization_record
from qsr_plugin.integrations.basicsr import entry
from qsr_plugin.integrations.basicsr.options import OptionError, read_option_file
from qsr_plugin.integrations.basicsr.quantizer_state import all_initialized, quantizer_tensors
from qsr_plugin.rewrite.depth import depth_switchable_bodies
from qsr_plugin.sr_data import evaluate_bicubic, load_hr_images, make_pairs

from basicsr.data import build_dataloader, build_dataset  # isort: skip
from basicsr.models import build_model  # isort: skip

pytestmark = pytest.mark.usefixtures("eager_kernels")


def parse(workdir, options: dict | None = None, *force: str, is_train: bool = True) -> dict:
    """BasicSR's options for the smoke recipe (or ``options`` written to a file)."""
    path = SMOKE_RECIPE
    if options is not None:
        path = workdir / "options.yml"
        path.write_text(yaml.safe_dump(options, sort_keys=False))
    argv = ["-opt", str(path)] + (["--force_yml", *force] if force else [])
    return entry.parse_options(argv, is_train=is_train)


def first_batch(options: dict) -> dict:
    """Two real training samples (random crops of T91) collated like BasicSR's loader."""
    dataset = build_dataset(options["datasets"]["train"])
    return torch.utils.data.default_collate([dataset[0], dataset[1]])


def val_loader(options: dict):
    dataset_options = options["datasets"]["val"]
    return build_dataloader(build_dataset(dataset_options), dataset_options, num_gpu=0)


def body_of(net):
    return depth_switchable_bodies(net)[0][1]


@pytest.fixture
def smoke(workdir):
    """A fresh QuantSRModel of the smoke recipe (EMA on) and its options."""
    options = parse(workdir)
    return build_model(options), options


def test_ema_quantizers_start_uninitialised_and_get_the_trained_nets_state(smoke):
    model, options = smoke
    assert model.needs_quantizer_init and not all_initialized(model.net_g_ema)
    model.feed_data(first_batch(options))
    with pytest.raises(RuntimeError, match="never initialised"):
        model.test()  # the EMA net, before the first iteration
    model.initialize_quantizers()
    net, ema = quantizer_tensors(model.net_g), quantizer_tensors(model.net_g_ema)
    assert all_initialized(model.net_g) and all_initialized(model.net_g_ema)
    assert net.keys() == ema.keys() and len(net) > 0
    for key, tensor in net.items():
        assert torch.equal(tensor, ema[key]), key
    model.test()  # the EMA net evaluates
    assert model.output.shape[-2:] == tuple(4 * s for s in model.lq.shape[-2:])


def test_first_iteration_initialises_once_then_trains_every_variant(smoke):
    model, options = smoke
    model.feed_data(first_batch(options))
    model.optimize_parameters(1)
    assert not model.needs_quantizer_init
    steps = {k: v.clone() for k, v in quantizer_tensors(model.net_g).items() if k.endswith("step")}
    body = body_of(model.net_g)
    calls = collections.Counter()
    hooks = [
        body[i].register_forward_hook(lambda *_, i=i: calls.update([i]))
        for i in range(len(body.block_names))
    ]
    model.optimize_parameters(2)
    for hook in hooks:
        hook.remove()
    depths = list(body.depth_variants)
    assert list(model.get_current_log()) == [f"l_pix@{d}" for d in depths]
    assert calls == collections.Counter(i for d in depths for i in body.members(d))
    after = quantizer_tensors(model.net_g)
    moved = [k for k in steps if not torch.equal(steps[k], after[k])]
    assert moved, "the second iteration trains the quantizer steps"


def test_variant_loss_weights_decide_which_blocks_learn(workdir):
    options = parse(workdir, None, "train:variant_loss_weights=[0, 0, 1]", "train:ema_decay=0")
    model = build_model(options)
    model.feed_data(first_batch(options))
    model.initialize_quantizers()
    body = body_of(model.net_g)
    before = {i: body[i].conv1.weight.detach().clone() for i in range(body.original_depth)}
    model.optimize_parameters(1)
    trained = set(body.members(min(body.depth_variants)))
    for index, weight in before.items():
        changed = not torch.equal(weight, body[index].conv1.weight)
        assert changed == (index in trained), f"block {index}"


def test_validation_scores_and_saves_every_variant(smoke):
    model, options = smoke
    model.feed_data(first_batch(options))
    model.optimize_parameters(1)
    model.validation(val_loader(options), current_iter=1, tb_logger=None, save_img=True)
    depths = list(body_of(model.net_g).depth_variants)
    keys = {f"{metric}@{d}" for d in depths for metric in ("psnr", "ssim")}
    assert set(model.metric_results) == keys
    assert set(model.best_metric_results["Set5"]) == keys
    assert all(model.best_metric_results["Set5"][k]["iter"] == 1 for k in keys)
    images = [(name, image) for name, image in load_hr_images("datasets/Set5/GTmod12")]
    bicubic = evaluate_bicubic(make_pairs(images, 4), 4)["psnr"]
    for depth in depths:
        # one step from initialisation, MSRResNet is close to its bilinear base path
        assert abs(model.metric_results[f"psnr@{depth}"] - bicubic) < 3
        for name, _ in images:
            path = Path(options["path"]["visualization"]) / name / f"{name}_1_depth{depth}.png"
            assert path.is_file(), path


def test_swinir_is_padded_to_its_window_and_cropped_back(workdir):
    options = read_option_file(SMOKE_RECIPE)
    options["network_g"] = {
        "type": "SwinIR",
        "upscale": 4,
        "img_size": 16,
        "window_size": 4,
        "depths": [2, 2],
        "embed_dim": 12,
        "num_heads": [2, 2],
        "mlp_ratio": 2,
        "upsampler": "pixelshuffledirect",
    }
    options["quantsr"]["depth_variants"] = [2, 1]
    options["train"]["variant_loss_weights"] = [1, 1]
    parsed = parse(workdir, options)
    model = build_model(parsed)
    model.feed_data(first_batch(parsed))
    model.optimize_parameters(1)
    model.lq = torch.rand(1, 3, 19, 23)  # not a multiple of the window
    model.test()
    assert model.output.shape == (1, 3, 76, 92)


def test_without_depth_variants_names_are_basicsr_s(workdir):
    options = read_option_file(SMOKE_RECIPE)
    del options["quantsr"]["depth_variants"]
    del options["train"]["variant_loss_weights"]
    parsed = parse(workdir, options)
    model = build_model(parsed)
    model.feed_data(first_batch(parsed))
    model.optimize_parameters(1)
    assert list(model.get_current_log()) == ["l_pix"]
    model.validation(val_loader(parsed), current_iter=1, tb_logger=None, save_img=False)
    assert set(model.metric_results) == {"psnr", "ssim"}


@pytest.mark.slow
def test_cadyq_trains_with_its_bit_cost_and_validates(workdir):
    options = read_option_file(SMOKE_RECIPE)
    del options["quantsr"]["depth_variants"]
    del options["train"]["variant_loss_weights"]
    options["quantsr"].update(method="cadyq", candidate_bits=[4, 8], cost_weight=0.1)
    parsed = parse(workdir, options)
    model = build_model(parsed)
    net = model.get_bare_model(model.net_g)
    selector = net.body[0].conv1.act_quant.selector.weight.detach().clone()
    model.feed_data(first_batch(parsed))
    model.optimize_parameters(1)
    assert list(model.get_current_log()) == ["l_pix", "bit_cost"]
    assert not torch.equal(selector, net.body[0].conv1.act_quant.selector.weight)
    model.validation(val_loader(parsed), current_iter=1, tb_logger=None, save_img=False)
    assert set(model.metric_results) == {"psnr", "ssim"}


def test_depth_variants_on_an_arch_without_body_name_the_setting(workdir):
    options = read_option_file(SMOKE_RECIPE)
    options["network_g"] = {"type": "SRVGGNetCompact", "num_feat": 16, "num_conv": 4, "upscale": 4}
    with pytest.raises(
        OptionError, match=r"quantsr: cannot quantize network_g \(SRVGGNetCompact\)"
    ):
        build_model(parse(workdir, options))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"perceptual_opt": {"type": "PerceptualLoss"}}, r"train.perceptual_opt: QuantSRModel"),
        ({"pixel_opt": None}, r"train.pixel_opt is required"),
    ],
)
def test_unsupported_losses_are_named(workdir, change, message):
    options = read_option_file(SMOKE_RECIPE)
    options["train"].update(change)
    with pytest.raises(OptionError, match=message):
        build_model(parse(workdir, options))


def test_quantized_network_follows_the_quantsr_section(smoke):
    model, options = smoke
    record = quantization_record(model.net_g)
    assert list(record.config.depth_variants) == options["quantsr"]["depth_variants"]
    assert body_of(model.net_g).original_depth == options["network_g"]["num_block"]
    assert len(body_of(model.net_g).block_names) == max(options["quantsr"]["depth_variants"])


@pytest.mark.slow
def test_amp_option_trains_under_autocast(workdir):
    options = parse(workdir, None, "quantsr:amp=bf16", "train:ema_decay=0")
    model = build_model(options)
    dtypes = set()
    hook = model.net_g.conv_first.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    model.feed_data(first_batch(options))
    model.optimize_parameters(1)
    model.optimize_parameters(2)
    hook.remove()
    assert torch.bfloat16 in dtypes  # the training iterations (calibration runs in fp32)
    log = model.get_current_log()
    assert list(log) == [f"l_pix@{d}" for d in options["quantsr"]["depth_variants"]]
    assert all(isinstance(v, float) and v == v for v in log.values())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fp8", r"quantsr.amp must be 'bf16', 'fp16' or unset \(fp32\), got 'fp8'"),
        (True, "got True"),
    ],
)
def test_bad_amp_values_name_the_option(workdir, value, message):
    options = read_option_file(SMOKE_RECIPE)
    options["quantsr"]["amp"] = value
    with pytest.raises(OptionError, match=message):
        parse(workdir, options)


def test_amp_the_device_does_not_support_names_the_option(workdir, monkeypatch):
    monkeypatch.setattr(mixed_precision, "_autocast_supports", lambda device, dtype: False)
    with pytest.raises(OptionError, match=r"quantsr.amp: fp16 autocast is not supported on cpu"):
        build_model(parse(workdir, None, "quantsr:amp=fp16"))


@pytest.mark.slow
def test_fp16_training_state_keeps_the_grad_scaler(workdir):
    force = ("quantsr:amp=fp16", "train:ema_decay=0")
    options = parse(workdir, None, *force)
    model = build_model(options)
    model.feed_data(first_batch(options))
    model.optimize_parameters(1)
    model.precision.scaler.update(new_scale=1024.0)
    Path(options["path"]["training_states"]).mkdir(parents=True, exist_ok=True)
    model.save_training_state(epoch=0, current_iter=1)
    state = torch.load(Path(options["path"]["training_states"]) / "1.state", weights_only=False)
    resumed = build_model(parse(workdir, None, *force))
    assert resumed.precision.scaler.get_scale() == 65536.0  # GradScaler's initial scale
    resumed.resume_training(state)
    assert resumed.precision.scaler.get_scale() == 1024.0
