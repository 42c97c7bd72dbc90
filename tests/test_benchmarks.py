"""The benchmark code paths at toy sizes, and the adapters of the other QAT libraries.

The adapters must quantize exactly the layers qsr_plugin quantizes, at the same bit widths,
or the comparison in benchmarks/README.md would not compare like with like.
"""

import copy
import json
import time
import types
from pathlib import Path

import brevitas.nn as brevitas_nn
import pytest
import torch
from archs import SWINIR_S, arch_by_name
from torch import nn

import qsr_plugin
from benchmarks import accuracy, compare_kernels, gpu_check, run, speed
from benchmarks._timing import interleaved_samples, ratio_summary
from benchmarks.body_layers import body_layer_names, signed_inputs
from benchmarks.brevitas_qat import prepare_brevitas
from benchmarks.float_cache import cached_float_model
from benchmarks.memory import peak_step_memory
from benchmarks.models import SWINIR_S as BENCHMARK_SWINIR_S
from benchmarks.models import Backbone, small_msrresnet
from benchmarks.report import save
from benchmarks.torch_ao_qat import prepare_torch_ao
from qsr_plugin.quantizers._rounding import learned_step_fake_quantize

# A SwinIR with few layers: brevitas builds each quantized layer slowly.
TINY_SWINIR = Backbone(
    name="SwinIR tiny",
    arch="SwinIR",
    settings=dict(
        upscale=2, img_size=16, window_size=4, img_range=1.0, depths=[2, 2],
        embed_dim=12, num_heads=[2, 2], mlp_ratio=2, upsampler="pixelshuffledirect",
    ),
    scale=2, batch=1, patch=8, depth=2, depth_variants=(2, 1),
)  # fmt: skip


def _msrresnet():
    return arch_by_name("MSRResNet").build()


# -- which layers, which bits ---------------------------------------------------------


def test_the_benchmarks_build_swinir_s_as_the_tests_do():
    assert BENCHMARK_SWINIR_S.settings == SWINIR_S


def test_body_layer_names_are_the_body_convs_of_msrresnet():
    names = body_layer_names(_msrresnet(), torch.rand(1, 3, 16, 16))
    assert names == [f"body.{i}.conv{j}" for i in range(4) for j in (1, 2)]


def test_signed_inputs_agree_with_qsr_plugins_own_choice(real_batch):
    model = _msrresnet()
    batch = real_batch((2, 3, 16, 16))
    names = body_layer_names(model, batch[:1])
    signed = signed_inputs(model, names, batch)
    quantized = qsr_plugin.quantize(copy.deepcopy(model), bits=4, example_input=batch[:1])
    qsr_plugin.calibrate(quantized, [batch])
    expected = {name: bool(quantized.get_submodule(name).act_quant.signed) for name in names}
    assert signed == expected
    assert set(signed.values()) == {True, False}  # conv2 inputs follow a ReLU


