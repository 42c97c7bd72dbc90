"""``quantize()``: turn a float model into a QuantSR model, in place."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from .._wrappers import unwrap
from ..calibration import name_quantizers
from ..config import QuantizeConfig
from ..layers import COMPUTE_TYPES, layer_types
from ..quantizers.cadyq import cadyq_quantizers, install_image_score_hooks
from ._module_state import preserved_module_state
from .analysis import ModelAnalysis, analyze, existing_quantized_layers
from .body import Body, detect_body, resolve_body
from .coverage import observe, require_run
from .depth import (
    DepthSwitchableModuleList,
    build_depth_switchable,
    depth_switchable_bodies,
    plan_variants,
)
from .input_size import declared_input_size
from .selection import select_layers
from .transaction import ModuleSwaps

RECORD_ATTRIBUTE = "_qsr_record"
DEFAULT_PROBE_SIZE = 64


@dataclass
class QuantizationRecord:
    """What :func:`quantize` did to a model, kept on the model for ``summary`` and export."""

    config: QuantizeConfig
    body: Body | None
    analysis_method: str
    leaf_classes: list[str]
    fx_error: str | None
    quantized: list[str]
    kept_float: dict[str, str] = field(default_factory=dict)
    functional_calls: dict[str, str] = field(default_factory=dict)
    left_float: dict[str, str] = field(default_factory=dict)


def quantization_record(model: nn.Module) -> QuantizationRecord | None:
    """The record :func:`quantize` left on ``model``, or None for a model it did not touch.

    ``model`` may be wrapped by ``torch.compile``, ``DataParallel`` or DDP (see
    :func:`qsr_plugin._wrappers.unwrap`); the record is read from the model inside.
    """
    return unwrap(model).__dict__.get(RECORD_ATTRIBUTE)


def default_example_input(model: nn.Module) -> torch.Tensor:
    """A probe input: the model's declared input size (see :mod:`.input_size`), else
    1 x C x 64 x 64 images (rounded up to a multiple of ``model.window_size``)."""
    reference = next(model.parameters(), None)
    options = (
        {"device": reference.device, "dtype": reference.dtype} if reference is not None else {}
    )
    declared = declared_input_size(model)
    if declared is not None:
        return torch.rand(1, *declared, **options)
    first = next((m for m in model.modules() if isinstance(m, COMPUTE_TYPES)), None)
    if not isinstance(first, nn.Conv2d):
        raise ValueError(
            f"cannot guess an input for {type(model).__name__} (its first layer is not a "
            "Conv2d and it declares no input size); pass example_input=<a tensor the model "
            "accepts>"
        )
    size = DEFAULT_PROBE_SIZE
    window = getattr(model, "window_size", None)
    if isinstance(window, int) and window > 0:
        size = window * math.ceil(DEFAULT_PROBE_SIZE / window)
    return torch.rand(1, first.in_channels, size, size, **options)


def _analyze(model: nn.Module, example_input: torch.Tensor) -> ModelAnalysis:
    try:
        return analyze(model, example_input)
    except Exception as error:
        raise ValueError(
            f"{type(model).__name__} did not run on an example input of shape "
            f"{tuple(example_input.shape)} ({type(error).__name__}: {error}); pass "
            "example_input=<a tensor the model accepts>"
        ) from error


def _choose_body(model: nn.Module, analysis: ModelAnalysis, config: QuantizeConfig):
    if config.body is not None:
        return resolve_body(model, analysis, config.body)
    body = detect_body(model, analysis)
    if body is None and config.depth_variants is not None:
        raise ValueError(
            f"depth_variants={list(config.depth_variants)} needs a repeated body, and "
            f"{type(model).__name__} has none (no Sequential/ModuleList of two or more "
            "same-class, shape-preserving blocks in a chain); omit depth_variants or name "
            "the body with body=<module path> (the error then says why it is not a chain)"
        )
    return body


@contextlib.contextmanager
def _naming(what: str, fix: str) -> Iterator[None]:
    """Turn an unexpected error while rewriting ``what`` into one that names it and the fix."""
    try:
        yield
    except ValueError:
        raise  # the plugin's own errors name the module already
    except Exception as error:
        raise RuntimeError(
            f"quantize(): rewriting {what} failed ({type(error).__name__}: {error}); the model "
            f"is left as it was; {fix}"
        ) from error


def _install_depth_switching(
    model: nn.Module, body: Body, config: QuantizeConfig, swaps: ModuleSwaps, probe
) -> None:
    plan = plan_variants(
        body.depth, config.depth_variants, config.depth_policy, config.depth_members, body.path
    )
    container = build_depth_switchable(model.get_submodule(body.path), plan, config.depth_policy)
    swaps.replace(body.path, container)
    if isinstance(container, DepthSwitchableModuleList):
        _check_iterated(model, body, container, probe)


def _check_iterated(model, body: Body, container: DepthSwitchableModuleList, probe) -> None:
    """Make sure the parent's forward iterates the ModuleList (indexing would bypass DQA)."""
    runs = []
    original_run = container._run_block

    def counting_run(*args, **kwargs):
        runs.append(1)
        return original_run(*args, **kwargs)

    container._run_block = counting_run
    try:
        was_training = model.training
        with torch.no_grad(), preserved_module_state(model):
            model.eval()(probe)
        model.train(was_training)
    finally:
        del container._run_block
    if not runs:
        raise ValueError(
            f"body {body.path!r} is a ModuleList that the model's forward does not iterate "
            f"with 'for block in self.{body.path.rsplit('.', 1)[-1]}' (it indexes it?), so "
            "depth switching cannot take effect; omit depth_variants for this model"
        )


