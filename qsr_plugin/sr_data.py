"""Super-resolution images, LR generation and the paper's PSNR/SSIM protocol.

LR inputs are made as in the standard benchmarks: modcrop the HR image to a multiple of the
scale, downscale it with MATLAB-compatible bicubic ``imresize`` (BasicSR's port) on floats in
[0, 1], and round to uint8. PSNR and SSIM are measured on the Y channel (ITU-R BT.601) after
cropping ``scale`` pixels from each border, with BasicSR's ``calculate_psnr``/``calculate_ssim``.

Images are HxWx3 uint8 arrays in RGB order throughout; tensors are float in [0, 1], CHW/NCHW.
basicsr is imported lazily so that importing this module stays cheap.
"""

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from qsr_plugin._basicsr_compat import import_basicsr

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

NamedImage = tuple[str, np.ndarray]
Pair = tuple[str, np.ndarray, np.ndarray]


DATA_DIR_VARIABLE = "QSR_DATA_DIR"
SET_LAYOUT = "Set5/HR, Set14/HR, T91/HR (HR PNGs)"


def default_data_dir() -> Path:
    """The folder holding the standard image sets: ``$QSR_DATA_DIR``.

    The folder is not required to exist; :func:`find_image_set` says when a set is missing.

    Raises:
        FileNotFoundError: ``QSR_DATA_DIR`` is not set.
    """
    env = os.environ.get(DATA_DIR_VARIABLE)
    if not env:
        raise FileNotFoundError(
            f"no data folder: set {DATA_DIR_VARIABLE} to a folder with {SET_LAYOUT}, or pass "
            "the folder explicitly (find_image_set(name, data_dir=...))"
        )
    return Path(env).expanduser()


def find_image_set(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Returns the HR folder of a standard image set such as 'Set5', 'Set14' or 'T91'.

    Args:
        name: the set's folder name under the data folder.
        data_dir: the data folder; :func:`default_data_dir` (``$QSR_DATA_DIR``) when None.

    Raises:
        FileNotFoundError: no data folder is given, or ``<data dir>/<name>/HR`` is not a
            folder.
    """
    root = default_data_dir() if data_dir is None else Path(data_dir).expanduser()
    folder = root / name / "HR"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image set {name!r} not found: {folder} is not a folder. Set {DATA_DIR_VARIABLE} "
            f"to a folder with {SET_LAYOUT} or pass an explicit folder."
        )
    return folder


def _read_rgb(path: Path) -> np.ndarray:
    """Reads an image file as HxWx3 uint8 RGB (grayscale is replicated, alpha dropped)."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image file {path}: not a valid image; remove or replace it")
    return np.ascontiguousarray(bgr[..., ::-1])


def load_hr_images(folder: str | os.PathLike) -> list[NamedImage]:
    """Loads every image in a folder, sorted by file name.

    Args:
        folder: folder with .png/.jpg/.jpeg/.bmp/.tif/.tiff files (not searched recursively).

    Returns:
        List of (file stem, HxWx3 uint8 RGB array).

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: the folder holds no image files, or one of them cannot be decoded.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a folder")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise ValueError(
            f"no images in {folder}: expected files ending in {', '.join(IMAGE_EXTENSIONS)}"
        )
    return [(p.stem, _read_rgb(p)) for p in files]


def builtin_images() -> dict[str, dict[str, np.ndarray]]:
    """Returns photographs bundled with scikit-image, split for training and held-out checks.

    Only images stored inside the installed ``skimage`` package are used, so nothing is
    downloaded. ``train``: astronaut (512x512), camera (512x512, grayscale), coins (303x384,
    grayscale), rocket (427x640) and motorcycle (left view of the stereo pair, 500x741).
    ``heldout``: chelsea (a cat, 300x451, fur texture) and coffee (a cup on a table, 400x600):
    two natural colour photos not in ``train``. (``skimage.data.cat`` is the same photo as
    chelsea and is not used.) Grayscale images are replicated to three channels.

    Returns:
        ``{"train": {name: HxWx3 uint8 RGB}, "heldout": {name: HxWx3 uint8 RGB}}``.
    """
    from skimage import data

    def rgb(img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.stack([img] * 3, axis=-1) if img.ndim == 2 else img)

    return {
        "train": {
            "astronaut": rgb(data.astronaut()),
            "camera": rgb(data.camera()),
            "coins": rgb(data.coins()),
            "rocket": rgb(data.rocket()),
            "motorcycle": rgb(data.stereo_motorcycle()[0]),
        },
        "heldout": {
            "chelsea": rgb(data.chelsea()),
            "coffee": rgb(data.coffee()),
        },
    }


def _check_scale(scale: int) -> None:
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")


def _check_image(img: np.ndarray, arg: str) -> None:
    if (
        not isinstance(img, np.ndarray)
        or img.dtype != np.uint8
        or img.ndim != 3
        or img.shape[2] != 3
    ):
        raise ValueError(f"{arg} must be an HxWx3 uint8 RGB array, got {_describe(img)}")


def _describe(obj: object) -> str:
    if isinstance(obj, np.ndarray | torch.Tensor):
        return f"{type(obj).__name__} of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    return type(obj).__name__


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crops the bottom/right edges so that height and width are multiples of ``scale``."""
    _check_scale(scale)
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def _matlab_resize(img: np.ndarray, factor: float) -> np.ndarray:
    """MATLAB-compatible bicubic resize of an HxWx3 uint8 image, rounded back to uint8."""
    import_basicsr()
    from basicsr.utils.matlab_functions import imresize

    out = imresize(img.astype(np.float32) / 255.0, factor)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """Makes the LR input from an HR image (MATLAB bicubic with antialiasing, uint8 rounding).

    Args:
        hr: HxWx3 uint8 RGB image whose height and width are multiples of ``scale``
            (apply :func:`modcrop` first).
        scale: integer downscaling factor.

    Returns:
        (H/scale)x(W/scale)x3 uint8 RGB image.
    """
    _check_scale(scale)
    _check_image(hr, "hr")
    if hr.shape[0] % scale or hr.shape[1] % scale:
        raise ValueError(
            f"hr of size {hr.shape[0]}x{hr.shape[1]} is not a multiple of scale {scale}; "
            "apply modcrop(hr, scale) first"
        )
    return _matlab_resize(hr, 1.0 / scale)


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """Upscales an LR image with MATLAB bicubic (the Bicubic baseline), rounded to uint8."""
    _check_scale(scale)
    _check_image(lr, "lr")
    return _matlab_resize(lr, float(scale))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """Converts an HxWx3 uint8 image to a float32 3xHxW tensor in [0, 1]."""
    _check_image(img, "img")
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


