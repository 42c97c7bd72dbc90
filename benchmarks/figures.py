"""The seed's figures from short real training runs: ``python -m benchmarks.run --only figures``.

One float MSRResNet is trained on T91 (or loaded from the float cache), then each method of
:data:`benchmarks.accuracy.METHODS` named in ``methods`` is trained from it at 2 and 4 bits,
as in the accuracy benchmark (same steps, learning rate and batches): qsr_plugin's methods
in the quick mode, every method of the comparison (torch.ao and brevitas too) in the full
mode. Written, as PNGs:

- ``phi_gradient.png`` (seed Fig. 3): for every weight quantizer of the QuantSR-C model
  (MSRResNet, ``quantsr`` with DQA, at its deepest variant), the per-element difference
  between the weight gradient with phi (the trained ``phi_k``) and with straight-through
  rounding (``phi_k = 0`` in every quantizer), on the same batch, divided by the layer's
  mean straight-through gradient magnitude, as a box plot per layer;
- ``features.png`` (seed Fig. 4): the body's output (a few channels, those that vary most in
  the float model) on a centre crop of the first evaluation image, for the float model and
  each method of ``feature_methods`` at each bit width;
- ``comparison.png`` (seed Figs. 5-8): crops of HR, bicubic, float and every trained method
  at every bit width, with the PSNR (Y) of the whole image in each label, on the evaluation
  image where the quantized models' PSNRs spread most, at the window where bicubic errs most.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import qsr_plugin
from qsr_plugin import sr_data, sr_training
from qsr_plugin.demo.figures import hardest_crop
from qsr_plugin.quantizers import quantizers_of
from qsr_plugin.quantizers.cadyq import cadyq_quantizers
from qsr_plugin.rewrite.variants import use_depth

from . import accuracy
from .float_cache import DEFAULT_CACHE_DIR, cached_float_model
from .report import Result, markdown_table

PHI_METHOD = accuracy.QUANTSR_DQA


@dataclass(frozen=True)
class FigureSettings:
    """What the figures train and show.

    Attributes:
        training: model size, schedule and image sets (as the accuracy benchmark's).
        methods: labels of :data:`benchmarks.accuracy.METHODS` to train at every bit width.
        feature_methods: the methods whose body features Figure 4 shows (trained ones).
        channels: feature channels shown per model.
        feature_crop: side of the centre crop of the image Figure 4 runs on, in LR pixels.
        crop: side of the comparison crop, in LR pixels.
    """

    training: accuracy.AccuracySettings
    methods: tuple[str, ...]
    feature_methods: tuple[str, ...] = ("DoReFa", PHI_METHOD)
    channels: int = 4
    feature_crop: int = 48
    crop: int = 32


COMPARED = (PHI_METHOD, "LSQ", "PAMS", "DoReFa", "CADyQ")
SHORT_NAMES = {PHI_METHOD: "QuantSR-C", "torch.ao QAT (prepare_qat_fx)": "torch.ao QAT"}
QUICK = FigureSettings(
    training=accuracy.AccuracySettings(
        num_feat=16, num_block=4, scale=2, patch=24, batch=8,
        float_steps=300, float_lr=1e-3, qat_steps=40, qat_lr=2e-4,
        eval_sets=("Set5",),
    ),
    methods=COMPARED,
)  # fmt: skip
FULL = FigureSettings(
    training=accuracy.FULL, methods=tuple(m.label for m in accuracy.METHODS if not m.ablation)
)


def check_settings(settings: FigureSettings) -> None:
    """Refuse unknown methods, and figure methods that are not trained, by argument name."""
    known = [m.label for m in accuracy.METHODS]
    for label in settings.methods:
        if label not in known:
            raise ValueError(
                f"methods: {label!r} is not a method of the accuracy benchmark; choose from "
                f"{', '.join(map(repr, known))}"
            )
    untrained = [m for m in (*settings.feature_methods, PHI_METHOD) if m not in settings.methods]
    if untrained:
        argument = "feature_methods" if untrained[0] in settings.feature_methods else "methods"
        raise ValueError(
            f"{argument}: the figures need {untrained[0]!r}, which is not trained; add it to "
            f"methods (trained: {', '.join(map(repr, settings.methods))})"
        )


def train(
    label: str,
    bits: int,
    float_model: nn.Module,
    sampler: sr_data.PatchSampler,
    settings: accuracy.AccuracySettings,
) -> nn.Module:
    """QAT of one benchmark method at ``bits`` from the float model, in eval mode."""
    method = next(m for m in accuracy.METHODS if m.label == label)
    sampler.generator.manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    model = accuracy.prepare(method, float_model, bits, settings.backbone(), sampler, settings)
    sampler.generator.manual_seed(settings.seed)
    sr_training.train_qat(
        model, sampler, settings.qat_steps, lr=settings.qat_lr, batch_size=settings.batch
    )
    if method.dqa:
        qsr_plugin.set_depth(model, settings.backbone().depth)
    return model.eval()


# -- Figure 3: phi's effect on the weight gradients -----------------------------------------
def phi_gradient_differences(
    model: nn.Module, lr: torch.Tensor, hr: torch.Tensor
) -> dict[str, tuple[np.ndarray, float]]:
    """Per weight quantizer: weight gradient with phi minus with straight-through rounding.

    Both gradients come from the L1 loss on the same batch, at the deepest depth variant,
    in training mode; every quantizer's ``phi_k`` is set to 0 for the second pass and
    restored afterwards. Returns, per layer, the per-element differences and the mean
    magnitude of the straight-through gradient (the scale the figure divides by).
    """
    quantizers = quantizers_of(model)
    layers = {
        name.removesuffix(".weight_quant"): model.get_submodule(name.removesuffix(".weight_quant"))
        for name, q in quantizers
        if q.role == "weight"
    }

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        F.l1_loss(model(lr), hr).backward()
        return {name: layer.weight.grad.detach().clone() for name, layer in layers.items()}

    was_training = model.training
    original = {name: q.phi_k for name, q in quantizers}
    try:
        model.train()
        with use_depth(model, qsr_plugin.depth_variants(model)[0]):
            with_phi = gradients()
            for _, quantizer in quantizers:
                quantizer.phi_k = 0.0
            straight = gradients()
    finally:
        for name, quantizer in quantizers:
            quantizer.phi_k = original[name]
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {
        name: (
            (with_phi[name] - straight[name]).flatten().numpy(),
            float(straight[name].abs().mean()),
        )
        for name in layers
    }


def plot_phi_gradient(
    differences: dict[str, tuple[np.ndarray, float]], bits: int, path: Path
) -> Path:
    """Box plot per layer of the per-element gradient differences, each divided by the
    layer's mean straight-through gradient magnitude (so layers of any scale compare)."""
    from matplotlib.figure import Figure

    names = list(differences)
    figure = Figure(figsize=(max(6.0, 0.45 * len(names) + 2), 4.2))
    ax = figure.subplots()
    relative = [d / scale if scale > 0 else d for d, scale in differences.values()]
    ax.boxplot(relative, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), [n.removeprefix("body.") for n in names])
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("weight quantizer (layer)")
    ax.set_ylabel("(grad with phi - grad STE) / mean|grad STE|", fontsize=8)
    ax.set_title(
        f"Effect of phi on the weight gradients, QuantSR-C {bits}-bit (MSRResNet), one batch\n"
        "per-element difference; boxes: quartiles, whiskers: 1.5 IQR",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=80)
    return path


