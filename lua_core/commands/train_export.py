"""``export RUN/stageN/checkpoints/step_X.pt OUT.safetensors``: a training checkpoint as a model file.

Writes the EMA weights (``--raw`` for the trained ones) with ``lua_core.save_model``: the official
keys, the config and what it was trained for in the header; loads in the ComfyUI loader as is.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a training checkpoint (RUN/stageN/checkpoints/step_*.pt)")
    p.add_argument("out", help="output .safetensors")
    p.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")


def run(args: argparse.Namespace) -> int:
    from ..train.export import export_checkpoint
    print(f"wrote {export_checkpoint(args.checkpoint, args.out, use_ema=not args.raw)}")
    return 0
