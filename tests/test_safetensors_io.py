"""save()/load(): packed safetensors files of quantized BasicSR networks."""

import json
import os
import pickle
import struct
import warnings

import pytest
import safetensors.torch
import torch
from _deploy_models import (
    arch,
    as_trained,
    data_section_size,
    expected_msrresnet_data_bytes,
    lr_patches,
    small_msrresnet,
    small_swinir,
)
from torch import nn

import qsr_plugin
from qsr_plugin.export import safetensors_io

pytestmark = pytest.mark.usefixtures("eager_kernels")


def outputs_at_every_depth(model, x):
    with torch.no_grad():
        return {depth: model(x) for depth in qsr_plugin.iter_depths(model)}


BUILDS = {
    "msrresnet-w4": lambda: small_msrresnet(4),
    "msrresnet-w2": lambda: small_msrresnet(2),
    "msrresnet-w3-per-channel": lambda: small_msrresnet(3, per_channel=True),
    "swinir-w4": lambda: small_swinir(4),
    "swinir-w2": lambda: small_swinir(2),
    "swinir-lsq-w5-a6": lambda: small_swinir(method="lsq", weight_bits=5, act_bits=6),
}


@pytest.mark.parametrize("name", BUILDS)
def test_round_trip_gives_bit_identical_outputs_at_every_depth(name, tmp_path):
    build = BUILDS[name]
    model = as_trained(build())
    path = qsr_plugin.save(model, tmp_path / "model.safetensors")
    restored = qsr_plugin.load(build(), path).eval()
    x = lr_patches("Set5", count=2, seed=3)
    expected, got = outputs_at_every_depth(model, x), outputs_at_every_depth(restored, x)
    assert set(got) == set(expected) == set(qsr_plugin.depth_variants(model))
    for depth in expected:
        assert torch.equal(got[depth], expected[depth]), f"depth {depth} differs"


def test_load_takes_the_model_first_and_the_old_order_with_a_deprecation_warning(tmp_path):
    model = as_trained(small_msrresnet(4)).eval()
    path = qsr_plugin.save(model, tmp_path / "model.safetensors")
    x = lr_patches("Set5", count=1, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new_order = qsr_plugin.load(small_msrresnet(4), path).eval()
    with pytest.warns(DeprecationWarning, match=r"load\(model, path\)"):
        old_order = qsr_plugin.load(str(path), small_msrresnet(4)).eval()
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(new_order(x), expected)
        assert torch.equal(old_order(x), expected)


def test_load_refuses_a_model_that_is_not_a_module(tmp_path):
    with pytest.raises(TypeError, match="model must be an nn.Module, got str"):
        qsr_plugin.load("a.safetensors", "b.safetensors")


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_file_holds_b_bit_codes_and_nothing_else_in_float(bits, tmp_path):
    model = as_trained(small_msrresnet(bits))
    path = qsr_plugin.save(model, tmp_path / "model.safetensors")
    data, header = data_section_size(path)
    assert data == expected_msrresnet_data_bytes(16, 4, 8, bits)
    assert header < 16_000


@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, 2])
def test_full_size_files_are_within_two_percent_of_b32(bits, tmp_path):
    model = arch("MSRResNet", num_feat=64, num_block=16, upscale=4)
    qsr_plugin.quantize(
        model, bits=bits, depth_variants=[32, 16, 8], example_input=lr_patches(count=1)
    )
    qsr_plugin.calibrate(model, lr_patches(count=2))
    size = qsr_plugin.save(model, tmp_path / "quantsr_c.safetensors").stat().st_size
    b32 = expected_msrresnet_data_bytes(64, 16, 32, bits)
    float32 = 4 * sum(p.numel() for p in arch("MSRResNet", num_feat=64, num_block=16).parameters())
    assert b32 <= size <= 1.02 * b32
    assert size / float32 < 0.45 if bits == 4 else size / float32 < 0.35


