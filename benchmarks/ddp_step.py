"""Training step time on 1 process vs 2 torchrun ranks (DDP over gloo) on the CPU, run by hand.

    python benchmarks/ddp_step.py [--config small|tiny] [--batch 8] [--steps 24] [--log-every 4] [--repeat 2]
                                  [--log PATH]

Runs the real commands on synthetic data (a tiny random VAE, 32 px latents):
``python -m lua_core train`` with the global batch on one process with 2 threads and with 1 thread, and
``python -m torch.distributed.run --standalone --nproc_per_node 2 -m lua_core train`` with the same global batch
(half per rank, one thread each), stage 1, fp32. The step time of each run is the median over the
``--log-every`` intervals of its ``log.jsonl`` after the first (warm-up, process start and DDP set-up are
not counted). The runs alternate ``--repeat`` times (a shared host drifts), and the ratios are printed.

On a 2-core machine the two ranks share the cores the one process uses with 2 threads: what this measures
is DDP's overhead (the all-reduce, process per rank) against intra-op threading, not a speed-up from
more hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from runlog import add_log_argument, log_path, logged  # noqa: E402

#: a LUA a few times the smoke-test size (4 Swin blocks of width 60), so a step is mostly compute
SMALL = {"embed_dim": 60, "depths": [4], "num_heads": [6], "window_size": 8, "img_size": 16, "head_num_feat": 32}
RUNS = {  # name -> (ranks, threads per rank)
    "1 process, 2 threads": (1, 2),
    "1 process, 1 thread": (1, 1),
    "2 ranks, 1 thread each": (2, 1),
}


def make_data(root: Path) -> Path:
    from lua_core.train.data import PrepareConfig, prepare
    from lua_core.train.synthetic import save_tiny_vae, write_synthetic_images
    from lua_core.train.vae import load_vae
    vae = load_vae(save_tiny_vae(root / "vae"))
    write_synthetic_images(root / "img", 32, (72, 72))
    prepare(root / "img", root / "data", vae, PrepareConfig(crop=64, shard_size=16), progress=False)
    return root / "data"


def train(data: Path, run: Path, config: str, ranks: int, threads: int, args: argparse.Namespace) -> float:
    """Seconds per step (median over the logged intervals after the first)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
              if ranks > 1 else [sys.executable])
    cmd = [*launch, "-m", "lua_core", "train", str(data), str(run), "--stages", "1", "--steps", str(args.steps),
           "--batch-size", str(args.batch), "--model-config", config, "--workers", "0", "--no-tensorboard",
           "--quiet", "--log-every", str(args.log_every), "--save-every", str(10 * args.steps)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    recs = [json.loads(line) for line in (run / "stage1" / "log.jsonl").read_text().splitlines()]
    return statistics.median(1.0 / r["it_per_s"] for r in recs[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=["small", "tiny"], default="small")
    p.add_argument("--batch", type=int, default=8, help="global batch (default 8: 4 per rank with 2 ranks)")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--log-every", type=int, default=4)
    p.add_argument("--repeat", type=int, default=2)
    add_log_argument(p)
    args = p.parse_args()
    if args.steps < 2 * args.log_every:
        raise SystemExit("--steps must be at least 2 x --log-every (the first interval is warm-up)")
    with logged(log_path(sys.argv[1:])), tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_data(root)
        config = args.config
        if config == "small":
            (root / "small.json").write_text(json.dumps(SMALL))
            config = str(root / "small.json")
        print(f"model {args.config} {SMALL if args.config == 'small' else ''}; stage 1, fp32, global batch "
              f"{args.batch}, {args.steps} steps, step time = median of {args.log_every}-step intervals after the "
              f"first; {os.cpu_count()} logical CPUs shared by all runs")
        times: dict[str, list[float]] = {name: [] for name in RUNS}
        for rep in range(args.repeat):
            for name, (ranks, threads) in RUNS.items():
                t = train(data, root / f"run_{rep}_{ranks}_{threads}", config, ranks, threads, args)
                times[name].append(t)
                print(f"  round {rep + 1}: {name:24s} {t * 1000:8.1f} ms/step")
            same = times["2 ranks, 1 thread each"][-1] / times["1 process, 1 thread"][-1]
            print(f"  round {rep + 1}: 2 ranks / 1 process (1 thread each) {same:.2f}x; load average now "
                  f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        base = statistics.median(times["1 process, 2 threads"])
        print(f"\n{'run':26s} {'ms/step':>9s} {'samples/s':>10s} {'vs 1 process, 2 threads':>24s}")
        for name, ts in times.items():
            t = statistics.median(ts)
            print(f"{name:26s} {t * 1000:9.1f} {args.batch / t:10.1f} {t / base:23.2f}x")


if __name__ == "__main__":
    main()
