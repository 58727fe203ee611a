"""Exactness: lua_core's LUA forward equals the official forward (conformance vectors, 1e-4 fp32).

The vectors in tests/data/public16 and public4 were produced by the official code (vaskers5/LUA)
on tiny official-format models; see tests/data/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

import lua_core
from lua_core.archs.lua import LUA, LUAConfig

FOLDERS = ["public16", "public4"]
WEIGHTS = ["weights.pth", "weights.safetensors"]


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _cases():
    from conftest import DATA
    for name in FOLDERS:
        man = json.loads((DATA / name / "manifest.json").read_text())
        for weights in WEIGHTS:
            for case in man["cases"]:
                yield pytest.param(name, weights, case, id=f"{name}-{weights}-{case['input_key']}-{case['head']}")


@pytest.mark.parametrize("name", FOLDERS)
def test_files_are_intact(conformance, name):
    folder = conformance(name)
    man = _manifest(folder)
    for fname, info in man["files"].items():
        digest = hashlib.sha256((folder / fname).read_bytes()).hexdigest()
        assert digest == info["sha256"], f"{name}/{fname} is corrupted (or a Git LFS pointer)"


@pytest.mark.parametrize("name,weights,case", list(_cases()))
def test_official_outputs(conformance, name, weights, case):
    folder = conformance(name)
    man = _manifest(folder)
    vectors = load_file(folder / "vectors.safetensors")
    model = lua_core.load_model(folder / weights)
    assert model.config == LUAConfig.from_dict(man["config"]), "config inferred from the file differs"
    x = vectors[case["input_key"]]
    out = lua_core.upscale_latent(model, x, case["scale"])
    ref = vectors[case["output_key"]]
    assert list(out.shape) == case["output_shape"]
    assert out.dtype == torch.float32
    diff = (out - ref).abs().max().item()
    assert diff <= man["tolerance"]["max_abs_diff"], f"max abs diff {diff:.3g}"


@pytest.mark.parametrize("name", FOLDERS)
def test_every_parameter_is_used(conformance, name):
    """Loading the official container consumes every parameter of the file."""
    folder = conformance(name)
    man = _manifest(folder)
    raw = torch.load(folder / "weights.pth", weights_only=True)["params_ema"]
    model = LUA(LUAConfig.from_dict(man["config"]))
    params = {k for k in raw if not k.endswith((".relative_position_index", ".attn_mask"))}
    assert params == set(model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == man["num_parameters"]


@pytest.mark.parametrize("name", FOLDERS)
def test_autograd_path_matches(conformance, name):
    """The differentiable path (used in training) gives the same numbers as the inference path."""
    folder = conformance(name)
    man = _manifest(folder)
    vectors = load_file(folder / "vectors.safetensors")
    model = lua_core.load_model(folder / "weights.safetensors")
    case = man["cases"][-1]
    x = vectors[case["input_key"]].clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(x, case["head"])
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (out.detach() - vectors[case["output_key"]]).abs().max().item() <= 1e-4


def test_released_config_size():
    """The released FLUX config has the published parameter count (FORMAT.md: 54,917,584)."""
    model = LUA(LUAConfig())
    assert sum(p.numel() for p in model.parameters()) == 54_917_584
