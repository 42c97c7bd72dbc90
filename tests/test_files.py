"""Atomic writes: what a killed save leaves behind, and how the next save cleans it up."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _deploy_models import as_trained, small_msrresnet

import qsr_plugin

pytestmark = pytest.mark.usefixtures("eager_kernels")

FILES_MODULE = Path(__file__).resolve().parents[1] / "qsr_plugin" / "_files.py"

# Loads _files.py alone (no torch import) and is killed with SIGKILL right before the rename,
# when the temporary file is complete: the worst moment for a stray file.
KILLED_SAVE = f"""
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("files", {str(FILES_MODULE)!r})
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)
os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
files.write_atomically(sys.argv[1], b"half of a model")
"""


@pytest.mark.skipif(os.name != "posix", reason="stale temporary files are cleaned on POSIX")
def test_the_next_save_removes_the_temporary_file_of_a_killed_save(tmp_path):
    target = tmp_path / "model.safetensors"
    killed = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(target)])
    assert killed.wait(timeout=60) == -signal.SIGKILL
    (stray,) = [p.name for p in tmp_path.iterdir()]
    assert re.fullmatch(rf"\.model\.{killed.pid}\.[a-z0-9_]+\.safetensors", stray)
    assert not target.exists()
    qsr_plugin.save(as_trained(small_msrresnet(4)), target)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


@pytest.mark.skipif(os.name != "posix", reason="stale temporary files are cleaned on POSIX")
def test_a_temporary_file_of_a_running_writer_is_kept(tmp_path):
    mine = tmp_path / f".model.{os.getpid()}.abc123.safetensors"
    other = tmp_path / ".other.1.abc123.safetensors"  # another destination's
    mine.write_bytes(b"being written")
    other.write_bytes(b"not ours")
    qsr_plugin.save(as_trained(small_msrresnet(4)), tmp_path / "model.safetensors")
    assert mine.exists() and other.exists()
