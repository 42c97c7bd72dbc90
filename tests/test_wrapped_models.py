"""Every verb works on a quantized model inside torch.compile, DataParallel or DDP."""

import json
import struct

import pytest
import torch
import torch.distributed as dist
from _deploy_models import (
    arch,
    as_trained,
    lr_patches,
    small_msrresnet,
)
from torch import nn

import qsr_plugin

pytestmark = pytest.mark.usefixtures("eager_kernels")


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group, as DistributedDataParallel needs."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def file_content(path):
    """The parsed header and the data section (the header's key order varies between saves)."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + size]), raw[8 + size :]


WRAPPERS = {
    "compile": torch.compile,
    "DataParallel": nn.DataParallel,
    "DDP": nn.parallel.DistributedDataParallel,
    "compiled DataParallel": lambda m: torch.compile(nn.DataParallel(m)),
}


@pytest.mark.parametrize(
    "wrapper",
    [pytest.param(name, marks=pytest.mark.slow if name != "compile" else ()) for name in WRAPPERS],
)
def test_every_verb_reads_the_record_through_the_wrapper(wrapper, tmp_path, request):
    if "DDP" in wrapper:
        request.getfixturevalue("process_group")
    model = as_trained(small_msrresnet(4))
    wrapped = WRAPPERS[wrapper](model)
    assert qsr_plugin.quantization_record(wrapped) is qsr_plugin.quantization_record(model)
    assert qsr_plugin.summary(wrapped) == qsr_plugin.summary(model)
    bare_file = qsr_plugin.save(model, tmp_path / "bare.safetensors")
    wrapped_file = qsr_plugin.save(wrapped, tmp_path / "wrapped.safetensors")
    assert file_content(wrapped_file) == file_content(bare_file)
    target = WRAPPERS[wrapper](small_msrresnet(4))
    assert qsr_plugin.load(target, wrapped_file) is target
    x = lr_patches("Set5", count=1)
    frozen = qsr_plugin.freeze(wrapped, depth=4)
    with torch.no_grad(), qsr_plugin.use_depth(model, 4):
        assert torch.equal(frozen(x), model(x))
    assert qsr_plugin.report(wrapped, (3, 16, 16), saved_file=False).rows == (
        qsr_plugin.report(model, (3, 16, 16), saved_file=False).rows
    )


def test_quantize_through_a_wrapper_quantizes_the_model_inside():
    model = arch("MSRResNet", num_feat=16, num_block=4, upscale=4)
    wrapped = nn.DataParallel(model)
    assert qsr_plugin.quantize(wrapped, bits=4, depth_variants=[4, 2]) is wrapped
    assert qsr_plugin.quantization_record(model).quantized[0] == "body.0.conv1"
    assert qsr_plugin.depth_variants(wrapped) == [4, 2]


def test_an_unquantized_wrapped_model_is_still_called_unquantized():
    wrapped = torch.compile(arch("MSRResNet", num_feat=16, num_block=4, upscale=4))
    with pytest.raises(ValueError, match="save\\(\\): MSRResNet was never quantized"):
        qsr_plugin.save(wrapped, "unused.safetensors")
