"""Evaluation: PSNR / LPIPS of decoded upscales against the high-resolution crops.

For each scale, three rows: the model (``lua_core.upscale_latent`` then one decode), bicubic
upscaling of the same low-res latent (the baseline the paper compares against), and the VAE's own
reconstruction of the high-res latent (the ceiling any latent upscaler can reach through this
decoder). Decoded images are clamped to [-1, 1] as a saved image would be. LPIPS (AlexNet, the
paper's ablation metric) is computed when the ``lpips`` package is installed and its AlexNet
weights can be had; otherwise the column says why it is missing.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..inference import upscale_latent
from .data import to_unit
from .dataset import LatentPairs
from .losses import psnr

log = logging.getLogger(__name__)

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (pred, target) in [-1, 1] -> (B,)


@dataclass
class EvalRow:
    method: str
    scale: int
    psnr: float
    lpips: float | None
    count: int


def make_lpips(net: str = "alex", device: str | torch.device = "cpu") -> tuple[Metric | None, str]:
    """(LPIPS metric or None, a note saying why not). Never raises for a missing package or weights."""
    try:
        import lpips
    except ImportError:
        return None, "lpips is not installed (pip install lpips)"
    try:
        with warnings.catch_warnings():  # torchvision's deprecation notes about lpips' arguments
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net=net, verbose=False).to(device).eval()
    except OSError as e:  # urllib's URLError is an OSError: torchvision could not download the backbone
        return None, (f"LPIPS needs torchvision's pretrained {net} weights, which could not be fetched ({e}); "
                      "run once with internet access, or put the file in $TORCH_HOME/hub/checkpoints/")

    def metric(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(pred.float(), target.float()).flatten()
    return metric, ""


def evaluate(model: Any, data_dir: str | os.PathLike, vae: Any, *, scales: Sequence[int] | None = None,
             limit: int | None = None, batch_size: int = 8, device: str | torch.device = "cpu",
             lpips_metric: Metric | None | str = "auto", progress: bool = True) -> tuple[list[EvalRow], str]:
    """Metrics of ``model`` vs bicubic vs VAE reconstruction on a prepared folder; returns (rows, note).

    ``lpips_metric``: "auto" (``make_lpips``), None (skip) or a callable.
    """
    from tqdm import tqdm
    data = LatentPairs(data_dir)
    if vae.latent_channels != data.latent_channels:
        raise ValueError(f"the VAE makes {vae.latent_channels}-channel latents, {data_dir} holds "
                         f"{data.latent_channels}")
    scales = list(scales or [s for s in data.scales if float(s) in _native(model)])
    if not scales:
        raise ValueError(f"the model has no head for the scales in {data_dir} ({list(data.scales)})")
    note = ""
    if lpips_metric == "auto":
        lpips_metric, note = make_lpips(device=device)
    n = min(len(data), limit) if limit else len(data)
    fields = ("hr", *(f"lr_x{s}" for s in scales), "hr_pixels")
    data.fields(pixels=True)
    psnr_sum: dict[tuple[str, int], float] = {}
    lp_sum: dict[tuple[str, int], float] = {}
    vae = vae.to(device)

    def add(key: tuple[str, int], img: torch.Tensor, ref: torch.Tensor) -> None:
        img = img.float().clamp(-1, 1)
        psnr_sum[key] = psnr_sum.get(key, 0.0) + float(psnr(img, ref).sum())
        if lpips_metric is not None:
            lp_sum[key] = lp_sum.get(key, 0.0) + float(lpips_metric(img, ref).sum())

    with torch.no_grad():
        for i in tqdm(range(0, n, batch_size), desc="evaluate", unit="batch", disable=not progress):
            b = {k: v.to(device) for k, v in data.read(list(range(i, min(i + batch_size, n))), fields).items()}
            ref = to_unit(b["hr_pixels"])
            recon = vae.decode(b["hr"])
            for s in scales:
                lr = b[f"lr_x{s}"]
                add(("model", s), vae.decode(upscale_latent(model, lr, s)), ref)
                add(("bicubic latent", s), vae.decode(F.interpolate(lr, scale_factor=s, mode="bicubic",
                                                                    align_corners=False)), ref)
                add(("VAE reconstruction", s), recon, ref)
    rows = [EvalRow(m, s, psnr_sum[(m, s)] / n, lp_sum[(m, s)] / n if lp_sum else None, n)
            for s in scales for m in ("model", "bicubic latent", "VAE reconstruction")]
    return rows, note


def _native(model: Any) -> set[float]:
    """The exact scales a model runs natively (none for a range family, which evaluation does not cover)."""
    scales = getattr(model, "native_scales", None)
    return set(scales.exact) if scales is not None else set()


def format_table(rows: Sequence[EvalRow], note: str = "") -> str:
    """A plain-text table: scale, method, PSNR (dB, higher is better), LPIPS (lower is better)."""
    lines = [f"{'scale':>5}  {'method':<20} {'PSNR dB':>8}  {'LPIPS':>7}  {'n':>5}"]
    for r in rows:
        lp = f"{r.lpips:.4f}" if r.lpips is not None else "-"
        lines.append(f"{'x' + str(r.scale):>5}  {r.method:<20} {r.psnr:8.2f}  {lp:>7}  {r.count:5d}")
    if note:
        lines.append(f"LPIPS not computed: {note}")
    return "\n".join(lines)