def test_rebuilt_buffers_are_stored_as_digests_and_checked(tmp_path):
    model = as_trained(small_swinir(2))
    path = qsr_plugin.save(model, tmp_path / "model.safetensors")
    stored = safetensors.torch.load_file(path)
    assert not any(k.endswith(("attn_mask", "relative_position_index")) for k in stored)
    other_size = small_swinir(2, img_size=32)  # same weights' shapes, other attention masks
    with pytest.raises(ValueError, match=r"buffer layers\.\d.*attn_mask of the model differs"):
        qsr_plugin.load(other_size, path)


def test_tied_weights_are_stored_once_and_restored_tied(tmp_path):
    class TiedHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = arch("MSRResNet", num_feat=16, num_block=4, upscale=4)
            self.refine = nn.Conv2d(3, 3, 3, padding=1)
            self.refine_again = nn.Conv2d(3, 3, 3, padding=1)
            self.refine_again.weight = self.refine.weight

        def forward(self, x):
            return self.refine_again(self.refine(self.net(x)))

    def build():
        torch.manual_seed(0)
        return qsr_plugin.quantize(TiedHead(), bits=4, depth_variants=[4, 2])

    model = as_trained(build())
    path = qsr_plugin.save(model, tmp_path / "tied.safetensors")
    stored = safetensors.torch.load_file(path)
    assert "refine.weight" in stored and "refine_again.weight" not in stored
    restored = qsr_plugin.load(build(), path).eval()
    assert restored.refine_again.weight is restored.refine.weight
    x = lr_patches(count=1)
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))


