"""Cross-VAE fine-tuning: a trained LUA for another VAE's latents.

Paper ("Cross-VAE generalisation", appendix): the trunk transfers; a new input conv is trained and
the model fine-tuned on 500k latent pairs of the new VAE. Here the channel-dependent convs
(``conv_first`` and every ``heads.*.conv_last``) are replaced for the new channel count and
freshly initialised, everything else is kept; ``freeze_trunk`` trains only those convs and the
heads. The loss is stage I's (latent pairs only) unless another stage is given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .curriculum import StageConfig, finetune_stage
from .dataset import LatentPairs
from .model import adapt_channels, freeze_trunk, load_for_training
from .pipeline import publish, run_stage, stage_state
from .trainer import TrainOptions


def prepare_finetune_model(base: str | os.PathLike, channels: int, *, freeze: bool = False, seed: int = 0):
    """The starting model: ``base`` with new channel convs for ``channels`` (and the trunk frozen)."""
    model = adapt_channels(load_for_training(base), channels, seed=seed)
    if freeze:
        freeze_trunk(model)
    return model


def finetune(base: str | os.PathLike, data_dir: str | os.PathLike, run_dir: str | os.PathLike, *,
             stage: StageConfig | None = None, freeze: bool = False, vae: Any = None,
             options: TrainOptions | None = None, out: str | os.PathLike | None = None,
             until: int | None = None) -> Path | None:
    """Fine-tune ``base`` on the prepared latents of a new VAE; returns the exported checkpoint
    (``RUN/lua.safetensors`` or ``out``), or None when stopped at ``until`` (run again to resume)."""
    options = options or TrainOptions()
    stage = stage or finetune_stage()
    data = LatentPairs(data_dir)
    sdir = Path(run_dir) / "finetune"
    model = None
    done, ckpt = stage_state(sdir)
    if not done and ckpt is None:
        model = prepare_finetune_model(base, data.latent_channels, freeze=freeze, seed=options.seed)
    meta = {"finetuned_from": Path(base).name, "trunk_frozen": str(bool(freeze)).lower()}
    final = run_stage(stage, data, sdir, model, vae=vae, options=options, metadata=meta, until=until)
    if final is None:
        return None
    return publish(final, Path(out) if out else Path(run_dir) / "lua.safetensors")
