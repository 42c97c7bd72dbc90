"""Tests for qsr_plugin.sr_data on the shared Set5/T91 images and scikit-image photos."""

import functools
import math
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from qsr_plugin.sr_data import (
    PatchSampler,
    bicubic_downscale,
    bicubic_upscale,
    builtin_images,
    default_data_dir,
    evaluate_bicubic,
    evaluate_sr,
    find_image_set,
    load_hr_images,
    make_pairs,
    modcrop,
    psnr_ssim_y,
    to_batch,
    to_tensor,
    to_uint8,
)

SET5_NAMES = ["baby", "bird", "butterfly", "head", "woman"]


@functools.lru_cache
def set5_pairs(scale: int) -> list:
    # Not a fixture: a missing data folder must make each test FAIL with the loader's message.
    return make_pairs(load_hr_images(find_image_set("Set5")), scale)


@functools.lru_cache
def photos() -> dict:
    return builtin_images()


def astronaut_patch(size: int = 64) -> np.ndarray:
    return photos()["train"]["astronaut"][100 : 100 + size, 200 : 200 + size].copy()


# --- the paper's protocol on Set5 -------------------------------------------------------------


def test_bicubic_x4_set5_matches_paper():
    result = evaluate_bicubic(set5_pairs(4), 4)
    assert sorted(result["per_image"]) == SET5_NAMES
    # Measured 28.4314 dB / 0.8113; the paper's Table 1 prints 28.42 / 0.8104.
    assert abs(result["psnr"] - 28.43) <= 0.01
    assert abs(result["ssim"] - 0.8104) <= 0.002


def test_bicubic_x2_set5_matches_paper():
    result = evaluate_bicubic(set5_pairs(2), 2)
    # Measured 33.6819 dB / 0.9305; the paper prints 33.66 / 0.9299. BasicSR keeps Y in float,
    # MATLAB's rgb2ycbcr rounds it to uint8 (adds ~1/6 level^2 to the MSE). At x2 the MSE is
    # small (~28), so that shifts PSNR by ~0.03 dB (rounding Y here gives 33.649); at x4 by
    # ~0.01 dB. Hence 0.03 dB and 0.001 SSIM around the paper's figures.
    assert abs(result["psnr"] - 33.66) <= 0.03
    assert abs(result["ssim"] - 0.9299) <= 0.001


def test_evaluate_sr_matches_evaluate_bicubic_for_bicubic_fn():
    pairs = set5_pairs(4)[:2]

    def bicubic_fn(lr: torch.Tensor) -> torch.Tensor:
        return to_tensor(bicubic_upscale(to_uint8(lr[0]), 4)).unsqueeze(0)

    assert evaluate_sr(bicubic_fn, pairs, 4) == evaluate_bicubic(pairs, 4)


def test_evaluate_sr_rejects_wrong_output_shape():
    pairs = set5_pairs(4)[:1]
    with pytest.raises(ValueError, match=r"fn returned shape \(1, 3, 128, 128\) for image 'baby'"):
        evaluate_sr(lambda lr: lr, pairs, 4)


def test_evaluate_sr_runs_without_grad():
    seen = []

    def upscale(lr: torch.Tensor) -> torch.Tensor:
        seen.append(torch.is_grad_enabled())
        return torch.nn.functional.interpolate(lr, scale_factor=2, mode="nearest")

    result = evaluate_sr(upscale, make_pairs([("patch", astronaut_patch(32))], 2), 2)
    assert seen == [False]
    assert 20 < result["per_image"]["patch"]["psnr"] == result["psnr"] < 40


# --- metrics -----------------------------------------------------------------------------------


def test_psnr_of_image_with_itself_is_inf():
    img = astronaut_patch()
    psnr, ssim = psnr_ssim_y(img, img.copy(), 4)
    assert psnr == math.inf
    assert ssim == pytest.approx(1.0)


def test_one_level_offset_on_all_channels_gives_closed_form_psnr():
    hr = np.minimum(astronaut_patch(), 254).astype(np.uint8)
    sr = hr + np.uint8(1)
    # BT.601 Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, so every Y moves by 219/255.
    expected = 10 * math.log10(255**2 / (219 / 255) ** 2)
    assert psnr_ssim_y(sr, hr, 2)[0] == pytest.approx(expected, abs=1e-3)


