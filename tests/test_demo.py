"""`qsr demo` end to end with tiny settings, its reproducibility, and its bad-input errors."""

import contextlib
import io
import json
import math
import re

import cv2
import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

import qsr_plugin
import qsr_plugin.demo.run as demo_run
import qsr_plugin.demo.threads as threads_module
from qsr_plugin.cli import main
from qsr_plugin.demo import DemoSettings, build_srresnet
from qsr_plugin.demo.figures import GAP, LABEL_HEIGHT
from qsr_plugin.demo.threads import available_cores, choose_threads
from qsr_plugin.sr_data import bicubic_upscale, builtin_images, make_pairs

pytestmark = pytest.mark.usefixtures("eager_kernels")

TINY = ["--features", "8", "--blocks", "2", "--steps", "3", "2", "--patch", "8", "--batch", "2"]
TINY_LABELS = ["bicubic", "float", "w4 d4", "w4 d2", "w4 d1"]


def run_cli(*arguments):
    """Runs ``qsr`` in-process; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(arguments))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    with qsr_plugin.use_compiled_kernels(False):  # module scope: before the eager_kernels fixture
        status, stdout, stderr = run_cli("demo", *TINY, "--out", str(out))
    return status, stdout, stderr, out


def read_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_demo_prints_the_table_of_every_variant(tiny_demo):
    status, stdout, stderr, out = tiny_demo
    assert status == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert [row["label"] for row in results["rows"]] == TINY_LABELS
    assert "Held-out images (2: chelsea, coffee), PSNR/SSIM on Y" in stdout
    assert "Method     Scale  #Bit (w/a)  #Blk" in stdout
    table_lines = [line.split() for line in stdout.splitlines()]
    for row in results["rows"]:
        bits = "-/-" if row["bits"] is None else f"{row['bits']}/{row['bits']}"
        depth = "-" if row["depth"] is None else str(row["depth"])
        expected = [row["method"], "x4", bits, depth, f"{row['psnr']:.2f}", f"{row['ssim']:.4f}"]
        assert expected in [line[:6] for line in table_lines], row["label"]
    assert (out / "table.txt").read_text().strip() in stdout
    # progress bars with the loss of each depth, on stderr
    assert "float training: 100%" in stderr and "L1 d4=" in stderr and "d1=" in stderr


def test_demo_json_holds_every_figure(tiny_demo):
    _, _, _, out = tiny_demo
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["depths"] == [4, 2, 1] and results["settings"]["bits"] == [4]
    assert results["data"]["heldout"] == ["chelsea", "coffee"]
    assert results["data"]["train"] == list(builtin_images()["train"])
    for row in results["rows"]:
        assert 10 < row["psnr"] < 50 and 0 < row["ssim"] <= 1
        per_image = row["per_image"]
        assert set(per_image) == {"chelsea", "coffee"}
        assert row["psnr"] == pytest.approx(np.mean([v["psnr"] for v in per_image.values()]))
    assert set(results["training_l1"]) == {"float", "w4"}
    assert set(results["training_l1"]["w4"]["last"]) == {"d4", "d2", "d1"}
    assert results["seconds"]["total"] > 0
    for name in results["files"].values():
        assert (out / name).is_file(), name


def test_demo_bicubic_row_is_the_library_bicubic_baseline(tiny_demo):
    _, _, _, out = tiny_demo
    bicubic = json.loads((out / "results.json").read_text())["rows"][0]
    pairs = make_pairs(builtin_images()["heldout"].items(), 4)
    assert bicubic["per_image"]["coffee"]["psnr"] == pytest.approx(
        qsr_plugin.sr_data.psnr_ssim_y(bicubic_upscale(pairs[1][1], 4), pairs[1][2], 4)[0]
    )


def test_comparison_image_shows_hr_bicubic_float_and_each_depth(tiny_demo):
    _, _, _, out = tiny_demo
    results = json.loads((out / "results.json").read_text())
    comparison = results["comparison"]
    window = comparison["lr_window"]
    side = window["size"] * 4
    panels = comparison["panels"]
    assert panels == ["HR", *TINY_LABELS]
    image = read_png(out / "comparison.png")
    assert image.shape == (LABEL_HEIGHT + side, len(panels) * side + (len(panels) - 1) * GAP, 3)
    _, lr, hr = dict((p[0], p) for p in make_pairs(builtin_images()["heldout"].items(), 4))[
        comparison["image"]
    ]
    y, x = window["y"] * 4, window["x"] * 4

    def panel(index):
        left = index * (side + GAP)
        return image[LABEL_HEIGHT:, left : left + side]

    np.testing.assert_array_equal(panel(0), hr[y : y + side, x : x + side])
    np.testing.assert_array_equal(panel(1), bicubic_upscale(lr, 4)[y : y + side, x : x + side])
    assert not np.array_equal(panel(2), panel(1))  # the float model's output
    labels = image[:LABEL_HEIGHT]
    assert labels.min() < 80 and (labels == 255).mean() > 0.5  # dark text on white


def test_training_statistics_are_written_and_plotted(tiny_demo):
    _, _, _, out = tiny_demo
    stats = qsr_plugin.training_stats.TrainingStats.load(out / "training_stats_w4.json")
    assert [r["step"] for r in stats.records] == [0, 2]
    assert stats.groups() == ["weight_step", "act_step", "act_shift"]
    image = read_png(out / "training_stats_w4.png")
    assert image.shape[1] > image.shape[0] > 200


@pytest.fixture
def demo_threads(tiny_demo):
    """torch runs with the demo's thread count (float sums in the same order) meanwhile."""
    threads = torch.get_num_threads()
    torch.set_num_threads(json.loads((tiny_demo[3] / "results.json").read_text())["threads"])
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("demo_threads")
def test_exported_models_load_back_and_score_as_in_the_table(tiny_demo):
    _, _, _, out = tiny_demo
    results = json.loads((out / "results.json").read_text())
    rows = {row["label"]: row for row in results["rows"]}
    assert rows["float"]["file"] == "models/srresnet_float.safetensors"
    assert {rows[f"w4 d{d}"]["file"] for d in (4, 2, 1)} == {"models/quantsr_w4.safetensors"}
    settings = DemoSettings(features=8, blocks=2)
    pairs = make_pairs(builtin_images()["heldout"].items(), 4)

    float_model = build_srresnet(settings)
    safetensors.torch.load_model(float_model, out / rows["float"]["file"])
    scores = qsr_plugin.sr_data.evaluate_sr(float_model.eval(), pairs, 4)
    assert scores["psnr"] == rows["float"]["psnr"]

    quantized = qsr_plugin.quantize(build_srresnet(settings), bits=4, depth_variants=[4, 2, 1])
    qsr_plugin.load(quantized, out / rows["w4 d4"]["file"])
    quantized.eval()
    for depth in qsr_plugin.iter_depths(quantized):
        scores = qsr_plugin.sr_data.evaluate_sr(quantized, pairs, 4)
        assert scores["psnr"] == rows[f"w4 d{depth}"]["psnr"], depth


