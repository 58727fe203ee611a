"""Tiny stand-ins for smoke tests and CI: a seeded random VAE and synthetic images.

Nothing here is needed for real training. It lets the whole pipeline (prepare -> train ->
finetune -> evaluate -> export) run on a CPU in seconds without downloading a model or a data
set: the VAE is a diffusers ``AutoencoderKL`` with tiny widths and seeded random weights, the
images are shapes, gradients and text-like strokes drawn with PIL.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import torch


def tiny_autoencoder(latent_channels: int = 4, *, levels: int = 2, width: int = 32, seed: int = 0,
                     scaling_factor: float = 1.0, shift_factor: float | None = None, quant_conv: bool = True):
    """A diffusers ``AutoencoderKL`` with ``levels`` resolution levels (downscale 2**(levels-1)).

    ``scaling_factor`` 1.0 matches no real latent space, so nothing mistakes it for SD1.5's VAE.
    ``quant_conv=False`` gives the FLUX / SD3 layout (no quant convs).

    ``width`` must be a multiple of 32 (the GroupNorm groups the ldm layout implies) so that the
    model can also be written and re-read as an ldm single file.
    """
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=(width,) * levels,
                        layers_per_block=1, latent_channels=latent_channels, norm_num_groups=32,
                        sample_size=64, scaling_factor=scaling_factor, shift_factor=shift_factor,
                        use_quant_conv=quant_conv, use_post_quant_conv=quant_conv)
    return vae.eval()


def save_tiny_vae(folder: str | os.PathLike, latent_channels: int = 4, *, seed: int = 0, **kwargs) -> Path:
    """Write a tiny VAE as a diffusers folder (config.json + safetensors); returns the folder."""
    vae = tiny_autoencoder(latent_channels, seed=seed, **kwargs)
    vae.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)


_RESNET = re.compile(r"^(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$")
_SAMPLER = re.compile(r"^(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(.*)$")
_MID_RES = re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)$")
_MID_ATTN = re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)$")
_ATTN_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def diffusers_to_ldm(sd: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """Rename an ``AutoencoderKL`` state dict to the original ldm / ComfyUI layout (the inverse of
    diffusers' ``convert_ldm_vae_checkpoint``), attention projections as 1x1 convs."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if m := _RESNET.match(k):
            part, kind, i, j, rest = m.groups()
            i = int(i) if kind == "down" else levels - 1 - int(i)
            rest = rest.replace("conv_shortcut", "nin_shortcut")
            k = f"{part}.{kind}.{i}.block.{j}.{rest}"
        elif m := _SAMPLER.match(k):
            part, kind, i, sampler, rest = m.groups()
            i = int(i) if kind == "down" else levels - 1 - int(i)
            k = f"{part}.{kind}.{i}.{sampler[:-2]}.conv.{rest}"  # downsamplers -> downsample
        elif m := _MID_RES.match(k):
            part, j, rest = m.groups()
            k = f"{part}.mid.block_{int(j) + 1}.{rest}"
        elif m := _MID_ATTN.match(k):
            part, name, rest = m.groups()
            k = f"{part}.mid.attn_1.{_ATTN_NAMES[name]}.{rest}"
            if rest == "weight" and name != "group_norm":
                v = v[:, :, None, None]
        else:
            k = k.replace("conv_norm_out", "norm_out")
        out[k] = v.contiguous()
    return out


def save_tiny_vae_ldm(path: str | os.PathLike, latent_channels: int = 4, *, seed: int = 0, levels: int = 2,
                      prefix: str = "", **kwargs) -> Path:
    """Write the same tiny VAE as ``save_tiny_vae`` (same seed) as one ldm-layout safetensors file,
    as ComfyUI's ``models/vae`` files are (``prefix="first_stage_model."`` for the full-checkpoint form)."""
    from safetensors.torch import save_file
    vae = tiny_autoencoder(latent_channels, seed=seed, levels=levels, **kwargs)
    sd = diffusers_to_ldm(vae.state_dict(), levels)
    save_file({prefix + k: v for k, v in sd.items()}, str(path))
    return Path(path)


def synthetic_image(size: tuple[int, int], seed: int):
    """An RGB PIL image with a gradient background, filled shapes and thin text-like strokes."""
    from PIL import Image, ImageDraw
    rng = random.Random(seed)
    w, h = size
    img = Image.new("RGB", (w, h))
    px = img.load()
    c0 = [rng.randrange(256) for _ in range(3)]
    c1 = [rng.randrange(256) for _ in range(3)]
    for y in range(h):
        for x in range(w):
            t = (x + y) / (w + h - 2)
            px[x, y] = tuple(int(a + (b - a) * t) for a, b in zip(c0, c1))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 5)):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = x0 + rng.randint(4, max(5, w // 2)), y0 + rng.randint(4, max(5, h // 2))
        fill = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
    for _ in range(rng.randint(3, 8)):  # strokes: the thin, high-contrast edges of text
        x, y = rng.randrange(w), rng.randrange(h)
        pts = [(x, y)]
        for _ in range(rng.randint(2, 5)):
            x, y = x + rng.randint(-6, 6), y + rng.randint(-6, 6)
            pts.append((x, y))
        draw.line(pts, fill=tuple(rng.randrange(256) for _ in range(3)), width=1)
    return img


def write_synthetic_images(folder: str | os.PathLike, count: int, size: tuple[int, int] = (48, 40), *,
                           seed: int = 0, formats: tuple[str, ...] = ("png", "jpg")) -> list[Path]:
    """Write ``count`` synthetic images (alternating formats) into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        ext = formats[i % len(formats)]
        p = folder / f"img_{i:03d}.{ext}"
        synthetic_image(size, seed * 100_003 + i).save(p, **({"quality": 95} if ext == "jpg" else {}))
        paths.append(p)
    return paths