def test_red_only_offset_uses_rgb_channel_order():
    hr = np.minimum(astronaut_patch(), 254).astype(np.uint8)
    sr = hr.copy()
    sr[..., 0] += 1
    red_weight = 65.481 / 255  # would be 24.966 / 255 if the image were read as BGR
    expected = 10 * math.log10(255**2 / red_weight**2)
    assert psnr_ssim_y(sr, hr, 2)[0] == pytest.approx(expected, abs=1e-3)


def test_psnr_crops_scale_pixels_from_each_border():
    hr = astronaut_patch()
    sr = hr.copy()
    sr[:3, :, :] = 0  # damage only the top 3 rows
    assert psnr_ssim_y(sr, hr, 3)[0] == math.inf
    assert psnr_ssim_y(sr, hr, 2)[0] < 40


def test_psnr_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"sr shape \(64, 64, 3\) differs from hr shape"):
        psnr_ssim_y(astronaut_patch(64), astronaut_patch(32), 2)


# --- data location and loading -----------------------------------------------------------------


def test_the_test_data_dir_holds_the_shared_sets():
    for name in ("Set5", "Set14", "T91"):
        assert (default_data_dir() / name / "HR").is_dir(), f"{name}/HR missing under the default"
    assert find_image_set("Set5") == default_data_dir() / "Set5" / "HR"


def test_without_qsr_data_dir_the_library_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("QSR_DATA_DIR")
    with pytest.raises(FileNotFoundError, match=r"no data folder: set QSR_DATA_DIR to a folder"):
        default_data_dir()
    with pytest.raises(FileNotFoundError, match=r"QSR_DATA_DIR.*data_dir="):
        find_image_set("Set5")
    (tmp_path / "Set5" / "HR").mkdir(parents=True)
    assert find_image_set("Set5", data_dir=tmp_path) == tmp_path / "Set5" / "HR"


