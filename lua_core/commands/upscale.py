"""``upscale IN.safetensors OUT.safetensors --scale 2 [--model PATH | --repo ID]``.

Reads every tensor of IN (or ``--key``) as a raw latent [B, C, H, W] (a [C, H, W] tensor is taken
as a batch of one), upscales it, writes OUT with the same keys.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import LATENT_FORMAT_HELP, latent_format_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="safetensors file with latent tensors")
    p.add_argument("dst", help="output safetensors file")
    p.add_argument("--scale", type=float, default=2.0, help="scale factor (default 2)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="checkpoint path (.safetensors, .pth, or an LSSGen folder)")
    src.add_argument("--repo", help="known Hugging Face repo id to fetch (default vaskers5/LUA-FLUX)")
    p.add_argument("--models-dir", default=None,
                   help="where --repo downloads go (default: $LUA_MODELS_DIR or ~/.cache/lua_core)")
    p.add_argument("--key", action="append", help="only these tensors (repeatable; default: all)")
    p.add_argument("--latent-format", type=latent_format_arg, default=None, metavar="FORMAT",
                   help="which model made the latents, for upscalers that need it (LSSGen; a renamed 16-channel "
                        f"SesquiLSR file): {LATENT_FORMAT_HELP}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--max-memory", type=float, default=None, help="working-memory bound in GiB")
    p.add_argument("--tile", type=int, default=None, help="tile size in latent pixels (approximate; last resort)")


def run(args: argparse.Namespace) -> int:
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    from ..errors import LuaError, first_line
    from ..inference import upscale_latent
    from ..loading import load_model

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    # everything the user typed is checked before a model is downloaded or loaded
    try:
        tensors = load_file(args.src)
    except (OSError, SafetensorError) as e:
        raise LuaError(f"cannot read {args.src} as a safetensors file of latents ({type(e).__name__}: "
                       f"{first_line(e)}). Give a .safetensors file "
                       "(ComfyUI's Save Latent writes one, as .latent)") from None
    keys = args.key or list(tensors)
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise LuaError(f"{args.src} has no tensor(s) {missing}; it holds {list(tensors)}")
    out_dir = Path(args.dst).resolve().parent
    if not out_dir.is_dir():
        raise LuaError(f"the output folder {out_dir} does not exist: create it or give another output path")
    if Path(args.dst).is_dir():
        example = Path(args.dst) / "out.safetensors"
        raise LuaError(f"{args.dst} is a folder: give the output file's path (e.g. {example})")
    if not args.scale >= 1.0 or args.scale != args.scale or args.scale == float("inf"):
        raise LuaError(f"--scale must be a number from 1 up (e.g. 2), got {args.scale:g}")
    if args.tile is not None and args.tile < 1:
        raise LuaError(f"--tile must be a positive number of latent pixels, got {args.tile}")
    if args.max_memory is not None and not args.max_memory > 0:
        raise LuaError(f"--max-memory must be a positive number of GiB, got {args.max_memory:g}")
    if args.model:
        path = args.model
    else:
        from ..hub import fetch_known
        path = fetch_known(args.repo or "vaskers5/LUA-FLUX", args.models_dir)
    model = load_model(path, device=args.device, dtype=dtype)
    out = {}
    max_memory = None if args.max_memory is None else int(args.max_memory * 2**30)
    t0 = time.perf_counter()
    for k in tqdm(keys, desc="upscale", unit="latent", disable=len(keys) < 2):
        x = tensors[k]
        squeeze = x.ndim == 3
        y = upscale_latent(model, x[None] if squeeze else x, args.scale, latent_format=args.latent_format,
                           max_memory=max_memory, tile=args.tile)
        out[k] = (y[0] if squeeze else y).contiguous()
    try:
        save_file(out, args.dst, metadata={"upscaled_by": f"{model.family} x{args.scale:g}"})
    except (OSError, SafetensorError) as e:
        raise LuaError(f"cannot write {args.dst} ({first_line(e)})") from None
    for k in keys:
        print(f"{k}: {tuple(tensors[k].shape)} -> {tuple(out[k].shape)}")
    print(f"wrote {args.dst} in {time.perf_counter() - t0:.2f}s")
    return 0
