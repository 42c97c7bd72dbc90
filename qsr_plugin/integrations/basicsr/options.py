"""BasicSR option files: safe reading and the checks that run before BasicSR starts.

BasicSR reads option files with PyYAML's full loader, which builds arbitrary Python objects
from tags such as ``!!python/object/apply:os.system``. Here option files are read with the
safe loader only: plain YAML (mappings, lists, strings, numbers, ``!!float``) is accepted,
any other tag is refused with the file and line.

A QuantSR option file is an ordinary BasicSR file with ``model_type: QuantSRModel`` and a
``quantsr:`` section whose keys are the fields of :class:`qsr_plugin.QuantizeConfig`::

    model_type: QuantSRModel
    quantsr:
      bits: 4
      depth_variants: [32, 16, 8]
      amp: bf16                         # optional: bf16 or fp16 mixed precision (training)
    train:
      variant_loss_weights: [1, 1, 1]   # optional; deepest variant first, or {depth: weight}
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from qsr_plugin._basicsr_compat import import_basicsr
from qsr_plugin._validation import check_keys, closest, did_you_mean
from qsr_plugin.config import QuantizeConfig
from qsr_plugin.mixed_precision import check_amp

MODEL_TYPE = "QuantSRModel"
SECTION = "quantsr"
WEIGHTS_KEY = "variant_loss_weights"
AMP_KEY = "amp"  # a training setting in the quantsr section, not a QuantizeConfig field
PLUGIN_TRAIN_KEYS = (WEIGHTS_KEY,)  # the keys of BasicSR's train: section that the plugin reads
REGISTRY_SUFFIX = "_basicsr"

SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class OptionError(ValueError):
    """An option file or option value that cannot work; the message names the file or key."""


def read_option_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a BasicSR option file with the safe YAML loader.

    Args:
        path: the ``.yml`` option file.

    Returns:
        The options as a dict.

    Raises:
        OptionError: the file is missing, is not YAML, holds a tag the safe loader refuses
            (e.g. ``!!python/object``), or is not a mapping at the top level.

    Example:
        >>> read_option_file("recipes/quantsr_t_x4.yml")["model_type"]  # doctest: +SKIP
        'QuantSRModel'
    """
    path = Path(path)
    if not path.is_file():
        raise OptionError(f"option file {path} does not exist or is not a file")
    try:
        with path.open(encoding="utf-8") as handle:
            options = yaml.load(handle, Loader=SafeLoader)
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark
        raise OptionError(
            f"{path}, line {mark.line + 1}: {err.problem}. Option files may hold plain YAML "
            "only; tags that build Python objects (!!python/...) are refused, remove the tag"
        ) from None
    except yaml.YAMLError as err:
        raise OptionError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(options, dict):
        raise OptionError(
            f"{path} must hold a YAML mapping of options, got {type(options).__name__}"
        )
    return options


def quantize_config(options: Mapping[str, Any]) -> QuantizeConfig:
    """The :class:`~qsr_plugin.QuantizeConfig` given by the ``quantsr:`` section.

    Raises:
        OptionError: the section is missing, not a mapping, has unknown keys or bad values.
    """
    section = options.get(SECTION)
    if section is None:
        raise OptionError(
            f"model_type {MODEL_TYPE} needs a '{SECTION}:' section (e.g. bits: 4, "
            "depth_variants: [32, 16, 8]) whose keys are the fields of "
            "qsr_plugin.QuantizeConfig; the recipes/ folder of the qsr_plugin repository "
            "(not installed with the package) has complete option files"
        )
    if not isinstance(section, Mapping):
        raise OptionError(f"'{SECTION}' must be a mapping of settings, got {section!r}")
    settings = {k: v for k, v in section.items() if k != AMP_KEY}
    valid = [*(f.name for f in dataclasses.fields(QuantizeConfig)), AMP_KEY]
    try:
        check_keys(section, valid, where=f"{SECTION}.")
        return QuantizeConfig.from_dict(settings, where=f"{SECTION}.")
    except (TypeError, ValueError) as err:
        raise OptionError(f"invalid '{SECTION}' section: {err}") from None


def amp_setting(options: Mapping[str, Any]) -> str | None:
    """``quantsr.amp``: ``"bf16"``, ``"fp16"`` or None (fp32).

    Raises:
        OptionError: any other value. Whether the device supports it is checked when the
            model knows its device (:class:`qsr_plugin.mixed_precision.MixedPrecision`).
    """
    section = options.get(SECTION)
    amp = section.get(AMP_KEY) if isinstance(section, Mapping) else None
    try:
        return check_amp(amp, f"{SECTION}.{AMP_KEY}")
    except ValueError as err:
        raise OptionError(str(err)) from None


def _refuse_misspelt_plugin_keys(train: Mapping[str, Any]) -> None:
    """Refuse a ``train:`` key that is a near miss of the plugin's own (BasicSR's keys pass)."""
    for key in train:
        if key in PLUGIN_TRAIN_KEYS:
            continue
        close = closest(key, PLUGIN_TRAIN_KEYS, cutoff=0.85)
        if close:
            raise OptionError(
                f"train.{key} is not a setting; did you mean train.{close}? (a misspelt "
                "key would be ignored silently)"
            )


