"""``qsr report -opt recipe.yml``: the efficiency table of a recipe's network."""

import json
import re
from pathlib import Path

import pytest
import yaml
from _deploy_models import as_trained

import qsr_plugin
from qsr_plugin.cli import main
from qsr_plugin.cli._recipe import build_network, read_recipe

pytestmark = pytest.mark.usefixtures("eager_kernels")

RECIPE = Path(__file__).parent / "fixtures" / "recipes" / "quantsr_t_x4_w2_small.yml"
REPOSITORY_RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("quantsr_*.yml"))


@pytest.mark.slow
def test_report_prints_the_table_with_every_variant_and_the_file_size(capsys, tmp_path):
    assert main(["report", "-opt", str(RECIPE), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "SwinIR, quantsr: bits=2, method=quantsr, depth_variants=[4, 2, 1]" in out
    rows = [line for line in out.splitlines() if line.startswith("| float") or "| 2/2 |" in line]
    assert [row.split("|")[3].strip() for row in rows] == ["4", "4", "2", "1"]
    assert "saved file (qsr_plugin.save, all blocks):" in out
    written = json.loads((tmp_path / "r.json").read_text())
    assert [row["blocks"] for row in written["rows"]] == [4, 4, 2, 1]
    assert written["input_size"] == [3, 256, 256]


@pytest.mark.slow
def test_report_loads_saved_weights_and_takes_an_input_size(capsys, tmp_path):
    model = as_trained(build_network(read_recipe(RECIPE)))
    weights = qsr_plugin.save(model, tmp_path / "trained.safetensors")
    arguments = [
        "report",
        "-opt",
        str(RECIPE),
        "--weights",
        str(weights),
        "--input-size",
        "3",
        "64",
        "64",
    ]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "input 3x64x64" in out
    assert f"saved file (qsr_plugin.save, all blocks): {weights.stat().st_size:,} bytes" in out


def write_recipe(tmp_path, change):
    options = yaml.safe_load(RECIPE.read_text())
    change(options)
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(options))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda o: o["quantsr"].update(bitz=4),
            r"unknown key\(s\) quantsr\.bitz \(did you mean quantsr\.bits\?\); valid keys: bits",
        ),
        (lambda o: o.pop("quantsr"), r"needs a 'quantsr:' section"),
        (
            lambda o: o["network_g"].update(type="NoSuchNet"),
            r"network_g\.type: 'NoSuchNet' is not a registered BasicSR arch",
        ),
        (
            lambda o: o["quantsr"].update(depth_variants=[4, 2], body="upsample"),
            r"quantsr: cannot quantize SwinIR: body='upsample' is not a chain of blocks",
        ),
        (
            lambda o: o["network_g"].update(type="MSRResNet"),  # SwinIR's settings
            r"network_g does not fit MSRResNet: .*unexpected keyword argument",
        ),
        (lambda o: o["quantsr"].update(depth_variants=[4, 4]), r"depth_variants has duplicates"),
    ],
)
def test_bad_recipes_are_clear_errors(change, message, tmp_path, capsys):
    assert main(["report", "-opt", str(write_recipe(tmp_path, change))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qsr report: ") and "recipe.yml" in err
    assert re.search(message, err)


def test_python_tags_are_refused_before_anything_runs(tmp_path, capsys):
    path = tmp_path / "evil.yml"
    path.write_text(
        RECIPE.read_text() + "\nhook: !!python/object/apply:os.system ['touch pwned']\n"
    )
    assert main(["report", "-opt", str(path)]) == 2
    assert "tags that build Python objects (!!python/...) are refused" in capsys.readouterr().err
    assert main(["report", "-opt", str(tmp_path / "absent.yml")]) == 2
    assert "absent.yml does not exist" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("recipe", REPOSITORY_RECIPES, ids=[r.name for r in REPOSITORY_RECIPES])
def test_every_repository_recipe_reports(recipe, capsys):
    assert main(["report", "-opt", str(recipe)]) == 0
    assert "saved file (qsr_plugin.save, all blocks):" in capsys.readouterr().out
