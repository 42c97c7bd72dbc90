"""The real train.py / test.py on the smoke recipe: checkpoints, logs, resume, EMA, DDP on CPU.

Runs are tiny (4-bit MSRResNet with 16 features, 2 patches of 16x16 LR pixels per batch, a
few iterations, validation on two Set5 images) but go through BasicSR's whole pipeline.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from basicsr_helpers import (
    SMOKE_RECIPE,
    SMOKE_TEST_RECIPE,
    TEST_SCRIPT,
    TRAIN_SCRIPT,
    run_script,
    subprocess_env,
)

from qsr_plugin.integrations.basicsr.options import read_option_file

EXPERIMENT = read_option_file(SMOKE_RECIPE)["name"]
DEPTHS = read_option_file(SMOKE_RECIPE)["quantsr"]["depth_variants"]
STARTUP_TIMEOUT = 300
QUANTIZER_BUFFERS = ("num_bits", "initialized", "signed")


@dataclass
class ResumedRun:
    root: Path
    killed_output: str
    killed_at: int  # the last training state the killed run wrote
    resumed: subprocess.CompletedProcess

    @property
    def experiment(self) -> Path:
        return self.root / "experiments" / EXPERIMENT


def states(folder: Path) -> list[int]:
    return sorted(int(p.stem) for p in folder.glob("*.state"))


def kill_after_first_state(root: Path) -> tuple[str, int]:
    """Start a long training run and kill it as soon as a training state is on disk."""
    folder = root / "experiments" / EXPERIMENT / "training_states"
    log = root / "killed_run.txt"
    command = [sys.executable, str(TRAIN_SCRIPT), "-opt", str(SMOKE_RECIPE)]
    command += ["--force_yml", "train:total_iter=1000", "val:val_freq=1000"]
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=root, env=subprocess_env(), stdout=output, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not states(folder) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        process.kill()
        process.wait()
    text = log.read_text()
    assert states(folder), f"the run wrote no training state before it ended:\n{text[-3000:]}"
    return text, states(folder)[-1]


@pytest.fixture(scope="module")
def resumed_run(sr_datasets, tmp_path_factory) -> ResumedRun:
    root = tmp_path_factory.mktemp("pipeline")
    (root / "datasets").symlink_to(sr_datasets)
    killed_output, killed_at = kill_after_first_state(root)
    resumed = run_script(
        TRAIN_SCRIPT,
        "-opt",
        str(SMOKE_RECIPE),
        "--auto_resume",
        "--force_yml",
        f"train:total_iter={killed_at + 2}",
        "logger:use_tb_logger=true",
        cwd=root,
    )
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    return ResumedRun(root, killed_output, killed_at, resumed)


def log_of(run: subprocess.CompletedProcess) -> str:
    return run.stdout + run.stderr


def quantizer_entries(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] in QUANTIZER_BUFFERS}


@pytest.mark.slow
def test_checkpoints_and_training_states_are_written(resumed_run):
    last = resumed_run.killed_at + 2
    models = resumed_run.experiment / "models"
    assert {f"net_g_{last}.pth", "net_g_latest.pth"} <= {p.name for p in models.iterdir()}
    assert last in states(resumed_run.experiment / "training_states")
    checkpoint = torch.load(models / "net_g_latest.pth", weights_only=True)
    assert set(checkpoint) == {"params", "params_ema"}
    assert not list(resumed_run.experiment.rglob("*.tmp")), "no half-written files"


@pytest.mark.slow
def test_log_shows_each_variants_loss_and_psnr(resumed_run):
    log = log_of(resumed_run.resumed)
    losses = r"\s+".join(rf"l_pix@{d}: [0-9.e+-]+" for d in DEPTHS)
    assert re.search(losses, log), log[-3000:]
    for depth in DEPTHS:
        assert re.search(rf"# psnr@{depth}: \d+\.\d+\s+Best: \d+\.\d+ @ \d+ iter", log)
        assert re.search(rf"# ssim@{depth}: 0\.\d+", log)


@pytest.mark.slow
def test_tensorboard_gets_each_variants_loss_and_metrics(resumed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(resumed_run.root / "tb_logger" / EXPERIMENT)).Reload()
    scalars = set(events.Tags()["scalars"])
    for depth in DEPTHS:
        assert {f"losses/l_pix@{depth}", f"metrics/Set5/psnr@{depth}"} <= scalars


@pytest.mark.slow
def test_resume_continues_the_iterations_with_the_saved_quantizers(resumed_run):
    killed_at, log = resumed_run.killed_at, log_of(resumed_run.resumed)
    assert "Quantizers initialised from the first training batch" in resumed_run.killed_output
    assert f"Resuming training from epoch: 0, iter: {killed_at}." in log
    assert re.search(rf"Loaded QuantSR checkpoint \S+net_g_{killed_at}\.pth \[params\]", log)
    assert "Quantizers initialised" not in log
    assert re.search(rf"iter:\s+{killed_at + 1}, lr", log) and re.search(
        rf"iter:\s+{killed_at + 2}, lr", log
    )
    assert not re.search(rf"iter:\s+{killed_at}, lr", log)
    models = resumed_run.experiment / "models"
    saved = torch.load(models / f"net_g_{killed_at}.pth", weights_only=True)["params"]
    final = torch.load(models / "net_g_latest.pth", weights_only=True)["params"]
    for key, value in quantizer_entries(saved).items():
        assert torch.equal(final[key], value), key


@pytest.mark.slow
def test_ema_network_holds_initialised_quantizers(resumed_run):
    checkpoint = torch.load(
        resumed_run.experiment / "models" / "net_g_latest.pth", weights_only=True
    )
    params, ema = checkpoint["params"], checkpoint["params_ema"]
    buffers = quantizer_entries(params)
    assert buffers and all(bool(v.all()) for k, v in buffers.items() if k.endswith("initialized"))
    for key, value in buffers.items():
        assert torch.equal(ema[key], value), key
    assert not torch.equal(ema["conv_first.weight"], params["conv_first.weight"]), "EMA averages"


@pytest.mark.slow
def test_test_script_scores_every_variant_like_the_final_validation(resumed_run):
    tested = run_script(TEST_SCRIPT, "-opt", str(SMOKE_TEST_RECIPE), cwd=resumed_run.root)
    assert tested.returncode == 0, tested.stderr[-5000:]
    log, training_log = log_of(tested), log_of(resumed_run.resumed)
    images = resumed_run.root / "results" / "test_smoke_quantsr_c_x4" / "visualization" / "Set5"
    for depth in DEPTHS:
        score = re.search(rf"# psnr@{depth}: (\d+\.\d+)", log).group(1)
        # the training run validated the same EMA weights last
        assert re.findall(rf"# psnr@{depth}: (\d+\.\d+)", training_log)[-1] == score
        assert (images / f"bird_test_smoke_quantsr_c_x4_depth{depth}.png").is_file()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_process_cpu_run_with_torchrun(sr_datasets, tmp_path):
    (tmp_path / "datasets").symlink_to(sr_datasets)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    command += [f"--master_port={free_port()}", str(TRAIN_SCRIPT), "-opt", str(SMOKE_RECIPE)]
    command += ["--launcher", "pytorch", "--force_yml", "train:total_iter=2"]
    run = subprocess.run(
        command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    log = log_of(run)
    assert run.returncode == 0, log[-5000:]
    assert "World size (gpu number): 2" in log
    assert re.search(r"quantizer tensors, identical on all 2 ranks", log), log[-3000:]
    assert re.search(r"iter:\s+2, lr.*l_pix@\d+", log)
    assert (tmp_path / "experiments" / EXPERIMENT / "models" / "net_g_latest.pth").is_file()
