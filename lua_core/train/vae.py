"""The frozen VAE of training: loaded from a local file, encoding to raw latents, decoding with gradients.

LUA works on *raw* VAE latents (what a ComfyUI LATENT holds; no scaling factor), so ``encode``
returns the encoder's mean as is and ``decode`` takes raw latents. The VAE is frozen (paper,
method: "frozen VAE decoder"): its parameters never get gradients, but ``decode`` stays
differentiable with respect to the latent, which is how stages II and III train through it.

Loading works offline, from:

* a diffusers folder (``config.json`` + weights, or a pipeline folder with ``vae/``);
* a single file in the original ldm / ComfyUI key layout (``encoder.down.0.block.0...``, e.g.
  ``sdxl_vae.safetensors`` or FLUX's ``ae.safetensors``, with or without a ``first_stage_model.``
  prefix). Its diffusers config is derived from the tensor shapes and the keys are converted by
  diffusers' own single-file helpers (``create_vae_diffusers_config_from_ldm``,
  ``convert_ldm_vae_checkpoint``), so nothing is fetched from the Hub (``from_single_file`` would
  download a reference config).
* a single file in diffusers key layout, when a ``config.json`` lies beside it.

diffusers is imported only here, when a VAE is loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..latent_formats import LATENT_SPACES

_LDM_PREFIXES = ("first_stage_model.", "vae.")


class FrozenVAE(nn.Module):
    """A diffusers ``AutoencoderKL`` with frozen weights, speaking raw latents."""

    def __init__(self, vae: nn.Module, *, source: str | os.PathLike | None = None,
                 latent_format: str | None = None):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.source = None if source is None else str(source)
        self.latent_channels = int(cfg.latent_channels)
        self.downscale = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = float(cfg.scaling_factor) if cfg.scaling_factor is not None else None
        self.shift_factor = float(cfg.shift_factor) if getattr(cfg, "shift_factor", None) is not None else None
        self.latent_format = latent_format

    def train(self, mode: bool = True) -> FrozenVAE:  # always eval: frozen, no dropout/stat updates
        return super().train(False)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, *, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1] -> raw latents (B, C, H/f, W/f): the posterior mean
        (deterministic), or a sample from it with ``sample=True``."""
        dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(pixels.to(dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return z.float()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Raw latents -> images in (about) [-1, 1]; differentiable w.r.t. ``latent``."""
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(latent.to(dtype)).sample

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the decoder's activations in backward (stages II/III at batch 32 need it on
        smaller GPUs); the result is the same."""
        if enabled:
            self.vae.enable_gradient_checkpointing()
        else:
            self.vae.disable_gradient_checkpointing()

    def info(self) -> dict[str, Any]:
        """What identifies this VAE, for data manifests and checkpoint metadata."""
        d: dict[str, Any] = {"latent_channels": self.latent_channels, "downscale": self.downscale,
                             "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor,
                             "latent_format": self.latent_format}
        if self.source:
            p = Path(self.source)
            d["source"] = str(p.resolve())
            d["name"] = p.name
            if p.is_file():
                d["file_size"] = p.stat().st_size
        return d


def guess_latent_format(channels: int, scaling_factor: float | None, shift_factor: float | None) -> str | None:
    """The ComfyUI latent format whose numbers match a diffusers VAE config, or None (none, or several).

    FLUX.2 (packed, batch-normalised) and Wan 2.1 (a 3-D VAE, per-channel statistics) LATENTs are not
    an AutoencoderKL's scaled latent, so a config's two numbers never say them."""
    if scaling_factor is None:
        return None
    found = [name for name, space in LATENT_SPACES.items()
             if name not in ("flux2", "wan21") and space.channels == channels
             and abs(space.scale - scaling_factor) < 1e-4 and abs(space.shift - (shift_factor or 0.0)) < 1e-4]
    return found[0] if len(found) == 1 else None


def load_vae(path: str | os.PathLike, *, latent_format: str | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> FrozenVAE:
    """Load a frozen ``AutoencoderKL`` from a local folder or single file (see the module docstring).

    ``latent_format`` ('flux', 'sd3', 'sdxl', 'sd15') names the latent space for the exported
    checkpoint's metadata; for diffusers folders it is guessed from the config when not given.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"VAE {p} does not exist")
    if latent_format is not None:
        from ..latent_formats import format_name
        latent_format = format_name(latent_format)
    if p.is_dir():
        model, has_config = _load_folder(p), True
    else:
        model, has_config = _load_single_file(p, latent_format)
    if latent_format is None and has_config:  # ldm single files do not record their scaling factor
        cfg = model.config
        latent_format = guess_latent_format(cfg.latent_channels, cfg.scaling_factor, getattr(cfg, "shift_factor", None))
    if latent_format is not None and LATENT_SPACES[latent_format].channels != model.config.latent_channels:
        space = LATENT_SPACES[latent_format]
        if latent_format == "flux2" and model.config.latent_channels * 4 == space.channels:
            raise ValueError(f"{space.label} LATENTs in ComfyUI are the VAE's {model.config.latent_channels}-channel "
                             f"latent normalised by its batch norm and packed 2x2 into {space.channels} channels; "
                             "prepare stores the VAE's own latents and does not pack them, so a LUA trained on them "
                             "would not take ComfyUI's FLUX.2 LATENTs. SesquiLSR's FLUX.2 file covers FLUX.2 today")
        raise ValueError(f"latent_format {latent_format!r} has {space.channels} channels but "
                         f"the VAE {p.name} makes {model.config.latent_channels}-channel latents")
    model = model.to(device) if dtype == torch.float32 else model.to(device=device, dtype=dtype)
    return FrozenVAE(model, source=p, latent_format=latent_format)


def _autoencoder_cls() -> Any:
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise ValueError("training needs diffusers to run the VAE: pip install -r requirements-train.txt "
                         f"({e})") from None
    return AutoencoderKL


def _load_folder(p: Path) -> nn.Module:
    cls = _autoencoder_cls()
    if (p / "config.json").is_file():
        return cls.from_pretrained(str(p), local_files_only=True, low_cpu_mem_usage=False)
    if (p / "vae" / "config.json").is_file():
        return cls.from_pretrained(str(p), subfolder="vae", local_files_only=True, low_cpu_mem_usage=False)
    raise ValueError(f"{p} is a folder without config.json (or vae/config.json): give a diffusers VAE folder "
                     "or a single VAE file")


def read_state_dict(p: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a weights-only pickle (``state_dict`` unwrapped)."""
    if p.suffix.lower() in (".safetensors", ".sft"):
        from safetensors.torch import load_file
        return load_file(str(p))
    obj = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{p} does not hold a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _strip_ldm_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _LDM_PREFIXES:
        if any(k.startswith(prefix + "encoder.") for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def ldm_ddconfig(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The ldm ``ddconfig`` of a VAE state dict in ldm layout, from tensor shapes alone."""
    ch = sd["encoder.conv_in.weight"].shape[0]
    levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down.")})
    ch_mult = [sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in levels]
    num_res = len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})
    return {"ch": ch, "ch_mult": ch_mult, "num_res_blocks": num_res,
            "in_channels": sd["encoder.conv_in.weight"].shape[1], "out_ch": sd["decoder.conv_out.weight"].shape[0],
            "z_channels": sd["decoder.conv_in.weight"].shape[1],
            "double_z": True, "resolution": 256, "attn_resolutions": [], "dropout": 0.0}


def _load_single_file(p: Path, latent_format: str | None) -> tuple[nn.Module, bool]:
    """(model, whether its config came from a real config file)."""
    cls = _autoencoder_cls()
    sd = _strip_ldm_prefix(read_state_dict(p))
    if "encoder.down.0.block.0.conv1.weight" in sd:
        from diffusers.loaders.single_file_utils import (
            convert_ldm_vae_checkpoint,
            create_vae_diffusers_config_from_ldm,
        )
        space = LATENT_SPACES.get(latent_format) if latent_format else None
        original = {"model": {"params": {"first_stage_config": {"params": {"ddconfig": ldm_ddconfig(sd)}}}}}
        config = create_vae_diffusers_config_from_ldm(original, sd, image_size=None,
                                                      scaling_factor=space.scale if space else None)
        config["use_quant_conv"] = "quant_conv.weight" in sd
        config["use_post_quant_conv"] = "post_quant_conv.weight" in sd
        config["mid_block_add_attention"] = "encoder.mid.attn_1.q.weight" in sd
        if space is not None and space.shift:
            config["shift_factor"] = space.shift
        model = cls.from_config(config)
        converted = convert_ldm_vae_checkpoint(sd, config)
        has_config = False
    elif "encoder.down_blocks.0.resnets.0.conv1.weight" in sd:
        side = p.parent / "config.json"
        if not side.is_file():
            raise ValueError(f"{p} is a VAE in diffusers key layout without a config.json beside it: give the "
                             "diffusers folder instead")
        model = cls.from_config(json.loads(side.read_text(encoding="utf-8")))
        converted, has_config = sd, True
    else:
        raise ValueError(f"{p} is not a VAE this loader knows (first keys: {', '.join(list(sd)[:4])}); expected an "
                         "AutoencoderKL in ldm/ComfyUI or diffusers layout")
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ValueError(f"{p}: the VAE weights do not match the derived config ({len(missing)} missing, e.g. "
                         f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})")
    return model, has_config
