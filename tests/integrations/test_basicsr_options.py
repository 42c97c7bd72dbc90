"""Option files: safe YAML, the quantsr section, loss weights and the checks before a run."""

from __future__ import annotations

import copy
import importlib
import os
import re
from pathlib import Path

import pytest
import yaml
from basicsr_helpers import REPO_ROOT, SMOKE_RECIPE

from qsr_plugin import QuantizeConfig
from qsr_plugin.integrations.basicsr import entry
from qsr_plugin.integrations.basicsr.options import (
    OptionError,
    check_network_type,
    check_options,
    quantize_config,
    read_option_file,
    variant_loss_weights,
)

# Calls os.getcwd when built by a loader that constructs Python objects.
PYTHON_TAG = "name: !!python/object/apply:os.getcwd []\n"


@pytest.fixture
def smoke_options() -> dict:
    return read_option_file(SMOKE_RECIPE)


def write_yaml(path: Path, options: dict) -> Path:
    path.write_text(yaml.safe_dump(options, sort_keys=False))
    return path


def test_read_option_file_gives_the_recipe_as_plain_data(smoke_options):
    assert smoke_options["model_type"] == "QuantSRModel"
    assert smoke_options["quantsr"]["depth_variants"] == [8, 4, 2]
    assert smoke_options["train"]["optim_g"]["lr"] == pytest.approx(2e-4)  # !!float is allowed


def test_basicsr_own_loader_would_run_the_python_tag(tmp_path):
    """Why the safe loader matters: BasicSR's loader builds (calls) the tagged object."""
    import basicsr.utils.options as basicsr_options

    loaded = yaml.load(PYTHON_TAG, Loader=basicsr_options.ordered_yaml()[0])
    assert loaded["name"] == os.getcwd()


def test_python_tag_is_refused_naming_file_and_line(tmp_path):
    path = tmp_path / "evil.yml"
    path.write_text("model_type: QuantSRModel\n" + PYTHON_TAG)
    with pytest.raises(OptionError, match=rf"{path.name}, line 2: .*python/object/apply.*refused"):
        read_option_file(path)


def test_parse_options_in_our_runtime_never_builds_python_objects(tmp_path, monkeypatch):
    """Even a file changed after our own read reaches BasicSR's parser as plain YAML only."""
    from qsr_plugin.integrations.basicsr.runtime import basicsr_runtime

    path = tmp_path / "evil.yml"
    path.write_text(PYTHON_TAG)
    monkeypatch.setattr("sys.argv", ["qsr-train", "-opt", str(path)])
    with basicsr_runtime():
        import basicsr.train

        with pytest.raises(yaml.constructor.ConstructorError, match="python/object/apply"):
            basicsr.train.parse_options(str(tmp_path), is_train=True)


def test_command_line_refuses_python_tag_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.yml"
    path.write_text(PYTHON_TAG)
    assert entry.train_main(["-opt", str(path)]) == 2
    assert "refused" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.yml"]


@pytest.mark.parametrize(
    ("text", "message"),
    [("a: [1,\n", "is not valid YAML"), ("- 1\n- 2\n", "must hold a YAML mapping")],
)
def test_bad_yaml_is_refused_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(OptionError, match=rf"bad\.yml {message}"):
        read_option_file(path)


def test_missing_option_file_is_named(tmp_path):
    with pytest.raises(OptionError, match=r"nothere.yml does not exist"):
        read_option_file(tmp_path / "nothere.yml")


def test_quantsr_section_maps_onto_quantize_config(smoke_options):
    config = quantize_config(smoke_options)
    assert config == QuantizeConfig.from_dict(smoke_options["quantsr"])
    assert config.depth_variants == (8, 4, 2)


def test_missing_quantsr_section_is_refused(smoke_options):
    del smoke_options["quantsr"]
    with pytest.raises(OptionError, match=r"needs a 'quantsr:' section"):
        quantize_config(smoke_options)


def test_misspelt_quantsr_key_is_named(smoke_options):
    smoke_options["quantsr"]["depth_varaints"] = [8, 4]
    with pytest.raises(
        OptionError,
        match=r"unknown key\(s\) quantsr\.depth_varaints \(did you mean quantsr\.depth_variants"
        r"\?\); valid keys: .*, amp",
    ):
        quantize_config(smoke_options)


def test_misspelt_amp_key_is_named_with_did_you_mean(smoke_options):
    smoke_options["quantsr"]["ampp"] = "bf16"
    with pytest.raises(OptionError, match=r"quantsr\.ampp \(did you mean quantsr\.amp\?\)"):
        quantize_config(smoke_options)


@pytest.mark.parametrize("misspelt", ["variant_loss_weight", "variant_loss_wieghts"])
def test_misspelt_train_key_is_refused_with_did_you_mean(smoke_options, misspelt):
    smoke_options["train"][misspelt] = [1, 1]
    with pytest.raises(
        OptionError,
        match=rf"train\.{misspelt} is not a setting; did you mean "
        r"train\.variant_loss_weights\?",
    ):
        check_options(smoke_options)


