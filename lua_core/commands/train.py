"""``train DATA/ RUN/ [--stages 1,2,3]``: the paper's three-stage curriculum on prepared latents.

Each stage trains in ``RUN/stageN/`` from the previous stage's EMA weights; a stopped run resumes
exactly when the same command is run again. The result is ``RUN/lua.safetensors`` (or ``--out``),
a normal ``latent_upscale_models`` checkpoint. Under ``torchrun --nproc_per_node N -m lua_core train``
the same command trains on N ranks (DDP; ``--batch-size`` is the global batch). See docs/training.md.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..train.cli import add_run_arguments, add_stage_arguments
    p.add_argument("data", help="folder made by the prepare command")
    p.add_argument("run", help="run folder (checkpoints, logs, the final checkpoint)")
    p.add_argument("--stages", default="1,2,3", help="stages to run, in order (default 1,2,3)")
    p.add_argument("--model-config", default="released",
                   help="architecture: 'released' (the 54.9M-parameter release), 'tiny' (smoke tests) or a JSON "
                        "file of LUAConfig fields; channels follow the data")
    p.add_argument("--init", help="start the first stage from this LUA checkpoint instead of a fresh model")
    add_stage_arguments(p)
    add_run_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..train.cli import load_vae_arg, report_run, stage_overrides, train_options
    from ..train.curriculum import STAGE_WEIGHTS
    from ..train.distributed import process_group
    from ..train.pipeline import train_curriculum

    stages = [int(s) for s in args.stages.split(",")]
    bad = [s for s in stages if s not in STAGE_WEIGHTS]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}: stages are 1, 2 and 3")
    with process_group(args.device) as args.device:  # torchrun: this rank's device (cuda -> cuda:LOCAL_RANK)
        out = train_curriculum(args.data, args.run, stages=stages,
                               stage_overrides=stage_overrides(args, stages, STAGE_WEIGHTS),
                               preset=args.model_config, init=args.init, vae=load_vae_arg(args),
                               options=train_options(args), out=args.out, until=args.stop_at)
        return report_run(out, args.stop_at)
