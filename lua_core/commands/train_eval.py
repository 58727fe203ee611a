"""``evaluate DATA/ --model PATH``: PSNR / LPIPS of decoded upscales vs bicubic latent upscaling.

DATA is a folder made by prepare (with pixels), ideally from held-out images. Prints a table.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="folder made by the prepare command (with pixels)")
    p.add_argument("--model", required=True, help="the upscaler checkpoint to evaluate")
    p.add_argument("--vae", help="the VAE (default: the one recorded by prepare)")
    p.add_argument("--scales", default=None, help="scales to evaluate, e.g. 2,4 (default: all the model has)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N pairs only")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")


def run(args: argparse.Namespace) -> int:
    from ..loading import load_model
    from ..train.data import read_manifest
    from ..train.evaluate import evaluate, format_table
    from ..train.vae import load_vae

    vae_path = args.vae or read_manifest(args.data).get("vae", {}).get("source")
    if not vae_path:
        raise ValueError("pass --vae: the data does not record its VAE")
    vae = load_vae(vae_path, device=args.device)
    model = load_model(args.model, device=args.device)
    scales = [int(s) for s in args.scales.split(",")] if args.scales else None
    rows, note = evaluate(model, args.data, vae, scales=scales, limit=args.limit, batch_size=args.batch_size,
                          device=args.device, lpips_metric=None if args.no_lpips else "auto")
    print(format_table(rows, note))
    return 0
