"""One training step's loss: the stage's weighted terms for each trained head, summed over heads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .curriculum import StageConfig
from .data import make_lr, to_unit
from .losses import (
    downsample_consistency_l1,
    eagle_loss,
    fft_magnitude_l1,
    high_frequency_l1,
    l1_loss,
)

TERMS = ("latent_l1", "latent_fft", "consistency", "high_freq", "pixel_l1", "pixel_fft", "eagle")


def head_terms(model: torch.nn.Module, head: str, scale: int, batch: dict[str, torch.Tensor], stage: StageConfig,
               vae: Any = None, hr_image: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Unweighted loss terms of one head on one batch (only the stage's active terms).

    ``batch`` holds ``hr`` and ``lr_x{scale}`` latents and, for stages that decode, ``hr_image``
    (the HR crops in [-1, 1]) is given. The prediction is decoded once and shared by the pixel terms.
    """
    w = stage.weights
    hr = batch["hr"]
    pred = model(batch[f"lr_x{scale}"], head)
    out: dict[str, torch.Tensor] = {}
    if w.latent_l1:
        out["latent_l1"] = l1_loss(pred, hr)
    if w.latent_fft:
        out["latent_fft"] = fft_magnitude_l1(pred, hr)
    if w.high_freq and stage.hf_domain == "latent":
        out["high_freq"] = high_frequency_l1(pred, hr)
    if stage.needs_decoder:
        if vae is None or hr_image is None:
            raise ValueError(f"stage {stage.stage} decodes its predictions: it needs the VAE and the HR pixels")
        img = vae.decode(pred).float()
        if w.consistency:
            out["consistency"] = downsample_consistency_l1(img, make_lr(hr_image, scale))
        if w.high_freq and stage.hf_domain == "pixel":
            out["high_freq"] = high_frequency_l1(img, hr_image)
        if w.pixel_l1:
            out["pixel_l1"] = l1_loss(img, hr_image)
        if w.pixel_fft:
            out["pixel_fft"] = fft_magnitude_l1(img, hr_image)
        if w.eagle:
            out["eagle"] = eagle_loss(img, hr_image)
    return out


def step_loss(model: torch.nn.Module, heads: Sequence[tuple[str, int]], batch: dict[str, torch.Tensor],
              stage: StageConfig, vae: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total weighted loss summed over ``heads``, {term: unweighted value averaged over heads}).

    The logged values are detached tensors (no device sync here; the trainer syncs when it logs).
    """
    weights = stage.weights.active()
    hr_image = to_unit(batch["hr_pixels"]) if stage.needs_decoder else None
    total = torch.zeros((), device=batch["hr"].device)
    logged: dict[str, torch.Tensor] = {}
    for name, scale in heads:
        terms = head_terms(model, name, scale, batch, stage, vae, hr_image)
        for k, v in terms.items():
            total = total + weights[k] * v
            logged[k] = logged.get(k, 0.0) + v.detach() / len(heads)
    return total, logged
