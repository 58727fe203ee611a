"""``python -m lua_core <command>``: the command-line tools of the pack.

Each command lives in ``lua_core/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so ``batch`` (which must
not import torch) stays light.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "upscale": ("lua_core.commands.upscale", "upscale latents stored in a safetensors file"),
    "convert": ("lua_core.commands.convert", "convert a checkpoint (.pth) to safetensors with its config"),
    "prepare": ("lua_core.commands.train_prepare", "training: images -> VAE latent pair shards"),
    "train": ("lua_core.commands.train", "training: the three-stage LUA curriculum on prepared latents"),
    "finetune": ("lua_core.commands.train_finetune", "training: adapt a trained LUA to another VAE"),
    "evaluate": ("lua_core.commands.train_eval", "training: PSNR/LPIPS of a model vs bicubic latent upscaling"),
    "export": ("lua_core.commands.train_export", "training: a training checkpoint -> safetensors model file"),
    "download": ("lua_core.commands.download", "download known checkpoints (--list shows them)"),
    "batch": ("lua_core.commands.batch", "render a parameter sweep on a ComfyUI server (resumable; no torch)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m lua_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv[:1])
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    cmd = argparse.ArgumentParser(prog=f"python -m lua_core {argv[0]}", description=COMMANDS[argv[0]][1])
    module.add_arguments(cmd)
    args = cmd.parse_intermixed_args(argv[1:])
    try:
        if getattr(args, "device", None) is not None:  # every command with --device: checked before any work
            from .devices import usable_device
            usable_device(args.device)
        return int(module.run(args) or 0)
    except (ValueError, OSError) as e:  # our errors are ValueErrors with actionable messages; OSErrors
        print(f"error: {e}", file=sys.stderr)  # (a file that vanished, a full disk) name their file
        return 1


if __name__ == "__main__":
    sys.exit(main())
