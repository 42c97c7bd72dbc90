"""``QuantSRModel``: BasicSR's SRModel training and evaluating a QuantSR network.

Registered in BasicSR's ``MODEL_REGISTRY`` on import, so option files select it with
``model_type: QuantSRModel``. It differs from SRModel in these ways:

- ``network_g`` (any registered arch) is quantized with the ``quantsr:`` section
  (:func:`qsr_plugin.quantize`) before it is moved to the device or wrapped for DDP;
- ``pretrain_network_g`` may be a float or a QuantSR checkpoint (:mod:`.checkpoint`);
- at the first training iteration of a fresh run the quantizers are initialised from the
  batch, running every depth variant (:func:`qsr_plugin.calibrate`); the EMA network then
  receives the same quantizer state, and under DDP the ranks are checked to agree;
- every iteration trains all depth variants jointly
  (:func:`qsr_plugin.rewrite.variants.joint_variant_losses`): the loss is the weighted sum
  of each variant's pixel loss (``train.variant_loss_weights``), logged as
  ``l_pix@<depth>`` (read from the device only at logging intervals); with a
  ``quantsr.distill`` section each variant also learns from the float teacher
  (:mod:`qsr_plugin.distillation`; ``l_distill_output@<depth>``,
  ``l_distill_features@<depth>``); ``quantsr.amp: bf16 | fp16`` trains under autocast
  (plus a GradScaler for fp16); with ``quantsr.method: cadyq`` the loss adds CADyQ's bit
  cost term, logged as ``bit_cost``;
- with ``depth_policy: importance`` the smaller variants are re-planned from measured block
  importance (:mod:`qsr_plugin.rewrite.importance`) before the iterations at the set
  fractions of ``train.total_iter``, on the first batch this process trained on; each plan
  is logged and copied to the EMA network;
- validation evaluates every variant; metrics are named ``<metric>@<depth>`` (``psnr@16``),
  each with its own best value, and saved images end in ``_depth<depth>``;
- checkpoints and training states are written atomically; DDP (on the CPU too) is built
  with ``static_graph=True``, whatever ``find_unused_parameters`` and the variants are.

Without ``depth_variants`` there is one variant and the names are BasicSR's (``l_pix``,
``psnr``).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qsr_plugin import calibrate, quantize, summary
from qsr_plugin._basicsr_compat import import_basicsr
from qsr_plugin._distributed import joint_training_ddp
from qsr_plugin.config import QuantizeConfig
from qsr_plugin.distillation import FloatTeacher
from qsr_plugin.mixed_precision import MixedPrecision
from qsr_plugin.rewrite.depth import depth_switchable_bodies
from qsr_plugin.rewrite.importance import importance_bodies, replan_by_importance, replan_steps
from qsr_plugin.rewrite.variants import each_variant, joint_variant_losses, variant_depths
from qsr_plugin.sr_training import with_method_loss
from qsr_plugin.training_stats import QuantizerStatsRecorder, TrainingStats, quantizer_values

from .checkpoint import load_checkpoint, read_state_dict, save_atomically
from .options import (
    OptionError,
    amp_setting,
    check_network_type,
    distill_setting,
    quantize_config,
    variant_loss_weights,
)
from .quantizer_state import all_initialized, check_same_on_all_ranks, copy_quantizer_state

import_basicsr()
from basicsr.archs import build_network  # noqa: E402
from basicsr.losses import build_loss  # noqa: E402
from basicsr.metrics import calculate_metric  # noqa: E402
from basicsr.models.sr_model import SRModel  # noqa: E402
from basicsr.utils import get_root_logger, imwrite, tensor2img  # noqa: E402
from basicsr.utils.dist_util import master_only  # noqa: E402
from basicsr.utils.registry import MODEL_REGISTRY  # noqa: E402

Depth = int | None
GRAD_SCALER_KEY = "grad_scaler"  # in training states of fp16 runs


def tagged(name: str, depth: Depth) -> str:
    """``name@depth`` (e.g. ``psnr@16``), or ``name`` for a model without depth variants."""
    return name if depth is None else f"{name}@{depth}"


def build_quantized_network(network_options: dict, config: QuantizeConfig) -> nn.Module:
    """Build ``network_g`` with BasicSR and quantize it with ``config``.

    Raises:
        OptionError: unknown arch, or settings the arch cannot take (the message names
            the ``quantsr`` setting).
    """
    arch = check_network_type(network_options)
    net = build_network(network_options)
    try:
        return quantize(net, config=config)
    except ValueError as err:
        raise OptionError(f"quantsr: cannot quantize network_g ({arch}): {err}") from None


@MODEL_REGISTRY.register()
class QuantSRModel(SRModel):
    """SRModel for QuantSR networks: quantized ``network_g``, depth variants trained jointly.

    Args:
        opt: BasicSR options with ``model_type: QuantSRModel`` and a ``quantsr:`` section.

    Raises:
        OptionError: bad ``quantsr``/``network_g``/``train`` settings or checkpoint, or
            testing without a QuantSR checkpoint.
    """

    def __init__(self, opt: dict) -> None:
        super(SRModel, self).__init__(opt)
        self.quantize_config = quantize_config(opt)
        net = build_quantized_network(opt["network_g"], self.quantize_config)
        self.depths: list[Depth] = variant_depths(net)
        self.net_g = self.model_to_device(net)
        self.print_network(self.net_g)
        self._log(summary(net))
        paths = opt["path"]
        load_path = paths.get("pretrain_network_g")
        if load_path is not None:
            strict = paths.get("strict_load_g", True)
            self.load_network(self.net_g, load_path, strict, paths.get("param_key_g", "params"))
        self.needs_quantizer_init = not all_initialized(net)
        if self.is_train:
            self.init_training_settings()
        elif self.needs_quantizer_init:
            raise OptionError(
                f"path.pretrain_network_g: testing needs a QuantSR checkpoint (trained with "
                f"model_type: {type(self).__name__}), got {load_path or 'none'}"
            )

    @master_only
    def _log(self, message: str) -> None:
        get_root_logger().info(message)

    # -- building ------------------------------------------------------------------------
    def model_to_device(self, net: nn.Module) -> nn.Module:
        """As BasicSR, but DDP with a static graph (each depth variant runs its own forward
        before one backward; see :func:`qsr_plugin._distributed.joint_training_ddp`), and
        DDP on the CPU too (BasicSR passes a CUDA device id)."""
        if not self.opt["dist"]:
            return super().model_to_device(net)
        device_ids = [torch.cuda.current_device()] if self.device.type == "cuda" else None
        find_unused = self.opt.get("find_unused_parameters", False)
        return joint_training_ddp(
            net.to(self.device), device_ids=device_ids, find_unused_parameters=find_unused
        )

    def load_network(
        self, net: nn.Module, load_path: str, strict: bool = True, param_key: str = "params"
    ) -> None:
        """Load a float or QuantSR BasicSR checkpoint (``weights_only``) into ``net``."""
        state, entry = read_state_dict(load_path, param_key)
        report = load_checkpoint(self.get_bare_model(net), state, f"{load_path} [{entry}]", strict)
        self._log(report.describe())

    def init_training_settings(self) -> None:
        train_opt = self.opt["train"]
        if train_opt.get("perceptual_opt"):
            raise OptionError(
                f"train.perceptual_opt: {type(self).__name__} trains with a pixel loss "
                "(train.pixel_opt) only; remove perceptual_opt"
            )
        if not train_opt.get("pixel_opt"):
            raise OptionError("train.pixel_opt is required (e.g. type: L1Loss)")
        self.variant_weights = variant_loss_weights(self.opt, self.depths)
        try:
            self.precision = MixedPrecision(amp_setting(self.opt), self.device, "quantsr.amp")
        except ValueError as err:
            raise OptionError(str(err)) from None
        self.net_g.train()
        self.ema_decay = train_opt.get("ema_decay", 0)
        if self.ema_decay > 0:
            self._log(f"Use Exponential Moving Average with decay: {self.ema_decay}")
            self.net_g_ema = copy.deepcopy(self.get_bare_model(self.net_g))
            load_path = self.opt["path"].get("pretrain_network_g")
            if load_path is not None:
                strict = self.opt["path"].get("strict_load_g", True)
                self.load_network(self.net_g_ema, load_path, strict, "params_ema")
            self.net_g_ema.eval()
        self.cri_pix = build_loss(train_opt["pixel_opt"]).to(self.device)
        self.cri_perceptual = None
        self.teacher = self._build_teacher()
        self.replan_iters = (
            replan_steps(train_opt.get("total_iter", 1))
            if importance_bodies(self.get_bare_model(self.net_g))
            else set()
        )
        self.importance_batches = None
        self.setup_optimizers()
        self.setup_schedulers()

    def _build_teacher(self) -> FloatTeacher | None:
        """The float teacher of ``quantsr.distill``: ``network_g`` with the float checkpoint."""
        setting = distill_setting(self.opt)
        if setting is None:
            return None
        config, path = setting
        teacher = build_network(self.opt["network_g"])
        state, entry = read_state_dict(str(path), self.opt["path"].get("param_key_g", "params"))
        try:
            teacher.load_state_dict(state, strict=True)
            distiller = FloatTeacher(
                teacher.to(self.device), self.get_bare_model(self.net_g), config
            )
        except (RuntimeError, TypeError, ValueError) as err:
            first = " ".join(line.strip() for line in str(err).splitlines()[:2])
            raise OptionError(
                f"quantsr.distill.teacher: {path} [{entry}]: {first}; the teacher must be a "
                "float checkpoint of this network_g"
            ) from None
        self._log(f"Distilling from the float teacher {path} [{entry}]: {config}")
        return distiller

    # -- training ------------------------------------------------------------------------
    def initialize_quantizers(self) -> None:
        """Initialise every quantizer from the current batch ``self.lq`` (all variants).

        The EMA network receives the same quantizer state; under DDP the statistics are
        reduced across ranks and the resulting state is checked to agree on every rank.
        """
        net = self.get_bare_model(self.net_g)
        calibrate(net, [self.lq])
        if hasattr(self, "net_g_ema"):
            copy_quantizer_state(net, self.net_g_ema)
        tensors = check_same_on_all_ranks(net)
        notes = [f"{tensors} quantizer tensors"]
        if self.opt["dist"]:
            notes.append(f"identical on all {self.opt['world_size']} ranks")
        if hasattr(self, "net_g_ema"):
            notes.append("copied to the EMA network")
        self._log(
            f"Quantizers initialised from the first training batch ({self.lq.shape[0]} "
            f"patches, depth variants {self.depths}): {', '.join(notes)}"
        )
        self.needs_quantizer_init = False

    def _replan(self, current_iter: int) -> None:
        """Re-plan importance-planned bodies; copy the plan to the EMA network; log it."""
        if self.importance_batches is None:
            self.importance_batches = [(self.lq, self.gt)]
        if current_iter - 1 not in self.replan_iters:
            return
        net = self.get_bare_model(self.net_g)
        plans = replan_by_importance(net, self.importance_batches)
        if hasattr(self, "net_g_ema"):
            for (_, body), (_, ema_body) in zip(
                depth_switchable_bodies(net), depth_switchable_bodies(self.net_g_ema), strict=True
            ):
                with torch.no_grad():
                    ema_body.block_importance.copy_(body.block_importance)
                ema_body.set_plan(body.plan())
        for path, plan in plans.items():
            scores = net.get_submodule(path).block_importance.tolist()
            self._log(
                f"Iteration {current_iter}: {path} re-planned by block importance "
                f"(loss increase when skipped: {', '.join(f'{s:.2e}' for s in scores)}): {plan}"
            )

    def optimize_parameters(self, current_iter: int) -> None:
        if self.needs_quantizer_init:
            self.initialize_quantizers()
        if self.replan_iters:
            self._replan(current_iter)
        self.optimizer_g.zero_grad()
        with self.precision.autocast():
            total, parts = joint_variant_losses(
                self.net_g, self.lq, self.gt, self.cri_pix, self.variant_weights, self.teacher
            )
            total, method_parts = with_method_loss(self.get_bare_model(self.net_g), total, {})
        self.precision.backward_and_step(total, self.optimizer_g)
        self.step_losses = OrderedDict(
            (tagged(f"l_{name}", depth), loss.detach())
            for depth, depth_parts in parts.items()
            for name, loss in depth_parts.items()
        )
        self.step_losses.update((name, part.detach()) for name, part in method_parts.items())
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def get_current_log(self) -> OrderedDict:
        """The last iteration's losses, averaged over ranks; read from the device only
        here (BasicSR asks every ``logger.print_freq`` iterations, on every rank)."""
        return self.reduce_loss_dict(self.step_losses)

    def feed_data(self, data: dict) -> None:
        """As SRModel, through pinned memory and without waiting when on a GPU."""
        for key in ("lq", "gt"):
            if key in data:
                tensor = data[key]
                if self.device.type == "cuda":
                    tensor = tensor.pin_memory()
                setattr(self, key, tensor.to(self.device, non_blocking=True))

    # -- evaluation ----------------------------------------------------------------------
    def _inference_net(self) -> nn.Module:
        if hasattr(self, "net_g_ema"):
            return self.net_g_ema
        return self.get_bare_model(self.net_g)

    def test(self) -> None:
        """Super-resolve ``self.lq`` into ``self.output`` at the active depth.

        Uses the EMA network when there is one; pads the input to a multiple of
        ``network_g.window_size`` when given (SwinIR) and crops the output back.
        """
        net = self._inference_net()
        multiple = self.opt["network_g"].get("window_size", 1)
        height, width = self.lq.shape[-2:]
        pad_h, pad_w = -height % multiple, -width % multiple
        lq = F.pad(self.lq, (0, pad_w, 0, pad_h), "reflect") if pad_h or pad_w else self.lq
        was_training = net.training
        net.eval()
        with torch.no_grad():
            output = net(lq)
        net.train(was_training)
        scale = output.shape[-1] // lq.shape[-1]
        self.output = output[..., : height * scale, : width * scale]

    def _initialize_variant_best(self, dataset_name: str, metrics: dict) -> None:
        if not hasattr(self, "best_metric_results"):
            self.best_metric_results = {}
        if dataset_name in self.best_metric_results:
            return
        records = self.best_metric_results[dataset_name] = {}
        for depth in self.depths:
            for name, metric in metrics.items():
                better = metric.get("better", "higher")
                worst = -math.inf if better == "higher" else math.inf
                records[tagged(name, depth)] = {"better": better, "val": worst, "iter": -1}

    def _image_path(self, image: str, dataset: str, current_iter: int | str, depth: Depth) -> Path:
        suffix = "" if depth is None else f"_depth{depth}"
        folder = Path(self.opt["path"]["visualization"])
        if self.opt["is_train"]:
            return folder / image / f"{image}_{current_iter}{suffix}.png"
        label = self.opt["val"].get("suffix") or self.opt["name"]
        return folder / dataset / f"{image}_{label}{suffix}.png"

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img: bool) -> None:
        """Evaluate every depth variant on ``dataloader``; log ``<metric>@<depth>``."""
        dataset_name = dataloader.dataset.opt["name"]
        metrics = self.opt["val"].get("metrics") or {}
        if metrics:
            self._initialize_variant_best(dataset_name, metrics)
        net = self._inference_net()
        sums = {tagged(name, d): 0.0 for d in self.depths for name in metrics}
        images = 0
        for data in dataloader:
            image = Path(data["lq_path"][0]).stem
            self.lq = data["lq"].to(self.device)
            gt = tensor2img([data["gt"]]) if "gt" in data else None
            for depth in each_variant(net):
                self.test()
                sr = tensor2img([self.output.detach().cpu()])
                if save_img:
                    imwrite(sr, str(self._image_path(image, dataset_name, current_iter, depth)))
                for name, metric in metrics.items():
                    sums[tagged(name, depth)] += calculate_metric({"img": sr, "img2": gt}, metric)
            images += 1
        del self.lq, self.output
        if metrics:
            self.metric_results = {key: total / images for key, total in sums.items()}
            for key, value in self.metric_results.items():
                self._update_best_metric_result(dataset_name, key, value, current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        if self.opt["is_train"]:
            self._record_quantizer_statistics(current_iter, tb_logger)

    def _record_quantizer_statistics(self, current_iter: int, tb_logger) -> None:
        """Quantizer steps and shifts at each validation (the seed's Figures 1-2).

        They go to tensorboard (scalars and histograms under ``quantizer/``) and to
        ``<experiment>/quantizer_stats.json``, which ``qsr stats`` plots. A resumed run
        continues the file it finds, dropping records from after the resume point (written
        by the interrupted run past its last saved state).
        """
        net = self.get_bare_model(self.net_g)
        try:
            quantizer_values(net)
        except ValueError:  # a method without learnable steps (dorefa): nothing to record
            return
        path = Path(self.opt["path"]["experiments_root"]) / "quantizer_stats.json"
        path.parent.mkdir(parents=True, exist_ok=True)  # train.py makes it; a bare model may not
        recorder = QuantizerStatsRecorder(net, title=self.opt["name"])
        if path.exists():
            recorder.stats = TrainingStats.load(path)
            recorder.stats.records = [r for r in recorder.stats.records if r["step"] < current_iter]
        recorder.record(current_iter)
        recorder.stats.save(path)
        if tb_logger is not None:
            recorder.log_to_tensorboard(tb_logger, current_iter)

    def resume_training(self, resume_state: dict) -> None:
        """As BasicSR, plus the GradScaler's state when both the run and the state have one."""
        super().resume_training(resume_state)
        if self.precision.scaler is not None and GRAD_SCALER_KEY in resume_state:
            self.precision.scaler.load_state_dict(resume_state[GRAD_SCALER_KEY])

    # -- saving --------------------------------------------------------------------------
    @master_only
    def save_network(self, net, net_label: str, current_iter: int, param_key="params") -> None:
        """BasicSR's checkpoint layout (``{param_key: state_dict}``), written atomically."""
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        checkpoint = {
            key: {k: v.cpu() for k, v in self.get_bare_model(n).state_dict().items()}
            for n, key in zip(nets, keys, strict=True)
        }
        name = "latest" if current_iter == -1 else current_iter
        save_atomically(checkpoint, Path(self.opt["path"]["models"]) / f"{net_label}_{name}.pth")

    @master_only
    def save_training_state(self, epoch: int, current_iter: int) -> None:
        """BasicSR's training state (optimizers, schedulers; the GradScaler's with
        ``quantsr.amp: fp16``), written atomically."""
        if current_iter == -1:
            return
        state = {
            "epoch": epoch,
            "iter": current_iter,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
        }
        if self.precision.scaler is not None:
            state[GRAD_SCALER_KEY] = self.precision.scaler.state_dict()
        save_atomically(state, Path(self.opt["path"]["training_states"]) / f"{current_iter}.state")
