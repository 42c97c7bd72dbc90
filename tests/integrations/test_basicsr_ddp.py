"""QuantSRModel under 2-process gloo DDP, whatever find_unused_parameters and the variants."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp
from basicsr_helpers import ddp_training_worker

# (find_unused_parameters, depth variants of the smoke recipe's 4-block body)
CASES = [(True, [8, 4, 2]), (False, [8, 4, 2]), (True, [4, 2, 1]), (False, [4, 2, 1])]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def rank_states(sr_datasets, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ddp_run")
    (workdir / "datasets").symlink_to(sr_datasets)
    args = (free_port(), str(workdir), CASES, str(workdir))
    mp.spawn(ddp_training_worker, args=args, nprocs=2)
    return [torch.load(workdir / f"{rank}.pt") for rank in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize(("find_unused", "variants"), CASES)
def test_quantsr_model_trains_every_variant_under_ddp(rank_states, find_unused, variants):
    assert rank_states[0]["dist"] and rank_states[0]["world_size"] == 2
    first, second = (states[str((find_unused, variants))] for states in rank_states)
    assert first["static_graph"]
    assert first["losses"] == sorted(f"l_pix@{d}" for d in variants)
    weights = first["weights"]
    assert weights.keys() == second["weights"].keys()
    for name, value in weights.items():  # the ranks saw different batches
        assert torch.equal(value, second["weights"][name]), name
    assert not torch.equal(weights["conv_first.weight"], first["initial"]), "it trained"