def to_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Stacks equally sized HxWx3 uint8 images into a float32 Nx3xHxW tensor in [0, 1]."""
    if not images:
        raise ValueError("images is empty; pass at least one HxWx3 uint8 image")
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        raise ValueError(f"images must all have the same shape, got {sorted(shapes)}")
    return torch.stack([to_tensor(img) for img in images])


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """Converts a 3xHxW or Nx3xHxW tensor in [0, 1] to HxWx3 or NxHxWx3 uint8 (clamp, round)."""
    if tensor.ndim not in (3, 4) or tensor.shape[-3] != 3:
        raise ValueError(f"tensor must be 3xHxW or Nx3xHxW, got {_describe(tensor)}")
    out = tensor.detach().float().cpu().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return out.movedim(-3, -1).contiguous().numpy()


def psnr_ssim_y(sr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[float, float]:
    """PSNR (dB) and SSIM on the Y channel, with ``scale`` pixels cropped from each border.

    Args:
        sr: HxWx3 uint8 RGB super-resolved image.
        hr: HxWx3 uint8 RGB ground truth of the same size.
        scale: upscaling factor, used as the border crop.

    Returns:
        (psnr, ssim); psnr is ``inf`` when the cropped Y channels are identical.
    """
    _check_scale(scale)
    _check_image(sr, "sr")
    _check_image(hr, "hr")
    if sr.shape != hr.shape:
        raise ValueError(f"sr shape {sr.shape} differs from hr shape {hr.shape}")
    import_basicsr()
    from basicsr.metrics import calculate_psnr, calculate_ssim

    # BasicSR converts HWC arrays to Y assuming BGR channel order.
    sr_bgr, hr_bgr = sr[..., ::-1], hr[..., ::-1]
    psnr = calculate_psnr(sr_bgr, hr_bgr, crop_border=scale, test_y_channel=True)
    ssim = calculate_ssim(sr_bgr, hr_bgr, crop_border=scale, test_y_channel=True)
    return float(psnr), float(ssim)


def make_pairs(images: Iterable[NamedImage], scale: int) -> list[Pair]:
    """Builds evaluation pairs from HR images.

    Args:
        images: (name, HxWx3 uint8 RGB) items, e.g. from :func:`load_hr_images` or
            ``dict.items()``.
        scale: integer SR factor.

    Returns:
        List of (name, LR uint8 image, modcropped HR uint8 image).
    """
    pairs = []
    for name, img in images:
        _check_image(img, f"image {name!r}")
        hr = np.ascontiguousarray(modcrop(img, scale))
        pairs.append((name, bicubic_downscale(hr, scale), hr))
    return pairs


def _summarise(scores: dict[str, tuple[float, float]]) -> dict:
    return {
        "psnr": float(np.mean([p for p, _ in scores.values()])),
        "ssim": float(np.mean([s for _, s in scores.values()])),
        "per_image": {name: {"psnr": p, "ssim": s} for name, (p, s) in scores.items()},
    }


def evaluate_sr(
    fn: Callable[[torch.Tensor], torch.Tensor],
    pairs: Sequence[Pair],
    scale: int,
    device: str | torch.device = "cpu",
) -> dict:
    """Scores an SR function on evaluation pairs with the Y-channel PSNR/SSIM protocol.

    ``fn`` is called under ``torch.no_grad()``; put a model in eval mode before passing it.

    Args:
        fn: maps a 1x3xhxw float tensor in [0, 1] to a 1x3x(h*scale)x(w*scale) tensor.
        pairs: items from :func:`make_pairs`.
        scale: the SR factor of ``pairs``.
        device: where the LR tensor is placed before calling ``fn``.

    Returns:
        ``{"psnr": mean, "ssim": mean, "per_image": {name: {"psnr": .., "ssim": ..}}}``.
    """
    scores = {}
    with torch.no_grad():
        for name, lr, hr in pairs:
            sr = fn(to_tensor(lr).unsqueeze(0).to(device))
            expected = (1, 3, *hr.shape[:2])
            if tuple(sr.shape) != expected:
                raise ValueError(
                    f"fn returned shape {tuple(sr.shape)} for image {name!r}, expected "
                    f"{expected} (LR {lr.shape[0]}x{lr.shape[1]} upscaled by {scale})"
                )
            scores[name] = psnr_ssim_y(to_uint8(sr[0]), hr, scale)
    return _summarise(scores)


def evaluate_bicubic(pairs: Sequence[Pair], scale: int) -> dict:
    """Scores the MATLAB-bicubic baseline on pairs; returns the layout of :func:`evaluate_sr`."""
    return _summarise(
        {name: psnr_ssim_y(bicubic_upscale(lr, scale), hr, scale) for name, lr, hr in pairs}
    )


class PatchSampler:
    """Draws random aligned (LR, HR) training patches from HR images, reproducibly.

    Each image is modcropped and downscaled once (as :func:`make_pairs`). An LR patch at
    (y, x) of size ``patch_size`` is paired with the HR patch at (y*scale, x*scale) of size
    ``patch_size*scale``. With ``augment``, LR and HR get the same random horizontal flip,
    vertical flip and transpose (together, all eight rotations and flips of the square).

    Args:
        images: (name, HxWx3 uint8 RGB) items.
        scale: integer SR factor.
        patch_size: LR patch side; HR patches are ``patch_size * scale``.
        augment: apply random flips and transposes.
        seed: seed of the sampler's own ``torch.Generator``.

    Raises:
        ValueError: no images, or an image is smaller than the HR patch.
    """

    def __init__(
        self,
        images: Iterable[NamedImage],
        scale: int,
        patch_size: int,
        augment: bool = True,
        seed: int = 0,
    ):
        _check_scale(scale)
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        self.scale = scale
        self.patch_size = patch_size
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)
        hr_size = patch_size * scale
        self._lr, self._hr = [], []
        for name, img in images:
            _check_image(img, f"image {name!r}")
            if min(img.shape[:2]) < hr_size:
                raise ValueError(
                    f"image {name!r} of size {img.shape[0]}x{img.shape[1]} is smaller than the "
                    f"HR patch {hr_size}x{hr_size} (patch_size {patch_size} x scale {scale}); "
                    "lower patch_size"
                )
            _, lr, hr = make_pairs([(name, img)], scale)[0]
            self._lr.append(torch.from_numpy(lr).permute(2, 0, 1).contiguous())
            self._hr.append(torch.from_numpy(hr).permute(2, 0, 1).contiguous())
        if not self._lr:
            raise ValueError("images is empty; pass at least one (name, HR image) item")

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns a float32 batch (lr Nx3xPxP, hr Nx3x(P*s)x(P*s)), values in [0, 1]."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        p, s = self.patch_size, self.scale
        lrs, hrs = [], []
        for _ in range(batch_size):
            i = self._randint(len(self._lr))
            lr_img, hr_img = self._lr[i], self._hr[i]
            y = self._randint(lr_img.shape[1] - p + 1)
            x = self._randint(lr_img.shape[2] - p + 1)
            lr = lr_img[:, y : y + p, x : x + p]
            hr = hr_img[:, y * s : (y + p) * s, x * s : (x + p) * s]
            if self.augment:
                lr, hr = self._augment(lr, hr)
            lrs.append(lr)
            hrs.append(hr)
        return torch.stack(lrs).float() / 255.0, torch.stack(hrs).float() / 255.0

    def _augment(self, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hflip, vflip, rot = (bool(b) for b in torch.randint(2, (3,), generator=self.generator))
        if hflip:
            lr, hr = lr.flip(-1), hr.flip(-1)
        if vflip:
            lr, hr = lr.flip(-2), hr.flip(-2)
        if rot:
            lr, hr = lr.transpose(-1, -2), hr.transpose(-1, -2)
        return lr, hr
