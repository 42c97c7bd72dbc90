"""Saving a quantized model to one packed safetensors file, and loading it back.

What the file holds (``save``):

- the quantized layers' weights as signed integer codes, bit-packed, and their quantizers'
  steps, shifts and signedness, as five tables (see :mod:`qsr_plugin.export.layer_tables`);
- every other parameter and buffer of ``model.state_dict()`` as it is, under its key: biases
  and float layers, DQA shortcut and residual scales and depth plans, norms. A tensor that
  several keys share (tied weights) is stored once;
- buffers that a model's constructor rebuilds from its settings (``DERIVED_BUFFER_NAMES``:
  SwinIR's relative position indices and attention masks, often larger than the weights)
  as SHA-256 digests only; loading checks that the target model's buffers match;
- metadata (JSON strings): the file format and version, the plugin version, the quantization
  (config, body, depth variants and their blocks, per-layer specs; see
  :mod:`qsr_plugin.export.model_description`), the aliases and digests, and a SHA-256 of the
  whole header (every tensor's name, dtype, shape and offsets, and the other metadata) and
  the data section.

Loading unpacks the codes and sets each quantized weight to ``codes * step``: the quantized
layer then computes exactly what it computed before saving (the latent float weights of
training are not kept). Nothing is unpickled: safetensors holds raw tensors and JSON.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import struct
import warnings
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .._files import write_atomically
from .._version import __version__
from .layer_tables import TABLE_NAMES, pack_tables, unpack_tables
from .model_description import describe, differences
from .quantized_layers import require_deployable, require_quantized

FORMAT = "qsr_plugin.safetensors"
FORMAT_VERSION = 2  # 2: the checksum covers the tensor entries of the header
CHECKSUM_KEY = "sha256"
COMPACT = (",", ":")
DERIVED_BUFFER_NAMES = ("relative_position_index*", "attn_mask", "relative_coords_table")
MAX_LISTED = 8


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def _digest(tensor: torch.Tensor) -> str:
    hasher = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    hasher.update(_tensor_bytes(tensor))
    return hasher.hexdigest()


def derived_buffer_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the buffers that ``save`` stores as digests (``DERIVED_BUFFER_NAMES``)."""
    state_keys = set(model.state_dict())
    return {
        name
        for name, _ in model.named_buffers()
        if name in state_keys
        and any(fnmatch.fnmatchcase(name.rsplit(".", 1)[-1], p) for p in DERIVED_BUFFER_NAMES)
    }


def _checksum(header: dict[str, Any], data: bytes) -> str:
    """SHA-256 of the whole header but the checksum itself, then the data section.

    The header is every tensor's entry (name, dtype, shape, data_offsets) and the metadata,
    so an edit anywhere in the file (swapped offsets included) changes the checksum.
    """
    metadata = header.get("__metadata__") or {}
    covered = {k: v for k, v in header.items() if k != "__metadata__"}
    covered["__metadata__"] = {k: v for k, v in metadata.items() if k != CHECKSUM_KEY}
    hasher = hashlib.sha256(json.dumps(covered, sort_keys=True).encode())
    hasher.update(data)
    return hasher.hexdigest()


def _data_section(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the data section of serialised safetensors bytes."""
    (header_size,) = struct.unpack("<Q", raw[:8])
    if len(raw) < 8 + header_size:
        raise ValueError(f"the header claims {header_size} bytes but the file has {len(raw) - 8}")
    header = json.loads(raw[8 : 8 + header_size])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header, raw[8 + header_size :]


def unique_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``model.state_dict()`` without rebuilt buffers, each tensor once.

    Returns:
        ``(state, aliases)``: the entries to store, and ``{key: stored key}`` for the keys
        whose tensor is stored under another key (tied weights).
    """
    derived = derived_buffer_keys(model)
    state: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    stored_at: dict[tuple, str] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if key in derived:
            continue
        identity = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.dtype,
        )
        if tensor.numel() and identity in stored_at:
            aliases[key] = stored_at[identity]
        else:
            stored_at[identity] = key
            state[key] = tensor.detach()
    return state, aliases