def test_signed_inputs_refuses_unknown_layers():
    with pytest.raises(ValueError, match=r"\['body.9.conv1'\] are not in MSRResNet"):
        signed_inputs(_msrresnet(), ["body.9.conv1"], torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("bits", [4, 2])
def test_torch_ao_fake_quantizes_inputs_and_weights_of_exactly_the_body_layers(bits):
    from torch.ao.quantization import FakeQuantize

    model = _msrresnet()
    example = torch.rand(1, 3, 16, 16)
    names = body_layer_names(model, example)
    prepared = prepare_torch_ao(model, names, bits, example)
    with_weight_quant = {
        name: m.weight_fake_quant
        for name, m in prepared.named_modules()
        if hasattr(m, "weight_fake_quant")
    }
    assert sorted(with_weight_quant) == sorted(names)
    for quantizer in with_weight_quant.values():
        assert (quantizer.quant_min, quantizer.quant_max) == (
            -(2 ** (bits - 1)),
            2 ** (bits - 1) - 1,
        )
    modules = dict(prepared.named_modules())
    layer_nodes = [n for n in prepared.graph.nodes if n.op == "call_module" and n.target in names]
    assert sorted(n.target for n in layer_nodes) == sorted(names)
    for node in layer_nodes:
        feeding = modules[node.args[0].target]
        assert isinstance(feeding, FakeQuantize), node.target
        assert (feeding.quant_min, feeding.quant_max) == (0, 2**bits - 1)
    for name in ("conv_first", "upconv1", "conv_hr", "conv_last"):
        assert type(modules[name]) is nn.Conv2d
    assert type(model.body[0].conv1) is nn.Conv2d  # the original model is left alone


def test_torch_ao_refuses_swinir_which_torch_fx_cannot_trace():
    model = TINY_SWINIR.build()
    example = torch.rand(1, 3, 16, 16)
    names = body_layer_names(model, example)
    with pytest.raises(torch.fx.proxy.TraceError, match="control flow"):
        prepare_torch_ao(model, names, 4, example)


@pytest.mark.parametrize("prepare", [prepare_torch_ao, prepare_brevitas])
def test_adapters_need_layer_names(prepare):
    with pytest.raises(ValueError, match="layer_names is empty"):
        prepare(_msrresnet(), [], 4, torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(_msrresnet, id="MSRResNet"),
        pytest.param(TINY_SWINIR.build, id="SwinIR", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("bits", [4, 2])
def test_brevitas_quantizes_exactly_the_body_layers_at_the_bits(build, bits, real_batch):
    model = build()
    batch = real_batch((2, 3, 16, 16))
    names = body_layer_names(model, batch[:1])
    signed = signed_inputs(model, names, batch)
    prepared = prepare_brevitas(model, names, bits, batch)
    brevitas_layers = {
        name
        for name, m in prepared.named_modules()
        if isinstance(m, brevitas_nn.QuantConv2d | brevitas_nn.QuantLinear)
    }
    assert brevitas_layers == set(names)
    for name in names:
        layer, original = prepared.get_submodule(name), model.get_submodule(name)
        assert int(layer.quant_weight().bit_width) == bits
        assert int(layer.input_quant.bit_width()) == bits
        assert bool(layer.input_quant.is_signed) == signed[name]
        assert torch.equal(layer.weight, original.weight)
    prepared.eval()
    with torch.no_grad():
        assert not torch.equal(prepared(batch), model.eval()(batch))


def test_brevitas_refuses_other_layer_types():
    model = nn.Sequential(nn.Conv1d(3, 3, 1))
    with pytest.raises(TypeError, match="nn.Conv2d and nn.Linear"):
        prepare_brevitas(model, ["0"], 4, torch.rand(1, 3, 5))


# -- timing, memory, files ----------------------------------------------------------


def test_ratio_summary_pairs_rounds_and_checks_lengths():
    summary = ratio_summary([3.0, 2.0, 12.0], [1.0, 1.0, 4.0])
    assert summary["median"] == 3.0 and summary["q1"] == 2.5 and summary["q3"] == 3.0
    with pytest.raises(ValueError, match="same number"):
        ratio_summary([1.0], [1.0, 2.0])


def test_interleaved_samples_time_every_candidate_every_round():
    calls = []
    samples = interleaved_samples(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1
    )
    assert calls == ["a", "b"] * 4
    assert [len(v) for v in samples.values()] == [3, 3]
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        interleaved_samples({"a": lambda: None}, rounds=0)


def test_interleaved_samples_cpu_clock_ignores_sleeping():
    samples = interleaved_samples(
        {"sleep": lambda: time.sleep(0.05)}, rounds=2, warmup=0, clock=time.process_time
    )
    assert max(samples["sleep"]) < 0.04


def test_peak_step_memory_sees_the_tensors_a_step_allocates():
    small = peak_step_memory(lambda: torch.ones(1000).sum())
    large = peak_step_memory(lambda: torch.ones(1_000_000).sum())
    assert 4_000_000 <= large < 4_400_000
    assert small < 100_000


def test_save_writes_json_and_markdown_and_no_temporaries(tmp_path):
    path = save("example", {"x": 1}, "| a |\n", tmp_path)
    assert path.read_text() == "| a |\n"
    assert json.loads((tmp_path / "example.json").read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example.json", "example.md"]


def test_compare_kernels_loads_a_revisions_kernels_and_refuses_unknown_ones():
    rounding = compare_kernels.load_kernels_at("HEAD")
    x, step = torch.randn(2, 4, 3, 3), torch.tensor(0.3)
    q_min, q_max = torch.tensor(-8.0), torch.tensor(7.0)
    expected = learned_step_fake_quantize(x, step, q_min, q_max, 1.0, 1.0)
    assert torch.equal(
        rounding.learned_step_fake_quantize(x, step, q_min, q_max, 1.0, 1.0), expected
    )
    with pytest.raises(ValueError, match="cannot read qsr_plugin/quantizers/_rounding.py"):
        compare_kernels.load_kernels_at("no-such-revision")


def test_kernels_of_routes_the_quantizers_through_other_kernels_for_a_while():
    calls = []

    class Recorded:
        @staticmethod
        def learned_step_fake_quantize(x, *args, **kwargs):
            calls.append(tuple(x.shape))
            return learned_step_fake_quantize(x, *args, **kwargs)

    layer = qsr_plugin.QuantConv2d.from_float(nn.Conv2d(3, 4, 3), qsr_plugin.QuantSpec())
    x = torch.rand(1, 3, 8, 8)
    with compare_kernels.kernels_of(Recorded):
        layer.train()(x)
    assert sorted(calls) == [(1, 3, 8, 8), (4, 3, 3, 3)]
    layer(x)
    assert len(calls) == 2


# -- the benchmarks at toy sizes ----------------------------------------------------


@pytest.mark.slow
def test_speed_benchmark_on_a_toy_msrresnet(eager_kernels, monkeypatch):
    frozen_from = []
    freeze = qsr_plugin.freeze

    def recording_freeze(model):
        frozen_from.append(model)
        return freeze(model)

    monkeypatch.setattr(qsr_plugin, "freeze", recording_freeze)
    backbone = small_msrresnet(num_feat=8, num_block=2, scale=2, patch=8, batch=2)
    result = speed.benchmark_backbone(backbone, bits=4, rounds=1, warmup=0)
    training = result["training_step"]
    assert list(training) == [
        speed.FLOAT,
        speed.QUANTSR,
        speed.joint_label((4, 2, 1)),
        speed.dqa_label(2),
        speed.TORCH_AO,
        speed.BREVITAS,
    ]
    assert training[speed.FLOAT]["median"] == 1.0
    assert all(row["peak_mb"] > 0 for row in training.values())
    assert list(result["inference"]) == [
        speed.FLOAT,
        speed.QUANTSR,
        speed.TORCH_AO,
        speed.BREVITAS,
        speed.FROZEN,
    ]
    (frozen,) = frozen_from  # the one-depth QuantSR model
    assert qsr_plugin.quantization_record(frozen).config.depth_variants is None
    assert result["unavailable"] == {}
    assert "### MSRResNet 8x2 x2" in speed.markdown(result)


@pytest.mark.slow
def test_speed_benchmark_reports_what_torch_ao_cannot_prepare(eager_kernels):
    result = speed.benchmark_backbone(TINY_SWINIR, bits=2, rounds=1, warmup=0, memory=False)
    assert result["unavailable"][speed.TORCH_AO].startswith("TraceError")
    assert speed.TORCH_AO not in result["training_step"]
    assert "TraceError" in speed.markdown(result)


@pytest.mark.slow
def test_accuracy_benchmark_on_a_toy_model(eager_kernels, tmp_path, monkeypatch):
    sampler_states = []
    train_qat = accuracy.sr_training.train_qat

    def recording_train_qat(model, sampler, *args, **kwargs):
        sampler_states.append(sampler.generator.get_state())
        return train_qat(model, sampler, *args, **kwargs)

    monkeypatch.setattr(accuracy.sr_training, "train_qat", recording_train_qat)
    settings = accuracy.AccuracySettings(
        num_feat=8, num_block=2, scale=2, patch=12, batch=2, float_steps=4, float_lr=1e-3,
        qat_steps=2, qat_lr=1e-4, bits=(2,), calibration_batches=1,
        train_set="Set5", eval_sets=("Set5",),
    )  # fmt: skip
    by_label = {method.label: method for method in accuracy.METHODS}
    distilled = f"{accuracy.QUANTSR_IMPORTANCE} + distillation"
    methods = (by_label[accuracy.QUANTSR_DQA], by_label[distilled], by_label["brevitas"])
    checkpoints = []
    result = accuracy.benchmark(
        settings, tmp_path, methods[:2], log=lambda _: None, progress=False,
        checkpoint=lambda partial: checkpoints.append(len(partial["rows"])),
    )  # fmt: skip
    assert checkpoints == [3, 6]  # after each method
    # A second run given the first one's rows trains only the method that is missing.
    result = accuracy.benchmark(
        settings, tmp_path, methods, log=lambda _: None, progress=False,
        previous=json.loads(json.dumps(result)),
    )  # fmt: skip
    rows = result["rows"]
    assert [(r["method"], r["depth"]) for r in rows] == [
        (accuracy.QUANTSR_DQA, 4),
        (accuracy.QUANTSR_DQA, 2),
        (accuracy.QUANTSR_DQA, 1),
        (distilled, 4),
        (distilled, 2),
        (distilled, 1),
        ("brevitas", 2),
    ]
    assert rows[0]["blocks"] == [0, 1, 2, 3] and len(rows[5]["blocks"]) == 1
    for row in rows + result["references"]:
        assert 10 < row["Set5"]["psnr"] < 60 and 0 < row["Set5"]["ssim"] <= 1
    assert len(sampler_states) == 3  # every method trains on the same batches
    assert all(torch.equal(state, sampler_states[0]) for state in sampler_states)
    table = accuracy.markdown(result)
    assert "| Bicubic | - | - |" in table and "QuantSR ablations" in table
    assert f"| {distilled} | 2 | 1 |" in table


def test_prepare_refuses_an_unknown_tool():
    settings = accuracy.AccuracySettings(
        num_feat=8, num_block=1, scale=2, patch=8, batch=1, float_steps=1, float_lr=1e-3,
        qat_steps=1, qat_lr=1e-4,
    )  # fmt: skip
    backbone = settings.backbone()
    method = accuracy.Method("mystery", tool="onnxruntime")
    with pytest.raises(ValueError, match="unknown tool 'onnxruntime' of method 'mystery'"):
        accuracy.prepare(method, backbone.build(), 4, backbone, None, settings)


def test_float_model_is_trained_once_then_loaded(eager_kernels, tmp_path):
    settings = accuracy.AccuracySettings(
        num_feat=8, num_block=1, scale=2, patch=12, batch=2, float_steps=2, float_lr=1e-3,
        qat_steps=1, qat_lr=1e-4, train_set="Set5",
    )  # fmt: skip
    backbone = settings.backbone()
    from qsr_plugin import sr_data

    images = sr_data.load_hr_images(sr_data.find_image_set("Set5"))
    sampler = sr_data.PatchSampler(images, 2, 12, seed=0)
    quiet = dict(log=lambda _: None, progress=False)
    first, info = cached_float_model(backbone, sampler, settings, tmp_path, **quiet)
    second, again = cached_float_model(backbone, sampler, settings, tmp_path, **quiet)
    assert not info["from_cache"] and again["from_cache"]
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first.conv_first.weight, backbone.build(0).conv_first.weight)


def test_every_benchmark_module_is_an_entry_of_benchmarks_run():
    folder = Path(run.__file__).parent
    with_run = {p.stem for p in folder.glob("*.py") if "\ndef run(" in p.read_text()} - {"run"}
    modules = [b for b in run.BENCHMARKS.values() if isinstance(b, types.ModuleType)]
    assert {m.__name__.removeprefix("benchmarks.") for m in modules} == with_run
    assert run.BENCHMARKS["accuracy"] is accuracy


def test_run_only_saves_and_prints_one_benchmark_with_its_own_options(
    eager_kernels, tmp_path, capsys
):
    options = ["--rounds", "1", "--size", "8", "--channels", "4", "--batch", "1"]
    (written,) = run.main(["--only", "layer_overhead", "--results-dir", str(tmp_path), *options])
    assert written == tmp_path / "layer_overhead.md"
    data = json.loads((tmp_path / "layer_overhead.json").read_text())
    assert [row["layer"] for row in data["rows"]] == ["float", "quantsr", "lsq", "pams", "dorefa"]
    assert "input 1x4x8x8" in data["what"]
    assert written.read_text() in capsys.readouterr().out
    with pytest.raises(SystemExit):  # another benchmark's option is refused
        run.main(["--only", "speed", "--channels", "4", "--results-dir", str(tmp_path)])


def test_gpu_check_without_cuda_exits_with_a_message(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="benchmarks.gpu_check needs a CUDA GPU"):
        run.main(["--only", "gpu", "--results-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_gpu_check_figures_of_a_small_backbone_on_the_cpu(eager_kernels, monkeypatch):
    monkeypatch.setattr(gpu_check, "TIMED", 2)
    monkeypatch.setattr(gpu_check, "WARMUP", 1)
    result = gpu_check.check_backbone(small_msrresnet(8, 2, 4, 12, 2), torch.device("cpu"))
    assert set(result["training"]) == {"fp32", "bf16"}
    for row in result["training"].values():
        assert row["ratio_to_float"] > 0 and row["quantsr_peak_mib"] is None
    assert result["frozen"]["max_abs_difference_to_quantized"] == 0
    assert result["onnx_bytes"] > 0
    text = gpu_check.markdown({"gpu": "cpu", "torch": torch.__version__, "seconds": 1.0,
                               "backbones": [result], "nccl": None})  # fmt: skip
    assert "MSRResNet 8x2 x4" in text and "not run (one GPU)" in text
