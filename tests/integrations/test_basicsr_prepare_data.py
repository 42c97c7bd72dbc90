"""prepare_data: BasicSR's GTmod12 / LRbicx<s> folders from real HR images."""

from __future__ import annotations

import numpy as np
import pytest
from basicsr_helpers import REPO_ROOT, run_script

from qsr_plugin.integrations.basicsr.prepare_data import main, prepare_image_set
from qsr_plugin.sr_data import bicubic_downscale, find_image_set, load_hr_images

SCRIPT = REPO_ROOT / "integrations" / "basicsr" / "prepare_data.py"


def two_images(tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    for name in ("bird.png", "woman.png"):  # 288x288 and 228x344
        (folder / name).symlink_to(find_image_set("Set5") / name)
    return folder


def test_writes_modcropped_gt_and_matlab_bicubic_lr(tmp_path):
    out = prepare_image_set(two_images(tmp_path), tmp_path / "datasets" / "Set5", scales=[2, 4])
    gt = dict(load_hr_images(out / "GTmod12"))
    hr = dict(load_hr_images(tmp_path / "hr"))
    assert gt.keys() == hr.keys() == {"bird", "woman"}
    for name, image in gt.items():
        height, width = image.shape[:2]
        assert height % 12 == 0 and width % 12 == 0
        assert np.array_equal(image, hr[name][:height, :width])
        for scale in (2, 4):
            lr = dict(load_hr_images(out / f"LRbicx{scale}"))[name]
            assert np.array_equal(lr, bicubic_downscale(image, scale))
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == ["Set5"]


def test_existing_folder_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match=r"out exists already"):
        prepare_image_set(two_images(tmp_path), tmp_path / "out")


@pytest.mark.parametrize("scales", [[5], [], [0], [True]])
def test_scales_must_divide_twelve(tmp_path, scales):
    with pytest.raises(ValueError, match=r"scales must be integers dividing 12"):
        prepare_image_set(two_images(tmp_path), tmp_path / "out", scales=scales)


def test_an_unreadable_image_is_named(tmp_path):
    folder = two_images(tmp_path)
    (folder / "zzz_broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image file .*zzz_broken.png"):
        prepare_image_set(folder, tmp_path / "datasets" / "Set5")


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    from qsr_plugin.integrations.basicsr import prepare_data

    written, write = [], prepare_data._write_png

    def write_twice_then_fail(path, image):
        if len(written) == 2:
            raise OSError(f"could not write {path}")
        written.append(path)
        write(path, image)

    monkeypatch.setattr(prepare_data, "_write_png", write_twice_then_fail)
    with pytest.raises(OSError, match="could not write"):
        prepare_image_set(two_images(tmp_path), tmp_path / "datasets" / "Set5")
    assert len(written) == 2
    assert list((tmp_path / "datasets").iterdir()) == []


def test_command_line_reports_a_missing_folder(tmp_path, capsys):
    assert main([str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    assert "nothing does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_script_writes_the_layout(tmp_path):
    done = run_script(SCRIPT, str(two_images(tmp_path)), "Set5", "--scales", "4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "Set5").iterdir()) == ["GTmod12", "LRbicx4"]
