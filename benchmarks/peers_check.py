"""The figures docs/peers.md states about the small peers, measured (run by hand, not a test).

    python benchmarks/peers_check.py drift    # fp16 / bf16 against fp32 on every peer conformance case
    python benchmarks/peers_check.py memory   # NNLatentUpscale's peak at the released size, x2 at 64^2 and 128^2
    python benchmarks/peers_check.py all --log docs/measurements/cpu-2026-12-02-peers.log

``drift`` runs the same comparison as tests/test_peers.py::test_half_precision (the first 10x10 of one
input of each folder's first case; here every case of every folder), so the test's bound can be pinned
near the worst value printed here. ``memory`` runs each case in a fresh process and reports the growth
of its peak RSS during one forward (weights and input excluded), beside the size the full attention score
matrix would take: NNLatentUpscale attends over every latent position after its resize.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from runlog import add_log_argument, logged  # noqa: E402

import lua_core  # noqa: E402
from lua_core.latent_formats import latent_space  # noqa: E402

PEERS = ROOT / "tests" / "data" / "peers"
#: folder -> the latent format its vectors are wrapped with (LSSGen's are in model space), as in test_peers.py
FORMATS = {"city96": None, "nnlatentupscale": None, "lssgen16": "flux", "lssgen4": "sdxl"}


def unpacked(name: str, into: Path) -> Path:
    """A copy of tests/data/peers/NAME with its .gz files unpacked (tests/conftest.py does the same)."""
    dst = into / name
    dst.mkdir(parents=True)
    for f in (PEERS / name).iterdir():
        if f.suffix == ".gz":
            with gzip.open(f, "rb") as zin, open(dst / f.stem, "wb") as out:
                shutil.copyfileobj(zin, out)
        elif f.is_file():
            shutil.copy2(f, dst / f.name)
    return dst


def bench_drift(args: argparse.Namespace) -> dict[str, float]:
    from safetensors.torch import load_file

    worst: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fmt in FORMATS.items():
            folder = unpacked(name, Path(tmp))
            manifest = json.loads((folder / "manifest.json").read_text())
            vectors = load_file(folder / "vectors.safetensors")
            for case in manifest["cases"]:
                x = vectors[case["input_key"]]
                if fmt:
                    x = latent_space(fmt).process_out(x)
                x = x[:1, :, :10, :10]
                scale = float(case["scale"])
                ref = lua_core.upscale_latent(lua_core.load_model(folder / case["weights"]), x, scale,
                                              latent_format=fmt)
                for dname, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
                    half = lua_core.load_model(folder / case["weights"], dtype=dtype)
                    out = lua_core.upscale_latent(half, x.to(dtype), scale, latent_format=fmt).float()
                    rel = (out - ref).abs().max().item() / ref.abs().max().item()
                    worst[dname] = max(worst.get(dname, 0.0), rel)
                    print(f"{name:16s} {case['weights']:48s} x{scale:<4g} {dname}: max |half - fp32| / max|fp32| "
                          f"= {rel:.4f}")
    for dname, value in worst.items():
        print(f"worst {dname}: {value:.4f}")
    return worst


MEMORY_PROBE = r"""
import json, resource, sys, torch
import lua_core
from lua_core.archs.nnlatent import NNLatentConfig, NNLatentUpscaler
side, scale, budget = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = NNLatentUpscaler(NNLatentConfig()).eval()
x = torch.randn(1, 4, side, side)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with torch.inference_mode():
    out = lua_core.upscale_latent(model, x, scale, max_memory=None if budget == "none" else int(float(budget) * 2**30))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
print(json.dumps(dict(peak=peak, out=list(out.shape))))
"""


def bench_memory(args: argparse.Namespace) -> list[dict]:
    rows = []
    for side in (64, 128):
        for budget in ("none", "0.25"):
            res = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(side), "2", budget], capture_output=True,
                                 text=True, cwd=ROOT, check=True)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            positions = row["out"][2] * row["out"][3]
            scores = positions * positions * 4
            row.update(side=side, budget=budget, positions=positions, scores=scores)
            rows.append(row)
            print(f"NNLatentUpscale (released size) {side}^2 x2, max_memory {budget} GiB: "
                  f"peak {row['peak'] / 1e6:.0f} MB"
                  f" ({positions} positions after the resize; a stored fp32 score matrix would be "
                  f"{scores / 1e9:.1f} GB)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["drift", "memory", "all"])
    ap.add_argument("--threads", type=int, default=2)
    add_log_argument(ap)
    args = ap.parse_args()
    with logged(args.log):
        torch.set_num_threads(args.threads)
        print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} threads")
        for what in (["drift", "memory"] if args.what == "all" else [args.what]):
            print(f"\n== {what}")
            globals()[f"bench_{what}"](args)


if __name__ == "__main__":
    main()
