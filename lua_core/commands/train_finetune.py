"""``finetune BASE.safetensors DATA/ RUN/``: adapt a trained LUA to another VAE (cross-VAE).

The input conv and the heads' output convs are replaced for the new VAE's channel count, the rest
is kept (``--freeze-trunk`` trains only the convs and heads); stage 1 losses on DATA, the new
VAE's prepared latents. Writes ``RUN/lua.safetensors`` (or ``--out``). Runs on N ranks under
``torchrun --nproc_per_node N -m lua_core finetune`` as ``train`` does. See docs/training.md.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..train.cli import add_run_arguments, add_stage_arguments
    p.add_argument("base", help="the trained LUA checkpoint to start from")
    p.add_argument("data", help="folder made by prepare with the NEW VAE")
    p.add_argument("run", help="run folder")
    p.add_argument("--freeze-trunk", action="store_true", help="train only the new convs and the heads")
    p.add_argument("--stage", type=int, default=1, choices=[1, 2, 3],
                   help="whose losses to fine-tune with (default 1: latent losses; 2 and 3 decode with the new VAE)")
    add_stage_arguments(p)
    add_run_arguments(p)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..train.cli import load_vae_arg, report_run, stage_overrides, train_options
    from ..train.curriculum import finetune_stage
    from ..train.distributed import process_group
    from ..train.finetune import finetune

    base = finetune_stage(args.stage)
    stage = replace(base, **stage_overrides(args, [base.stage], {base.stage: base.weights})[base.stage])
    with process_group(args.device) as args.device:  # torchrun: this rank's device (cuda -> cuda:LOCAL_RANK)
        out = finetune(args.base, args.data, args.run, stage=stage, freeze=args.freeze_trunk,
                       vae=load_vae_arg(args), options=train_options(args), out=args.out, until=args.stop_at)
        return report_run(out, args.stop_at)
