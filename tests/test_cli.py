"""``python -m lua_core``: convert and upscale from the command line, in a fresh process, with a
generated official-format checkpoint (issue: lua_core foundation, "Done when")."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file

import lua_core
from conftest import ROOT
from factories import make_lua, save_official_pth


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lua_core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_convert_then_upscale_a_latent_file(tmp_path):
    model = make_lua()
    pth = save_official_pth(model, tmp_path / "lua_flux.pth")
    st = tmp_path / "lua_flux.safetensors"
    r = _cli("convert", str(pth), str(st))
    assert r.returncode == 0, r.stderr
    assert "lua, 16 channels" in r.stdout

    latents = {"a": torch.randn(2, 16, 12, 20), "b": torch.randn(16, 9, 9)}  # a batch, and one [C, H, W]
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_file(latents, str(src))
    r = _cli("upscale", str(src), str(dst), "--scale", "2", "--model", str(pth))
    assert r.returncode == 0, r.stderr
    out = load_file(str(dst))
    assert out["a"].shape == (2, 16, 24, 40) and out["b"].shape == (16, 18, 18)
    expect = lua_core.upscale_latent(model, latents["a"], 2)
    assert (out["a"] - expect).abs().max().item() <= 1e-5

    r = _cli("upscale", str(src), str(tmp_path / "x4.safetensors"), "--scale", "4", "--model", str(st), "--key", "b")
    assert r.returncode == 0, r.stderr
    assert list(load_file(str(tmp_path / "x4.safetensors"))) == ["b"]


def test_bad_input_exits_with_a_clear_message(tmp_path):
    pth = save_official_pth(make_lua(), tmp_path / "m.pth")
    src = tmp_path / "in.safetensors"
    save_file({"z": torch.randn(1, 4, 8, 8)}, str(src))  # an SDXL-sized latent for a 16-channel model
    r = _cli("upscale", str(src), str(tmp_path / "o.safetensors"), "--model", str(pth))
    assert r.returncode == 1
    assert "4 channels" in r.stderr and "16" in r.stderr and "Traceback" not in r.stderr
    r = _cli("upscale", str(src), str(tmp_path / "o.safetensors"), "--model", str(tmp_path / "missing.pth"))
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_bad_paths_and_devices_are_refused_before_any_model_is_fetched(tmp_path):
    """With no --model the default model would be downloaded first; every mistake in what the user
    typed is reported before that (offline here with an empty model folder: a fetch would fail
    with an offline error instead)."""
    src = tmp_path / "in.safetensors"
    save_file({"z": torch.randn(1, 16, 8, 8)}, str(src))
    not_latents = tmp_path / "notes.pt"
    not_latents.write_bytes(b"not a safetensors file")
    env = {"HF_HUB_OFFLINE": "1", "LUA_MODELS_DIR": str(tmp_path / "models")}
    for args, expect in [
        ((str(tmp_path / "typo.safetensors"), str(tmp_path / "o.safetensors")), "cannot read"),
        ((str(not_latents), str(tmp_path / "o.safetensors")), "cannot read"),
        ((str(src), str(tmp_path / "no" / "such" / "o.safetensors")), "output folder"),
        ((str(src), str(tmp_path / "o.safetensors"), "--device", "banana"), "--device banana cannot be used"),
        ((str(src), str(tmp_path)), "is a folder"),
        ((str(src), str(tmp_path / "o.safetensors"), "--scale", "0.5"), "--scale must be"),
        ((str(src), str(tmp_path / "o.safetensors"), "--tile", "0"), "--tile must be"),
        ((str(src), str(tmp_path / "o.safetensors"), "--max-memory", "0"), "--max-memory must be a positive"),
    ]:
        r = _cli_env(env, "upscale", *args)
        assert r.returncode == 1 and expect in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert "offline" not in r.stderr.lower(), "the model was fetched before the arguments were checked"
    assert not (tmp_path / "models").exists()


def test_convert_into_a_folder(tmp_path):
    pth = save_official_pth(make_lua(), tmp_path / "m.pth")
    (tmp_path / "out").mkdir()
    r = _cli("convert", str(pth), str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "m.safetensors").is_file()


def _cli_env(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lua_core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


def test_help_lists_the_commands():
    r = _cli("--help")
    assert r.returncode == 0
    for cmd in ("upscale", "convert", "download", "batch", "train", "prepare"):
        assert cmd in r.stdout
