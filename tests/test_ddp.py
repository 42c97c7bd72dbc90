"""Joint depth-variant training under 2-process gloo DDP, through the plain API."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

import qsr_plugin
from qsr_plugin import calibrate, iter_depths, joint_variant_loss, quantize
from qsr_plugin._distributed import joint_training_ddp

# (find_unused_parameters, depth variants of a 4-block body): [2, 1] leaves blocks unused
CASES = [(True, [8, 4, 2]), (False, [8, 4, 2]), (True, [2, 1]), (False, [2, 1])]
STEPS = 2


def four_block_net(variants: list[int]) -> nn.Module:
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()) for _ in range(4)]
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(*blocks), nn.Conv2d(4, 3, 1))
    net = quantize(net, bits=4, depth_variants=variants)
    with warnings.catch_warnings():  # [2, 1] leaves blocks without data
        warnings.filterwarnings("ignore", r"calibrate\(\): these quantizers saw no data")
        calibrate(
            net, [torch.rand(2, 3, 8, 8)], forward=lambda m, b: [m(b) for _ in iter_depths(m)]
        )
    return net


def batch(rank: int, step: int) -> torch.Tensor:
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(10 * step + rank))


def train(model: nn.Module, ranks: list[int]) -> None:
    """SGD steps on the mean over ``ranks`` of each rank's joint loss (DDP averages)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(STEPS):
        optimizer.zero_grad()
        losses = [
            joint_variant_loss(model, batch(r, step), batch(r, step), F.l1_loss)[0] for r in ranks
        ]
        (sum(losses) / len(ranks)).backward()
        optimizer.step()


def _rank(rank: int, init_file: str, results: str) -> None:
    qsr_plugin.use_compiled_kernels(False)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    states = {}
    for find_unused, variants in CASES:
        model = joint_training_ddp(four_block_net(variants), find_unused_parameters=find_unused)
        train(model, [rank])
        states[str((find_unused, variants))] = model.module.state_dict()
    plain = DistributedDataParallel(four_block_net([8, 4, 2]))
    try:
        joint_variant_loss(plain, batch(rank, 0), batch(rank, 0), F.l1_loss)
    except ValueError as error:
        states["refused"] = str(error)
    torch.save(states, f"{results}/{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_states(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank, args=(str(folder / "init"), str(folder)), nprocs=2)
    return [torch.load(folder / f"{rank}.pt") for rank in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize(("find_unused", "variants"), CASES)
def test_joint_variant_loss_under_ddp_equals_averaged_single_process_training(
    rank_states, eager_kernels, find_unused, variants
):
    net = four_block_net(variants)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train(net, [0, 1])
    key = str((find_unused, variants))
    for name, value in net.state_dict().items():
        assert torch.allclose(rank_states[0][key][name], value, atol=1e-6), name
        assert torch.equal(rank_states[0][key][name], rank_states[1][key][name]), name
    assert not torch.equal(before["0.weight"], net.state_dict()["0.weight"])


@pytest.mark.slow
def test_joint_variant_loss_refuses_ddp_without_a_static_graph(rank_states):
    for states in rank_states:
        assert "DistributedDataParallel(net, static_graph=True" in states["refused"]
