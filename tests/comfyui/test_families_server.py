"""Today's latent families through the real server: SesquiLSR on FLUX.2 and Qwen-Image (Wan 2.1) LATENTs.

Latents go in with ComfyUI's own LoadLatent (a ``.latent`` file in the input folder) and come out with
SaveLatent, so the values the node produces inside the server are compared with
``lua_core.upscale_latent`` on the same input, and with SesquiLSR's own node outputs (the conformance
vectors). The files are the conformance ones under their released names, in a subfolder no other test
uses; the server runs offline, so nothing can be downloaded behind the test's back.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lua_core

from . import harness

SUB = "lua_fam"  # subfolder of latent_upscale_models
FILES = {"flux2": ("sesqui_flux2", "upscaler_Flux2.safetensors"),
         "wan21": ("sesqui_wan21", "upscaler_Wan21.safetensors")}


@pytest.fixture(scope="module")
def server(comfy_server: harness.ComfyServer, conformance: Callable[[str], Path]) -> harness.ComfyServer:
    folder = comfy_server.base_dir / "models" / "latent_upscale_models" / SUB
    folder.mkdir(parents=True, exist_ok=True)
    for peers, name in FILES.values():
        shutil.copy(conformance(f"peers/{peers}") / name, folder / name)
    return comfy_server


def run_through_node(server: harness.ComfyServer, latent: torch.Tensor, model_name: str, scale: float,
                     tag: str, latent_format: str = "auto") -> torch.Tensor:
    """LoadLatent -> Load LUA Model -> Latent Upscale (LUA) -> SaveLatent; the saved tensor."""
    name = f"lua_fam_{tag}.latent"
    save_file({"latent_tensor": latent.contiguous(), "latent_format_version_0": torch.tensor([])},
              str(server.base_dir / "input" / name))
    prompt = {
        "1": {"class_type": "LoadLatent", "inputs": {"latent": name}},
        "2": {"class_type": "LUA_LoadModel", "inputs": {"model_name": model_name, "dtype": "fp32"}},
        "3": {"class_type": "LUA_LatentUpscale", "inputs": {"samples": ["1", 0], "upscale_model": ["2", 0],
                                                            "scale": scale, "latent_format": latent_format}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": f"lua_fam/{tag}"}},
    }
    entry = server.run_prompt(prompt)
    (saved,) = entry["outputs"]["4"]["latents"]
    path = server.base_dir / "output" / saved["subfolder"] / saved["filename"]
    return load_file(str(path))["latent_tensor"]


def local_model(server: harness.ComfyServer, fmt: str) -> lua_core.LatentUpscaler:
    return lua_core.load_model(server.base_dir / "models" / "latent_upscale_models" / SUB / FILES[fmt][1])


@pytest.mark.comfyui_server
def test_flux2_packed_latent_through_the_server_equals_lua_core(server: harness.ComfyServer) -> None:
    """A 128-channel FLUX.2 LATENT, batch 2, odd size, x1.5: the node's values are lua_core's."""
    latent = torch.randn(2, 128, 7, 9, generator=torch.Generator().manual_seed(3))
    out = run_through_node(server, latent, f"{SUB}/upscaler_Flux2.safetensors", 1.5, "flux2")
    ref = lua_core.upscale_latent(local_model(server, "flux2"), latent, 1.5)
    assert tuple(out.shape) == (2, 128, 10, 14) == tuple(ref.shape)
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.comfyui_server
def test_five_dim_qwen_latent_through_the_server_equals_lua_core(server: harness.ComfyServer) -> None:
    """A 5-D [B, 16, T, H, W] Qwen-Image/Wan 2.1 LATENT (T = 1 and T = 3), x2: frame by frame, 5-D back."""
    model = local_model(server, "wan21")
    for frames in (1, 3):
        latent = torch.randn(1, 16, frames, 6, 10, generator=torch.Generator().manual_seed(frames))
        out = run_through_node(server, latent, f"{SUB}/upscaler_Wan21.safetensors", 2.0, f"wan{frames}")
        ref = lua_core.upscale_latent(model, latent, 2.0, latent_format="qwen-image")
        assert tuple(out.shape) == (1, 16, frames, 12, 20) == tuple(ref.shape)
        assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.comfyui_server
def test_the_server_gives_sesquilsrs_own_node_outputs(server: harness.ComfyServer,
                                                      conformance: Callable[[str], Path]) -> None:
    """The conformance vectors themselves through the server: SesquiLSR's node output within 1e-4."""
    for fmt, key in (("flux2", "0"), ("wan21", "6")):  # wan21 case 6 is the 5-D [1, 16, 3, 12, 20] one
        peers = FILES[fmt][0]
        vec = load_file(str(conformance(f"peers/{peers}") / "vectors.safetensors"))
        manifest = json.loads((conformance(f"peers/{peers}") / "manifest.json").read_text())
        case = next(c for c in manifest["cases"] if c["input_key"] == f"input_{key}")
        out = run_through_node(server, vec[case["input_key"]], f"{SUB}/{FILES[fmt][1]}", case["scale"],
                               f"vec_{fmt}")
        want = vec[case["output_key"]]
        assert tuple(out.shape) == tuple(want.shape)
        assert (out - want).abs().max().item() <= 1e-4, fmt


@pytest.mark.comfyui_server
def test_a_renamed_16_channel_file_needs_the_format(server: harness.ComfyServer) -> None:
    """Without its released name a 16-channel SesquiLSR file cannot tell FLUX from Wan 2.1: the node says
    so; with latent_format set it runs."""
    folder = server.base_dir / "models" / "latent_upscale_models" / SUB
    shutil.copy(folder / "upscaler_Wan21.safetensors", folder / "renamed16.safetensors")
    latent = torch.randn(1, 16, 6, 6, generator=torch.Generator().manual_seed(5))
    name = "lua_fam_renamed.latent"
    save_file({"latent_tensor": latent, "latent_format_version_0": torch.tensor([])},
              str(server.base_dir / "input" / name))
    prompt = {
        "1": {"class_type": "LoadLatent", "inputs": {"latent": name}},
        "2": {"class_type": "LUA_LoadModel",
              "inputs": {"model_name": f"{SUB}/renamed16.safetensors", "dtype": "fp32"}},
        "3": {"class_type": "LUA_LatentUpscale", "inputs": {"samples": ["1", 0], "upscale_model": ["2", 0],
                                                            "scale": 1.5, "latent_format": "auto"}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "lua_fam/renamed"}},
    }
    entry = server.run_prompt(prompt, check=False)
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_type"] == "LUA_LatentUpscale"
    assert "cannot tell FLUX from Wan 2.1 latents" in errors[0]["exception_message"]
    out = run_through_node(server, latent, f"{SUB}/renamed16.safetensors", 1.5, "renamed_ok", latent_format="wan21")
    ref = lua_core.upscale_latent(local_model(server, "wan21"), latent, 1.5)
    assert (out - ref).abs().max().item() <= 1e-5