def variant_loss_weights(
    options: Mapping[str, Any], depths: list[int | None]
) -> dict[int | None, float]:
    """Loss weight per depth variant from ``train.variant_loss_weights`` (default: all 1).

    The value is a list with one weight per variant, deepest first, or a mapping
    ``{depth: weight}`` naming every variant.

    Raises:
        OptionError: a misspelt key (``variant_loss_weight``: did you mean ...), wrong
            number of weights, unknown depths, negative or non-numeric weights, or all
            weights zero.
    """
    train = options.get("train") or {}
    _refuse_misspelt_plugin_keys(train)
    given = train.get(WEIGHTS_KEY)
    key = f"train.{WEIGHTS_KEY}"
    if given is None:
        return dict.fromkeys(depths, 1.0)
    shown = [d for d in depths if d is not None] or "none (quantsr.depth_variants is not set)"
    if isinstance(given, Mapping):
        if set(given) != set(depths):
            raise OptionError(f"{key} must name every depth variant {shown}, got {dict(given)}")
        weights = {d: given[d] for d in depths}
    elif isinstance(given, list):
        if len(given) != len(depths):
            raise OptionError(
                f"{key} has {len(given)} weights for the depth variants {shown}; give one "
                "weight per variant, deepest first"
            )
        weights = dict(zip(depths, given, strict=True))
    else:
        raise OptionError(
            f"{key} must be a list (deepest variant first) or a mapping, got {given!r}"
        )
    for depth, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise OptionError(
                f"{key}: the weight of depth {depth} must be a number >= 0, got {weight!r}"
            )
    if not any(weights.values()):
        raise OptionError(f"{key} are all zero; at least one variant must be trained")
    return {d: float(w) for d, w in weights.items()}


def check_network_type(network_options: Any, key: str = "network_g") -> str:
    """Return the arch name of a ``network_g`` section, checked against BasicSR's registry.

    Raises:
        OptionError: the section or its ``type`` is missing, or the type is not registered.
    """
    import_basicsr()
    import basicsr.archs  # noqa: F401  (fills the registry)
    from basicsr.utils.registry import ARCH_REGISTRY

    if not isinstance(network_options, Mapping) or "type" not in network_options:
        raise OptionError(f"'{key}' must be a mapping with a 'type' (a BasicSR arch name)")
    arch = network_options["type"]
    # BasicSR also finds archs registered with its suffix (e.g. SRVGGNetCompact_basicsr).
    if arch not in ARCH_REGISTRY and f"{arch}{REGISTRY_SUFFIX}" not in ARCH_REGISTRY:
        names = sorted({name.removesuffix(REGISTRY_SUFFIX) for name, _ in ARCH_REGISTRY})
        raise OptionError(
            f"{key}.type: {arch!r} is not a registered BasicSR arch"
            f"{did_you_mean(arch, names)}; registered archs: {', '.join(names)}"
        )
    return arch


def _check_dataset_paths(options: Mapping[str, Any]) -> None:
    datasets = options.get("datasets")
    if not isinstance(datasets, Mapping) or not datasets:
        raise OptionError("'datasets' must be a mapping of phases (train, val, test_1, ...)")
    for phase, dataset in datasets.items():
        for key, value in (dataset or {}).items():
            if value is None or not (key.startswith("dataroot") or key == "meta_info_file"):
                continue
            path = Path(os.path.expanduser(str(value)))
            if not path.exists():
                raise OptionError(
                    f"datasets.{phase}.{key}: {path} does not exist (relative paths start from "
                    f"the current directory, {Path.cwd()}); make the data (see "
                    "integrations/basicsr/prepare_data.py) or correct the path"
                )


def _check_pretrained_path(options: Mapping[str, Any]) -> None:
    path_options = options.get("path") or {}
    if options.get("auto_resume") or path_options.get("resume_state"):
        return  # BasicSR replaces the pretrained path by the resumed checkpoint
    pretrained = path_options.get("pretrain_network_g")
    if pretrained is not None and not Path(os.path.expanduser(str(pretrained))).is_file():
        raise OptionError(
            f"path.pretrain_network_g: {pretrained} does not exist; train the float recipe "
            "first, correct the path, or set it to ~ to start from scratch"
        )


def check_options(options: Mapping[str, Any]) -> None:
    """Every check that can run before BasicSR builds datasets and networks.

    Checks the ``quantsr`` section against ``model_type``, the arch name, the loss weights,
    ``quantsr.amp``, the dataset folders and the pretrained checkpoint path.

    Raises:
        OptionError: naming the first offending key and what to do.
    """
    model_type = options.get("model_type")
    has_section = options.get(SECTION) is not None
    check_network_type(options.get("network_g"))
    if model_type == MODEL_TYPE:
        config = quantize_config(options)
        depths = list(config.depth_variants) if config.depth_variants else [None]
        variant_loss_weights(options, depths)
        amp_setting(options)
    elif has_section:
        raise OptionError(
            f"the '{SECTION}:' section is only read by model_type: {MODEL_TYPE}, but "
            f"model_type is {model_type!r}; set model_type: {MODEL_TYPE} or remove the section"
        )
    _check_dataset_paths(options)
    _check_pretrained_path(options)
