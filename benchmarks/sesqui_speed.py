"""SesquiLSR forward speed: ``lua_core.archs.sesqui`` against the plain reference, run by hand.

    python benchmarks/sesqui_speed.py [--device cpu|cuda] [--threads 2] [--sizes 64,128] [--scales 1.5,2.0]
                                      [--channels 4,16,32] [--repeat 3] [--log PATH]

Released-size models (width 128, 8 + 6 gated blocks) with the module's own random initialisation (seed fixed;
speed does not depend on the values), for the SDXL (4), Flux/Wan 2.1 (16) and Flux2 (32) channel counts. The
input is [1, C, S, S] in the model's own (VAE) space; a Flux2 LATENT of S/2 x S/2 (128 packed channels) gives it.
Both forwards run under ``torch.inference_mode`` on the same input, alternately (a shared host drifts), after
one warm-up each; the median of ``--repeat`` runs is printed with the ratio ours/reference and the max abs
difference, which must stay within 1e-4 in fp32 (the script exits with status 1 otherwise).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sesqui_reference import ReferenceSesqui  # noqa: E402

from lua_core.archs.sesqui import SesquiConfig, SesquiUpscaler  # noqa: E402

TOL = 1e-4


def released_model(channels: int, device: str, seed: int = 0) -> SesquiUpscaler:
    """The released shapes (``SesquiConfig.derive``) with the module's default initialisation."""
    torch.manual_seed(seed)
    return SesquiUpscaler(SesquiConfig.derive(channels)).eval().requires_grad_(False).to(device)


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def alternate(fns: dict[str, Callable[[], torch.Tensor]], repeat: int, device: str) -> dict[str, list[float]]:
    """Seconds of each function, called in turn ``repeat`` times after one warm-up each."""
    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="64,128", help="input sides in the model's space")
    ap.add_argument("--scales", default="1.5,2.0")
    ap.add_argument("--channels", default="4,16,32")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--log", type=Path, help="also write the output to this file")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    torch.set_num_threads(args.threads)
    if args.device == "cuda":  # fp32 means fp32: no TF32 in either forward
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}  benchmarks/sesqui_speed.py {' '.join(sys.argv[1:])}")
    say(f"machine: {machine(args.device)}; torch {torch.__version__}; device {args.device}; "
        f"threads {torch.get_num_threads()}; fp32; median of {args.repeat} alternating runs after a warm-up")
    say(f"host: {os.cpu_count()} logical CPUs, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} "
        "at the start (a shared host: only the in-run ratios mean much)")
    say(f"{'C':>3} {'size':>9} {'scale':>5} {'target':>9} {'ours ms':>10} {'ref ms':>10} {'ours/ref':>8} "
        f"{'max|diff|':>10}")
    worst = 0.0
    for channels in (int(c) for c in args.channels.split(",")):
        model = released_model(channels, args.device)
        ref = ReferenceSesqui(model.state_dict())
        for size in (int(s) for s in args.sizes.split(",")):
            gen = torch.Generator().manual_seed(size)
            z = torch.randn(1, channels, size, size, generator=gen).to(args.device)
            for scale in (float(s) for s in args.scales.split(",")):
                target = (round(size * scale), round(size * scale))
                outs: dict[str, torch.Tensor] = {}
                with torch.inference_mode():
                    times = alternate({"ours": lambda: outs.setdefault("ours", model(z, target)),
                                       "ref": lambda: outs.setdefault("ref", ref(z, target))}, args.repeat, args.device)
                diff = (outs["ours"] - outs["ref"]).abs().max().item()  # the warm-up runs' outputs
                worst = max(worst, diff)
                ours, base = statistics.median(times["ours"]), statistics.median(times["ref"])
                say(f"{channels:>3} {size:>4}x{size:<4} {scale:>5g} {target[0]:>4}x{target[1]:<4} "
                    f"{ours * 1e3:>10.1f} {base * 1e3:>10.1f} {ours / base:>8.3f} {diff:>10.2e}")
    ok = worst <= TOL
    say(f"max |ours - reference| over all runs: {worst:.2e} ({'within' if ok else 'OVER'} {TOL:g})")
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        args.log.write_text("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
