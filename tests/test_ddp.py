"""Joint depth-variant training under 2-process gloo DDP, through the plain API, with and
without distillation from the float model."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

import qsr_plugin
from qsr_plugin import calibrate, joint_variant_loss, quantize
from qsr_plugin._distributed import joint_training_ddp
from qsr_plugin.distillation import FloatTeacher

# (find_unused_parameters, depth variants of a 4-block body): [4, 2, 1] leaves blocks idle
# in the shallower variants; [8, 4, 2] grows the body
CASES = [(True, [8, 4, 2]), (False, [8, 4, 2]), (True, [4, 2, 1]), (False, [4, 2, 1])]
DISTILLED = "distilled"  # the [8, 4, 2] net trained against its float teacher
STEPS = 2


def float_net() -> nn.Module:
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()) for _ in range(4)]
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(*blocks), nn.Conv2d(4, 3, 1))


def four_block_net(variants: list[int]) -> nn.Module:
    net = quantize(float_net(), bits=4, depth_variants=variants)
    calibrate(net, [torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))])
    return net


def batch(rank: int, step: int) -> torch.Tensor:
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(10 * step + rank))


def train(model: nn.Module, ranks: list[int], distill: bool = False) -> None:
    """SGD steps on the mean over ``ranks`` of each rank's joint loss (DDP averages)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    teacher = FloatTeacher(float_net(), model) if distill else None
    for step in range(STEPS):
        optimizer.zero_grad()
        losses = [
            joint_variant_loss(model, batch(r, step), batch(r, step), F.l1_loss, teacher=teacher)[0]
            for r in ranks
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
    model = joint_training_ddp(four_block_net([8, 4, 2]))
    train(model, [rank], distill=True)
    states[DISTILLED] = model.module.state_dict()
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
def test_distillation_under_ddp_equals_averaged_single_process_training(rank_states, eager_kernels):
    net = four_block_net([8, 4, 2])
    train(net, [0, 1], distill=True)
    plain = four_block_net([8, 4, 2])
    train(plain, [0, 1])
    for name, value in net.state_dict().items():
        assert torch.allclose(rank_states[0][DISTILLED][name], value, atol=1e-6), name
    assert not torch.equal(net.state_dict()["1.4.0.weight"], plain.state_dict()["1.4.0.weight"])


@pytest.mark.slow
def test_joint_variant_loss_refuses_ddp_without_a_static_graph(rank_states):
    for states in rank_states:
        assert "DistributedDataParallel(net, static_graph=True" in states["refused"]
