"""pretrain_network_g: float and QuantSR checkpoints into quantized networks, safely."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from basicsr_helpers import SMOKE_RECIPE

from qsr_plugin.integrations.basicsr import entry
from qsr_plugin.integrations.basicsr.checkpoint import (
    load_checkpoint,
    quantsr_only_keys,
    read_state_dict,
    save_atomically,
)
from qsr_plugin.integrations.basicsr.options import OptionError, read_option_file
from qsr_plugin.integrations.basicsr.quantizer_state import all_initialized, quantizer_tensors
from qsr_plugin.rewrite.depth import depth_switchable_bodies

from basicsr.archs import build_network  # isort: skip
from basicsr.models import build_model  # isort: skip

pytestmark = pytest.mark.usefixtures("eager_kernels")

SMOKE = read_option_file(SMOKE_RECIPE)


def float_net(**changes) -> torch.nn.Module:
    return build_network({**SMOKE["network_g"], **changes})


def save_basicsr_checkpoint(path, net, key="params"):
    torch.save({key: net.state_dict()}, path)
    return path


def model_with(workdir, *force: str, is_train: bool = True):
    argv = ["-opt", str(SMOKE_RECIPE), "--force_yml", *force]
    return build_model(entry.parse_options(argv, is_train=is_train))


def test_float_checkpoint_fills_float_weights_and_grown_blocks(workdir):
    source = float_net()
    path = save_basicsr_checkpoint(workdir / "float.pth", source)
    model = model_with(workdir, f"path:pretrain_network_g={path}")
    quantized = model.net_g
    for key, tensor in source.state_dict().items():
        assert torch.equal(quantized.state_dict()[key], tensor), key
    body_name, body = depth_switchable_bodies(quantized)[0]
    assert body.grown_from, "the smoke recipe grows its body"
    for offset, origin in enumerate(body.grown_from):
        grown = body[body.original_depth + offset]
        assert torch.equal(grown.conv1.weight, body[origin].conv1.weight)
    assert model.needs_quantizer_init and not all_initialized(quantized)
    # the EMA copy asks for 'params_ema' and, as in BasicSR, falls back to 'params'
    assert torch.equal(model.net_g_ema.conv_first.weight, source.conv_first.weight)


def test_float_checkpoint_report_separates_expected_and_copied_keys():
    source = float_net()
    quantized = model_net()
    report = load_checkpoint(quantized, source.state_dict(), "float.pth")
    assert not report.quantsr and report.loaded == len(source.state_dict())
    assert set(report.defaults) == quantsr_only_keys(quantized)
    assert report.copied and all(k not in source.state_dict() for k in report.copied)
    assert "QuantSR tensors are not in it" in report.describe()


def model_net():
    from qsr_plugin.integrations.basicsr.model import build_quantized_network
    from qsr_plugin.integrations.basicsr.options import quantize_config

    return build_quantized_network(SMOKE["network_g"], quantize_config(SMOKE))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"num_feat": 24},
            r"shape mismatches: .*body.0.conv1.weight \(file \(24, 24, 3, 3\), network \(16, 16",
        ),
        ({"num_block": 5}, r"unexpected keys: body.4.conv1.bias"),
        ({"num_block": 3}, r"missing keys: body.3.conv1.bias"),
    ],
)
def test_float_checkpoint_of_another_network_is_refused_with_its_keys(workdir, changes, message):
    path = save_basicsr_checkpoint(workdir / "other.pth", float_net(**changes))
    with pytest.raises(OptionError, match=rf"path.pretrain_network_g: .*other.pth.*{message}"):
        model_with(workdir, f"path:pretrain_network_g={path}")


def test_checkpoint_of_another_arch_is_refused(workdir):
    edsr = build_network(
        {
            "type": "EDSR",
            "num_in_ch": 3,
            "num_out_ch": 3,
            "num_feat": 16,
            "num_block": 4,
            "upscale": 4,
        }
    )
    path = save_basicsr_checkpoint(workdir / "edsr.pth", edsr)
    with pytest.raises(OptionError, match=r"edsr.pth .*does not fit network_g \(MSRResNet\)"):
        model_with(workdir, f"path:pretrain_network_g={path}")


def test_non_strict_loading_takes_what_fits_and_reports_the_rest():
    source = float_net(num_block=5)
    quantized = model_net()
    report = load_checkpoint(quantized, source.state_dict(), "five.pth", strict=False)
    assert report.skipped == sorted(k for k in source.state_dict() if k.startswith("body.4."))
    assert torch.equal(quantized.body[3].conv1.weight, source.body[3].conv1.weight)
    assert "not loaded (strict_load_g: false)" in report.describe()


def trained_state(workdir):
    model = model_with(workdir, "train:ema_decay=0")
    net = model.net_g
    net(torch.rand(2, 3, 16, 16))  # a training-mode forward initialises the quantizers
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_quantsr_checkpoint_loads_strictly_with_its_quantizer_state(workdir):
    state = trained_state(workdir)
    path = workdir / "quantsr.pth"
    torch.save({"params": state, "params_ema": state}, path)
    model = model_with(workdir, f"path:pretrain_network_g={path}")
    assert not model.needs_quantizer_init
    for key, tensor in quantizer_tensors(model.net_g).items():
        assert torch.equal(tensor, state[key]), key
    for key, tensor in quantizer_tensors(model.net_g_ema).items():
        assert torch.equal(tensor, state[key]), key


def test_quantsr_checkpoint_of_other_bits_is_refused(workdir):
    path = workdir / "quantsr.pth"
    torch.save({"params": trained_state(workdir)}, path)
    with pytest.raises(OptionError, match=r"QuantSR checkpoint that does not match.*4-bit"):
        model_with(workdir, f"path:pretrain_network_g={path}", "quantsr:bits=2")


@pytest.mark.slow
def test_quantsr_checkpoint_missing_a_tensor_is_refused(workdir):
    state = trained_state(workdir)
    del state["body.shortcut_scale"]
    path = workdir / "quantsr.pth"
    torch.save({"params": state}, path)
    with pytest.raises(OptionError, match=r"(?s)does not match.*body.shortcut_scale"):
        model_with(workdir, f"path:pretrain_network_g={path}")


def test_testing_needs_a_quantsr_checkpoint(workdir):
    path = save_basicsr_checkpoint(workdir / "float.pth", float_net())
    with pytest.raises(OptionError, match=r"testing needs a QuantSR checkpoint.*float.pth"):
        model_with(workdir, f"path:pretrain_network_g={path}", is_train=False)


class NotATensor:
    """Pickled into a checkpoint, it would run code on loading with weights_only=False."""


def test_checkpoint_with_python_objects_is_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"params": {"conv_first.weight": NotATensor()}}, path)
    with pytest.raises(OptionError, match=r"pickled.pth holds Python objects besides tensors"):
        read_state_dict(path, "params")


def test_checkpoint_without_the_param_key_is_refused(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(OptionError, match=r"has no 'params_ema' entry \(found \['state_dict'\]\)"):
        read_state_dict(path, "params_ema")


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(OptionError, match=r"path.pretrain_network_g: checkpoint .*gone.pth does"):
        read_state_dict(tmp_path / "gone.pth", "params")


def test_data_parallel_prefix_is_dropped(tmp_path):
    path = tmp_path / "dp.pth"
    torch.save({"params": {"module.conv_first.weight": torch.ones(1)}}, path)
    assert read_state_dict(path, "params") == ({"conv_first.weight": torch.ones(1)}, "params")


def test_save_atomically_writes_like_torch_save_and_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "state.pth"
    save_atomically({"a": torch.ones(2)}, path)
    assert torch.equal(torch.load(path)["a"], torch.ones(2))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(AttributeError):
        save_atomically({"a": lambda: None}, tmp_path / "broken.pth")  # not picklable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pth"]
