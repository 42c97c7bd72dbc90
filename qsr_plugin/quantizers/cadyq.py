"""CADyQ (Hong et al., ECCV 2022): content-aware dynamic quantization of activations.

A bit selector before each quantized layer picks, per sample (per patch), the bit width of
the layer's input from K candidates ``b_1 < ... < b_K``. Definitions, as in the official code
(Cheeun/CADyQ, ``model/cadyq.py`` and ``model/edsr_cadyq.py``):

- image-gradient score of the model's input image I (N x C x H x W, values in [0, 1]): the
  grayscale image ``g = 0.299 R + 0.587 G + 0.114 B``, its normalised first-order Sobel
  gradients ``gx``, ``gy`` (kernels divided by 8, replicate padding, as kornia's
  ``spatial_gradient``), and ``1000 * (mean|gx|, mean|gy|)`` over the pixels: N x 2, computed
  once per forward pass of the model, without gradient;
- layer statistic: the standard deviation of the layer's input over its spatial positions
  (over its tokens for a Linear), per sample and channel (N x C), without gradient;
- selector: one ``Linear(C + 2, K)`` on ``[score, std]``, initialised with weight 1 and
  bias 0 except 1 for the highest candidate, so training starts at the highest bit width;
- forward: each sample's input is quantized at the candidate of its largest logit, with
  PAMS' symmetric activation quantizer and that candidate's own learnable clipping bound
  alpha_k; backward: the gradient of the softmax mixture ``sum_k p_k Q_k(x)``;
- a sample's bit width is ``b = b_hard`` forward and ``sum_k p_k b_k`` backward;
- cost term: ``cost_weight * mean(b / stopgrad(sum_k p_k b_k))`` over every CADyQ layer,
  sample and forward pass of a training step (:func:`bit_cost_loss`); the training loss is
  the reconstruction loss plus this term.

Weights use PAMS' max-abs weight quantizer at ``weight_bits`` (the official ``quant_weight``).
Differences from the official code: the cost is a mean over layers and samples (the official
sums them, so its weight depends on the batch size and depth) with a constant weight (the
official adds ``w_bit_decay`` to it every epoch); alpha_k starts at the largest |x| seen
while calibrating instead of an EMA over the first epoch; no distillation loss.

The bit width depends on the input, so a CADyQ model has no fixed integer form: saving
packed files, freezing and ONNX export refuse it. :func:`measure_bits` records the bits it
uses on given images; :func:`qsr_plugin.report` counts it at those averages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import QUANT_BITS
from ._rounding import widened
from .base import Quantizer
from .pams import MIN_BOUND, pams_activation_quantize

SCORE_SCALE = 1e3
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
DEFAULT_COST_WEIGHT = 0.05
MAX_PENDING_FORWARDS = 64


def check_candidate_bits(value: object) -> tuple[int, ...]:
    """The candidate bit widths, sorted; each an int in 2..8, no duplicates.

    Raises:
        ValueError: naming ``candidate_bits`` for an empty list, a value outside 2..8 or a
            duplicate.
    """
    if isinstance(value, int | str) or not hasattr(value, "__iter__"):
        raise ValueError(f"candidate_bits must be a list of ints in 2..8, got {value!r}")
    items = tuple(value)
    if not items:
        raise ValueError(
            "candidate_bits is empty; give one or more bit widths in 2..8, e.g. [4, 6, 8]"
        )
    bad = [v for v in items if isinstance(v, bool) or not isinstance(v, int) or v not in QUANT_BITS]
    if bad:
        raise ValueError(
            f"candidate_bits must hold ints in 2..8, got {list(items)!r} ({bad[0]!r} is not)"
        )
    if len(set(items)) != len(items):
        raise ValueError(f"candidate_bits has duplicates: {list(items)!r}; list each once")
    return tuple(sorted(items))


def check_cost_weight(value: object) -> float:
    """The weight of the bit cost term, a number >= 0.

    Raises:
        ValueError: naming ``cost_weight``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(
            f"cost_weight must be a number >= 0 (0 = no pressure towards fewer bits), got {value!r}"
        )
    return float(value)


