"""import qsr_plugin keeps torch's "No CUDA runtime is found" warning out of CPU runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# CUDA_HOME set and no GPU visible: the situation of a CPU machine with the CUDA toolkit.
CPP_EXTENSION_SCRIPT = """
import sys
if sys.argv[1] == "with":
    import qsr_plugin
import torch.utils.cpp_extension
"""


@pytest.mark.slow  # a fresh interpreter importing torch
@pytest.mark.parametrize("plugin", ["with", "without"])
def test_import_qsr_plugin_drops_torch_no_cuda_runtime_warning(tmp_path, plugin):
    env = {**os.environ, "CUDA_HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", CPP_EXTENSION_SCRIPT, plugin],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert ("No CUDA runtime is found" in proc.stderr) == (plugin == "without")