def _serialise(model: nn.Module) -> bytes:
    tensors, covered = pack_tables(model)
    state, aliases = unique_state(model)
    current = model.state_dict()
    digests = {key: _digest(current[key]) for key in derived_buffer_keys(model)}
    for key, tensor in state.items():
        if key not in covered:
            tensors[key] = tensor.cpu().clone().contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "plugin_version": __version__,
        "model": json.dumps(describe(model), separators=COMPACT),
        "aliases": json.dumps(aliases, separators=COMPACT),
        "derived_buffers": json.dumps(digests, separators=COMPACT),
    }
    header, data = _data_section(safetensors.torch.save(tensors, metadata))
    metadata[CHECKSUM_KEY] = _checksum(header, data)
    return safetensors.torch.save(tensors, metadata)  # same tensors, so the same entries


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` (quantized and calibrated or trained) to one packed safetensors file.

    The write is atomic: ``path`` holds either its previous content or the complete file.

    Args:
        model: a model quantized with a learned-step method (``quantsr`` or ``lsq``).
        path: the file to write; its directory must exist.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: the model was never quantized, or a layer uses another method.
        RuntimeError: a quantizer was never initialised (the message names it).
        FileNotFoundError, PermissionError, OSError: the file cannot be written there.

    Example:
        ``qsr_plugin.save(model, "quantsr_c_x4_w4.safetensors")``
    """
    model = require_quantized(model, "save()")
    require_deployable(model, "save()")
    return write_atomically(path, _serialise(model))


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of a qsr_plugin file, checked for corruption."""
    if not path.is_file():
        raise FileNotFoundError(f"load(): {path} does not exist or is not a file")
    raw = path.read_bytes()
    problem = f"load(): {path} is not a readable safetensors file"
    try:
        header, data = _data_section(raw)
        tensors = safetensors.torch.load(raw)
    except Exception as error:
        raise ValueError(f"{problem} ({error}); it may be truncated or corrupted") from error
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"load(): {path} was not written by qsr_plugin.save() (no {FORMAT!r} metadata); "
            "load plain safetensors files with safetensors.torch.load_model"
        )
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(
            f"load(): format_version: {path} has {metadata.get('format_version')!r}, this "
            f"qsr_plugin reads {FORMAT_VERSION}; use the qsr_plugin version that wrote it"
        )
    if _checksum(header, data) != metadata.get(CHECKSUM_KEY):
        raise ValueError(
            f"load(): {path} is corrupted: its tensors, tensor entries (names, dtypes, shapes, "
            "offsets) or metadata do not match the checksum written with them; save the model "
            "again"
        )
    return metadata, tensors


def _json_field(metadata: dict[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(metadata[key])
    except (KeyError, json.JSONDecodeError) as error:
        raise ValueError(
            f"load(): {path}: metadata field {key!r} is missing or not JSON"
        ) from error


def _check_compatible(metadata: dict[str, str], model: nn.Module, path: Path) -> None:
    saved_version = metadata.get("plugin_version")
    if saved_version != __version__:
        raise ValueError(
            f"load(): plugin_version: {path} was written by qsr_plugin {saved_version}, this "
            f"is {__version__}; load it with qsr_plugin {saved_version} (the packed format "
            "and quantizer state are tied to the version)"
        )
    saved = _json_field(metadata, "model", path)
    found = differences(saved, describe(model))
    if found:
        listed = "; ".join(found[:MAX_LISTED])
        more = f" (and {len(found) - MAX_LISTED} more)" if len(found) > MAX_LISTED else ""
        raise ValueError(
            f"load(): {path} was saved from a model quantized differently: {listed}{more}. "
            f"Build the model and quantize it with the file's config: {saved['config']}"
        )


def _model_and_path(
    model: nn.Module | str | os.PathLike, path: str | os.PathLike | nn.Module
) -> tuple[nn.Module, Path]:
    """``(model, path)`` from load()'s arguments; the old order ``(path, model)`` warns."""
    if isinstance(path, nn.Module) and not isinstance(model, nn.Module):
        warnings.warn(
            "load(path, model) is deprecated: pass the model first, load(model, path), "
            "as in save(model, path)",
            DeprecationWarning,
            stacklevel=3,
        )
        model, path = path, model
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"load(model, path): model must be an nn.Module, got {type(model).__name__}"
        )
    return model, Path(path)


def load(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Restore a file written by :func:`save` into ``model``; return the model.

    ``model`` must be built and quantized exactly as the saved one (same architecture
    settings, same config); it then computes bit-identical outputs at every depth.
    The arguments come in the order of :func:`save` (and safetensors' ``load_model``);
    the old order ``load(path, model)`` still works, with a ``DeprecationWarning``.

    Args:
        model: the target model, quantized with the file's config.
        path: a file written by :func:`save`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a qsr_plugin file, truncated or corrupted, written by another
            version, or saved from a model quantized differently (the message names the
            field, e.g. ``config.bits`` or ``layers.body.0.conv1``), or a tensor that does
            not fit the model.
        TypeError: ``model`` is not an ``nn.Module``.

    Example:
        ``qsr_plugin.load(quantized_model, "quantsr_c_x4_w4.safetensors")``
    """
    model, path = _model_and_path(model, path)
    wrapper, model = model, require_quantized(model, "load()")
    metadata, tensors = _read(path)
    _check_compatible(metadata, model, path)
    current = model.state_dict()
    tables = {name: tensors.pop(name) for name in TABLE_NAMES if name in tensors}
    try:
        state = unpack_tables(tables, model)
    except ValueError as error:
        raise ValueError(f"load(): {path}: {error}") from error
    for key, digest in _json_field(metadata, "derived_buffers", path).items():
        if key not in current or _digest(current[key]) != digest:
            raise ValueError(
                f"load(): buffer {key} of the model differs from the saved model's; it is "
                "rebuilt from the architecture settings (image size, window size?), so build "
                "the model with the settings it was saved with"
            )
        state[key] = current[key]
    state.update(tensors)
    for key, target in _json_field(metadata, "aliases", path).items():
        if target not in state:
            raise ValueError(
                f"load(): {path}: alias {key} points to {target}, which the file does not "
                "hold; save the model again"
            )
        state[key] = state[target]  # a tied tensor: stored once, maybe in the packed tables
    missing = sorted(set(current) - set(state))
    unexpected = sorted(set(state) - set(current))
    if missing or unexpected:
        raise ValueError(
            f"load(): {path} does not fit {type(model).__name__}: missing keys "
            f"{missing[:MAX_LISTED]}, unexpected keys {unexpected[:MAX_LISTED]}"
        )
    for key, tensor in state.items():
        if tensor.shape != current[key].shape:
            raise ValueError(
                f"load(): {key} has shape {tuple(tensor.shape)} in {path} and "
                f"{tuple(current[key].shape)} in the model; build the model with the "
                "architecture settings it was saved with"
            )
    model.load_state_dict(state, strict=True)
    return wrapper
