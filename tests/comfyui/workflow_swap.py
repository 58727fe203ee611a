"""Turn the pack's example workflows into prompts that run on CPU in seconds, and read them strictly.

Why it exists: every file in ``workflows/`` needs multi-gigabyte checkpoints (FLUX, SD3.5, SDXL,
Qwen-Image, text encoders, VAEs, RealESRGAN). The tests must still run those exact graphs through a real ComfyUI, so
this module swaps only the heavy *loaders* for generated test models and leaves every other node and
value as the user gets it:

* ``CheckpointLoaderSimple`` / ``UNETLoader`` -> ``LUATest_TinyModel`` of the checkpoint's family (its
  ``latent_format`` and model type come from the file name: FLUX, SD3, SDXL, SD1.5, Qwen-Image); the
  checkpoint's VAE output -> ``VAELoader`` with the random test VAE of that latent format;
* text encoder loaders are dropped and ``CLIPTextEncode`` -> ``LUATest_ZeroConditioning`` (the tiny
  model ignores conditioning); ``VAELoader`` -> the random test VAE of the family's latent format
  (TAESD with 4 or 16 channels; for Qwen-Image a tiny Wan 2.1 VAE, which decodes its 5-D latents);
* ``UpscaleModelLoader`` -> a tiny random RealESRGAN-compact file (:func:`write_tiny_esrgan`);
* every pixel size (empty latents, ``ModelSamplingFlux``, tiled decode tiles) divided by ``shrink``.

``LUA_LoadModel`` keeps its value: tests put a small checkpoint under the name the download entry
fetches (``lua_flux.pth``, ``latent-upscaler-v2.1_SDxl-x2.0.safetensors``, ``upscaler_Wan21.safetensors``)
into the server's ``latent_upscale_models``, so ``download/...`` and ``auto`` resolve to it offline, as
after a real first run. :func:`ui_to_api` is a deliberately strict, independent reading of the UI format (the
browser's ``app.graphToPrompt()`` is the ground truth the browser test compares against).

Imported by ``test_progressive.py`` and ``test_workflows.py``; standard library only at import time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
FRONTEND_ONLY = frozenset({"Note", "MarkdownNote"})

# Which models/ folder a loader's file combo lists: the values a user must download into that folder.
MODEL_FILE_INPUTS: dict[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name1"): "text_encoders",
    ("TripleCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name3"): "text_encoders",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
}
MODEL_LOADERS = frozenset({"CheckpointLoaderSimple", "UNETLoader"})
TEXT_ENCODER_LOADERS = frozenset({"DualCLIPLoader", "TripleCLIPLoader", "CLIPLoader"})
PIXEL_SIZE_NODES = frozenset({"EmptySD3LatentImage", "EmptyLatentImage", "ModelSamplingFlux"})

# the random test VAE (tests/comfyui/make_test_models.py) that decodes each LUATest_TinyModel latent format
TEST_VAE = {"SD15": "lua_test_taesd_4ch.safetensors", "SDXL": "lua_test_taesd_4ch.safetensors",
            "SD3": "lua_test_taesd_16ch.safetensors", "Flux": "lua_test_taesd_16ch.safetensors",
            "Wan21": "lua_test_wan21_vae.safetensors"}
TINY_ESRGAN_NAME = "lua_test_realesrgan_compact_x4.safetensors"


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """The API prompt a UI workflow means: widgets_values read in /object_info input order (plus the
    control_after_generate value after each seed), links from the links table (types checked)."""
    links = {link[0]: link for link in ui["links"]}
    nodes = {node["id"]: node for node in ui["nodes"]}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node["type"] in object_info, f"node {node['id']}: type {node['type']} is not registered"
        info = object_info[node["type"]]
        specs = {**info["input"]["required"], **info["input"].get("optional", {})}
        order = info["input_order"]["required"] + info["input_order"].get("optional", [])
        linked = {}
        for slot in node["inputs"]:
            if slot.get("link") is None:
                continue
            link_id, src, src_slot, dst, dst_slot, kind = links[slot["link"]]
            assert (dst, node["inputs"][dst_slot]["name"]) == (node["id"], slot["name"]), f"link {link_id}"
            assert object_info[nodes[src]["type"]]["output"][src_slot] == kind, f"link {link_id} type"
            assert link_id in nodes[src]["outputs"][src_slot]["links"], f"link {link_id} missing at its origin"
            linked[slot["name"]] = [str(src), src_slot]
        values = list(node["widgets_values"])
        inputs: dict[str, Any] = {}
        for name in order:
            kind, opts = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                value = values.pop(0)
                if opts.get("control_after_generate"):
                    assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")
                inputs[name] = linked.get(name, value)
            elif name in linked:
                inputs[name] = linked[name]
        assert values == [], f"{node['type']} {node['id']}: widgets_values left over: {values}"
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"]}
    return prompt


def strip_meta(prompt: Mapping[str, Any]) -> dict:
    """``{id: {"inputs", "class_type"}}``: an API prompt without ``_meta`` (titles), for comparisons."""
    return {k: {"inputs": v["inputs"], "class_type": v["class_type"]} for k, v in prompt.items()}


def family_of(filename: str) -> tuple[str, str]:
    """(``LUATest_TinyModel`` latent_format, model_type) for a checkpoint file name."""
    name = filename.lower()
    if "qwen" in name:  # Qwen-Image: Wan 2.1 latents, flow matching
        return "Wan21", "FLOW"
    if "flux" in name:
        return "Flux", "FLOW"
    if "sd3" in name:
        return "SD3", "FLOW"
    if "xl" in name:
        return "SDXL", "EPS"
    return "SD15", "EPS"


def swap_heavy_loaders(prompt: Mapping[str, Any], *, shrink: int = 8, lua_name: str | None = None,
                       upscale_model: str | None = TINY_ESRGAN_NAME) -> dict:
    """A copy of an API prompt with the heavy loaders swapped for test models (see the module doc).

    ``lua_name`` replaces every ``LUA_LoadModel.model_name`` (None keeps the workflow's value). Fails
    when a swapped loader output is used by anything the swap does not cover, so a new workflow that
    needs a new rule says so instead of running something else.
    """
    out = json.loads(json.dumps(prompt))
    families = {family_of(node["inputs"].get("ckpt_name") or node["inputs"]["unet_name"])
                for node in out.values() if node["class_type"] in MODEL_LOADERS}
    assert len(families) <= 1, f"one model family per workflow, got {families}"
    latent_format, model_type = families.pop() if families else ("Flux", "FLOW")
    vae = TEST_VAE[latent_format]
    allowed: dict[str, set[int]] = {}  # swapped node id -> output slots that may still be used
    removed: set[str] = set()
    for node_id, node in list(out.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind in MODEL_LOADERS:
            out[node_id] = {"class_type": "LUATest_TinyModel",
                            "inputs": {"latent_format": latent_format, "model_type": model_type, "seed": 0}}
            allowed[node_id] = {0}
            if kind == "CheckpointLoaderSimple":
                out[node_id + "_vae"] = {"class_type": "VAELoader", "inputs": {"vae_name": vae}}
                allowed[node_id].add(2)
        elif kind in TEXT_ENCODER_LOADERS:
            del out[node_id]
            removed.add(node_id)
        elif kind == "CLIPTextEncode":
            out[node_id] = {"class_type": "LUATest_ZeroConditioning", "inputs": {"tokens": 1, "dim": 8}}
        elif kind == "VAELoader":
            inputs["vae_name"] = vae
        elif kind == "UpscaleModelLoader" and upscale_model is not None:
            inputs["model_name"] = upscale_model
        elif kind in PIXEL_SIZE_NODES:
            inputs["width"] //= shrink
            inputs["height"] //= shrink
        elif kind == "VAEDecodeTiled":
            inputs["tile_size"] = max(64, inputs["tile_size"] // shrink)
            inputs["overlap"] = inputs["overlap"] // shrink
        elif kind == "LUA_LoadModel" and lua_name is not None:
            inputs["model_name"] = lua_name
    for node_id, node in out.items():
        for name, value in node["inputs"].items():
            if not isinstance(value, list):
                continue
            assert value[0] not in removed, f"{node_id}.{name} uses a dropped text encoder loader"
            if value[0] in allowed:
                assert value[1] in allowed[value[0]], f"{node_id}.{name}: output {value[1]} of a swapped loader"
                if value[1] == 2:  # the checkpoint's VAE
                    node["inputs"][name] = [value[0] + "_vae", 0]
    return out


def tiny_prompt(prompt: dict, lua_name: str) -> dict:
    """The progressive workflows' API twin with the heavy parts swapped (FLUX checkpoint -> tiny Flux
    MODEL + 16-channel TAESD, text encoders -> zero conditioning, LUA -> ``lua_name``), sizes / 8."""
    return swap_heavy_loaders(prompt, lua_name=lua_name)


def write_tiny_esrgan(path: str | os.PathLike, seed: int = 0) -> Path:
    """A random RealESRGAN-compact (SRVGGNetCompact) x4 file that ComfyUI's UpscaleModelLoader (spandrel)
    loads: 8 features, 2 convs, ~5k parameters; stands in for RealESRGAN_x4plus in the tests."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    feat, convs, scale = 8, 2, 4
    sd: dict[str, torch.Tensor] = {}
    layer, cin = 0, 3
    for _ in range(convs + 1):  # conv + PReLU, repeated; then the conv to 3 * scale^2 channels
        sd[f"body.{layer}.weight"] = torch.randn(feat, cin, 3, 3, generator=gen) * 0.1
        sd[f"body.{layer}.bias"] = torch.zeros(feat)
        sd[f"body.{layer + 1}.weight"] = torch.full((feat,), 0.25)
        layer, cin = layer + 2, feat
    sd[f"body.{layer}.weight"] = torch.randn(3 * scale * scale, feat, 3, 3, generator=gen) * 0.1
    sd[f"body.{layer}.bias"] = torch.zeros(3 * scale * scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path
