"""Argument groups shared by the training commands (``train``, ``finetune``): stage settings and
how to run. Kept here so every command spells an option the same way."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .trainer import TrainOptions


def add_stage_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stage settings (default: the paper's; a comma list gives one value per stage)")
    g.add_argument("--steps", help="steps per stage (paper: 125000)")
    g.add_argument("--batch-size", help="batch size per stage (paper: 2048 for stage 1, 32 for stages 2 and 3); the "
                   "global batch under torchrun, split evenly over the ranks")
    g.add_argument("--lr", help="Adam learning rate (paper: 2e-4)")
    g.add_argument("--weight", action="append", default=[], metavar="TERM=W",
                   help="override a loss weight in every selected stage, e.g. eagle=1e-4 (repeatable); terms: "
                        "latent_l1 latent_fft consistency high_freq pixel_l1 pixel_fft eagle")
    g.add_argument("--hf-domain", choices=["pixel", "latent"], help="where stage 2's high-frequency L1 applies "
                   "(default pixel: decoded image vs high-res crop)")
    g.add_argument("--random-head-fraction", type=float, help="final fraction of a stage that trains one random "
                   "head per step (paper: 0.4 = the last 50k of 125k)")
    g.add_argument("--ema-decay", type=float, help="EMA decay (paper: 0.999)")
    g.add_argument("--grad-clip", type=float, help="gradient-norm clip (paper: 0.4)")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("running")
    g.add_argument("--vae", help="the VAE the data was prepared with (default: the path recorded by prepare); "
                   "needed by stages 2 and 3")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu); under torchrun cuda means "
                   "each rank's cuda:LOCAL_RANK (NCCL), cpu uses gloo")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="bf16 autocast, or fp16 autocast with loss scaling (CUDA only); default fp32")
    g.add_argument("--seed", type=int, default=0, help="seeds the initialisation, the data order and the head draws")
    g.add_argument("--workers", type=int, default=2, help="data loader worker processes (default 2)")
    g.add_argument("--log-every", type=int, default=50, help="steps between log lines (default 50)")
    g.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints (default 1000)")
    g.add_argument("--keep", type=int, default=2, help="numbered checkpoints to keep (default 2)")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute Swin blocks in backward")
    g.add_argument("--decoder-checkpointing", action="store_true", help="recompute the VAE decoder in backward")
    g.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    g.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop each stage at this step (checkpointed; run the same command again to continue)")
    g.add_argument("--out", help="where to copy the final checkpoint (default RUN/lua.safetensors)")
    g.add_argument("--quiet", action="store_true", help="no progress bar or log lines on the console")


def _per_stage(value: str | None, stages: Sequence[int], cast: Any) -> dict[int, Any]:
    if value is None:
        return {}
    parts = [cast(v) for v in str(value).split(",")]
    if len(parts) == 1:
        return {s: parts[0] for s in stages}
    if len(parts) != len(stages):
        raise ValueError(f"{value!r} gives {len(parts)} values for {len(stages)} stage(s) {list(stages)}")
    return dict(zip(stages, parts))


def parse_weights(items: Sequence[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, val = item.partition("=")
        if not sep:
            raise ValueError(f"--weight expects TERM=VALUE, got {item!r}")
        out[name.strip()] = float(val)
    return out


def stage_overrides(args: argparse.Namespace, stages: Sequence[int], base_weights: dict[int, Any]) -> dict[int, dict]:
    """{stage: StageConfig field overrides} from the stage arguments; ``base_weights`` are each
    stage's default ``LossWeights`` (for ``--weight``)."""
    out: dict[int, dict[str, Any]] = {s: {} for s in stages}
    for field, cast in (("steps", int), ("batch_size", int), ("lr", float)):
        for s, v in _per_stage(getattr(args, field), stages, cast).items():
            out[s][field] = v
    for field in ("hf_domain", "random_head_fraction", "ema_decay", "grad_clip"):
        if getattr(args, field) is not None:
            for s in stages:
                out[s][field] = getattr(args, field)
    weights = parse_weights(args.weight)
    if weights:
        for s in stages:
            out[s]["weights"] = base_weights[s].with_overrides(weights)
    return out


def train_options(args: argparse.Namespace) -> TrainOptions:
    return TrainOptions(device=args.device, precision=args.precision, seed=args.seed, num_workers=args.workers,
                        log_every=args.log_every, save_every=args.save_every, keep_checkpoints=args.keep,
                        gradient_checkpointing=args.gradient_checkpointing,
                        decoder_checkpointing=args.decoder_checkpointing, tensorboard=not args.no_tensorboard,
                        console=not args.quiet)


def load_vae_arg(args: argparse.Namespace) -> Any:
    """The ``--vae`` given, loaded on the run's device, or None (the stages then use the data's)."""
    if not args.vae:
        return None
    from .vae import load_vae
    return load_vae(args.vae, latent_format=getattr(args, "latent_format", None), device=args.device)


def report_run(out: Any, stop_at: int | None) -> int:
    """Say how a training command ended (stopped at ``--stop-at``, or the file it wrote); exit 0.
    Under torchrun only rank 0 says it."""
    from .distributed import is_main
    if not is_main():
        return 0
    if out is None:
        print(f"stopped at step {stop_at}; run the same command again to continue")
    else:
        print(f"wrote {out}")
    return 0
