"""The curriculum and the loop: paper defaults, losses going down, EMA, schedule, clip, exact resume."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

pytest.importorskip("diffusers")

from lua_core.train.curriculum import LossWeights, finetune_stage, paper_stage  # noqa: E402
from lua_core.train.data import PrepareConfig, prepare, to_unit  # noqa: E402
from lua_core.train.dataset import LatentPairs  # noqa: E402
from lua_core.train.ema import EMA  # noqa: E402
from lua_core.train.model import TINY_CONFIG, head_pairs, new_model, with_channels  # noqa: E402
from lua_core.train.objective import head_terms, step_loss  # noqa: E402
from lua_core.train.synthetic import save_tiny_vae, write_synthetic_images  # noqa: E402
from lua_core.train.trainer import Trainer, TrainOptions, latest_checkpoint  # noqa: E402
from lua_core.train.vae import load_vae  # noqa: E402

QUIET = TrainOptions(console=False, tensorboard=False, log_every=2, save_every=1000)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    vae = load_vae(save_tiny_vae(root / "vae"))
    write_synthetic_images(root / "img", 4, (40, 40))
    prepare(root / "img", root / "data", vae, PrepareConfig(crop=32, crops_per_image=2, shard_size=8), progress=False)
    return {"root": root, "vae": vae, "data": LatentPairs(root / "data")}


def tiny(seed: int = 0):
    return new_model(with_channels(TINY_CONFIG, 4), seed)


# -- the paper's numbers ------------------------------------------------------------------------

def test_paper_defaults():
    s1, s2, s3 = paper_stage(1), paper_stage(2), paper_stage(3)
    assert (s1.steps, s1.batch_size, s2.batch_size, s3.batch_size) == (125_000, 2048, 32, 32)
    assert s1.betas == s2.betas == (0.9, 0.995) and s3.betas == (0.9, 0.99)
    assert s1.lr == s2.lr == s3.lr == 2e-4
    assert s1.milestone_steps == [62_500, 93_750, 112_500] and s1.gamma == 0.5
    assert s1.random_head_start == 75_000  # the last 50k steps pick one head
    assert (s1.ema_decay, s1.grad_clip) == (0.999, 0.4)
    assert s1.weights.active() == {"latent_l1": 1.0, "latent_fft": 0.1}
    assert s2.weights.active() == {"latent_l1": 1.0, "latent_fft": 0.1, "consistency": 0.1, "high_freq": 0.05}
    assert s3.weights.active() == {"pixel_l1": 10.0, "pixel_fft": 1.0, "eagle": 5e-5}
    assert not s1.needs_decoder and s2.needs_decoder and s3.needs_decoder
    assert not replace(s2, weights=LossWeights(latent_l1=1, high_freq=0.05), hf_domain="latent").needs_decoder
    short = paper_stage(1, steps=1000)
    assert short.milestone_steps == [500, 750, 900] and short.random_head_start == 600
    assert finetune_stage().weights == s1.weights
    with pytest.raises(ValueError):
        paper_stage(4)
    with pytest.raises(ValueError, match="unknown loss term"):
        s1.weights.with_overrides({"latent_l2": 1.0})


def test_heads_both_then_one_random(env):
    stage = paper_stage(1, steps=40, batch_size=4)
    t = Trainer(tiny(), stage, env["data"], env["root"] / "heads", options=QUIET)
    assert all(t.heads_for(s) == [("x2", 2), ("x4", 4)] for s in range(stage.random_head_start))
    late = [t.heads_for(s) for s in range(stage.random_head_start, 40)]
    assert all(len(h) == 1 for h in late) and {h[0] for h in late} == {("x2", 2), ("x4", 4)}
    assert late == [t.heads_for(s) for s in range(stage.random_head_start, 40)]  # a function of the step


# -- optimisation -------------------------------------------------------------------------------

def stage_objective(model, heads, batch, stage, vae=None) -> float:
    """The stage's weighted loss, summed over heads, from the unweighted terms of each head: measured apart
    from ``step_loss``'s optimised sum, so that a mistake in that sum (a sign, a dropped term) cannot also
    change what the test measures."""
    hr_image = to_unit(batch["hr_pixels"]) if stage.needs_decoder else None
    with torch.no_grad():
        return sum(w * float(head_terms(model, h, s, batch, stage, vae, hr_image)[k])
                   for h, s in heads for k, w in stage.weights.active().items())


def full_batch(data: LatentPairs, pixels: bool) -> dict[str, torch.Tensor]:
    return data.read(list(range(len(data))), data.fields(pixels=pixels))


# measured after/before: ~0.5 (stage 1), ~0.6 (stage 2), 0.87 (stage 3: the tiny random VAE's decoder limits how
# close any latent gets to the crop, so its pixel terms fall slowly; each stage III term alone lowers itself in
# tests/test_train_gradients.py)
@pytest.mark.parametrize("stage_n,steps,bound", [(1, 25, 0.85), (2, 15, 0.85), (3, 30, 0.95)])
def test_loss_decreases_on_a_fixed_batch(env, tmp_path, stage_n, steps, bound):
    data = env["data"]
    stage = paper_stage(stage_n, steps=steps, batch_size=len(data), random_head_fraction=0.0, lr=1e-3)
    vae = env["vae"] if stage.needs_decoder else None
    t = Trainer(tiny(), stage, data, tmp_path, vae=vae, options=QUIET)
    batch = full_batch(data, stage.needs_pixels)
    heads = head_pairs(t.model)

    def loss_now() -> float:
        return stage_objective(t.model, heads, batch, stage, vae)

    before = loss_now()
    t.fit()
    after = loss_now()
    print(f"[measured] stage {stage_n}, {steps} steps: loss after / before {after / before:.3f} (bound {bound})")
    assert after < bound * before, (before, after)
    assert (tmp_path / "final.safetensors").is_file()
    logs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    terms = {f"loss/{k}" for k in stage.weights.active()}
    assert logs[-1]["step"] == steps and {"loss", "lr", "it_per_s", *terms} <= set(logs[-1])


def test_schedule_clip_and_ema(env, tmp_path):
    stage = paper_stage(1, steps=8, batch_size=4, lr=1e-3)
    t = Trainer(tiny(), stage, env["data"], tmp_path, options=QUIET)
    lrs = []
    start = {k: v.clone() for k, v in t.model.state_dict().items()}
    it = t.batches()
    for _ in range(8):
        before = [p.detach().clone() for p in t.model.parameters()]
        ema_before = [p.detach().clone() for p in t.ema.module.parameters()]
        t.train_step(next(it))
        lrs.append(t.scheduler.get_last_lr()[0])
        grads = torch.stack([p.grad.norm() for p in t.model.parameters() if p.grad is not None])
        assert float(grads.norm()) <= 0.4 * (1 + 1e-5)  # clipped
        for e0, e1, p in zip(ema_before, t.ema.module.parameters(), t.model.parameters()):
            torch.testing.assert_close(e1, 0.999 * e0 + 0.001 * p.detach(), rtol=1e-6, atol=1e-7)
        assert any(not torch.equal(b, p) for b, p in zip(before, t.model.parameters()))
    # milestones [4, 6, 7] of 8 steps, gamma 0.5
    assert lrs == pytest.approx([1e-3] * 3 + [5e-4] * 2 + [2.5e-4] + [1.25e-4] * 2)
    assert any(not torch.equal(start[k], v) for k, v in t.ema.state_dict().items())


def test_ema_formula_on_a_linear_layer():
    m = torch.nn.Linear(2, 1)
    ema = EMA(m, 0.9)
    w0 = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m)
    torch.testing.assert_close(ema.module.weight, w0 + 0.1)
    with pytest.raises(ValueError):
        EMA(m, 1.0)


def test_gradient_checkpointing_gives_the_same_gradients(env):
    batch = full_batch(env["data"], False)
    stage = paper_stage(1, steps=1, batch_size=4)
    grads = []
    for ckpt in (False, True):
        model = tiny(5).train()
        model.gradient_checkpointing = ckpt
        loss, _ = step_loss(model, head_pairs(model), batch, stage)
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_bf16_autocast_runs_and_fp16_needs_cuda(env, tmp_path):
    stage = paper_stage(2, steps=2, batch_size=4)
    t = Trainer(tiny(), stage, env["data"], tmp_path, vae=env["vae"],
                options=replace(QUIET, precision="bf16"))
    loss, terms, _ = t.train_step(next(t.batches()))
    assert torch.isfinite(loss) and set(terms) == {"latent_l1", "latent_fft", "consistency", "high_freq"}
    with pytest.raises(ValueError, match="fp16"):
        Trainer(tiny(), stage, env["data"], tmp_path, vae=env["vae"], options=replace(QUIET, precision="fp16"))


def test_refuses_mismatched_inputs(env, tmp_path):
    with pytest.raises(ValueError, match="16-channel latents"):
        Trainer(new_model(with_channels(TINY_CONFIG, 16)), paper_stage(1, batch_size=4), env["data"], tmp_path)
    with pytest.raises(ValueError, match="frozen VAE"):
        Trainer(tiny(), paper_stage(2, batch_size=4), env["data"], tmp_path)


# -- exact resume -------------------------------------------------------------------------------

def test_resume_is_bit_identical_to_an_uninterrupted_run(env, tmp_path):
    # 7 steps cross two epochs (8 pairs / batch 4), two LR milestones and the random-head phase
    stage = paper_stage(2, steps=7, batch_size=4, random_head_fraction=0.5)
    opts = replace(QUIET, seed=11)
    straight = Trainer(tiny(1), stage, env["data"], tmp_path / "a", vae=env["vae"], options=opts)
    straight.fit()

    first = Trainer(tiny(1), stage, env["data"], tmp_path / "b", vae=env["vae"], options=opts)
    first.fit(until=3)
    ckpt = latest_checkpoint(tmp_path / "b")
    assert ckpt is not None and ckpt.name == "step_00000003.pt"
    assert not (tmp_path / "b" / "final.safetensors").exists()
    with torch.random.fork_rng(devices=[]):  # leave the session's RNG as it was
        torch.manual_seed(1234)  # a resumed process starts with other RNG states: they are restored
        resumed = Trainer(tiny(99), stage, env["data"], tmp_path / "b", vae=env["vae"], options=opts)
        resumed.resume(ckpt)
        assert resumed.step == 3
        assert torch.equal(torch.get_rng_state(), torch.load(ckpt, weights_only=True)["rng"]["torch"])
        resumed.fit()

    for name, a, b in (("model", straight.model, resumed.model), ("ema", straight.ema.module, resumed.ema.module)):
        sa, sb = a.state_dict(), b.state_dict()
        mismatched = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not mismatched, f"{name}: {mismatched[:3]}"
    assert straight.scheduler.state_dict() == resumed.scheduler.state_dict()
    # and the check can fail: a different data seed gives different weights
    other = Trainer(tiny(1), stage, env["data"], tmp_path / "c", vae=env["vae"], options=replace(opts, seed=12))
    other.fit()
    assert not torch.equal(other.model.conv_first.weight, straight.model.conv_first.weight)


def test_resume_refuses_other_settings(env, tmp_path):
    stage = paper_stage(1, steps=4, batch_size=4)
    t = Trainer(tiny(), stage, env["data"], tmp_path, options=QUIET)
    t.fit(until=2)
    other = Trainer(tiny(), replace(stage, lr=1e-3), env["data"], tmp_path, options=QUIET)
    with pytest.raises(ValueError, match="other stage settings"):
        other.resume(latest_checkpoint(tmp_path))
