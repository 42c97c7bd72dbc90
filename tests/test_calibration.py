"""calibrate(): data-driven initialisation of a whole model, including across ranks."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from qsr_plugin import QuantConv2d, QuantSpec, calibrate
from qsr_plugin.quantizers import quantizers_of


def small_net():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Conv2d(8, 3, 3, padding=1),
    )
    for index in (3, 4):
        net[index] = QuantConv2d.from_float(net[index], QuantSpec(weight_bits=4, act_bits=4))
    return net


def test_calibrate_averages_statistics_over_batches_and_restores_mode():
    net = small_net().train()
    batches = [torch.randn(2, 3, 8, 8) * scale for scale in (1.0, 3.0)]
    running_mean = net[1].running_mean.clone()
    calibrate(net, batches)
    assert net.training and torch.equal(net[1].running_mean, running_mean)

    with torch.no_grad():
        net.eval()
        means = [net[2](net[1](net[0](b))).abs().mean() for b in batches]
    expected = 2 * torch.stack(means).mean() / math.sqrt(15)  # post-ReLU: unsigned
    q = net[3].act_quant
    assert not bool(q.signed) and bool(q.initialized)
    assert q.step.item() == pytest.approx(expected.item(), rel=1e-5)
    assert bool(net[4].act_quant.signed)


def test_calibrated_model_evaluates_and_training_does_not_reinitialise():
    net = small_net()
    calibrate(net, torch.randn(2, 3, 8, 8))
    steps = [q.step.clone() for _, q in quantizers_of(net)]
    net.eval()(torch.randn(1, 3, 8, 8))
    net.train()(torch.randn(4, 3, 8, 8) * 10)
    assert all(torch.equal(a, q.step) for a, (_, q) in zip(steps, quantizers_of(net), strict=True))


def test_nan_in_a_calibration_batch_names_the_layer():
    net = small_net()
    x = torch.randn(1, 3, 8, 8)
    x[..., 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^3\.act_quant \(activation quantizer\).*NaN or Inf"):
        calibrate(net, [x])
    assert not any(bool(q.initialized) for _, q in quantizers_of(net))
    assert net.training  # mode restored after the error


def test_calibrate_refuses_a_model_without_quantizers_and_empty_batches():
    with pytest.raises(ValueError, match=r"no qsr_plugin quantizers; call qsr_plugin\.quantize"):
        calibrate(nn.Conv2d(3, 3, 3), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="batches is empty"):
        calibrate(small_net(), [])


def test_quantizers_of_a_layer_that_never_ran_are_reported():
    class WithUnusedLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = small_net()
            self.unused = QuantConv2d.from_float(nn.Conv2d(3, 3, 1))

        def forward(self, x):
            return self.net(x)

    net = WithUnusedLayer()
    with pytest.warns(UserWarning, match=r"saw no data .*unused\.act_quant, unused\.weight_quant"):
        calibrate(net, torch.randn(1, 3, 8, 8))


def test_calibrate_accepts_tuples_dicts_and_a_custom_forward():
    net = small_net()
    calibrate(net, [{"input": torch.randn(1, 3, 8, 8)}])
    calibrate(net, [(torch.randn(1, 3, 8, 8),)])
    seen = []
    calibrate(net, ["a"], forward=lambda model, batch: seen.append(model(torch.randn(1, 3, 8, 8))))
    assert len(seen) == 1


# -- several ranks --------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, result_dir, how):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # identical weights on every rank
    net = small_net()
    torch.manual_seed(100 + rank)  # different data on every rank
    x = torch.randn(2, 3, 8, 8) * (1 + 2 * rank)
    if how == "calibrate":
        calibrate(net, [x])
    else:
        net.train()(x)
    torch.save({k: v for k, v in net.state_dict().items()}, f"{result_dir}/{rank}.pt")
    torch.save(x, f"{result_dir}/x{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("how", ["calibrate", "first_training_step"])
@pytest.mark.slow
def test_every_rank_starts_from_identical_quantizer_parameters(tmp_path, how):
    world = 2
    mp.spawn(_rank_main, args=(world, _free_port(), str(tmp_path), how), nprocs=world)
    states = [torch.load(tmp_path / f"{r}.pt") for r in range(world)]
    keys = [k for k in states[0] if "_quant." in k]
    assert keys
    for key in keys:
        assert torch.equal(states[0][key], states[1][key]), key
    # The first quantized layer sees relu(bn(conv(x))); its step is the mean over ranks.
    net = small_net().eval()
    xs = [torch.load(tmp_path / f"x{r}.pt") for r in range(world)]
    with torch.no_grad():
        if how == "first_training_step":
            net.train()  # batch statistics, as in the ranks' training forward
        means = [net[2](net[1](net[0](x))).abs().mean() for x in xs]
    expected = 2 * torch.stack(means).mean() / math.sqrt(15)
    assert states[0]["3.act_quant.step"].item() == pytest.approx(expected.item(), rel=1e-5)
