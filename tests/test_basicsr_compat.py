"""Tests for qsr_plugin._basicsr_compat, each scenario in a fresh interpreter."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test runs a fresh interpreter that imports torch

REPO_ROOT = Path(__file__).resolve().parents[1]
LEGACY = "torchvision.transforms.functional_tensor"
PRIVATE = "torchvision.transforms._functional_tensor"


def run_script(script: str) -> dict:
    """Runs Python code in a fresh interpreter at the repo root; returns the JSON it prints."""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


NORMAL_SCRIPT = f"""
import importlib.util, json, sys
legacy_existed = importlib.util.find_spec({LEGACY!r}) is not None
from qsr_plugin._basicsr_compat import import_basicsr
first = import_basicsr()
alias = sys.modules[{LEGACY!r}]
from basicsr.utils.registry import ARCH_REGISTRY
arch = ARCH_REGISTRY.get("MSRResNet")
import basicsr.data.degradations as deg
second = import_basicsr()
print(json.dumps({{
    "legacy_existed": legacy_existed,
    "legacy_module": alias.__name__,
    "arch": arch.__module__ + "." + arch.__name__,
    "degradations_gray_is_alias": deg.rgb_to_grayscale is alias.rgb_to_grayscale,
    "idempotent": second is first and sys.modules[{LEGACY!r}] is alias,
    "is_basicsr": first.__name__ == "basicsr",
}}))
"""

FALLBACK_SCRIPT = f"""
import json, sys
import torch, torchvision.transforms.functional as F
sys.modules[{PRIVATE!r}] = None  # as if torchvision had no private module either
from qsr_plugin._basicsr_compat import import_basicsr
import_basicsr()
import basicsr.data.degradations as deg
rgb = torch.tensor([[[1.0]], [[0.5]], [[0.0]]])
print(json.dumps({{
    "uses_public_function": sys.modules[{LEGACY!r}].rgb_to_grayscale is F.rgb_to_grayscale,
    "gray": deg.rgb_to_grayscale(rgb).item(),
}}))
"""

FAILURE_SCRIPT = f"""
import json, sys, types
existing = types.ModuleType({LEGACY!r})
sys.modules[{LEGACY!r}] = existing
sys.modules["basicsr"] = None  # makes "import basicsr" fail
from qsr_plugin._basicsr_compat import import_basicsr
try:
    import_basicsr()
    message = None
except ImportError as err:
    message = str(err)
print(json.dumps({{"message": message, "kept": sys.modules[{LEGACY!r}] is existing}}))
"""


@pytest.fixture(scope="module")
def normal_report() -> dict:
    return run_script(NORMAL_SCRIPT)


def test_import_basicsr_resolves_msrresnet(normal_report):
    assert normal_report["is_basicsr"]
    assert normal_report["arch"] == "basicsr.archs.srresnet_arch.MSRResNet"


def test_degradations_importable_after_call(normal_report):
    assert normal_report["degradations_gray_is_alias"]


def test_alias_only_when_torchvision_lacks_module(normal_report):
    expected = LEGACY if normal_report["legacy_existed"] else PRIVATE
    assert normal_report["legacy_module"] == expected


def test_import_basicsr_is_idempotent(normal_report):
    assert normal_report["idempotent"]


def test_fallback_when_private_module_missing_too():
    report = run_script(FALLBACK_SCRIPT)
    assert report["uses_public_function"]
    assert report["gray"] == pytest.approx(0.2989 + 0.587 * 0.5, abs=1e-4)


def test_failed_import_raises_clear_error_and_keeps_existing_module():
    report = run_script(FAILURE_SCRIPT)
    assert report["message"] is not None, "import_basicsr() did not raise"
    assert "could not import basicsr" in report["message"]
    assert "pip install" in report["message"]
    assert report["kept"]


USER_CODE_SCRIPT = """
import json, qsr_plugin
from basicsr.archs.srresnet_arch import MSRResNet
print(json.dumps({"arch": MSRResNet.__name__}))
"""


def test_import_qsr_plugin_lets_user_code_import_basicsr_archs():
    assert run_script(USER_CODE_SCRIPT)["arch"] == "MSRResNet"