def test_basicsr_train_keys_are_not_taken_for_misspellings(smoke_options):
    assert set(smoke_options["train"]) >= {"pixel_opt", "total_iter", "optim_g"}
    depths = list(quantize_config(smoke_options).depth_variants)
    assert list(variant_loss_weights(smoke_options, depths)) == depths


def test_bad_quantsr_value_is_named(smoke_options):
    smoke_options["quantsr"]["bits"] = 9
    with pytest.raises(OptionError, match=r"invalid 'quantsr' section: bits must be in 2..8"):
        quantize_config(smoke_options)


def test_quantsr_section_with_another_model_type_is_refused(smoke_options):
    smoke_options["model_type"] = "SRModel"
    with pytest.raises(OptionError, match=r"only read by model_type: QuantSRModel.*'SRModel'"):
        check_options(smoke_options)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [(None, {8: 1.0, 4: 1.0, 2: 1.0}), ([2, 1, 0.5], {8: 2.0, 4: 1.0, 2: 0.5})],
)
def test_variant_loss_weights_list_is_deepest_first(smoke_options, weights, expected):
    smoke_options["train"]["variant_loss_weights"] = weights
    assert variant_loss_weights(smoke_options, [8, 4, 2]) == expected


def test_variant_loss_weights_mapping_by_depth(smoke_options):
    smoke_options["train"]["variant_loss_weights"] = {2: 3, 8: 1, 4: 0}
    assert variant_loss_weights(smoke_options, [8, 4, 2]) == {8: 1.0, 4: 0.0, 2: 3.0}


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1, 1], r"has 2 weights for the depth variants \[8, 4, 2\]"),
        ({8: 1, 4: 1, 3: 1}, r"must name every depth variant"),
        ([1, -1, 1], r"weight of depth 4 must be a number >= 0, got -1"),
        ([1, "x", 1], r"weight of depth 4 must be a number"),
        ([0, 0, 0], r"all weights are 0"),
        ("1 1 1", r"must be a list \(deepest variant first\) or a mapping"),
    ],
)
def test_bad_variant_loss_weights_are_named(smoke_options, weights, message):
    smoke_options["train"]["variant_loss_weights"] = weights
    with pytest.raises(OptionError, match=rf"train\.variant_loss_weights.*{message}"):
        variant_loss_weights(smoke_options, [8, 4, 2])


def test_unknown_arch_is_named_with_the_registered_ones():
    with pytest.raises(
        OptionError,
        match=r"network_g.type: 'MSRResNett' is not a registered BasicSR arch "
        r"\(did you mean MSRResNet\?\)",
    ):
        check_network_type({"type": "MSRResNett"})
    with pytest.raises(OptionError, match=r"registered archs: .*MSRResNet.*SwinIR"):
        check_network_type({"type": "MSRResNett"})


def test_missing_dataset_folder_is_named_with_its_key(smoke_options, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OptionError, match=r"datasets.train.dataroot_gt: datasets/T91/GTmod12 does"):
        check_options(smoke_options)


def test_missing_pretrained_checkpoint_is_named(smoke_options, workdir):
    options = copy.deepcopy(smoke_options)
    options["path"]["pretrain_network_g"] = "experiments/none/net_g.pth"
    with pytest.raises(OptionError, match=r"path.pretrain_network_g: experiments/none/net_g.pth"):
        check_options(options)
    options["auto_resume"] = True  # resuming replaces the path, so it is not checked
    check_options(options)


def test_command_line_stops_on_a_missing_dataset_before_making_folders(
    smoke_options, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    path = write_yaml(tmp_path / "smoke.yml", smoke_options)
    assert entry.train_main(["-opt", str(path)]) == 2
    assert "datasets.train.dataroot_gt" in capsys.readouterr().err
    assert not (tmp_path / "experiments").exists()


def test_force_yml_is_applied_before_the_checks(smoke_options, workdir):
    path = write_yaml(workdir / "smoke.yml", smoke_options)
    options = entry.parse_options(["-opt", str(path), "--force_yml", "train:total_iter=7"])
    assert options["train"]["total_iter"] == 7
    with pytest.raises(OptionError, match=r"datasets.val.dataroot_lq: nowhere does not exist"):
        entry.parse_options(["-opt", str(path), "--force_yml", "datasets:val:dataroot_lq=nowhere"])


@pytest.mark.parametrize("script", ["qsr-train", "qsr-test"])
def test_console_scripts_take_basicsr_s_flags(script, capsys):
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    module, function = re.search(rf'^{script} = "([\w.]+):(\w+)"$', pyproject, re.M).groups()
    with pytest.raises(SystemExit) as exit_info:
        getattr(importlib.import_module(module), function)(["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    for flag in ("-opt", "--launcher", "--auto_resume", "--debug", "--local_rank", "--force_yml"):
        assert flag in shown
