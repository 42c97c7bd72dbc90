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


def rank_check_worker(rank: int, init_file: str, results: str) -> None:
    """One of two gloo ranks: equal quantizer states are accepted, then rank 1's differs.

    Writes what :func:`check_same_on_all_ranks` returned or raised to ``results/<rank>.txt``.
    """
    import torch
    import torch.distributed as dist
    from torch import nn

    from qsr_plugin import calibrate, quantize
    from qsr_plugin.integrations.basicsr.quantizer_state import check_same_on_all_ranks

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)  # the same network and data on both ranks
    blocks = nn.Sequential(*[nn.Conv2d(4, 4, 3, padding=1) for _ in range(3)])
    net = quantize(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), blocks, nn.Conv2d(4, 3, 1)))
    calibrate(net, torch.rand(2, 3, 8, 8))
    lines = [f"equal: {check_same_on_all_ranks(net)} tensors"]
    if rank == 1:
        with torch.no_grad():
            net[1][2].act_quant.step.add_(1)
    try:
        check_same_on_all_ranks(net)
    except RuntimeError as err:
        lines.append(f"raised: {err}")
    Path(results, f"{rank}.txt").write_text("\n".join(lines))
    dist.destroy_process_group()


def ddp_training_worker(rank: int, port: int, workdir: str, cases: list, results: str) -> None:
    """One of two gloo ranks started like ``--launcher pytorch``: two QuantSRModel
    iterations per case ``(find_unused_parameters, depth_variants)`` on rank-specific
    batches of the smoke recipe; saves each case's trained weights to ``results/<rank>.pt``.
    """
    import copy

    import torch

    from qsr_plugin import use_compiled_kernels
    from qsr_plugin.integrations.basicsr import entry

    from basicsr.data import build_dataset  # isort: skip
    from basicsr.models import build_model  # isort: skip

    use_compiled_kernels(False)
    os.chdir(workdir)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    parsed = entry.parse_options(["-opt", str(SMOKE_RECIPE), "--launcher", "pytorch"])
    dataset = build_dataset(parsed["datasets"]["train"])
    states = {"dist": parsed["dist"], "world_size": parsed["world_size"]}
    for find_unused, variants in cases:
        options = copy.deepcopy(parsed)
        options["find_unused_parameters"] = find_unused
        options["quantsr"]["depth_variants"] = variants
        options["train"].pop("variant_loss_weights")
        options["train"]["ema_decay"] = 0
        torch.manual_seed(0)
        model = build_model(options)
        initial = model.get_bare_model(model.net_g).conv_first.weight.detach().clone()
        for iteration in (1, 2):
            samples = [dataset[4 * iteration + 2 * rank + i] for i in (0, 1)]
            model.feed_data(torch.utils.data.default_collate(samples))
            model.optimize_parameters(iteration)
        bare = model.get_bare_model(model.net_g)
        states[str((find_unused, variants))] = {
            "static_graph": model.net_g.static_graph,
            "losses": sorted(model.get_current_log()),
            "initial": initial,
            "weights": bare.state_dict(),
        }
    torch.save(states, Path(results, f"{rank}.pt"))