def test_cost_columns_come_from_the_report_and_the_files(tiny_demo):
    _, stdout, _, out = tiny_demo
    results = json.loads((out / "results.json").read_text())
    rows = {row["label"]: row for row in results["rows"]}
    quantized = qsr_plugin.quantize(
        build_srresnet(DemoSettings(features=8, blocks=2)), bits=4, depth_variants=[4, 2, 1]
    )
    efficiency = qsr_plugin.report(quantized, input_size=(3, 256, 256), saved_file=False)
    expected = {row.blocks: row for row in efficiency.rows[1:]}
    for depth in (4, 2, 1):
        row = rows[f"w4 d{depth}"]
        assert row["params"] == pytest.approx(expected[depth].params / 1e3)
        assert row["ops"] == pytest.approx(expected[depth].ops / 1e9)
        assert row["file_bytes"] == (out / row["file"]).stat().st_size
    assert rows["float"]["params"] == pytest.approx(efficiency.rows[0].params / 1e3)
    assert rows["float"]["params"] > rows["w4 d4"]["params"] > rows["w4 d1"]["params"]
    assert rows["float"]["ops"] > rows["w4 d4"]["ops"] > rows["w4 d1"]["ops"]
    assert rows["bicubic"]["params"] is None
    float_line = next(line for line in stdout.splitlines() if line.startswith("SRResNet"))
    assert f"{rows['float']['file_bytes'] / 1024:,.1f}" in float_line
    image = read_png(out / "tradeoff.png")
    assert image.shape[1] > image.shape[0] > 200


