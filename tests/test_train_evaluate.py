"""Evaluation: PSNR of the model, bicubic and VAE-reconstruction rows; LPIPS when available."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from lua_core.train.data import PrepareConfig, prepare, to_unit  # noqa: E402
from lua_core.train.dataset import LatentPairs  # noqa: E402
from lua_core.train.evaluate import evaluate, format_table, make_lpips  # noqa: E402
from lua_core.train.losses import psnr  # noqa: E402
from lua_core.train.model import TINY_CONFIG, new_model, with_channels  # noqa: E402
from lua_core.train.synthetic import save_tiny_vae, write_synthetic_images  # noqa: E402
from lua_core.train.vae import load_vae  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    vae = load_vae(save_tiny_vae(root / "vae"))
    write_synthetic_images(root / "img", 3, (32, 32))
    prepare(root / "img", root / "data", vae, PrepareConfig(crop=32, shard_size=2, latent_dtype="fp32"),
            progress=False)
    model = new_model(with_channels(TINY_CONFIG, 4), seed=0).eval().requires_grad_(False)
    return {"vae": vae, "data": root / "data", "model": model}


def l1_metric(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().flatten(1).mean(1)


def test_rows_match_independent_computations(env):
    rows, note = evaluate(env["model"], env["data"], env["vae"], batch_size=2, lpips_metric=l1_metric,
                          progress=False)
    assert note == ""
    assert [(r.method, r.scale) for r in rows] == [(m, s) for s in (2, 4)
                                                  for m in ("model", "bicubic latent", "VAE reconstruction")]
    data = LatentPairs(env["data"])
    b = data.read([0, 1, 2], data.fields(pixels=True))
    ref = to_unit(b["hr_pixels"])
    vae = env["vae"]
    with torch.no_grad():
        recon = vae.decode(b["hr"]).clamp(-1, 1)
        bic = vae.decode(F.interpolate(b["lr_x4"], scale_factor=4, mode="bicubic", align_corners=False)).clamp(-1, 1)
        sr = vae.decode(env["model"](b["lr_x2"], "x2")).clamp(-1, 1)
    by = {(r.method, r.scale): r for r in rows}
    assert by[("VAE reconstruction", 2)].psnr == pytest.approx(float(psnr(recon, ref).mean()), rel=1e-5)
    assert by[("bicubic latent", 4)].psnr == pytest.approx(float(psnr(bic, ref).mean()), rel=1e-5)
    assert by[("model", 2)].psnr == pytest.approx(float(psnr(sr, ref).mean()), rel=1e-5)
    assert by[("model", 2)].lpips == pytest.approx(float(l1_metric(sr, ref).mean()), rel=1e-5)
    assert all(r.count == 3 for r in rows)
    table = format_table(rows)
    assert "bicubic latent" in table and f"{by[('model', 4)].psnr:.2f}" in table


def test_limit_scales_and_no_lpips(env):
    rows, _ = evaluate(env["model"], env["data"], env["vae"], scales=[4], limit=2, lpips_metric=None,
                       progress=False)
    assert {r.scale for r in rows} == {4} and all(r.count == 2 and r.lpips is None for r in rows)
    assert "-" in format_table(rows, "lpips is not installed")


def test_lpips_offline_gives_a_clear_note(monkeypatch):
    lpips = pytest.importorskip("lpips")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(lpips, "LPIPS", offline)
    metric, note = make_lpips()
    assert metric is None and "could not be fetched" in note and "TORCH_HOME" in note


def test_lpips_metric_runs_with_a_random_backbone(env, monkeypatch):
    lpips = pytest.importorskip("lpips")
    real = lpips.LPIPS
    monkeypatch.setattr(lpips, "LPIPS", lambda **kw: real(pnet_rand=True, **kw))  # no download
    metric, note = make_lpips()
    assert metric is not None and note == ""
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    d = metric(x, x.flip(-1))
    assert d.shape == (2,) and float(metric(x, x).abs().max()) < 1e-6 and float(d.min()) > 0
