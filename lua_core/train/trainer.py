"""The training loop of one stage: Adam + MultiStepLR + EMA + grad-norm clipping, mixed precision,
exact resume.

Exact resume: a checkpoint holds the model, the EMA, the optimizer, the scheduler, the grad
scaler, the RNG states and the step. The data order and the random-head choice are functions of
(seed, step) (``dataset.BatchOrder``, ``Trainer.heads_for``), so a run stopped at step k and resumed
computes the same steps k+1... as one that never stopped: on CPU the weights are bit-identical.

Several ranks (torchrun, ``distributed``): the model is wrapped in DistributedDataParallel, each
rank trains on its slice of the global batch (``StageConfig.batch_size``), so the averaged
gradient is the global batch's and the steps, schedule, EMA, clipping (after the all-reduce) and
head draws are the one-process run's. Only rank 0 writes checkpoints, logs and files.

Run folder of a stage::

    RUN/stageN/checkpoints/step_00001000.pt   training state (torch.save; loads with weights_only)
    RUN/stageN/log.jsonl, RUN/stageN/tb/      logs (TensorBoard when installed)
    RUN/stageN/final.safetensors              the EMA weights when the stage is done (lua_core.save_model)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..archs.lua import LUA
from ..loading import save_model
from . import distributed
from .curriculum import StageConfig
from .dataset import LatentPairs, batches
from .ema import EMA
from .model import head_pairs
from .objective import step_loss
from .runlog import RunLog

log = logging.getLogger(__name__)

STATE_FORMAT = "lua-train-state"
FINAL = "final.safetensors"


@dataclass
class TrainOptions:
    """How to run (not what to optimise: that is the ``StageConfig``)."""

    device: str = "cpu"
    #: fp32, bf16 (autocast) or fp16 (autocast + GradScaler, CUDA only)
    precision: str = "fp32"
    seed: int = 0
    num_workers: int = 0
    log_every: int = 50
    save_every: int = 1000
    keep_checkpoints: int = 2
    #: recompute each Swin block in backward (less activation memory, more compute)
    gradient_checkpointing: bool = False
    #: the same for the frozen VAE decoder of stages II/III
    decoder_checkpointing: bool = False
    tensorboard: bool = True
    console: bool = True

    def __post_init__(self) -> None:
        for name in ("log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1 step, got {getattr(self, name)}")
        if self.keep_checkpoints < 0:
            raise ValueError(f"keep must be 0 or more, got {self.keep_checkpoints}")


def _seed(*parts: Any) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


class StepLoss(torch.nn.Module):
    """``objective.step_loss`` as a module: DDP wraps this, so a step (every head) is one forward
    and the graph DDP searches for unused parameters is the whole step's loss."""

    def __init__(self, model: LUA, stage: StageConfig):
        super().__init__()
        self.model, self.stage = model, stage

    def forward(self, batch: dict[str, torch.Tensor], heads: list[tuple[str, int]],
                vae: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return step_loss(self.model, heads, batch, self.stage, vae)


class Trainer:
    """Optimises a LUA module for one stage on prepared data; see the module docstring."""

    def __init__(self, model: LUA, stage: StageConfig, data: LatentPairs, run_dir: str | os.PathLike, *,
                 vae: Any = None, options: TrainOptions | None = None, metadata: dict[str, str] | None = None):
        self.options = opt = options or TrainOptions()
        self.stage, self.data, self.vae = stage, data, vae
        self.run_dir = Path(run_dir)
        self.metadata = {**vae_metadata(data.manifest), **(metadata or {})}
        self.device = torch.device(opt.device)
        self._check(model)
        self.model = model.to(self.device).train()
        self.model.gradient_checkpointing = opt.gradient_checkpointing
        if vae is not None:
            self.vae = vae.to(self.device)
            if opt.decoder_checkpointing:
                self.vae.set_gradient_checkpointing(True)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameter")
        self.optimizer = torch.optim.Adam(self.params, lr=stage.lr, betas=stage.betas, weight_decay=stage.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, stage.milestone_steps, stage.gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=opt.precision == "fp16")
        self.ema = EMA(self.model, stage.ema_decay)
        self.heads = head_pairs(self.model)
        self.step = 0
        self.data_seed = _seed(opt.seed, "data", stage.stage)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        one_head_steps = len(self.heads) > 1 and stage.random_head_start < stage.steps
        self.loss_fn = distributed.wrap(StepLoss(self.model, stage), self.device, find_unused=one_head_steps)

    # -- checks -------------------------------------------------------------------------------
    def _check(self, model: LUA) -> None:
        opt, stage, data = self.options, self.stage, self.data
        if opt.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, not {opt.precision!r}")
        if opt.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 training needs CUDA (GradScaler); use bf16 or fp32 on this device")
        world = distributed.world_size()
        if stage.batch_size % world:
            raise ValueError(f"stage {stage.stage}: the batch size ({stage.batch_size}) is the global batch and must "
                             f"be a multiple of the number of ranks ({world})")
        if model.config.in_chans != data.latent_channels:
            raise ValueError(f"the model takes {model.config.in_chans}-channel latents but {data.root} holds "
                             f"{data.latent_channels}-channel ones (use finetune to adapt a model to another VAE)")
        missing = [h.scale for h in model.config.heads if h.scale not in data.scales]
        if missing:
            raise ValueError(f"the data has no low-res latents for scale(s) {missing} (prepared: {list(data.scales)})")
        if stage.needs_decoder:
            if self.vae is None:
                raise ValueError(f"stage {stage.stage} decodes through the frozen VAE: give the VAE the data was "
                                 "made with")
            if self.vae.latent_channels != data.latent_channels:
                raise ValueError(f"the VAE makes {self.vae.latent_channels}-channel latents, the data holds "
                                 f"{data.latent_channels}")
            data.fields(pixels=True)  # raises when the data has no pixels

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"format": STATE_FORMAT, "version": 1, "step": self.step, "stage": self.stage.to_dict(),
                "config": self.model.config.to_dict(), "model": self.model.state_dict(),
                "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng,
                "trainable": [n for n, p in self.model.named_parameters() if p.requires_grad],
                "data": {"fingerprint": self.data.fingerprint(), "seed": self.data_seed},
                "options": {"seed": self.options.seed, "precision": self.options.precision},
                "metadata": self.metadata}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError("not a LUA training checkpoint")
        if state["stage"] != self.stage.to_dict():
            now = self.stage.to_dict()
            diff = {k: (state["stage"].get(k), v) for k, v in now.items() if state["stage"].get(k) != v}
            raise ValueError(f"the checkpoint was made with other stage settings (checkpoint, now): {diff}")
        if state["data"]["fingerprint"] != self.data.fingerprint():
            raise ValueError("the checkpoint was trained on other data (the manifest's shards differ)")
        seed = state.get("options", {}).get("seed")
        if seed is not None and seed != self.options.seed:  # the data order and head draws follow the seed
            raise ValueError(f"the checkpoint was trained with --seed {seed}, not {self.options.seed}: resume with "
                             "the same seed (or start a new run folder)")
        trainable = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if state["trainable"] != trainable:
            raise ValueError("the checkpoint trained another set of parameters (freeze options differ)")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when the checkpoint was not trained in fp16
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step = int(state["step"])
        self.data_seed = int(state["data"]["seed"])
        self.metadata = {**state.get("metadata", {}), **self.metadata}

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the training state (atomically); default ``checkpoints/step_XXXXXXXX.pt``. Keeps the
        newest ``keep_checkpoints`` numbered files."""
        ckdir = self.run_dir / "checkpoints"
        p = Path(path) if path is not None else ckdir / f"step_{self.step:08d}.pt"
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, p)
        if path is None and self.options.keep_checkpoints > 0:
            for old in sorted(ckdir.glob("step_*.pt"))[:-self.options.keep_checkpoints]:
                old.unlink()
        return p

    def resume(self, path: str | os.PathLike) -> None:
        # on the CPU: RNG states must stay CPU tensors; the optimizer moves its state to the params' device
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        log.info("resumed %s at step %d", path, self.step)

    # -- the step -----------------------------------------------------------------------------
    def heads_for(self, step: int) -> list[tuple[str, int]]:
        """All heads, or in the stage's final phase one head drawn from (seed, step)."""
        if step < self.stage.random_head_start or len(self.heads) == 1:
            return self.heads
        return [self.heads[random.Random(_seed(self.options.seed, "head", step)).randrange(len(self.heads))]]

    def _autocast(self) -> contextlib.AbstractContextManager:
        p = self.options.precision
        if p == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """One optimisation step on a batch (already on the device; this rank's part of the global
        batch): (loss, terms, grad norm). Under DDP the backward all-reduces (averages) the
        gradients, so the clipping and the step below see the global batch's gradient."""
        heads = self.heads_for(self.step)
        with self._autocast():
            loss, terms = self.loss_fn(batch, heads, self.vae)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.stage.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        return loss.detach(), terms, gnorm.detach()

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """The data from the current step on (the same order a run without interruption sees)."""
        return batches(self.data, self.stage.batch_size, seed=self.data_seed, start=self.step,
                       pixels=self.stage.needs_pixels, num_workers=self.options.num_workers,
                       pin_memory=self.device.type == "cuda", rank=self.rank, world=self.world)

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, until: int | None = None) -> dict[str, Any]:
        """Train to the end of the stage (or to step ``until``, then save and return, as an
        interrupted run would). At the end: a last checkpoint and ``final.safetensors`` (EMA).
        Every rank runs this; rank 0 alone writes, and all return once its files are written."""
        from tqdm import tqdm
        end = self.stage.steps if until is None else min(until, self.stage.steps)
        opt = self.options
        main = self.rank == 0
        runlog = RunLog(self.run_dir, tensorboard=opt.tensorboard,
                        console=tqdm.write if opt.console else None) if main else None
        bar = tqdm(total=self.stage.steps, initial=self.step, desc=f"stage {self.stage.stage}", unit="step",
                   disable=not opt.console or not main, dynamic_ncols=True)
        sums: dict[str, torch.Tensor] = {}
        n, t0, last = 0, time.perf_counter(), {}
        data = self.batches() if self.step < end else iter(())
        try:
            while self.step < end:
                loss, terms, gnorm = self.train_step(self.to_device(next(data)))
                for k, v in {"loss": loss, "grad_norm": gnorm, **{f"loss/{t}": x for t, x in terms.items()}}.items():
                    sums[k] = sums.get(k, 0.0) + v.float()
                n += 1
                bar.update(1)
                if self.step % opt.log_every == 0 or self.step == end:
                    last = self._log(runlog, sums, n, time.perf_counter() - t0)
                    sums, n, t0 = {}, 0, time.perf_counter()
                if self.step % opt.save_every == 0 and self.step < end and main:
                    self.save()
        finally:
            bar.close()
            if runlog is not None:
                runlog.close()
            del data  # stop loader workers
        if self.step > 0 and main:
            self.save()
        if self.step >= self.stage.steps and main:
            self.export(self.run_dir / FINAL)
        distributed.barrier()  # the other ranks go on only once rank 0's files are there
        return {"step": self.step, **last}

    def _log(self, runlog: RunLog | None, sums: dict[str, torch.Tensor], n: int, seconds: float) -> dict[str, float]:
        # every rank: the means over the ranks (one all-reduce), so all of them stop on a NaN together
        values = {k: float(v) / n for k, v in distributed.mean_over_ranks(sums).items()}
        bad = [k for k, v in values.items() if k.startswith("loss") and not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"stage {self.stage.stage}: {', '.join(bad)} became NaN/inf by step {self.step}; "
                                     "lower the learning rate, or train in fp32")
        values["lr"] = self.scheduler.get_last_lr()[0]
        values["it_per_s"] = n / max(seconds, 1e-9)
        values["samples_per_s"] = values["it_per_s"] * self.stage.batch_size  # the global batch
        if runlog is not None:
            runlog.write(self.step, values, prefix=f"[stage {self.stage.stage}] ")
        return values

    # -- export -------------------------------------------------------------------------------
    def export(self, path: str | os.PathLike, *, use_ema: bool = True) -> Path:
        """Save the (EMA) weights as a normal ``latent_upscale_models`` safetensors file."""
        model = self.ema.module if use_ema else self.model
        return export_model(model, path, stage=self.stage, step=self.step,
                            metadata={**self.metadata, "weights": "ema" if use_ema else "raw"})


