"""The pack's nodes in a real ComfyUI server (0.3.75 or 0.33.0), driven over HTTP like the frontend does.

Why besides the in-process tests: the server imports the pack from ``custom_nodes/`` at start-up,
builds ``/object_info`` from the schemas, validates API prompts, runs them under its executor
(inference mode, output caches, ``/interrupt``) and reports errors in ``/history``. The model files
are generated (official-format LUA) or the peers' test files, placed under names no other test
uses; the server runs with ``HF_HUB_OFFLINE=1``, so any attempt to download would fail loudly.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from factories import make_lua, save_official_pth, tiny_config

from . import harness, make_test_models

LOADER, UPSCALE = "LUA_LoadModel", "LUA_LatentUpscale"
LUA_FILE = "lua_srv_flux.pth"
CITY96_FILE = "lua_srv_city96-sdxl-x2.0.safetensors"
LSSGEN_DIR = "lua_srv_lssgen_sdxl"
SLOW_FILE = "lua_srv_slow.pth"  # a wider, deeper LUA: ~1000 tiles of it take tens of seconds on 2 cores


@pytest.fixture(scope="module")
def server(comfy_server: harness.ComfyServer, conformance: Callable[[str], Path]) -> harness.ComfyServer:
    """The shared server with this module's upscalers in its ``latent_upscale_models``."""
    folder = comfy_server.base_dir / "models" / "latent_upscale_models"
    save_official_pth(make_lua(seed=7), folder / LUA_FILE)
    slow = tiny_config(embed_dim=60, depths=(2,) * 6, num_heads=(6,) * 6, head_num_feat=32)
    save_official_pth(make_lua(slow, seed=8), folder / SLOW_FILE)
    shutil.copy(conformance("peers/city96") / "latent-upscaler-v2.1_SDxl-x1.5.safetensors", folder / CITY96_FILE)
    if not (folder / LSSGEN_DIR).exists():
        shutil.copytree(conformance("peers/lssgen4"), folder / LSSGEN_DIR)
    return comfy_server


def loader(model_name: str, model: list | None = None) -> dict:
    inputs: dict = {"model_name": model_name, "dtype": "auto"}
    if model is not None:
        inputs["model"] = model
    return {"class_type": LOADER, "inputs": inputs}


def upscaler(samples: list, model: list, scale: float = 2.0, latent_format: str = "auto", tile: int = 0) -> dict:
    return {"class_type": UPSCALE, "inputs": {"samples": samples, "upscale_model": model, "scale": scale,
                                              "latent_format": latent_format, "tile": tile}}


def decode_and_save(prompt: dict, samples: list, vae: list, prefix: str, key: str) -> None:
    prompt[f"{key}d"] = {"class_type": "VAEDecode", "inputs": {"samples": samples, "vae": vae}}
    prompt[f"{key}s"] = {"class_type": "SaveImage", "inputs": {"images": [f"{key}d", 0], "filename_prefix": prefix}}


def saved_sizes(server: harness.ComfyServer, entry: dict) -> dict[str, tuple[int, int]]:
    """``{save node id: (width, height)}`` of the PNGs a prompt saved, fetched through /view."""
    return {node: harness.png_size(server.view(out["images"][0]))
            for node, out in entry["outputs"].items() if out.get("images")}


def error_of(entry: dict) -> dict:
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "error" and errors, entry["status"]
    return errors[0]


