"""A prepared check for one CUDA GPU: QuantSR-C and QuantSR-T training, inference, export.

Run: python -m benchmarks.run --only gpu
Saves benchmarks/results/gpu_check.json and .md. Without CUDA it exits with a message.

For MSRResNet 64x16 (QuantSR-C, depth variants 32/16/8) and SwinIR_S (QuantSR-T, 4/2/1),
4-bit, with the compiled (Triton) kernels, in fp32 and under bf16 autocast:

- seconds per joint training step (every depth variant, one backward), the same for the
  float model, their ratio, and the peak CUDA memory of each step;
- frozen inference at the deepest variant: seconds per batch, and its largest difference
  to the quantized model in eval mode;
- ``qsr_plugin.export_onnx`` of the frozen model;
- with two GPUs or more, a 2-process NCCL run of joint training (the ranks must agree).

Sized to finish within 8 minutes on one recent GPU, compile time included (a guess until
it has run: this script has not been run on a GPU yet).
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import qsr_plugin
from qsr_plugin._distributed import joint_training_ddp
from qsr_plugin.mixed_precision import MixedPrecision

from .models import MSRRESNET, SWINIR_S, Backbone
from .report import Result, markdown_table

BITS = 4
BATCHES = {MSRRESNET.name: 16, SWINIR_S.name: 8}  # the recipes' batch per GPU
WARMUP, TIMED = 3, 10
PRECISIONS = (None, "bf16")


def _timed(step, device: torch.device) -> tuple[float, float | None]:
    """Median seconds per call of ``step`` and the peak CUDA memory (MiB) allocated while
    the timed calls ran, everything resident included; no memory figure off CUDA (the
    CPU test of this script)."""
    on_cuda = device.type == "cuda"
    for _ in range(WARMUP):
        step()
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(TIMED):
        start = time.perf_counter()
        step()
        if on_cuda:
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    peak = round(torch.cuda.max_memory_allocated(device) / 2**20) if on_cuda else None
    return statistics.median(seconds), peak


def _training_step(model: nn.Module, lr, hr, precision: MixedPrecision, joint: bool):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-7)
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            if joint:
                loss, _ = qsr_plugin.joint_variant_loss(model, lr, hr, nn.functional.l1_loss)
            else:
                loss = nn.functional.l1_loss(model(lr).float(), hr)
        precision.backward_and_step(loss, optimizer)

    return step


def check_backbone(backbone: Backbone, device: torch.device) -> dict:
    """Training, frozen inference and export figures of one backbone (see the docstring)."""
    torch.manual_seed(0)
    lr_shape, hr_shape = backbone.batch_shapes(BATCHES.get(backbone.name))
    lr, hr = torch.rand(lr_shape, device=device), torch.rand(hr_shape, device=device)
    float_model = backbone.build().to(device)
    quantized = qsr_plugin.quantize(
        copy.deepcopy(float_model),
        bits=BITS,
        depth_variants=list(backbone.depth_variants),
        example_input=backbone.example_input().to(device),
    )
    qsr_plugin.calibrate(
        quantized, [lr], forward=lambda m, b: [m(b) for _ in qsr_plugin.iter_depths(m)]
    )
    result = {"backbone": backbone.name, "lr_batch": list(lr_shape), "training": {}}
    for amp in PRECISIONS:
        precision = MixedPrecision(amp, device)
        start = time.perf_counter()
        q_step = _training_step(copy.deepcopy(quantized), lr, hr, precision, joint=True)
        q_seconds, q_peak = _timed(q_step, device)
        f_seconds, f_peak = _timed(
            _training_step(copy.deepcopy(float_model), lr, hr, precision, joint=False), device
        )
        result["training"][amp or "fp32"] = {
            "quantsr_joint_step_s": q_seconds,
            "float_step_s": f_seconds,
            "ratio_to_float": q_seconds / f_seconds,
            "quantsr_peak_mib": q_peak,
            "float_peak_mib": f_peak,
            "wall_s_with_compile": time.perf_counter() - start,
        }
    quantized.eval()
    frozen = qsr_plugin.freeze(quantized)
    with torch.no_grad():
        difference = (frozen(lr) - quantized(lr)).abs().max().item()
        inference_s, inference_peak = _timed(lambda: frozen(lr), device)
    result["frozen"] = {
        "inference_s": inference_s,
        "peak_mib": inference_peak,
        "max_abs_difference_to_quantized": difference,
    }
    with tempfile.TemporaryDirectory() as folder:  # exported from the CPU, as documented
        path = qsr_plugin.export_onnx(frozen.cpu(), Path(folder) / "model.onnx", lr[:1].cpu())
        result["onnx_bytes"] = path.stat().st_size
    return result


def _nccl_rank(rank: int, port: int, results: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=2)
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    torch.manual_seed(0)
    net = qsr_plugin.quantize(
        MSRRESNET.build(),
        bits=BITS,
        depth_variants=list(MSRRESNET.depth_variants),
        example_input=MSRRESNET.example_input(),
    ).to(device)
    model = joint_training_ddp(net, device_ids=[rank], find_unused_parameters=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    torch.manual_seed(rank)  # different data on each rank
    lr_shape, hr_shape = MSRRESNET.batch_shapes(4)
    for _ in range(3):
        lr, hr = torch.rand(lr_shape, device=device), torch.rand(hr_shape, device=device)
        loss, _ = qsr_plugin.joint_variant_loss(model, lr, hr, nn.functional.l1_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    weights = torch.cat([p.detach().flatten() for p in net.parameters()])
    gathered = [torch.empty_like(weights) for _ in range(2)]
    dist.all_gather(gathered, weights)
    if rank == 0:
        Path(results, "nccl.txt").write_text(str(torch.equal(gathered[0], gathered[1])))
    dist.destroy_process_group()


def check_nccl() -> dict:
    """A 2-process NCCL joint-training run; whether the ranks end with equal weights."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_nccl_rank, args=(port, folder), nprocs=2)
        return {"ranks_agree": (Path(folder) / "nccl.txt").read_text() == "True"}