# -- Figure 4: body features -----------------------------------------------------------------
def body_output(model: nn.Module, body_path: str, lr: torch.Tensor) -> torch.Tensor:
    """The output of the module at ``body_path`` for one input, 1 x C x H x W."""
    captured = []
    handle = model.get_submodule(body_path).register_forward_hook(
        lambda module, args, output: captured.append(output.detach())
    )
    try:
        with torch.no_grad():
            model(lr)
    finally:
        handle.remove()
    return captured[-1]


def plot_features(
    features: dict[str, torch.Tensor], channels: list[int], image: str, path: Path
) -> Path:
    """Rows: models; columns: the chosen channels, each normalised to its own range."""
    from matplotlib.figure import Figure

    rows = list(features)
    figure = Figure(figsize=(1.5 * len(channels) + 1.2, 1.45 * len(rows) + 0.5))
    axes = figure.subplots(len(rows), len(channels), squeeze=False)
    for r, label in enumerate(rows):
        for c, channel in enumerate(channels):
            ax = axes[r][c]
            ax.imshow(features[label][0, channel].numpy(), cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"channel {channel}", fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    figure.suptitle(
        f"Body output features on a crop of {image} (each panel scaled to its range)", fontsize=8
    )
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=64)
    return path


# -- Figures 5-8: comparison crops -----------------------------------------------------------
def super_resolve(model: nn.Module, lr: np.ndarray) -> np.ndarray:
    """The model's HxWx3 uint8 output for one LR image."""
    with torch.no_grad():
        return sr_data.to_uint8(model(sr_data.to_tensor(lr).unsqueeze(0))[0])