def vae_metadata(manifest: dict[str, Any] | None) -> dict[str, str]:
    """``trained_for_vae`` and (when known) ``latent_format`` from a prepared folder's manifest."""
    vae = (manifest or {}).get("vae", {})
    meta = {}
    if vae.get("name"):
        meta["trained_for_vae"] = str(vae["name"])
    if vae.get("latent_format"):
        meta["latent_format"] = str(vae["latent_format"])
    return meta


def export_model(model: LUA, path: str | os.PathLike, *, stage: StageConfig | None = None, step: int = 0,
                 metadata: dict[str, str] | None = None) -> Path:
    """``lua_core.save_model`` with what the checkpoint was trained for in the metadata:
    ``trained_for_vae`` and ``latent_format`` (when known, from ``metadata``), ``latent_channels``,
    stage and step."""
    meta: dict[str, str] = {"latent_channels": str(model.config.in_chans), "trained_with": "lua_core.train",
                            "paper": "arXiv:2511.10629", "training_step": str(step)}
    if stage is not None:
        meta["training_stage"] = str(stage.stage)
        meta["training_config"] = json.dumps(stage.to_dict(), sort_keys=True)
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    cpu = LUA(model.config)
    cpu.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    return save_model(cpu, path, metadata=meta)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest ``checkpoints/step_*.pt`` of a stage folder, or None."""
    found = sorted((Path(run_dir) / "checkpoints").glob("step_*.pt"))
    return found[-1] if found else None
