"""Running stages in order, resuming whatever a previous run left (the ``train`` command's engine).

``RUN/stage1`` ... ``RUN/stage3`` each hold one stage (see ``trainer``). A stage whose
``final.safetensors`` exists is done and skipped; one with checkpoints is resumed exactly; the
next stage starts from the previous stage's EMA weights. The last stage's file is copied to
``RUN/lua.safetensors`` (or ``out``).

Under torchrun every rank runs this; what the run folder holds (a stage done, the checkpoint to
resume) is read by rank 0 and given to all (``distributed.from_main``), so every rank resumes from
the same checkpoint; rank 0 alone writes. The run folder must be one every rank can read (a
shared file system on several machines), as the data folder must.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..archs.lua import LUA, LUAConfig
from .curriculum import StageConfig, paper_stage
from .dataset import LatentPairs
from .distributed import from_main, is_main
from .model import load_for_training, model_config, new_model
from .trainer import FINAL, Trainer, TrainOptions, latest_checkpoint

log = logging.getLogger(__name__)


def stage_dir(run_dir: str | os.PathLike, stage: StageConfig) -> Path:
    return Path(run_dir) / f"stage{stage.stage}"


def stage_state(sdir: Path) -> tuple[bool, Path | None]:
    """(is the stage done, its newest checkpoint) as rank 0 sees them, on every rank."""
    return from_main(((sdir / FINAL).is_file(), latest_checkpoint(sdir)))


def vae_for(data: LatentPairs, vae: Any, stage: StageConfig, device: str) -> Any:
    """The VAE a stage needs: the one given, else the one the data was prepared with (by path)."""
    if vae is not None or not stage.needs_decoder:
        return vae
    src = data.manifest.get("vae", {}).get("source")
    if not src or not Path(src).exists():
        raise ValueError(f"stage {stage.stage} decodes through the VAE the data was made with ({src or 'unknown'}), "
                         "which is not there: pass --vae PATH")
    from .vae import load_vae
    return load_vae(src, latent_format=data.manifest["vae"].get("latent_format"), device=device)


def run_stage(stage: StageConfig, data: LatentPairs, sdir: str | os.PathLike, model: LUA | None, *, vae: Any = None,
              options: TrainOptions | None = None, metadata: dict[str, str] | None = None,
              until: int | None = None, expect_config: LUAConfig | None = None) -> Path | None:
    """Train (or resume) one stage in ``sdir``; returns its final file, or None when stopped at ``until``.

    ``model`` is the starting point (ignored when ``sdir`` has a checkpoint to resume from). A
    checkpoint made for another model config than ``expect_config`` (what the command asks for) is
    refused instead of silently resumed.
    """
    options = options or TrainOptions()
    sdir = Path(sdir)
    final = sdir / FINAL
    done, ckpt = stage_state(sdir)
    if done:
        log.info("stage %d already done: %s", stage.stage, final)
        return final
    state = torch.load(ckpt, map_location="cpu", weights_only=True) if ckpt else None
    if state is not None:
        saved = LUAConfig.from_dict(state["config"])
        if expect_config is not None and saved != expect_config:
            now, was = expect_config.to_dict(), state["config"]
            diff = {k: (was.get(k), v) for k, v in now.items() if was.get(k) != v}
            raise ValueError(f"{ckpt} was made for another model config (checkpoint, now): {diff}. Resume with "
                             "the same --model-config, or start a new run folder")
        model = LUA(saved)
        trainable = set(state["trainable"])
        for n, p in model.named_parameters():
            p.requires_grad_(n in trainable)
    elif model is None:
        raise ValueError("no model to start from and no checkpoint to resume")
    vae = vae_for(data, vae, stage, options.device)
    trainer = Trainer(model, stage, data, sdir, vae=vae, options=options, metadata=metadata)
    if state is not None:
        trainer.load_state_dict(state)
        log.info("resuming stage %d at step %d from %s", stage.stage, trainer.step, ckpt)
    trainer.fit(until)  # returns on every rank once rank 0 has written the stage's files
    return final if trainer.step >= stage.steps else None


def train_curriculum(data_dir: str | os.PathLike, run_dir: str | os.PathLike, *, stages: Sequence[int] = (1, 2, 3),
                     stage_overrides: dict[int, dict[str, Any]] | None = None, preset: str | dict = "released",
                     init: str | os.PathLike | None = None, vae: Any = None, options: TrainOptions | None = None,
                     out: str | os.PathLike | None = None, metadata: dict[str, str] | None = None,
                     until: int | None = None) -> Path | None:
    """Run ``stages`` in order on prepared data; returns the final checkpoint (None if stopped early).

    The first stage starts from ``init`` (a LUA checkpoint), else from the previous stage's result
    in ``run_dir`` when there is one (so stages can run on different data: ``stages=(1,)`` on a large
    latent-only set, then ``stages=(2, 3)`` on a set with pixels), else from a fresh ``preset``
    model. ``until`` stops every stage at that step (for time-boxed jobs: run again to continue).
    """
    options = options or TrainOptions()
    data = LatentPairs(data_dir)
    run_dir = Path(run_dir)
    prev: Path | None = Path(init) if init else None
    before = run_dir / f"stage{stages[0] - 1}" / FINAL if stages else None
    if prev is None and before is not None and from_main(before.is_file()):
        prev = before
    final: Path | None = None
    for n in stages:
        stage = paper_stage(n, **(stage_overrides or {}).get(n, {}))
        sdir = stage_dir(run_dir, stage)
        model = None
        # a fresh first stage's config, to check a checkpoint to resume against
        wanted = model_config(preset, data.latent_channels) if prev is None else None
        done, ckpt = stage_state(sdir)
        if not done and ckpt is None:
            if prev is not None:
                model = load_for_training(prev)
                if model.config.in_chans != data.latent_channels:
                    raise ValueError(f"{prev} takes {model.config.in_chans}-channel latents, the data "
                                     f"{data.latent_channels}: use the finetune command for another VAE")
            else:
                model = new_model(wanted, options.seed)
        meta = {**(metadata or {}), "training_stages": ",".join(map(str, stages))}
        final = run_stage(stage, data, sdir, model, vae=vae, options=options, metadata=meta, until=until,
                          expect_config=wanted)
        if final is None:
            return None
        prev = final
    if final is None:
        return None
    return publish(final, Path(out) if out else run_dir / "lua.safetensors")


def publish(final: Path, dst: Path) -> Path:
    """Copy the last stage's file to ``dst`` (rank 0 only); returns ``dst`` on every rank."""
    if is_main():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(final, dst)
    return dst
