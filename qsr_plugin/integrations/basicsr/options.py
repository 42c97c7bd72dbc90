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
      distill:                          # optional: learn from the float model as well
        teacher: experiments/msrresnet_x4_float/models/net_g_latest.pth
        output: 1.0                     # weight of the output distance (default 1)
        features: 1.0                   # weight of the per-block feature distance (default 1)
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
from qsr_plugin.distillation import DistillConfig
from qsr_plugin.mixed_precision import check_amp
from qsr_plugin.rewrite.variants import variant_weights

MODEL_TYPE = "QuantSRModel"
SECTION = "quantsr"
WEIGHTS_KEY = "variant_loss_weights"
AMP_KEY = "amp"  # a training setting in the quantsr section, not a QuantizeConfig field
DISTILL_KEY = "distill"  # likewise: distillation from the float model
TEACHER_KEY = "teacher"  # the float checkpoint, in the distill section
TRAINING_KEYS = (AMP_KEY, DISTILL_KEY)
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
    settings = {k: v for k, v in section.items() if k not in TRAINING_KEYS}
    valid = [*(f.name for f in dataclasses.fields(QuantizeConfig)), *TRAINING_KEYS]
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


def distill_setting(options: Mapping[str, Any]) -> tuple[DistillConfig, Path] | None:
    """``quantsr.distill``: the distillation weights and the float teacher checkpoint, or
    None without the section.

    Raises:
        OptionError: not a mapping, an unknown key (with the nearest valid one), no
            ``teacher``, a teacher file that does not exist, or a bad weight.
    """
    section = options.get(SECTION)
    distill = section.get(DISTILL_KEY) if isinstance(section, Mapping) else None
    if distill is None:
        return None
    where = f"{SECTION}.{DISTILL_KEY}"
    if not isinstance(distill, Mapping):
        raise OptionError(f"{where} must be a mapping (teacher, output, features), got {distill!r}")
    valid = (TEACHER_KEY, *(name for name in DistillConfig.__dataclass_fields__))
    try:
        check_keys(distill, valid, where=f"{where}.")
    except ValueError as err:
        raise OptionError(str(err)) from None
    teacher = distill.get(TEACHER_KEY)
    if not teacher:
        raise OptionError(
            f"{where}.{TEACHER_KEY} is required: the float checkpoint of network_g to distil "
            "from (e.g. the float recipe's models/net_g_latest.pth)"
        )
    path = Path(os.path.expanduser(str(teacher)))
    if not path.is_file():
        raise OptionError(f"{where}.{TEACHER_KEY}: {path} does not exist; correct the path")
    try:
        config = DistillConfig(**{k: v for k, v in distill.items() if k != TEACHER_KEY})
    except ValueError as err:
        raise OptionError(f"{where}.{err}") from None
    return config, path


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
    try:
        return variant_weights(depths, train.get(WEIGHTS_KEY), f"train.{WEIGHTS_KEY}")
    except ValueError as err:
        raise OptionError(str(err)) from None


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
        distill_setting(options)
    elif has_section:
        raise OptionError(
            f"the '{SECTION}:' section is only read by model_type: {MODEL_TYPE}, but "
            f"model_type is {model_type!r}; set model_type: {MODEL_TYPE} or remove the section"
        )
    _check_dataset_paths(options)
    _check_pretrained_path(options)