def test_data_dir_env_var_and_missing_set_error(monkeypatch, tmp_path):
    monkeypatch.setenv("QSR_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match=r"Set14.*QSR_DATA_DIR") as info:
        find_image_set("Set14")
    assert str(tmp_path / "Set14" / "HR") in str(info.value)
    (tmp_path / "Set14" / "HR").mkdir(parents=True)
    assert find_image_set("Set14") == tmp_path / "Set14" / "HR"


def test_set5_loads_with_documented_sizes():
    images = dict(load_hr_images(find_image_set("Set5")))
    assert sorted(images) == SET5_NAMES
    assert images["baby"].shape == (512, 512, 3)
    assert images["woman"].shape == (344, 228, 3)  # 228 wide, 344 high
    assert all(img.dtype == np.uint8 for img in images.values())


def test_load_hr_images_reads_rgb_and_expands_gray(tmp_path):
    color = astronaut_patch(40)
    gray = color[..., 1].copy()
    Image.fromarray(color).save(tmp_path / "b_color.png")
    Image.fromarray(gray).save(tmp_path / "a_gray.bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    loaded = load_hr_images(tmp_path)
    assert [name for name, _ in loaded] == ["a_gray", "b_color"]
    np.testing.assert_array_equal(loaded[0][1], np.stack([gray] * 3, axis=-1))
    np.testing.assert_array_equal(loaded[1][1], color)


def test_load_hr_images_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_hr_images(tmp_path / "nowhere")


def test_load_hr_images_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=rf"no images in {tmp_path}.*\.png"):
        load_hr_images(tmp_path)


def test_load_hr_images_unreadable_file(tmp_path):
    Image.fromarray(astronaut_patch(16)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"cannot read image file .*broken\.png"):
        load_hr_images(tmp_path)


def test_builtin_images_offline_and_split(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("builtin_images() tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    images = builtin_images()
    train, heldout = images["train"], images["heldout"]
    assert train and heldout
    assert not set(train) & set(heldout)
    for img in [*train.values(), *heldout.values()]:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert min(img.shape[:2]) >= 256
    held_pixels = {img.tobytes() for img in heldout.values()}
    assert not any(img.tobytes() in held_pixels for img in train.values())
    camera = train["camera"]
    assert (camera[..., 0] == camera[..., 2]).all()


# --- resizing and conversion -------------------------------------------------------------------


def test_modcrop_keeps_top_left():
    img = astronaut_patch(50)[:, :47]
    cropped = modcrop(img, 4)
    assert cropped.shape == (48, 44, 3)
    np.testing.assert_array_equal(cropped, img[:48, :44])


def test_bicubic_resize_shapes_and_constant_image():
    flat = np.full((24, 36, 3), 173, dtype=np.uint8)
    lr = bicubic_downscale(flat, 3)
    assert lr.shape == (8, 12, 3) and lr.dtype == np.uint8
    assert (lr == 173).all()
    up = bicubic_upscale(lr, 3)
    assert up.shape == (24, 36, 3) and (up == 173).all()


def test_bicubic_downscale_requires_modcrop():
    with pytest.raises(ValueError, match=r"50x50 is not a multiple of scale 4.*modcrop"):
        bicubic_downscale(astronaut_patch(50), 4)


def test_bicubic_downscale_rejects_float_input():
    with pytest.raises(ValueError, match=r"hr must be an HxWx3 uint8 RGB array.*float64"):
        bicubic_downscale(np.zeros((8, 8, 3)), 2)


def test_tensor_round_trip_and_ranges():
    img = astronaut_patch(20)
    t = to_tensor(img)
    assert t.shape == (3, 20, 20) and t.dtype == torch.float32
    assert t.min() >= 0.0 and t.max() <= 1.0
    np.testing.assert_array_equal(to_uint8(t), img)
    batch = to_batch([img, img[::-1]])
    assert batch.shape == (2, 3, 20, 20)
    np.testing.assert_array_equal(to_uint8(batch)[1], img[::-1])


def test_to_uint8_clamps_and_rounds():
    t = torch.tensor([-0.2, 1.3, 100.4 / 255, 100.6 / 255]).view(1, 1, 4).expand(3, 1, 4)
    np.testing.assert_array_equal(to_uint8(t)[0, :, 0], [0, 255, 100, 101])


def test_to_batch_rejects_mixed_sizes():
    with pytest.raises(ValueError, match="same shape"):
        to_batch([astronaut_patch(20), astronaut_patch(24)])


# --- training patches --------------------------------------------------------------------------


def test_patch_sampler_shapes_and_range():
    sampler = PatchSampler(photos()["train"].items(), scale=4, patch_size=12, seed=1)
    lr, hr = sampler.sample(6)
    assert lr.shape == (6, 3, 12, 12) and hr.shape == (6, 3, 48, 48)
    assert lr.dtype == hr.dtype == torch.float32
    assert lr.min() >= 0 and lr.max() <= 1 and hr.min() >= 0 and hr.max() <= 1


def test_patch_sampler_reproducible():
    images = list(photos()["train"].items())[:2]
    a = PatchSampler(images, scale=2, patch_size=16, seed=7).sample(5)
    b = PatchSampler(images, scale=2, patch_size=16, seed=7).sample(5)
    c = PatchSampler(images, scale=2, patch_size=16, seed=8).sample(5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("augment", [False, True])
def test_patch_sampler_lr_aligned_with_hr(augment):
    # Away from the patch edges (2 LR pixels: the x4 bicubic kernel spans 4*scale HR pixels),
    # downscaling the HR patch alone must reproduce the LR patch exactly.
    sampler = PatchSampler(photos()["train"].items(), 4, 16, augment=augment, seed=3)
    lr, hr = sampler.sample(8)
    for lr_patch, hr_patch in zip(to_uint8(lr), to_uint8(hr), strict=True):
        redone = bicubic_downscale(hr_patch, 4)
        np.testing.assert_array_equal(redone[2:-2, 2:-2], lr_patch[2:-2, 2:-2])
        shifted = np.abs(redone[3:-2, 2:-2].astype(int) - lr_patch[2:-3, 2:-2].astype(int))
        assert shifted.max() > 0, "a one-pixel shift should not match"


def test_patch_sampler_augments_with_all_eight_symmetries():
    hr = astronaut_patch(48)
    sampler = PatchSampler([("one", hr)], scale=4, patch_size=12, augment=True, seed=0)
    expected = {
        np.ascontiguousarray(np.rot90(t, k)).tobytes() for t in (hr, hr[:, ::-1]) for k in range(4)
    }
    _, hr_batch = sampler.sample(48)
    seen = {np.ascontiguousarray(p).tobytes() for p in to_uint8(hr_batch)}
    assert seen == expected


def test_patch_sampler_rejects_small_image():
    tiny = astronaut_patch(40)
    with pytest.raises(
        ValueError, match=r"'tiny' of size 40x40 .* HR patch 48x48.*lower patch_size"
    ):
        PatchSampler([("tiny", tiny)], scale=4, patch_size=12)