@pytest.mark.comfyui_server
def test_object_info_lists_both_nodes(server: harness.ComfyServer) -> None:
    info = server.object_info()
    load, up = info[LOADER], info[UPSCALE]
    assert load["display_name"] == "Load LUA Model" and load["category"] == "loaders"
    assert load["output"] == ["LUA_MODEL"] and load["python_module"] == "custom_nodes.ComfyUI-LUA"
    assert list(load["input"]["required"]) == ["model_name", "dtype"]
    assert load["input"]["optional"]["model"][0] == "MODEL"
    combo = load["input"]["required"]["model_name"]
    assert combo[0] == "COMBO" and combo[1]["default"] == "auto"
    values = combo[1]["options"]
    assert values[0] == "auto"
    assert LUA_FILE in values, "a pickle the registry does not name gets no label (its keys cost a full read)"
    assert f"{CITY96_FILE} [city96 · 4ch SDXL/SD1.5 · x2]" in values
    assert f"{LSSGEN_DIR}/ [LSSGen · 4ch SDXL/SD1.5 · x2 x4 · research use]" in values
    assert "download/lua-flux [LUA · 16ch FLUX/SD3 · x2 x4 · Apache-2.0]" in values
    assert load["input"]["required"]["dtype"][1]["options"] == ["auto", "fp32", "fp16", "bf16"]
    assert up["display_name"] == "Latent Upscale (LUA)" and up["category"] == "latent/upscaling"
    assert up["output"] == ["LATENT"]
    req = up["input"]["required"]
    assert list(req) == ["samples", "upscale_model", "scale", "latent_format"]
    assert req["samples"][0] == "LATENT" and req["upscale_model"][0] == "LUA_MODEL"
    assert req["scale"][0] == "FLOAT"
    assert {k: req["scale"][1][k] for k in ("default", "min", "max", "step")} == \
        {"default": 2.0, "min": 1.0, "max": 4.0, "step": 0.25}
    assert req["latent_format"][1]["options"] == ["auto", "flux", "sd3", "sdxl", "sd15", "flux2", "wan21",
                                                  "hunyuanimage21", "cogview4"]
    assert up["input"]["optional"]["tile"][0] == "INT" and up["input"]["optional"]["tile"][1]["default"] == 0
    assert "hires" in up["description"] and "upscale" in load["description"]
    assert server.import_failures() == []


@pytest.mark.comfyui_server
def test_sd3_latent_x2_decodes_to_twice_the_size(server: harness.ComfyServer) -> None:
    prompt = {
        "1": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": loader(LUA_FILE),  # no label: what a hand-written API prompt sends
        "3": upscaler(["1", 0], ["2", 0]),
        "4": {"class_type": "VAELoader", "inputs": {"vae_name": make_test_models.TAESD_16CH}},
    }
    decode_and_save(prompt, ["3", 0], ["4", 0], "lua_srv_x2", "big")
    decode_and_save(prompt, ["1", 0], ["4", 0], "lua_srv_x1", "plain")
    entry = server.run_prompt(prompt, timeout=120)
    assert saved_sizes(server, entry) == {"bigs": (128, 128), "plains": (64, 64)}


@pytest.mark.comfyui_server
def test_four_channel_latent_into_lua_is_a_clear_error(server: harness.ComfyServer) -> None:
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": loader(LUA_FILE),
        "3": upscaler(["1", 0], ["2", 0]),
        "4": {"class_type": "LUATest_LatentInfo", "inputs": {"samples": ["3", 0]}},
    }
    entry = server.run_prompt(prompt, timeout=120, check=False)
    err = error_of(entry)
    assert err["node_type"] == UPSCALE and err["node_id"] == "3"
    assert err["exception_type"] == "ValueError"
    msg = err["exception_message"]
    assert msg.startswith("Latent Upscale (LUA): the latent has 4 channels (SDXL/SD1.5)")
    assert f"{LUA_FILE} is a 16-channel LUA upscaler (FLUX/SD3)" in msg and "Load LUA Model" in msg


@pytest.mark.comfyui_server
def test_sdxl_shaped_prompt_with_city96_and_lssgen(server: harness.ComfyServer) -> None:
    values = server.object_info(LOADER)[LOADER]["input"]["required"]["model_name"][1]["options"]
    city96 = next(v for v in values if v.startswith(CITY96_FILE + " ["))  # what the frontend would send
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 2}},
        "2": loader(city96),
        "3": upscaler(["1", 0], ["2", 0]),
        "4": loader(LSSGEN_DIR + "/"),
        "5": upscaler(["1", 0], ["4", 0], latent_format="sdxl"),
        "6": {"class_type": "VAELoader", "inputs": {"vae_name": make_test_models.TAESD_4CH}},
    }
    decode_and_save(prompt, ["3", 0], ["6", 0], "lua_srv_city96", "city")
    decode_and_save(prompt, ["5", 0], ["6", 0], "lua_srv_lssgen", "lss")
    entry = server.run_prompt(prompt, timeout=120)
    assert saved_sizes(server, entry) == {"citys": (128, 96), "lsss": (128, 96)}
    assert all(len(out["images"]) == 2 for out in entry["outputs"].values()), "the batch of 2 survives"