def default_candidate_bits(act_bits: int) -> tuple[int, ...]:
    """``act_bits``, ``act_bits + 2`` and ``act_bits + 4``, capped at 8: (4, 6, 8) for 4 bits."""
    return tuple(sorted({min(act_bits + step, max(QUANT_BITS)) for step in (0, 2, 4)}))


def image_gradient_score(images: torch.Tensor) -> torch.Tensor:
    """CADyQ's image-gradient score of each image: ``1000 * (mean|gx|, mean|gy|)``, N x 2.

    Args:
        images: N x 3 (RGB, made grayscale) or N x 1 x H x W, values in [0, 1].
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            "method='cadyq' computes its image-gradient score from the model's input, which "
            f"must be N x 3 x H x W or N x 1 x H x W images; got shape {tuple(images.shape)}"
        )
    images = widened(images.detach())
    if images.shape[1] == 3:
        weights = images.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
        images = (images * weights).sum(dim=1, keepdim=True)
    sobel_x = images.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
    kernels = torch.stack([sobel_x, sobel_x.t()]).unsqueeze(1)
    gradients = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernels)
    return gradients.abs().mean(dim=(2, 3)) * SCORE_SCALE


class _Tally:
    """Hard bit widths of every CADyQ layer, per forward pass, while measuring."""

    def __init__(self) -> None:
        self.forwards: list[dict[str, list[torch.Tensor]]] = []

    def add(self, layer: str, bits: torch.Tensor) -> None:
        if not self.forwards:
            self.forwards.append({})
        self.forwards[-1].setdefault(layer, []).append(bits.detach().float().cpu())


class CADyQActivationQuantizer(Quantizer):
    """CADyQ's bit selector and activation quantizer (see the module docstring).

    Args:
        candidate_bits: the bit widths to choose from, each in 2..8.
        num_channels: channels of the layer's input (the selector reads their std).
        channel_dim: the input's channel dimension counted from the end (-3 for
            N x C x H x W, -1 for N x ... x C tokens).
        cost_weight: weight of this layer's bit cost in :func:`bit_cost_loss`.

    Example:
        >>> q = CADyQActivationQuantizer((4, 6, 8), num_channels=8, channel_dim=-3)
        >>> q.image_score = torch.zeros(2, 2)  # set by the quantized model's forward
        >>> y = q.train()(torch.randn(2, 8, 5, 5))
        >>> q.last_bits.tolist()  # the selector starts at the highest candidate
        [8.0, 8.0]
    """

    def __init__(
        self,
        candidate_bits: Sequence[int],
        num_channels: int,
        channel_dim: int,
        cost_weight: float = DEFAULT_COST_WEIGHT,
    ) -> None:
        candidates = check_candidate_bits(candidate_bits)
        super().__init__(max(candidates), "activation")
        if channel_dim >= 0:
            raise ValueError(f"channel_dim must count from the end (< 0), got {channel_dim}")
        self.candidate_bits = candidates
        self.cost_weight = check_cost_weight(cost_weight)
        self.channel_dim = channel_dim
        self.alpha = nn.Parameter(torch.ones(len(candidates)))
        self.selector = nn.Linear(num_channels + 2, len(candidates))
        with torch.no_grad():
            self.selector.weight.fill_(1.0)
            self.selector.bias.zero_()
            self.selector.bias[-1] = 1.0
        self.register_buffer(
            "candidates", torch.tensor(candidates, dtype=torch.float32), persistent=False
        )
        self.image_score: torch.Tensor | None = None
        self.last_bits: torch.Tensor | None = None
        self.measured_bits: float | None = None
        self._pending: list[torch.Tensor] = []
        self._tally: _Tally | None = None

    def statistics(self, x):
        return {"max_abs": ("max", x.abs().max())}

    def initialize_from(self, statistics):
        self.alpha.fill_(float(self._floor_step(statistics["max_abs"], MIN_BOUND)))

    def train(self, mode: bool = True):
        if not mode:
            self._pending.clear()
        return super().train(mode)

    def _input_statistics(self, x: torch.Tensor) -> torch.Tensor:
        """The per-sample, per-channel std of ``x`` over its positions, N x C."""
        x = widened(x.detach())
        samples, channels = x.shape[0], x.shape[self.channel_dim]
        values = x.movedim(self.channel_dim, -1).reshape(samples, -1, channels)
        return values.std(dim=1, correction=1 if values.shape[1] > 1 else 0)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        score = self.image_score
        if score is None:
            raise RuntimeError(
                f"{self.label} has no image-gradient score: the model rewritten by "
                "qsr_plugin.quantize(..., method='cadyq') computes it from its input in each "
                "forward pass; call that model, not the layer alone"
            )
        if score.shape[0] != x.shape[0]:
            raise ValueError(
                f"{self.label}: its input holds {x.shape[0]} samples but the model's input "
                f"{score.shape[0]} images; CADyQ picks bits per image, so it needs layers "
                "whose input keeps the image batch (not window attention); keep this layer "
                "out with exclude=[...] or use another method"
            )
        return score

    def quantize(self, x):
        score = self._score(x).to(self.selector.weight.dtype)
        features = torch.cat([score, self._input_statistics(x).to(score.dtype)], dim=1)
        probabilities = F.softmax(widened(self.selector(features)), dim=1)
        choice = probabilities.argmax(dim=1)
        candidates = self.candidates.to(probabilities.device)
        soft_bits = probabilities @ candidates
        hard_bits = candidates[choice]
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        hard = torch.zeros_like(x)
        soft = torch.zeros_like(x)
        for k, bits in enumerate(self.candidate_bits):
            quantized = pams_activation_quantize(x, self.alpha[k], bits)
            hard = torch.where((choice == k).view(shape), quantized, hard)
            soft = soft + probabilities[:, k].view(shape).to(x.dtype) * quantized
        self.last_bits = hard_bits.detach()
        if self._tally is not None:
            self._tally.add(self.name or "", hard_bits)
        if self.training and torch.is_grad_enabled():
            bits = hard_bits + (soft_bits - soft_bits.detach())
            self._record_cost(bits / soft_bits.detach())
        # Forward: the chosen candidate exactly; backward: the softmax mixture.
        return hard.detach() + (soft - soft.detach())

    def _record_cost(self, term: torch.Tensor) -> None:
        if len(self._pending) >= MAX_PENDING_FORWARDS:
            raise RuntimeError(
                f"{self.label} holds the bit costs of {len(self._pending)} training forward "
                "passes that no loss collected; add qsr_plugin.bit_cost_loss(model) to the "
                "loss of every training step (train_qat and QuantSRModel do)"
            )
        self._pending.append(term)

    def take_cost_terms(self) -> list[torch.Tensor]:
        """The weighted cost terms of the training forward passes since the last call."""
        pending, self._pending = self._pending, []
        return [self.cost_weight * term for term in pending]

    def extra_repr(self) -> str:
        return f"candidate_bits={list(self.candidate_bits)}, cost_weight={self.cost_weight:g}"


def cadyq_quantizers(model: nn.Module) -> list[tuple[str, CADyQActivationQuantizer]]:
    """Every CADyQ activation quantizer of ``model`` with its qualified name."""
    return [
        (name, m) for name, m in model.named_modules() if isinstance(m, CADyQActivationQuantizer)
    ]


def _set_image_score(model: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook of a CADyQ model: give every selector the input's gradient score."""
    quantizers = cadyq_quantizers(model)
    if not quantizers:
        return
    inputs = [*args, *kwargs.values()]
    if not inputs or not isinstance(inputs[0], torch.Tensor):
        raise ValueError(
            f"{type(model).__name__} was quantized with method='cadyq', whose selectors read "
            "the gradient score of the model's input images; call it with an image tensor"
        )
    score = image_gradient_score(inputs[0])
    tallies = {id(q._tally): q._tally for _, q in quantizers if q._tally is not None}
    for tally in tallies.values():
        tally.forwards.append({})
    for _, quantizer in quantizers:
        quantizer.image_score = score


