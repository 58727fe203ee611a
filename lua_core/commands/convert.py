"""``convert IN.pth OUT.safetensors``: a checkpoint to safetensors, config in the metadata."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="checkpoint to convert (.pth/.pt/.safetensors, or an LSSGen folder)")
    p.add_argument("dst", nargs="?", help="output .safetensors, or a folder to put it in (default: beside the "
                   "input, same name)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..loading import convert_checkpoint, load_model
    dst = args.dst
    if dst is not None and Path(dst).is_dir():  # a folder: the input's name, as .safetensors, inside it
        dst = Path(dst) / Path(args.src).with_suffix(".safetensors").name
    out = convert_checkpoint(args.src, dst)
    model = load_model(out)
    print(f"{out}: {model.family}, {model.latent_channels} channels, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")
    return 0