def markdown(result: dict) -> str:
    rows = []
    for backbone in result["backbones"]:
        for precision, row in backbone["training"].items():
            rows.append([
                backbone["backbone"], "x".join(map(str, backbone["lr_batch"])), precision,
                f"{row['quantsr_joint_step_s'] * 1e3:.1f}", f"{row['float_step_s'] * 1e3:.1f}",
                f"{row['ratio_to_float']:.2f}",
                f"{row['quantsr_peak_mib']} / {row['float_peak_mib']}",
            ])  # fmt: skip
    text = f"GPU check on {result['gpu']}, torch {result['torch']}, {result['seconds']:.0f} s.\n\n"
    text += markdown_table(
        ["backbone", "LR batch", "precision", "QuantSR joint step (ms)", "float step (ms)",
         "ratio", "peak MiB (QuantSR / float)"],
        rows,
    )  # fmt: skip
    frozen_rows = [
        [b["backbone"], f"{b['frozen']['inference_s'] * 1e3:.1f}",
         f"{b['frozen']['max_abs_difference_to_quantized']:.2e}", b["onnx_bytes"]]
        for b in result["backbones"]
    ]  # fmt: skip
    text += "\n" + markdown_table(
        ["backbone", "frozen inference (ms)", "max |frozen - quantized|", "ONNX bytes"],
        frozen_rows,
    )
    nccl = result["nccl"]
    text += "\n2-process NCCL: " + (
        "not run (one GPU)" if nccl is None else f"ranks agree: {nccl['ranks_agree']}"
    )
    return text + "\n"


def run(args: argparse.Namespace) -> Result:
    """Run the check on ``cuda:0``; exits with a message without CUDA (``args`` unused)."""
    if not torch.cuda.is_available():
        sys.exit("benchmarks.gpu_check needs a CUDA GPU; torch sees none on this machine")
    device = torch.device("cuda", 0)
    qsr_plugin.use_compiled_kernels(True)
    start = time.perf_counter()
    result = {
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "bits": BITS,
        "backbones": [check_backbone(b, device) for b in (MSRRESNET, SWINIR_S)],
        "nccl": check_nccl() if torch.cuda.device_count() >= 2 else None,
    }
    result["seconds"] = time.perf_counter() - start
    return Result("gpu_check", result, markdown(result))