def _clear_image_score(model: nn.Module, args: tuple, output) -> None:
    """Forward hook of a CADyQ model: drop the score once the forward pass is over."""
    for _, quantizer in cadyq_quantizers(model):
        quantizer.image_score = None


def install_image_score_hooks(model: nn.Module) -> None:
    """Make ``model`` hand its input's image-gradient score to its CADyQ selectors."""
    model.register_forward_pre_hook(_set_image_score, with_kwargs=True)
    model.register_forward_hook(_clear_image_score)


def bit_cost_loss(model: nn.Module) -> torch.Tensor | None:
    """CADyQ's bit cost term for the training forward passes since the last call.

    The mean of ``cost_weight * b / stopgrad(expected b)`` over every CADyQ layer, sample and
    training forward pass (each depth variant's, under DQA); None for a model without CADyQ
    layers. Call it once per training step and add it to the loss; training forward passes
    record it, and reading it clears the record.

    Example:
        >>> loss = F.l1_loss(model(lr), hr)  # doctest: +SKIP
        >>> loss = loss + qsr_plugin.bit_cost_loss(model)  # doctest: +SKIP
    """
    terms = [term for _, q in cadyq_quantizers(model) for term in q.take_cost_terms()]
    if not terms:
        return None
    return torch.cat([t.float() for t in terms]).mean()


