"""What runs around BasicSR's pipeline: process groups without CUDA, resuming, rank checks."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from basicsr_helpers import SMOKE_RECIPE, rank_check_worker

from qsr_plugin.integrations.basicsr import entry
from qsr_plugin.integrations.basicsr.options import OptionError
from qsr_plugin.integrations.basicsr.runtime import _init_dist_any_device, load_resume_state

pytestmark = pytest.mark.usefixtures("eager_kernels")


def test_slurm_launcher_without_cuda_points_to_torchrun(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OptionError, match=r"--launcher slurm needs CUDA GPUs.*torchrun"):
        _init_dist_any_device(pytest.fail, "slurm")


def test_with_cuda_basicsr_initialises_the_process_group(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls = []
    _init_dist_any_device(lambda *args, **kwargs: calls.append((args, kwargs)), "slurm", port=1)
    assert calls == [(("slurm", "nccl"), {"port": 1})]


@pytest.fixture
def smoke_options(workdir):
    return entry.parse_options(["-opt", str(SMOKE_RECIPE)])


def test_auto_resume_takes_the_highest_iteration(smoke_options):
    folder = smoke_options["path"]["training_states"]
    os.makedirs(folder)
    for iteration in (2, 10, 4):  # 10 sorts before 2 and 4 as text
        torch.save({"iter": iteration, "epoch": 0}, f"{folder}/{iteration}.state")
    smoke_options["auto_resume"] = True
    state = load_resume_state(smoke_options)
    assert state["iter"] == 10
    assert smoke_options["path"]["resume_state"].endswith("10.state")
    assert smoke_options["path"]["pretrain_network_g"].endswith("models/net_g_10.pth")


def test_auto_resume_without_states_starts_afresh(smoke_options):
    smoke_options["auto_resume"] = True
    assert load_resume_state(smoke_options) is None


def test_missing_resume_state_is_named(smoke_options):
    smoke_options["path"]["resume_state"] = "experiments/gone/5.state"
    with pytest.raises(OptionError, match=r"path.resume_state: experiments/gone/5.state does not"):
        load_resume_state(smoke_options)


@pytest.mark.slow
def test_rank_check_names_the_quantizer_that_differs(tmp_path):
    mp.spawn(rank_check_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        equal, raised = (tmp_path / f"{rank}.txt").read_text().splitlines()
        assert equal.startswith("equal: ") and int(equal.split()[1]) > 0
        assert raised.startswith("raised: quantizer state differs between ranks for 1 tensors")
        assert "1.2.act_quant.step" in raised
