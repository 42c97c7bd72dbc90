"""``qsr export -opt recipe.yml --weights ... --out model.onnx``: ONNX files per depth, timed."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _deploy_models import as_trained

import qsr_plugin
from qsr_plugin.cli import main
from qsr_plugin.cli._recipe import build_network, read_recipe

pytestmark = pytest.mark.usefixtures("eager_kernels")

RECIPE = Path(__file__).parent / "fixtures" / "recipes" / "quantsr_c_x4_small.yml"


@pytest.fixture
def weights(tmp_path):
    model = as_trained(build_network(read_recipe(RECIPE)))
    return model, qsr_plugin.save(model, tmp_path / "trained.safetensors")


@pytest.mark.slow
def test_export_writes_one_integer_graph_per_depth_and_prints_latencies(weights, tmp_path, capsys):
    model, path = weights
    out = tmp_path / "sr.onnx"
    arguments = ["export", "-opt", str(RECIPE), "--weights", str(path), "--out", str(out)]
    assert main([*arguments, "--input-size", "3", "24", "24", "--rounds", "2"]) == 0
    printed = capsys.readouterr().out
    depths = qsr_plugin.depth_variants(model)
    x = torch.rand(1, 3, 24, 24)
    for depth in depths:
        file = tmp_path / f"sr_d{depth}.onnx"
        assert f"depth {depth}" in printed and str(file) in printed
        graph = onnx.load(file).graph
        integer = sum(n.op_type in ("QLinearConv", "ConvInteger") for n in graph.node)
        assert integer == 2 * depth  # every block's two convolutions on integer kernels
        session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            expected = qsr_plugin.freeze(model, depth=depth)(x).numpy()
        assert np.abs(got - expected).max() < 1e-4
    assert "float" in printed and "vs float" in printed


def test_export_refuses_a_depth_that_is_not_a_variant(weights, tmp_path, capsys):
    _, path = weights
    out = tmp_path / "sr.onnx"
    arguments = ["export", "-opt", str(RECIPE), "--weights", str(path), "--out", str(out)]
    assert main([*arguments, "--depth", "5"]) == 2
    assert "--depth 5 is not a depth variant; choose from" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trained.safetensors"]