def quantize(
    model: nn.Module,
    bits: int | None = None,
    depth_variants: list[int] | None = None,
    *,
    config: QuantizeConfig | None = None,
    example_input: torch.Tensor | None = None,
    **settings,
) -> nn.Module:
    """Make ``model`` a QuantSR model, in place, and return it.

    Conv2d/Linear layers in scope become :class:`QuantConv2d`/:class:`QuantLinear` (sharing
    their parameters, so state-dict keys do not change); with ``depth_variants`` the body
    becomes a depth-switchable container (DQA). The model keeps its class and attributes.
    If anything fails, the model is left unchanged.

    Args:
        model: a float model (BasicSR arch, timm model, any nn.Module).
        bits: weight and activation bits, 2..8 (4 when omitted).
        depth_variants: depths sharing one set of weights, e.g. [4, 2, 1]; None for none.
        config: all settings at once, instead of ``bits``/``depth_variants``/``settings``;
            passing both is refused (``dataclasses.replace(config, bits=2)`` changes one).
        example_input: an input the model accepts, for tracing; guessed when omitted.
        **settings: any other :class:`QuantizeConfig` field (``weight_bits``, ``act_bits``,
            ``method``, ``scope``, ``include``, ``exclude``, ``body``, ...).

    Returns:
        ``model``, quantized.

    Raises:
        TypeError: ``model`` is not an nn.Module.
        ValueError: bad settings, settings given beside ``config``, an already quantized
            model, no layer to quantize, a layer to quantize that the forward runs in training
            mode but not in eval mode or the other way round (ECBSR's re-parameterised eval
            path), or a body that cannot take depth variants; the message names the module
            or argument. Layers that run in neither mode stay float, with a warning.
        RuntimeError: replacing a layer or the body failed unexpectedly; the message names
            the module and the fix, and the model is left unchanged.

    Example:
        >>> import qsr_plugin, torch
        >>> from torch import nn
        >>> blocks = nn.Sequential(*[nn.Conv2d(8, 8, 3, padding=1) for _ in range(4)])
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), blocks, nn.Conv2d(8, 3, 1))
        >>> net = qsr_plugin.quantize(net, bits=4, depth_variants=[4, 2])
        >>> qsr_plugin.depth_variants(net)
        [4, 2]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize() needs a torch.nn.Module, got {type(model).__name__}")
    wrapper, model = model, unwrap(model)
    given = {"bits": bits, "depth_variants": depth_variants}
    given = {**{k: v for k, v in given.items() if v is not None}, **settings}
    if config is None:
        config = QuantizeConfig.from_dict(given)
    elif given:
        changes = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise ValueError(
            f"quantize() got config= and also {changes}; pass either config=QuantizeConfig(...) "
            f"or individual settings, not both (dataclasses.replace(config, {changes}) "
            "combines them)"
        )
    already = existing_quantized_layers(model) or [n for n, _ in depth_switchable_bodies(model)]
    if already:
        raise ValueError(
            f"{type(model).__name__} is already quantized ({already[0]} is a qsr_plugin "
            "module); quantize a fresh float model instead"
        )
    probe = default_example_input(model) if example_input is None else example_input
    analysis = _analyze(model, probe)
    coverage = observe(model, probe)
    float_layers = {n for n, m in model.named_modules() if isinstance(m, COMPUTE_TYPES)}
    body = _choose_body(model, analysis, config)
    scope = config.scope
    if scope == "body" and body is None:
        warnings.warn(
            f"{type(model).__name__} has no repeated body, so scope='body' falls back to "
            "scope='all': every Conv2d/Linear except the first and last",
            stacklevel=2,
        )
        scope = "all"

    swaps = ModuleSwaps(model)
    try:
        if config.depth_variants is not None:
            with _naming(f"body {body.path!r}", "omit depth_variants for this model"):
                _install_depth_switching(model, body, config, swaps, probe)
        selection = select_layers(
            model,
            scope,
            body.path if body else None,
            analysis.compute_order,
            config.include,
            config.exclude,
            idle=float_layers - coverage.ran["train"] - coverage.ran["eval"],
        )
        if not selection.quantize:
            raise ValueError(
                f"no Conv2d/Linear layer of {type(model).__name__} is in scope "
                f"(scope={scope!r}, include={list(config.include)}, "
                f"exclude={list(config.exclude)}); widen the scope or the include patterns"
            )
        require_run(coverage, selection.quantize, float_layers)
        spec = config.layer_spec()
        for path in selection.quantize:
            layer = model.get_submodule(path)
            with _naming(
                f"{path} ({type(layer).__name__})", f"keep it in float with exclude=[{path!r}]"
            ):
                swaps.replace(path, layer_types(layer).quantized.from_float(layer, spec))
    except BaseException:
        swaps.undo()
        raise
    if selection.kept_float:
        warnings.warn(
            "kept in float (cannot be quantized as they are): "
            + "; ".join(f"{k}: {v}" for k, v in selection.kept_float.items()),
            stacklevel=2,
        )
    name_quantizers(model)
    if cadyq_quantizers(model):
        install_image_score_hooks(model)
    model.__dict__[RECORD_ATTRIBUTE] = QuantizationRecord(
        config=config,
        body=body,
        analysis_method=analysis.method,
        leaf_classes=analysis.leaf_classes,
        fx_error=analysis.fx_error,
        quantized=selection.quantize,
        kept_float=selection.kept_float,
        functional_calls=coverage.functional,
        left_float=selection.left_float,
    )
    return wrapper


def dequantize(model: nn.Module, *, bodies: bool = True) -> nn.Module:
    """Undo :func:`quantize`, in place, and return the model: a float model again.

    Every :class:`QuantConv2d`/:class:`QuantLinear` becomes its float layer, sharing its
    weight and bias (trained values are kept, quantizers dropped), each depth-switchable body
    becomes its original blocks (grown blocks and shortcut scales are dropped), and the
    quantization record goes, so the model's state-dict keys are the float model's again.

    Args:
        model: a model :func:`quantize` returned (possibly wrapped, see :func:`quantize`).
        bodies: False keeps the depth-switchable bodies (with float layers), so every depth
            variant still runs.

    Returns:
        ``model``, in float.

    Raises:
        TypeError: ``model`` is not an nn.Module.
        ValueError: ``model`` was not quantized.

    Example:
        >>> import qsr_plugin
        >>> from torch import nn
        >>> blocks = nn.Sequential(*[nn.Conv2d(8, 8, 3, padding=1) for _ in range(4)])
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), blocks, nn.Conv2d(8, 3, 1))
        >>> net = qsr_plugin.dequantize(qsr_plugin.quantize(net, depth_variants=[4, 2]))
        >>> type(net[1][0]), qsr_plugin.quantization_record(net)
        (<class 'torch.nn.modules.conv.Conv2d'>, None)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"dequantize() needs a torch.nn.Module, got {type(model).__name__}")
    wrapper, model = model, unwrap(model)
    if quantization_record(model) is None:
        raise ValueError(
            f"dequantize(): {type(model).__name__} was not quantized (it has no quantize() "
            "record); pass the model that qsr_plugin.quantize() returned"
        )
    swaps = ModuleSwaps(model)
    for path in existing_quantized_layers(model):
        swaps.replace(path, model.get_submodule(path).to_float())
    if bodies:
        for path, container in depth_switchable_bodies(model):
            swaps.replace(path, container.float_body())
    del model.__dict__[RECORD_ATTRIBUTE]
    return wrapper
