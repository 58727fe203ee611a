"""Training on several ranks (issue 21): ``torchrun`` with gloo on the CPU gives the one-process result.

The 2-rank runs are real ``python -m torch.distributed.run --standalone --nproc_per_node 2 -m lua_core ...``
subprocesses (torchrun's own rendezvous on a free port; OMP_NUM_THREADS=1 each, as the 2 cores are
shared), on a tiny model and 8 synthetic pairs: a few steps across the stage 1 -> 2 boundary, an
epoch boundary, two LR milestones and the one-random-head phase (DDP's unused parameters).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from safetensors.torch import load_file  # noqa: E402

from lua_core.__main__ import main  # noqa: E402
from lua_core.train.curriculum import paper_stage  # noqa: E402
from lua_core.train.dataset import BatchOrder, LatentPairs  # noqa: E402
from lua_core.train.model import TINY_CONFIG, new_model, with_channels  # noqa: E402
from lua_core.train.synthetic import save_tiny_vae, write_synthetic_images  # noqa: E402
from lua_core.train.trainer import Trainer, TrainOptions  # noqa: E402
from lua_core.train.vae import load_vae  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PREPARE = ["--crop", "32", "--shard-size", "3", "--latent-dtype", "fp32", "--quiet"]
# global batch 4 (2 per rank): 2 batches per epoch of 8 pairs; the last third of each stage trains one head
TRAIN = ["--stages", "1,2", "--steps", "3,3", "--batch-size", "4", "--random-head-fraction", "0.34", "--seed", "3",
         "--model-config", "tiny", "--workers", "0", "--no-tensorboard", "--quiet", "--log-every", "1"]
TOL = 1e-5  # fp32: the ranks' mean of per-rank means vs one mean of the global batch round differently


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torchrun(*args: str, nproc: int = 2) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if Path("/sys/class/net/lo").exists():  # gloo on loopback: no need for the host name to resolve
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "lua_core", *args]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr[-4000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    vae = save_tiny_vae(root / "vae")
    write_synthetic_images(root / "img", 8, (40, 40))
    with threads(1):  # as each torchrun rank encodes, so the 2-rank shards can be compared bit for bit
        assert main(["prepare", str(root / "img"), str(root / "data"), "--vae", str(vae), *PREPARE]) == 0
    return {"root": root, "vae": vae, "data": root / "data"}


@pytest.fixture(scope="module")
def straight2(env):
    """An uninterrupted 2-rank run."""
    run = env["root"] / "straight2"
    assert f"wrote {run / 'lua.safetensors'}" in torchrun("train", str(env["data"]), str(run), *TRAIN)
    return run


@pytest.fixture(scope="module")
def stopped2(env):
    """A 2-rank run stopped at step 2 of stage 1 (its checkpoint: the last one written)."""
    run = env["root"] / "stopped2"
    assert "stopped at step 2" in torchrun("train", str(env["data"]), str(run), *TRAIN, "--stop-at", "2")
    return run


def state(run: Path, stage: int) -> dict:
    last = sorted((run / f"stage{stage}" / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(last, map_location="cpu", weights_only=True)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def logs(run: Path, stage: int) -> list[dict]:
    return [json.loads(line) for line in (run / f"stage{stage}" / "log.jsonl").read_text().splitlines()]


def assert_same_training(run: Path, ref: Path, tol: float) -> None:
    """Raw weights, EMA and Adam state of both stages within ``tol``; the logged global-batch losses
    and (clipped-before) gradient norms too, so a gradient summed instead of averaged over the ranks
    (which Adam and the clip would hide in the weights) shows."""
    for stage in (1, 2):
        a, b = state(run, stage), state(ref, stage)
        assert a["step"] == b["step"] == 3
        for key in ("model", "ema"):
            d = max_diff(a[key], b[key])
            assert d <= tol, f"stage {stage} {key}: max |diff| {d:.3g}"
        assert a["scheduler"] == b["scheduler"]
        la, lb = logs(run, stage), logs(ref, stage)
        assert [r["step"] for r in la] == [r["step"] for r in lb] == [1, 2, 3]
        for ra, rb in zip(la, lb):
            for k in ("loss", "grad_norm", "loss/latent_l1"):
                assert abs(ra[k] - rb[k]) <= tol * max(1.0, abs(rb[k])), (stage, ra["step"], k, ra[k], rb[k])
        # the weights moved by far more than the tolerance (the EMA has hardly left the start)
        assert max_diff(b["model"], b["ema"]) > 10 * tol
    assert load_file(str(run / "lua.safetensors")).keys() == load_file(str(ref / "lua.safetensors")).keys()


def test_two_ranks_equal_one_rank_with_the_global_batch(env, straight2):
    one = env["root"] / "one"
    assert main(["train", str(env["data"]), str(one), *TRAIN]) == 0
    assert_same_training(straight2, one, TOL)
    # rank 0 alone wrote: one log line per step, one set of checkpoints
    assert len(logs(straight2, 1)) == 3
    assert sorted(p.name for p in (straight2 / "stage1" / "checkpoints").iterdir()) == ["step_00000003.pt"]


def test_two_rank_run_stopped_and_resumed_equals_an_uninterrupted_one(env, stopped2, straight2):
    run = env["root"] / "resumed2"
    shutil.copytree(stopped2, run)
    assert not (run / "stage1" / "final.safetensors").exists()
    assert state(run, 1)["step"] == 2
    torchrun("train", str(env["data"]), str(run), *TRAIN)  # the same command: resumes stage 1 at step 2
    for stage in (1, 2):
        a, b = state(run, stage), state(straight2, stage)
        for key in ("model", "ema"):
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), f"stage {stage} {key}"
    assert load_file(str(run / "lua.safetensors")).keys() == load_file(str(straight2 / "lua.safetensors")).keys()
    # the resumed log goes on from step 3 (steps 1-2 were logged by the first run)
    assert [r["step"] for r in logs(run, 1)] == [1, 2, 3]


def test_a_two_rank_run_resumes_on_one_rank(env, stopped2, straight2):
    """Another world size: the same global batches (the data order is exact), the weights equal up
    to the rounding of the gradient's mean (not bit for bit)."""
    run = env["root"] / "resumed1"
    shutil.copytree(stopped2, run)
    assert main(["train", str(env["data"]), str(run), *TRAIN]) == 0
    assert_same_training(run, straight2, TOL)


