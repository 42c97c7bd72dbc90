"""timm glue: create a quantized timm model, feed it real images, distil it from its float self.

timm has no super-resolution models, but its backbones carry the same repeated bodies
(ViT blocks, Swin stages, ResNet stages) that QuantSR quantizes; quantization-aware training
of a classifier is best done by distillation from the float model's logits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import timm
import timm.data
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..config import QuantizeConfig
from ..rewrite.quantize import quantize
from ..rewrite.variants import joint_variant_loss, set_depth, variant_depths


def _config(quantsr: Mapping[str, Any] | QuantizeConfig | None) -> QuantizeConfig:
    if quantsr is None:
        return QuantizeConfig()
    if isinstance(quantsr, QuantizeConfig):
        return quantsr
    return QuantizeConfig.from_dict(dict(quantsr), where="quantsr.")


def create_quantized_model(
    model_name: str, quantsr: Mapping[str, Any] | QuantizeConfig | None = None, **timm_kwargs
) -> nn.Module:
    """``timm.create_model(model_name, **timm_kwargs)``, then :func:`qsr_plugin.quantize`.

    Args:
        model_name: a timm model name (``timm.list_models()``).
        quantsr: quantization settings as a dict (the keys of :class:`QuantizeConfig`) or a
            config; default 4 bits, body scope, no depth variants.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``checkpoint_path`` for local
            weights, ``num_classes``).

    Example:
        >>> model = create_quantized_model("resnet18", {"bits": 4, "depth_variants": [2, 1]})
    """
    config = _config(quantsr)  # refuse bad settings before building anything
    if not timm.is_model(model_name):
        raise ValueError(
            f"{model_name!r} is not a timm model; see timm.list_models('*{model_name[:4]}*')"
        )
    model = timm.create_model(model_name, **timm_kwargs)
    return quantize(model, config=config)


def image_batches(
    model: nn.Module, images: Iterable[np.ndarray], batch_size: int = 8
) -> list[torch.Tensor]:
    """RGB uint8 images preprocessed the way ``model`` expects (timm's eval transform)."""
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    tensors = [transform(Image.fromarray(image)) for image in images]
    if not tensors:
        raise ValueError("image_batches() got no images")
    return [torch.stack(tensors[i : i + batch_size]) for i in range(0, len(tensors), batch_size)]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL divergence from the teacher's class distribution to the student's."""
    return F.kl_div(
        F.log_softmax(student_logits, dim=-1),
        F.log_softmax(teacher_logits, dim=-1),
        log_target=True,
        reduction="batchmean",
    )


def distill(
    student: nn.Module,
    teacher: nn.Module,
    batches: list[torch.Tensor],
    steps: int,
    lr: float = 1e-4,
) -> list[float]:
    """Quantization-aware training of ``student`` against ``teacher``'s logits.

    Every depth variant of the student is trained on every step (QuantSR's joint
    training). Batch-norm layers keep their running statistics (they stay in eval mode):
    a few calibration images would otherwise overwrite what the float model learned.
    Returns the summed loss of each step.
    """
    teacher = teacher.eval()
    batches = _on_device_of(student, batches)
    with torch.no_grad():
        targets = _on_device_of(student, _logits(teacher, batches))
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    student.train()
    for module in student.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    history = []
    for step in range(steps):
        batch, target = batches[step % len(batches)], targets[step % len(batches)]
        loss, _ = joint_variant_loss(student, batch, target, distillation_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return history


def _on_device_of(model: nn.Module, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors`` on the device of ``model``'s parameters."""
    device = next(model.parameters()).device
    return [t.to(device, non_blocking=True) for t in tensors]


def _logits(model: nn.Module, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """``model`` on each batch, the batches sent to its device first."""
    return [model(batch) for batch in _on_device_of(model, batches)]


def agreement(
    student: nn.Module, teacher: nn.Module, batches: list[torch.Tensor]
) -> dict[int | None, dict[str, float]]:
    """Per depth (None without depth variants): top-1 agreement and KL to the teacher."""
    student, teacher = student.eval(), teacher.eval()
    depths = variant_depths(student)
    batches = _on_device_of(student, batches)
    result = {}
    with torch.no_grad():
        targets = _on_device_of(student, _logits(teacher, batches))
        for depth in depths:
            if depth is not None:
                set_depth(student, depth)
            logits = [student(batch) for batch in batches]
            same = sum(
                (s.argmax(-1) == t.argmax(-1)).sum().item()
                for s, t in zip(logits, targets, strict=True)
            )
            count = sum(len(t) for t in targets)
            kl = sum(
                distillation_loss(s, t).item() * len(t)
                for s, t in zip(logits, targets, strict=True)
            )
            result[depth] = {"top1_agreement": same / count, "kl": kl / count}
        if depths[0] is not None:
            set_depth(student, depths[0])
    return result
