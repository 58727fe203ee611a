"""``prepare IMAGES/ OUT/ --vae PATH``: images -> random crops -> bicubic x2/x4 -> VAE latent shards.

Re-running the same command resumes (finished shards are skipped). Under
``torchrun --nproc_per_node N -m lua_core prepare`` each rank encodes its own shards (the files are
those one process makes). See docs/training.md.
"""

from __future__ import annotations

import argparse

from . import LATENT_FORMAT_HELP, latent_format_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", help="folder of images (searched recursively)")
    p.add_argument("out", help="output folder (shards + manifest.json)")
    p.add_argument("--vae", required=True, help="the frozen VAE: a diffusers folder or a ComfyUI/ldm single file")
    p.add_argument("--latent-format", type=latent_format_arg, default=None, metavar="FORMAT",
                   help="the VAE's latent space, recorded in the trained checkpoint (guessed for diffusers folders): "
                        f"{LATENT_FORMAT_HELP}")
    p.add_argument("--crop", type=int, default=512, help="crop size in pixels (paper: 512)")
    p.add_argument("--scales", default="2,4", help="low-res factors (default 2,4: the x2 and x4 heads)")
    p.add_argument("--crops-per-image", type=int, default=1, help="random crops per image (default 1)")
    p.add_argument("--min-side", type=int, default=0,
                   help="skip images whose shorter side is below this (paper: 1440); default: the crop size")
    p.add_argument("--seed", type=int, default=0, help="seed of the crop positions (default 0)")
    p.add_argument("--shard-size", type=int, default=1024, help="pairs per shard file (default 1024)")
    p.add_argument("--no-pixels", action="store_true",
                   help="do not store the HR crops (enough for stage 1 and cross-VAE fine-tuning; stages 2-3 and "
                        "evaluate need them)")
    p.add_argument("--latent-dtype", choices=["fp16", "bf16", "fp32"], default="fp16",
                   help="storage dtype of the latents (default fp16)")
    p.add_argument("--sample-posterior", action="store_true",
                   help="encode with a sample of the posterior instead of its mean")
    p.add_argument("--device", default="cpu", help="device for the VAE (default cpu)")
    p.add_argument("--vae-dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="compute dtype of the VAE (default fp32)")
    p.add_argument("--encode-batch", type=int, default=16, help="crops per VAE call (default 16)")
    p.add_argument("--workers", type=int, default=4, help="threads decoding images (default 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..train.distributed import is_main, process_group

    with process_group(args.device) as args.device:  # torchrun: this rank's device (cuda -> cuda:LOCAL_RANK)
        m = _prepare(args)
        if not is_main():
            return 0
    lr = ", ".join(f"x{s}: {n}x{n}" for s, n in m["lr_latent_sizes"].items())
    print(f"{m['num_items']} pairs from {m['num_images']} images in {len(m['shards'])} shard(s) -> {args.out}")
    print(f"latents: {m['latent_channels']} channels, HR {m['hr_latent_size']}x{m['hr_latent_size']}, LR {lr}; "
          f"latent format: {m['vae'].get('latent_format') or 'unknown (pass --latent-format)'}")
    skipped = {k: v for k, v in m["skipped"].items() if v}
    if skipped or m["failed"]:
        print(f"skipped: {skipped or ''} {('failed: ' + str(len(m['failed']))) if m['failed'] else ''}".strip())
    return 0


def _prepare(args: argparse.Namespace) -> dict:
    import torch

    from ..train.data import PrepareConfig, prepare
    from ..train.vae import load_vae

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.vae_dtype]
    vae = load_vae(args.vae, latent_format=args.latent_format, device=args.device, dtype=dtype)
    cfg = PrepareConfig(crop=args.crop, scales=tuple(int(s) for s in args.scales.split(",")),
                        crops_per_image=args.crops_per_image, min_side=args.min_side, seed=args.seed,
                        shard_size=args.shard_size, store_pixels=not args.no_pixels, latent_dtype=args.latent_dtype,
                        sample_posterior=args.sample_posterior)
    return prepare(args.images, args.out, vae, cfg, device=args.device, encode_batch=args.encode_batch,
                   workers=args.workers, progress=not args.quiet)
