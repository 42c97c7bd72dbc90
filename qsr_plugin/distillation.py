"""Distillation from the float model: a quantized student learns from the float teacher.

QuantSR+'s function-localized distillation and the usual practice in QAT for SR: besides
the loss against the HR target, each depth variant of the student is pulled towards

- the teacher's output (``output`` weight): ``loss_fn(student output, teacher output)``;
- the teacher's body features (``features`` weight) at the blocks the variant runs: the
  mean L1 distance between the student's output after original block ``i`` (after ``i`` and
  the blocks grown from it, for a grown body) and the teacher's output after block ``i``,
  over the original blocks the variant runs.

The teacher is the float model the student was quantized from, copied before
:func:`qsr_plugin.quantize` (``teacher = copy.deepcopy(model)``); it runs in eval mode
without gradients, on the device of the batch.

Example:
    >>> teacher = copy.deepcopy(model)
    >>> qsr_plugin.quantize(model, bits=2, depth_variants=[16, 8, 4])
    >>> train_qat(model, sampler, steps, teacher=teacher, distill=DistillConfig())
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._wrappers import unwrap
from .config import DictConfig
from .quantizers import quantizers_of
from .rewrite.depth import depth_switchable_bodies
from .rewrite.quantize import quantization_record

OUTPUT_LOSS = "distill_output"
FEATURE_LOSS = "distill_features"


@dataclass(frozen=True)
class DistillConfig(DictConfig):
    """Weights of the distillation terms; maps onto BasicSR's ``quantsr.distill`` section.

    Attributes:
        output: weight of the distance between the student's and the teacher's outputs.
        features: weight of the distance between their body features (per block).
    """

    output: float = 1.0
    features: float = 1.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{field.name} must be a number >= 0, got {value!r}")
        if not (self.output or self.features):
            raise ValueError(
                "output and features are both 0, so nothing would be distilled; "
                "give one a positive weight or train without distillation"
            )


def _float_keys(student: nn.Module) -> dict[str, torch.Size]:
    """State-dict keys and shapes of ``student`` that its float model also has."""
    skipped = [f"{name}." for name, _ in quantizers_of(student)]
    for path, body in depth_switchable_bodies(student):
        skipped += [f"{path}.{name}" for name in body.dqa_tensors()]
        skipped += [f"{path}.{name}." for name in body.grown_blocks()]
    return {
        key: tensor.shape
        for key, tensor in student.state_dict().items()
        if not any(key == s or key.startswith(s) for s in skipped)
    }


def check_teacher(teacher: object, student: nn.Module) -> None:
    """Refuse a teacher that is not the float form of ``student``'s architecture.

    Raises:
        TypeError: ``teacher`` is not an nn.Module.
        ValueError: it is quantized, or its state-dict keys or shapes differ from the
            student's float ones (the message names the first keys that differ).
    """
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be the float nn.Module, got {type(teacher).__name__}")
    teacher = unwrap(teacher)
    if quantization_record(teacher) is not None or quantizers_of(teacher):
        raise ValueError(
            "teacher is a quantized model; pass the float model the student was quantized "
            "from (teacher = copy.deepcopy(model) before qsr_plugin.quantize(model, ...))"
        )
    expected = _float_keys(unwrap(student))
    found = {key: tensor.shape for key, tensor in teacher.state_dict().items()}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    reshaped = [
        f"{key} {tuple(found[key])} vs {tuple(expected[key])}"
        for key in sorted(set(found) & set(expected))
        if found[key] != expected[key]
    ]
    if missing or extra or reshaped:
        details = []
        if missing:
            details.append(f"the teacher lacks {', '.join(missing[:4])}")
        if extra:
            details.append(f"the student lacks {', '.join(extra[:4])}")
        if reshaped:
            details.append(f"shapes differ (teacher vs student): {', '.join(reshaped[:4])}")
        raise ValueError(
            f"teacher ({type(teacher).__name__}) does not match the student's architecture: "
            f"{'; '.join(details)}; pass the float model the student was quantized from, "
            "built with the same settings"
        )


@contextlib.contextmanager
def _block_outputs(body: nn.Module) -> Iterator[dict[int, torch.Tensor]]:
    """The output of each block of a plain body (``{position: tensor}``), via hooks."""
    outputs: dict[int, torch.Tensor] = {}
    handles = [
        block.register_forward_hook(
            lambda _module, _args, out, position=position: outputs.__setitem__(position, out)
        )
        for position, block in enumerate(body._modules.values())
    ]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class TeacherReferences:
    """The teacher's output and body features on one batch."""

    output: torch.Tensor
    features: dict[int, torch.Tensor]


class FloatTeacher:
    """A float teacher, checked against its student, with the distillation weights.

    Args:
        teacher: the float model (same architecture and settings as the student's).
        student: the quantized model that learns from it.
        config: the distillation weights.
        loss_fn: the distance used for the output term (default L1).

    Raises:
        TypeError, ValueError: see :func:`check_teacher`; feature distillation on a model
            without a detected body.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        config: DistillConfig | None = None,
        loss_fn=F.l1_loss,
    ) -> None:
        check_teacher(teacher, student)
        self.config = config or DistillConfig()
        record = quantization_record(student)
        if record is None:
            raise ValueError("the student is not quantized; call qsr_plugin.quantize first")
        if self.config.features and record.body is None:
            raise ValueError(
                f"distill features needs a body of blocks, and {type(unwrap(student)).__name__} "
                "has none; set features to 0 (output distillation only)"
            )
        self.body_path = record.body.path if record.body else None
        self.model = unwrap(teacher).eval().requires_grad_(False)
        self.loss_fn = loss_fn

    def references(self, inputs: torch.Tensor) -> TeacherReferences:
        """The teacher's output and per-block body features on ``inputs``."""
        reference = next(self.model.parameters(), None)
        if reference is not None and reference.device != inputs.device:
            self.model.to(inputs.device)
        with torch.no_grad(), contextlib.ExitStack() as stack:
            features = {}
            if self.config.features:
                features = stack.enter_context(
                    _block_outputs(self.model.get_submodule(self.body_path))
                )
            output = self.model(inputs)
        return TeacherReferences(output.float(), {k: v.float() for k, v in features.items()})

    @contextlib.contextmanager
    def student_features(self, student: nn.Module) -> Iterator[dict[int, torch.Tensor]]:
        """Collect the student's body features of one forward, keyed like the teacher's."""
        if not self.config.features:
            yield {}
            return
        body = unwrap(student).get_submodule(self.body_path)
        recording = body.recording_features() if hasattr(body, "recording_features") else None
        with recording if recording is not None else _block_outputs(body) as features:
            yield features

    def losses(
        self,
        output: torch.Tensor,
        features: dict[int, torch.Tensor],
        references: TeacherReferences,
    ) -> dict[str, torch.Tensor]:
        """The weighted distillation terms of one variant's forward."""
        terms = {}
        if self.config.output:
            terms[OUTPUT_LOSS] = self.config.output * self.loss_fn(
                output.float(), references.output
            )
        if self.config.features:
            distances = [
                F.l1_loss(feature.float(), references.features[index])
                for index, feature in features.items()
            ]
            terms[FEATURE_LOSS] = self.config.features * torch.stack(distances).mean()
        return terms
