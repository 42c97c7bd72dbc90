"""Paths and helpers shared by the BasicSR integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES = REPO_ROOT / "recipes"
SMOKE_RECIPE = RECIPES / "smoke_quantsr_c_x4.yml"
SMOKE_TEST_RECIPE = RECIPES / "test_smoke_quantsr_c_x4.yml"
TRAIN_SCRIPT = REPO_ROOT / "integrations" / "basicsr" / "train.py"
TEST_SCRIPT = REPO_ROOT / "integrations" / "basicsr" / "test.py"


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: this checkout first on the path, eager kernels."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["QSR_COMPILE"] = "0"
    return env


def run_script(
    script: Path, *args: str, cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run one of the integration scripts with this interpreter; output captured as text."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