def plot_comparison(panels: list[list[tuple[str, np.ndarray]]], title: str, path: Path) -> Path:
    """A grid of labelled crops, one row per list of panels."""
    from matplotlib.figure import Figure

    columns = max(len(row) for row in panels)
    figure = Figure(figsize=(1.75 * columns, 2.0 * len(panels) + 0.4))
    axes = figure.subplots(len(panels), columns, squeeze=False)
    for r, row in enumerate(panels):
        for c in range(columns):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                label, img = row[c]
                ax.imshow(img, interpolation="nearest")
                ax.set_title(label, fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=72)
    return path


def _label(label: str, bits: int, psnr: float, measured_bits: float | None) -> str:
    text = f"{SHORT_NAMES.get(label, label)} {bits}-bit"
    if measured_bits is not None:
        text += f" (a: {measured_bits:.1f})"
    return f"{text}\n{psnr:.2f} dB"


def figures(
    settings: FigureSettings, folder: Path, cache_dir: Path, log=print, progress: bool = True
) -> dict:
    """Train what the figures need, write the three PNGs into ``folder``; returns a summary.

    Raises:
        ValueError: ``methods`` names a method the benchmark does not have, or
            ``feature_methods`` (or Figure 3's QuantSR-C) is not among ``methods``.
    """
    check_settings(settings)
    training = settings.training
    folder.mkdir(parents=True, exist_ok=True)
    backbone = training.backbone()
    images = sr_data.load_hr_images(sr_data.find_image_set(training.train_set))
    sampler = sr_data.PatchSampler(images, training.scale, training.patch, seed=training.seed)
    pairs = [
        pair
        for name in training.eval_sets
        for pair in sr_data.make_pairs(
            sr_data.load_hr_images(sr_data.find_image_set(name)), training.scale
        )
    ]
    float_model, _ = cached_float_model(backbone, sampler, training, cache_dir, log, progress)
    float_model.eval()
    start = time.perf_counter()
    models: dict[tuple[str, int], nn.Module] = {}
    for bits in training.bits:
        for label in settings.methods:
            log(f"figures: QAT {label}, {bits} bits, {training.qat_steps} steps")
            models[label, bits] = train(label, bits, copy.deepcopy(float_model), sampler, training)
    outputs, cadyq_bits = {}, {}
    for key, model in models.items():
        if cadyq_quantizers(model):
            with qsr_plugin.measure_bits(model) as measured:
                outputs[key] = [super_resolve(model, lr) for _, lr, _ in pairs]
            cadyq_bits[key] = measured.per_image
        else:
            outputs[key] = [super_resolve(model, lr) for _, lr, _ in pairs]
    hrs = [hr for _, _, hr in pairs]
    psnr = {
        key: [
            sr_data.psnr_ssim_y(sr, hr, training.scale)[0] for sr, hr in zip(srs, hrs, strict=True)
        ]
        for key, srs in outputs.items()
    }
    written = {}

    # Figure 3, on the lowest bit width's QuantSR-C model
    low = min(training.bits)
    sampler.generator.manual_seed(training.seed)
    lr_batch, hr_batch = sampler.sample(training.batch)
    differences = phi_gradient_differences(models[PHI_METHOD, low], lr_batch, hr_batch)
    written["phi_gradient"] = plot_phi_gradient(differences, low, folder / "phi_gradient.png")

    # Figure 4, on the first evaluation image
    body_path = qsr_plugin.quantization_record(models[PHI_METHOD, low]).body.path
    name, lr, _ = pairs[0]
    top, left = ((side - settings.feature_crop) // 2 for side in lr.shape[:2])
    window = lr[max(top, 0) :, max(left, 0) :][: settings.feature_crop, : settings.feature_crop]
    lr_tensor = sr_data.to_tensor(np.ascontiguousarray(window)).unsqueeze(0)
    features = {"float": body_output(float_model, body_path, lr_tensor)}
    for label in settings.feature_methods:
        for bits in training.bits:
            name_bits = f"{SHORT_NAMES.get(label, label)} {bits}-bit"
            features[name_bits] = body_output(models[label, bits], body_path, lr_tensor)
    spread = features["float"][0].flatten(1).std(dim=1)
    channels = spread.argsort(descending=True)[: settings.channels].tolist()
    written["features"] = plot_features(features, channels, name, folder / "features.png")

    # Figures 5-8, on the image where the quantized models differ most
    spreads = [
        max(p[i] for p in psnr.values()) - min(p[i] for p in psnr.values())
        for i in range(len(pairs))
    ]
    image = int(np.argmax(spreads))
    name, lr, hr = pairs[image]
    crop = hardest_crop([pairs[image]], training.scale, settings.crop)
    bicubic = sr_data.bicubic_upscale(lr, training.scale)
    float_sr = super_resolve(float_model, lr)
    references = [
        ("HR", crop.of_hr(hr, training.scale)),
        (
            f"bicubic\n{sr_data.psnr_ssim_y(bicubic, hr, training.scale)[0]:.2f} dB",
            crop.of_hr(bicubic, training.scale),
        ),
        (
            f"float\n{sr_data.psnr_ssim_y(float_sr, hr, training.scale)[0]:.2f} dB",
            crop.of_hr(float_sr, training.scale),
        ),
    ]
    rows = [
        references
        + [
            (
                _label(
                    label,
                    bits,
                    psnr[label, bits][image],
                    cadyq_bits[label, bits][image] if (label, bits) in cadyq_bits else None,
                ),
                crop.of_hr(outputs[label, bits][image], training.scale),
            )
            for label in settings.methods
        ]
        for bits in sorted(training.bits)
    ]
    title = f"{name} (x{training.scale}), PSNR on Y of the whole image; crop in HR pixels"
    written["comparison"] = plot_comparison(rows, title, folder / "comparison.png")
    return {
        "settings": asdict(settings),
        "seconds": time.perf_counter() - start,
        "figures": {key: str(path) for key, path in written.items()},
        "comparison_image": name,
        "psnr": {f"{label} {bits}": values for (label, bits), values in psnr.items()},
        "images": [name for name, _, _ in pairs],
        "cadyq_bits": {f"{label} {bits}": values for (label, bits), values in cadyq_bits.items()},
        "phi_gradient": {
            layer: {
                "mean_abs": float(np.abs(d).mean()),
                "max_abs": float(np.abs(d).max()),
                "straight_through_mean_abs": scale,
            }
            for layer, (d, scale) in differences.items()
        },
    }


def markdown(result: dict) -> str:
    """The figures written and the PSNR of each trained model on each image."""
    images = result["images"]
    rows = [[key, *(f"{v:.2f}" for v in values)] for key, values in result["psnr"].items()]
    bits = [[key, *(f"{v:.2f}" for v in values)] for key, values in result["cadyq_bits"].items()]
    text = (
        "### Figures\n\n"
        + "\n".join(f"- {key}: `{path}`" for key, path in result["figures"].items())
        + f"\n\nComparison crops on {result['comparison_image']}.\n\n### PSNR (Y) per image\n\n"
        + markdown_table(["model", *images], rows)
    )
    if bits:
        text += "\n### CADyQ average activation bits per image\n\n" + markdown_table(
            ["model", *images], bits
        )
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The figures' own options."""
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help="where the trained float model is kept between runs")  # fmt: skip


def run(args: argparse.Namespace) -> Result:
    """The figures of ``args.mode`` (``quick`` or ``full``) under
    ``<results_dir>/figures_<mode>``."""
    results_dir = Path(args.results_dir)
    settings = QUICK if args.mode == "quick" else FULL
    result = figures(settings, results_dir / f"figures_{args.mode}", args.cache_dir)
    result["figures"] = {
        key: Path(path).relative_to(results_dir).as_posix()
        for key, path in result["figures"].items()
    }
    return Result(f"figures_{args.mode}", result, markdown(result))