@dataclass
class BitMeasurement:
    """Bit widths a CADyQ model used, filled when :func:`measure_bits` exits.

    Attributes:
        per_layer: average activation bits of each CADyQ layer over the measured images.
        per_image: average bits over the layers, for each measured image in order.
    """

    per_layer: dict[str, float] = field(default_factory=dict)
    per_image: list[float] = field(default_factory=list)

    @property
    def average(self) -> float:
        """Mean of :attr:`per_image` (NaN when nothing was measured)."""
        return sum(self.per_image) / len(self.per_image) if self.per_image else float("nan")

    def to_dict(self) -> dict:
        """The measurement as plain data, with the overall average."""
        return {**asdict(self), "average": self.average}


@contextlib.contextmanager
def measure_bits(model: nn.Module) -> Iterator[BitMeasurement]:
    """Record the bit widths a CADyQ model picks in the forward passes inside the block.

    On exit, fills the yielded :class:`BitMeasurement` and stores each layer's average on
    its quantizer (``measured_bits``), which :func:`qsr_plugin.report` counts.

    Raises:
        ValueError: ``model`` has no CADyQ layers.

    Example:
        >>> with qsr_plugin.measure_bits(model) as bits:  # doctest: +SKIP
        ...     sr_data.evaluate_sr(model.eval(), pairs, scale)
        >>> bits.average  # doctest: +SKIP
        5.2
    """
    from .._wrappers import unwrap

    quantizers = cadyq_quantizers(unwrap(model))
    if not quantizers:
        raise ValueError(
            "measure_bits(): the model has no CADyQ layers; quantize it with method='cadyq'"
        )
    tally = _Tally()
    for _, quantizer in quantizers:
        quantizer._tally = tally
    measurement = BitMeasurement()
    try:
        yield measurement
    finally:
        for _, quantizer in quantizers:
            quantizer._tally = None
    per_layer: dict[str, list[torch.Tensor]] = {}
    for forward in tally.forwards:
        if not forward:
            continue
        layers = [torch.stack(bits).mean(dim=0) for bits in forward.values()]
        measurement.per_image += torch.stack(layers).mean(dim=0).tolist()
        for layer, bits in forward.items():
            per_layer.setdefault(layer, []).extend(bits)
    measurement.per_layer = {
        layer: float(torch.cat(bits).mean()) for layer, bits in per_layer.items()
    }
    for _, quantizer in quantizers:
        if quantizer.name in measurement.per_layer:
            quantizer.measured_bits = measurement.per_layer[quantizer.name]