def test_prepare_on_two_ranks_writes_the_shards_of_one(env):
    out = env["root"] / "data2"
    assert "8 pairs from 8 images in 3 shard(s)" in torchrun(
        "prepare", str(env["root"] / "img"), str(out), "--vae", str(env["vae"]), *PREPARE)
    one, two = sorted(env["data"].glob("shard_*")), sorted(out.glob("shard_*"))
    assert [p.name for p in one] == [p.name for p in two] == [f"shard_0000{i}.safetensors" for i in range(3)]
    for a, b in zip(one, two):
        ta, tb = load_file(str(a)), load_file(str(b))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), a.name
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (env["data"], out))
    assert ma == mb and mb["complete"]


def test_each_rank_reads_its_part_of_the_global_batch():
    whole = BatchOrder(12, 4, seed=5, start=3)
    parts = [BatchOrder(12, 4, seed=5, start=3, rank=r, world=2) for r in range(2)]
    for b in range(3, 9):
        assert parts[0].batch(b) + parts[1].batch(b) == whole.batch(b)
    its = [iter(p) for p in (whole, *parts)]
    for _ in range(4):
        w, r0, r1 = (next(i) for i in its)
        assert r0 + r1 == w and len(r0) == 2
    with pytest.raises(ValueError, match="multiple of the number of ranks"):
        BatchOrder(12, 3, seed=0, rank=0, world=2)


def test_ddp_with_bf16_checkpointing_and_one_head_steps_matches_one_process(env, tmp_path):
    """DDP (a one-rank group) around a bf16, gradient-checkpointed stage 2 whose last steps train one
    head (the other head's parameters unused): same weights as without DDP."""
    data = LatentPairs(env["data"])
    vae = load_vae(env["vae"])
    stage = paper_stage(2, steps=3, batch_size=4, random_head_fraction=0.67)
    opts = TrainOptions(console=False, tensorboard=False, precision="bf16", gradient_checkpointing=True, seed=1)
    model = new_model(with_channels(TINY_CONFIG, 4), 2)
    plain = Trainer(model, stage, data, tmp_path / "plain", vae=vae, options=opts)
    plain.fit()
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = Trainer(new_model(with_channels(TINY_CONFIG, 4), 2), stage, data, tmp_path / "ddp", vae=vae,
                          options=replace(opts))
        assert type(wrapped.loss_fn).__name__ == "DistributedDataParallel"
        wrapped.fit()
    finally:
        dist.destroy_process_group()
    assert [len(plain.heads_for(s)) for s in range(3)] == [2, 1, 1]
    a, b = plain.model.state_dict(), wrapped.model.state_dict()
    assert max_diff(a, b) <= TOL
