"""Random-weight VAE files that ComfyUI's ``VAELoader`` loads from ``models/vae``, for tests.

Why it exists: workflow tests need a VAE to decode latents, and the project must not download model
weights. The modules are built with ComfyUI's own classes, so the keys and shapes are exactly what
``comfy.sd.VAE`` detects, and initialised from a seed (ComfyUI's ops skip weight init):

* ``taesd``: TAESD layout (``taesd_encoder.*``, ``taesd_decoder.*``), 4 or 16 latent channels, ~2.4M
  params, ~5 MiB fp16, fast to decode on CPU.
* ``ldm``: the full SD/SDXL (4 ch: ``AutoencoderKL`` with quant convs) or FLUX/SD3 (16 ch:
  ``AutoencodingEngine``) VAE, 84M params, ~160 MiB fp16, ~20 s to decode 64x64 on 2 CPU cores.
* ``wan21``: the Wan 2.1 VAE that Qwen-Image uses (``comfy.ldm.wan.vae.WanVAE``: causal 3-D convs,
  16 channels, 5-D latents [B, 16, T, H, W]) at a tiny base width (``WAN21_DIM``; ComfyUI reads the
  width from the file, the real one is 96), so it decodes small latents on CPU quickly.

Files are cached under a directory the caller chooses (``tests/_artifacts/models`` for the test
suite), named by every parameter plus the generator version and the ComfyUI version, and written
atomically, so parallel runs never see a half-written file.

CLI::

    python tests/comfyui/make_test_models.py --arch taesd --channels 16 OUT.safetensors
    python tests/comfyui/make_test_models.py --cache-dir tests/_artifacts/models   # the standard set
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

try:
    from . import harness
except ImportError:  # run as a script: python tests/comfyui/make_test_models.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import harness  # type: ignore[no-redef]

GENERATOR_VERSION = 1  # bump when the generated weights change
ARCHS = ("taesd", "ldm", "wan21")
WAN21_DIM = 8  # base width of the tiny Wan 2.1 VAE (widths 8, 16, 32, 32; the released VAE: 96)
DTYPES = ("fp16", "bf16", "fp32")

# File names the test server's models/vae folder exposes (what workflows put in VAELoader.vae_name).
TAESD_4CH = "lua_test_taesd_4ch.safetensors"
TAESD_16CH = "lua_test_taesd_16ch.safetensors"
LDM_16CH = "lua_test_vae_16ch.safetensors"
WAN21_16CH = "lua_test_wan21_vae.safetensors"  # Qwen-Image / Wan 2.1 (5-D latents)


def _comfy_version() -> str:
    harness.ensure_comfy_importable()
    import comfyui_version

    return comfyui_version.__version__


def build_vae_state_dict(arch: str = "taesd", channels: int = 4, seed: int = 0, dtype: str = "fp16") -> dict:
    """A deterministic random state dict for a VAE of ``arch`` with ``channels`` latent channels."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}")
    harness.ensure_comfy_importable()
    import torch

    if arch == "taesd":
        from comfy.taesd.taesd import TAESD

        module = TAESD(latent_channels=channels)
    elif arch == "wan21":
        if channels != 16:
            raise ValueError("the Wan 2.1 VAE has 16 latent channels")
        from comfy.ldm.wan.vae import WanVAE

        # comfy/sd.py's Wan 2.1 VAE parameters, but the base width (it reads that from decoder.head.0.gamma)
        module = WanVAE(dim=WAN21_DIM, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                        temperal_downsample=[False, True, True], dropout=0.0)
    else:
        from comfy.ldm.models.autoencoder import AutoencoderKL, AutoencodingEngine

        # comfy/sd.py's default SD/FLUX VAE parameters (it fixes the widths, it does not read them)
        ddconfig = {"double_z": True, "z_channels": channels, "resolution": 256, "in_channels": 3,
                    "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                    "attn_resolutions": [], "dropout": 0.0}
        if channels == 4:  # SD1.x/SDXL layout: with quant_conv / post_quant_conv
            module = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
        else:  # FLUX/SD3 layout: encoder.* / decoder.* only
            blocks = "comfy.ldm.modules.diffusionmodules.model."
            module = AutoencodingEngine(
                regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
                encoder_config={"target": blocks + "Encoder", "params": ddconfig},
                decoder_config={"target": blocks + "Decoder", "params": ddconfig})
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in module.state_dict().items():
        if key == "vae_shift":
            t = torch.zeros(value.shape)
        elif key == "vae_scale" or key.endswith("gamma") or (value.ndim <= 1 and not key.endswith("bias")):
            # scales, norm weights (the Wan VAE's RMS norms keep theirs as gamma [C, 1, 1, 1])
            t = torch.ones(value.shape)
        elif key.endswith("bias"):
            t = 0.05 * torch.randn(value.shape, generator=gen)
        else:
            t = torch.randn(value.shape, generator=gen) / math.sqrt(value[0].numel())
        out[key] = t.to(torch_dtype).contiguous()
    return out


def write_vae(path: str | os.PathLike, arch: str = "taesd", channels: int = 4, seed: int = 0,
              dtype: str = "fp16") -> Path:
    """Write a random VAE to ``path`` (atomically) and return the path."""
    import safetensors.torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = build_vae_state_dict(arch, channels, seed, dtype)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    os.close(fd)
    try:
        safetensors.torch.save_file(state, tmp, metadata={"lua_test": f"{arch} {channels}ch seed={seed}"})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def cache_name(arch: str, channels: int, seed: int = 0, dtype: str = "fp16") -> str:
    """The cache file name for these parameters (includes generator and ComfyUI versions)."""
    version = f"g{GENERATOR_VERSION}_comfy{_comfy_version()}"
    return f"random_{arch}_{channels}ch_seed{seed}_{dtype}_{version}.safetensors"


def cached_vae(cache_dir: str | os.PathLike, arch: str = "taesd", channels: int = 4, seed: int = 0,
               dtype: str = "fp16") -> Path:
    """The cached random VAE for these parameters under ``cache_dir``, generated on first use."""
    path = Path(cache_dir) / cache_name(arch, channels, seed, dtype)
    if not path.is_file():
        write_vae(path, arch, channels, seed, dtype)
    return path


def standard_test_vaes(cache_dir: str | os.PathLike, full: bool = True) -> dict[str, Path]:
    """The test server's ``models/vae`` set: ``{file name: cached path}``.

    TAESD 4 ch and 16 ch and the tiny Wan 2.1 VAE always; the full 16-channel ldm VAE (~160 MiB,
    generated once) with ``full``.
    """
    vaes = {TAESD_4CH: cached_vae(cache_dir, "taesd", 4), TAESD_16CH: cached_vae(cache_dir, "taesd", 16),
            WAN21_16CH: cached_vae(cache_dir, "wan21", 16)}
    if full:
        vaes[LDM_16CH] = cached_vae(cache_dir, "ldm", 16)
    return vaes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", help="file to write (omit with --cache-dir to build the standard set)")
    ap.add_argument("--arch", default="taesd", choices=ARCHS)
    ap.add_argument("--channels", type=int, default=4, choices=(4, 16))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="fp16", choices=DTYPES)
    ap.add_argument("--cache-dir", help="cache directory: print (and make) the standard test VAE set")
    a = ap.parse_args(argv)
    t0 = time.time()
    if a.out:
        path = write_vae(a.out, a.arch, a.channels, a.seed, a.dtype)
        print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB in {time.time() - t0:.1f}s")
    elif a.cache_dir:
        for name, path in standard_test_vaes(a.cache_dir).items():
            print(f"{name} -> {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        print(f"done in {time.time() - t0:.1f}s")
    else:
        ap.error("give OUT or --cache-dir")
    return 0


if __name__ == "__main__":
    sys.exit(main())
