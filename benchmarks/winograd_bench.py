"""Winograd 3x3 (lua_core.archs.lua.winograd) against oneDNN's direct conv, run by hand on CPU fp32.

    python benchmarks/winograd_bench.py [--threads 2] [--repeat 5] [--tile 2|4|both]

For the LUA trunk/head shapes it prints best-of-N ms of F.conv2d on a channels-last input (how the
model calls it: tokens viewed as NCHW) and of conv3x3 with a cached transformed weight, the speed
ratio, and each one's max abs error against a float64 conv2d (weights N(0, 0.02)); "used" says
whether ``worthwhile`` sends that shape to Winograd in the model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from runlog import add_log_argument, log_path, logged  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lua_core.archs.lua.winograd import conv3x3, transform_weight, worthwhile

SHAPES = [  # (C_in, C_out, H = W, input layout)
    (360, 360, 64, "tokens"),  # (a) trunk conv, 7 per forward
    (360, 256, 64, "tokens"),  # (b)
    (256, 1024, 64, "tokens"),  # (c) head
    (360, 360, 128, "tokens"),
    (360, 360, 32, "tokens"),
    (16, 360, 128, "nchw"),  # conv_first on the latent: not worthwhile(), the model keeps oneDNN
    (256, 16, 128, "tokens"),  # conv_last after the pixel shuffle: likewise
]


def best_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tile", choices=["2", "4", "both"], default="both")
    add_log_argument(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tiles = [2, 4] if args.tile == "both" else [int(args.tile)]
    print(f"threads={args.threads}  best of {args.repeat}  errors: max abs vs float64")
    cols = " | ".join(f"F({t},3) ms  speedup   err" for t in tiles)
    print(f"{'shape':>18} {'direct ms':>9} {'err':>8} | {cols} | used")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for cin, cout, hw, layout in SHAPES:
            if layout == "tokens":
                x = torch.randn(1, hw * hw, cin, generator=g).view(1, hw, hw, cin).permute(0, 3, 1, 2)
            else:
                x = torch.randn(1, cin, hw, hw, generator=g)
            w = torch.randn(cout, cin, 3, 3, generator=g) * 0.02
            b = torch.randn(cout, generator=g)
            ref = F.conv2d(x.double(), w.double(), b.double(), padding=1)
            wcl = w.contiguous(memory_format=torch.channels_last)
            direct = best_ms(lambda: F.conv2d(x, wcl, b, padding=1), args.repeat)
            e_direct = (F.conv2d(x, wcl, b, padding=1).double() - ref).abs().max().item()
            cols = []
            for tile in tiles:
                u = transform_weight(w, tile)
                ms = best_ms(lambda: conv3x3(x, w, b, u), args.repeat)
                err = (conv3x3(x, w, b, u).double() - ref).abs().max().item()
                cols.append(f"{ms:11.1f} {direct / ms:7.2f}x {err:.1e}")
            name = f"{cin}->{cout} {hw}x{hw}"
            used = "yes" if worthwhile(cin, cout) else "no"
            print(f"{name:>18} {direct:9.1f} {e_direct:.1e} | " + " | ".join(cols) + f" | {used}", flush=True)


if __name__ == "__main__":
    with logged(log_path(sys.argv)):
        main()
