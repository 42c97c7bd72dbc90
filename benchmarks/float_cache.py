"""The accuracy benchmark's float model: trained once, cached on disk, reused by reruns."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from qsr_plugin import sr_data, sr_training
from qsr_plugin._files import atomic_output

from .models import Backbone

DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "benchmarks"


def data_fingerprint(folder: Path) -> list[list]:
    """(file name, size) of every file in ``folder``: changes when the images change."""
    return sorted([path.name, path.stat().st_size] for path in folder.iterdir() if path.is_file())


def cache_key(backbone: Backbone, settings, data_folder: Path) -> str:
    """A short hash of everything the float weights depend on."""
    recipe = {
        "arch": backbone.arch,
        "train_set": settings.train_set,
        "arch_settings": backbone.settings,
        "steps": settings.float_steps,
        "lr": settings.float_lr,
        "batch": settings.batch,
        "patch": settings.patch,
        "seed": settings.seed,
        "data": data_fingerprint(data_folder),
        "torch": torch.__version__,
    }
    encoded = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def cached_float_model(
    backbone: Backbone,
    sampler: sr_data.PatchSampler,
    settings,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """The float model of ``settings``, loaded from ``cache_dir`` or trained and cached.

    Training draws its batches from ``sampler`` after reseeding it with ``settings.seed``,
    with a progress bar unless ``progress`` is False.

    Returns:
        ``(model, info)``; ``info`` holds the cache file, the depth, the final training
        loss and the training time (of the run that produced the cache).
    """
    key = cache_key(backbone, settings, sr_data.find_image_set(settings.train_set))
    path = Path(cache_dir) / f"float_{backbone.arch}_{key}.pt"
    model = backbone.build(settings.seed)
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(stored["state_dict"])
        log(f"float model: loaded {path}")
        return model, {**stored["info"], "cache": str(path), "from_cache": True}
    log(f"float model: training {settings.float_steps} steps (cached afterwards at {path})")
    sampler.generator.manual_seed(settings.seed)
    start = time.perf_counter()
    with sr_training.progress_bar(settings.float_steps, "float", enabled=progress) as bar:
        history = sr_training.train_float(
            model,
            sampler,
            settings.float_steps,
            lr=settings.float_lr,
            batch_size=settings.batch,
            callbacks=[bar],
        )
    info = {
        "depth": backbone.depth,
        "steps": settings.float_steps,
        "final_loss": history[-1].loss,
        "train_seconds": time.perf_counter() - start,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        torch.save({"state_dict": model.state_dict(), "info": info}, temporary)
    return model, {**info, "cache": str(path), "from_cache": False}
