"""Results on disk: JSON plus a Markdown table, written atomically, and machine details."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from qsr_plugin._files import write_atomically

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Result:
    """What a benchmark's ``run(args)`` returns; :mod:`benchmarks.run` saves and prints it.

    Attributes:
        name: file stem under the results folder (``speed_quick``, ``layer_overhead``, ...).
        data: every figure, the settings and the :func:`machine` header (the ``.json``).
        markdown: the tables (the ``.md``, also printed).
    """

    name: str
    data: dict
    markdown: str


def machine() -> dict:
    """Where the figures were measured: CPU, thread count, load, library versions."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_at_start": load,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def describe(header: dict) -> str:
    """One line for a :func:`machine` header."""
    load = header["load_average_1min_at_start"]
    load_text = "" if load is None else f", load average {load:.1f} at start"
    return (
        f"{header['cpu']}, {header['cores']} cores, {header['torch_threads']} torch threads"
        f"{load_text}, torch {header['torch']}"
    )


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all, creating the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text.encode())


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub Markdown table; floats are printed as given (format them before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save(name: str, result: dict, markdown: str, directory: Path = RESULTS_DIR) -> Path:
    """Write ``<directory>/<name>.json`` and ``<name>.md``; returns the Markdown path."""
    write_text(directory / f"{name}.json", json.dumps(result, indent=2) + "\n")
    markdown_path = directory / f"{name}.md"
    write_text(markdown_path, markdown)
    return markdown_path