def photo_folder(tmp_path, count, side=96):
    """``count`` real-photo crops of ``side`` pixels saved as PNGs in a fresh folder."""
    folder = tmp_path / f"photos_{count}_{side}"
    folder.mkdir()
    photos = list(builtin_images()["train"].items())
    for index in range(count):
        name, img = photos[index % len(photos)]
        offset = 40 * (index // len(photos))
        crop = img[offset : offset + side, offset : offset + side]
        cv2.imwrite(str(folder / f"{index:02d}_{name}.png"), crop[..., ::-1])
    return folder


MICRO = ["--features", "4", "--blocks", "2", "--steps", "2", "2", "--patch", "8", "--batch", "2"]


@pytest.mark.slow
def test_demo_is_reproducible_for_a_seed(tmp_path):
    data = photo_folder(tmp_path, 3)
    threads = torch.get_num_threads()

    def run(seed, name):
        out = tmp_path / name
        status, stdout, stderr = run_cli(
            "demo",
            *MICRO,
            "--data",
            str(data),
            "--seed",
            str(seed),
            "--out",
            str(out),
            "--threads",
            "1",
        )
        assert status == 0, stderr
        assert "threads: 1: requested with --threads" in stdout
        results = json.loads((tmp_path / name / "results.json").read_text())
        assert results["threads"] == 1 and torch.get_num_threads() == threads  # restored
        stats = (tmp_path / name / "training_stats_w4.json").read_text()
        return results["rows"], results["training_l1"], stats

    first, second, other = run(3, "a"), run(3, "b"), run(4, "c")
    assert first == second
    assert first[0] != other[0] and first[1] != other[1]
    rows = first[0]
    assert [r["label"] for r in rows] == ["bicubic", "float", "w4 d4", "w4 d2", "w4 d1"]
    assert set(rows[0]["per_image"]) == {"02_coins"}  # the last fifth, at least one, held out
    assert all(math.isfinite(r["psnr"]) for r in rows)


def test_one_thread_on_a_busy_machine_else_torchs_choice(monkeypatch):
    cores = available_cores()
    monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (2.0 * cores, 1.0, 1.0))
    chosen, reason = choose_threads(None)
    if cores > 1:
        assert chosen == 1 and f"load average {2.0 * cores:.1f} on {cores} cores" in reason
    monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert choose_threads(None)[0] == torch.get_num_threads()
    assert choose_threads(3) == (3, "requested with --threads")


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(demo_run, "train_float", refuse)
    monkeypatch.setattr(demo_run, "train_qat", refuse)


def expect_refusal(tmp_path, *arguments, match):
    out = tmp_path / "out"
    status, stdout, stderr = run_cli("demo", *TINY, "--out", str(out), *arguments)
    assert status == 2
    assert stderr.startswith("qsr demo: error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr and stdout == ""
    assert re.search(match, stderr), stderr
    assert not (out / "results.json").exists()


@pytest.mark.usefixtures("no_training")
def test_data_folder_without_images_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    expect_refusal(tmp_path, "--data", str(empty), match=f"--data: no images in {empty}")
    missing = tmp_path / "missing"
    expect_refusal(tmp_path, "--data", str(missing), match=f"--data: image folder {missing} does")


@pytest.mark.usefixtures("no_training")
def test_data_folder_with_one_image_is_refused(tmp_path):
    data = photo_folder(tmp_path, 1)
    expect_refusal(
        tmp_path, "--data", str(data), match="holds 1 image; the demo needs at least two"
    )


@pytest.mark.usefixtures("no_training")
def test_images_smaller_than_the_patch_are_refused(tmp_path):
    data = photo_folder(tmp_path, 3, side=30)
    expect_refusal(
        tmp_path,
        "--data",
        str(data),
        match=r"smaller than the HR patch of 32x32 pixels \(--patch 8 x --scale 4\).*"
        r"00_astronaut \(30x30\).*lower --patch",
    )


@pytest.mark.usefixtures("no_training")
def test_unwritable_output_folder_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    status, _, stderr = run_cli("demo", *TINY, "--out", str(blocker / "out"))
    assert status == 2 and "Traceback" not in stderr
    assert f"qsr demo: error: --out {blocker / 'out'}: cannot write there (Not a directory)" in (
        stderr
    )


@pytest.mark.usefixtures("no_training")
@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        (["--bits", "9"], r"--bits 9 is not a quantized bit width: give values in 2\.\.8"),
        (["--bits", "32"], r"--bits 32 is not a quantized bit width"),
        (["--bits", "1"], r"--bits 1 is not .* reported beside them\); nothing was run"),
        (["--bits", "4", "4"], r"--bits has duplicates: \[4, 4\]"),
        (["--depths", "4", "0"], r"--depths 4 0: the 2-block SRResNet cannot take .*positive"),
        (["--depths", "2", "2"], r"cannot take these settings: depth_variants has duplicates"),
        (["--scale", "5"], r"--scale must be one of 2, 3, 4"),
        (["--blocks", "1"], r"--blocks must be at least 2"),
        (["--seed", "-1"], r"--seed must be a non-negative integer, got -1"),
        (["--patch", "0"], r"--patch must be a positive integer, got 0"),
        (["--steps", "1", "2", "3"], r"--steps takes FLOAT QAT or one number"),
        (["--threads", "0"], r"--threads must be a positive integer, got 0"),
    ],
)
def test_bad_bits_depths_and_numbers_are_refused(tmp_path, arguments, match):
    expect_refusal(tmp_path, *arguments, match=match)