@pytest.mark.comfyui_server
def test_auto_with_a_four_channel_model(server: harness.ComfyServer) -> None:
    prompt = {
        "1": {"class_type": "LUATest_TinyModel", "inputs": {"latent_format": "SDXL", "model_type": "EPS", "seed": 0}},
        "2": {"class_type": "LUATest_EmptyLatentForModel", "inputs": {"model": ["1", 0], "width": 64, "height": 64,
                                                                      "batch": 1}},
        "3": loader("auto", ["1", 0]),
        "4": upscaler(["2", 0], ["3", 0]),
        "5": {"class_type": "LUATest_LatentInfo", "inputs": {"samples": ["4", 0]}},
    }
    entry = server.run_prompt(prompt, timeout=120)
    assert entry["outputs"]["5"]["latent_info"][0]["shape"] == [1, 4, 16, 16]
    picked = [ln for ln in server.log_text().splitlines() if "auto picked" in ln]
    assert picked and "for sdxl latents" in picked[-1], picked
    assert LUA_FILE not in picked[-1]


@pytest.mark.comfyui_server
def test_mismatch_names_the_checkpoint_and_what_fits(server: harness.ComfyServer) -> None:
    prompt = {
        "1": {"class_type": "LUATest_TinyModel", "inputs": {"latent_format": "SDXL", "model_type": "EPS", "seed": 0}},
        "2": loader(LUA_FILE, ["1", 0]),
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": upscaler(["3", 0], ["2", 0]),
        "5": {"class_type": "LUATest_LatentInfo", "inputs": {"samples": ["4", 0]}},
    }
    err = error_of(server.run_prompt(prompt, timeout=120, check=False))
    assert err["node_type"] == LOADER
    msg = err["exception_message"]
    assert msg.startswith(f"Load LUA Model: {LUA_FILE} (LUA · 16ch FLUX/SD3 · x2 x4) takes 16-channel latents, but "
                          "the connected MODEL makes 4-channel SDXL latents.")
    fits = msg.split("Upscalers that fit: ")[1]
    assert CITY96_FILE in fits and "download/city96-sdxl-x2" in fits and LUA_FILE not in fits


@pytest.mark.comfyui_server
def test_unknown_file_fails_validation(server: harness.ComfyServer) -> None:
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": loader("lua_srv_missing.safetensors"),
        "3": upscaler(["1", 0], ["2", 0]),
        "4": {"class_type": "LUATest_LatentInfo", "inputs": {"samples": ["3", 0]}},
    }
    with pytest.raises(harness.PromptValidationError) as err:
        server.post_prompt(prompt)
    detail = err.value.node_errors["2"]["errors"][0]["details"]
    assert "'lua_srv_missing.safetensors' is not in latent_upscale_models" in detail


@pytest.mark.comfyui_server
def test_interrupt_stops_a_slow_upscale(server: harness.ComfyServer) -> None:
    """A 256x256 latent in 16-pixel tiles runs ~1000 forwards of a slower LUA (~25 s on 2 cores);
    /interrupt must end it within seconds, reported at the upscale node."""
    prompt = {
        "1": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 2048, "height": 2048, "batch_size": 1}},
        "2": loader(SLOW_FILE),
        "3": upscaler(["1", 0], ["2", 0], tile=16),
        "4": {"class_type": "LUATest_LatentInfo", "inputs": {"samples": ["3", 0]}},
    }
    prompt_id = server.post_prompt(prompt)["prompt_id"]
    deadline = time.monotonic() + 60
    while not server.queue()["queue_running"]:
        assert time.monotonic() < deadline, "the prompt never started"
        time.sleep(0.05)
    time.sleep(2.0)  # the latent and the loader take well under a second: the upscale is running now
    asked = time.monotonic()
    server.interrupt()
    entry = server.wait(prompt_id, timeout=60)
    stopped_after = time.monotonic() - asked
    status = entry["status"]
    interrupted = [m[1] for m in status["messages"] if m[0] == "execution_interrupted"]
    assert status["status_str"] == "error" and interrupted, status
    assert interrupted[0]["node_type"] == UPSCALE
    assert stopped_after < 5.0, f"took {stopped_after:.1f}s to stop"