def test_saving_an_uncalibrated_model_names_the_quantizer(tmp_path):
    with pytest.raises(RuntimeError, match=r"save\(\): body\.0\.conv1\.act_quant was never init"):
        qsr_plugin.save(small_msrresnet(4), tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_saving_a_float_model_or_another_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"save\(\): MSRResNet was never quantized; call qsr_plu"):
        qsr_plugin.save(arch("MSRResNet", num_feat=16, num_block=4), tmp_path / "f.safetensors")
    pams = as_trained(small_msrresnet(4, method="pams"))
    with pytest.raises(ValueError, match=r"body\.0\.conv1 uses method 'pams'; deployment suppor"):
        qsr_plugin.save(pams, tmp_path / "pams.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_directory_is_a_clear_error(tmp_path):
    model = as_trained(small_msrresnet(4))
    target = tmp_path / "missing" / "model.safetensors"
    with pytest.raises(FileNotFoundError, match=r"the directory .*missing does not exist; create"):
        qsr_plugin.save(model, target)
    assert not target.parent.exists()


def test_an_unwritable_directory_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    model = as_trained(small_msrresnet(4))

    def refuse(*args, **kwargs):  # what mkstemp raises in a directory without write permission
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with pytest.raises(PermissionError, match=r"no permission to create files in .*test_an_unw"):
        qsr_plugin.save(model, tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    model = as_trained(small_msrresnet(4))
    path = qsr_plugin.save(model, tmp_path / "model.safetensors")
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with torch.no_grad():
        model.body.shortcut_scale.add_(1.0)
    with pytest.raises(OSError, match=r"writing .*model\.safetensors failed .*nothing was written"):
        qsr_plugin.save(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


@pytest.fixture
def saved_swinir(tmp_path):
    return qsr_plugin.save(as_trained(small_swinir(4)), tmp_path / "swinir.safetensors")


def test_loading_into_a_model_with_other_bits_names_the_field(saved_swinir):
    with pytest.raises(ValueError, match=r"quantized differently: config\.bits: file has 4, mode"):
        qsr_plugin.load(small_swinir(2), saved_swinir)


def test_loading_into_a_model_with_other_variants_names_the_field(saved_swinir):
    model = small_swinir(4, depth_variants=[4, 2])
    with pytest.raises(ValueError, match=r"config\.depth_variants: file has \[4, 2, 1\], model ha"):
        qsr_plugin.load(model, saved_swinir)


def test_loading_into_another_architecture_size_names_the_layer(tmp_path):
    path = qsr_plugin.save(as_trained(small_msrresnet(4)), tmp_path / "m.safetensors")
    wider = qsr_plugin.quantize(
        arch("MSRResNet", num_feat=32, num_block=4, upscale=4), bits=4, depth_variants=[8, 4, 2]
    )
    with pytest.raises(
        ValueError, match=r"layers\.body\.0\.conv1\.weight_shape: file has \[16, 16"
    ):
        qsr_plugin.load(wider, path)


def rewrite_metadata(path, **changes):
    tensors = safetensors.torch.load_file(path)
    with open(path, "rb") as file:
        (size,) = struct.unpack("<Q", file.read(8))
        metadata = json.loads(file.read(size))["__metadata__"]
    metadata.update(changes)
    safetensors.torch.save_file(tensors, path, metadata)


@pytest.mark.slow
def test_a_file_from_another_plugin_version_names_the_version(tmp_path, monkeypatch):
    model = as_trained(small_swinir(4))
    monkeypatch.setattr(safetensors_io, "__version__", "0.0.1")
    path = qsr_plugin.save(model, tmp_path / "old.safetensors")
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"plugin_version: .* was written by qsr_plugin 0\.0\.1, "):
        qsr_plugin.load(small_swinir(4), path)


def test_edited_metadata_fails_the_checksum(saved_swinir):
    rewrite_metadata(saved_swinir, aliases="{}  ")
    with pytest.raises(
        ValueError, match="is corrupted: its tensors, tensor entries .* or metadata do not match"
    ):
        qsr_plugin.load(small_swinir(4), saved_swinir)


def test_swapped_offsets_of_two_same_shape_tensors_fail_the_checksum(tmp_path):
    path = qsr_plugin.save(as_trained(small_msrresnet(4)), tmp_path / "m.safetensors")
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    first, second = header["body.0.conv1.bias"], header["body.0.conv2.bias"]
    assert first["shape"] == second["shape"] and first["dtype"] == second["dtype"]
    first["data_offsets"], second["data_offsets"] = second["data_offsets"], first["data_offsets"]
    edited = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(edited)) + edited + raw[8 + size :])
    before, after = safetensors.torch.load(raw), safetensors.torch.load_file(path)
    assert torch.equal(after["body.0.conv1.bias"], before["body.0.conv2.bias"])  # a valid file
    with pytest.raises(ValueError, match=r"m\.safetensors is corrupted: .*offsets"):
        qsr_plugin.load(small_msrresnet(4), path)


def test_a_truncated_file_is_a_clear_error(saved_swinir):
    raw = saved_swinir.read_bytes()
    for cut in (4, 100, len(raw) - 10):
        saved_swinir.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="not a readable safetensors file .* truncated or cor"):
            qsr_plugin.load(small_swinir(4), saved_swinir)


def test_a_flipped_byte_in_the_data_is_a_clear_error(saved_swinir):
    raw = bytearray(saved_swinir.read_bytes())
    raw[-5] ^= 0x10
    saved_swinir.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"swinir\.safetensors is corrupted"):
        qsr_plugin.load(small_swinir(4), saved_swinir)


def test_other_files_are_refused_without_unpickling_them(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    pickled = tmp_path / "model.safetensors"
    pickled.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        qsr_plugin.load(small_swinir(4), pickled)
    assert not marker.exists()

    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match=r"was not written by qsr_plugin\.save\(\)"):
        qsr_plugin.load(small_swinir(4), plain)
    with pytest.raises(FileNotFoundError, match=r"load\(\): .*absent\.safetensors does not exist"):
        qsr_plugin.load(small_swinir(4), tmp_path / "absent.safetensors")


def test_loading_into_a_float_model_is_refused(saved_swinir):
    with pytest.raises(ValueError, match=r"load\(\): SwinIR was never quantized"):
        qsr_plugin.load(arch("SwinIR", upscale=4, img_size=16, window_size=4), saved_swinir)
