#!/usr/bin/env python
"""Generate the example workflows and the template-browser thumbnails in the real ComfyUI frontend.

Why a script: a workflow file written by hand drifts from what the frontend saves (widget order, hidden
values such as ``control_after_generate``, link tables, node sizes), and a thumbnail made by hand drifts
from the workflow. Here each workflow is defined once, as the API prompt (nodes, values, links) plus its
layout, notes and model metadata; the frontend builds the graph from it (``tests/browser/
build_workflows.mjs``), so ``workflows/<name>.json`` is what ComfyUI 0.3.75's frontend serializes and
``workflows/api/<name>.json`` is what its ``graphToPrompt`` queues. Every ``workflows/<name>.json``
(the two progressive ones too) gets ``workflows/<name>.jpg``: a screenshot of the graph at 100 % zoom,
fitted into a 512x384 JPEG.

Needs: .venv with ComfyUI (scripts/setup_env.sh), Debian chromium at /usr/bin/chromium and
``npm ci`` in tests/browser. Usage::

    .venv/bin/python scripts/make_workflow_assets.py            # all workflows and thumbnails
    .venv/bin/python scripts/make_workflow_assets.py --only flux_lua_x2 --keep /tmp/wf   # one; keep PNGs

Deterministic: same definitions, same frontend -> same JSON (the workflow ids are uuid5 of the name).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from comfyui import harness  # noqa: E402  (tests/ is not a package on the default path)

WORKFLOWS = ROOT / "workflows"
BROWSER = ROOT / "tests" / "browser"
THUMB_SIZE = (512, 384)
THUMB_BG = (20, 20, 20)  # the canvas background around the graph

# --------------------------------------------------------------------------------------------------
# Where the checkpoints come from (the URLs ComfyUI's own templates use; all public, no login)
# --------------------------------------------------------------------------------------------------


def _model(name: str, url: str, directory: str) -> dict[str, str]:
    return {"name": name, "url": url, "directory": directory}


FLUX_UNET = _model("flux1-dev.safetensors",
                   "https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors",
                   "diffusion_models")
CLIP_L = _model("clip_l.safetensors",
                "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
                "text_encoders")
T5XXL = _model("t5xxl_fp16.safetensors",
               "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
               "text_encoders")
FLUX_VAE = _model("ae.safetensors",
                  "https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/"
                  "ae.safetensors", "vae")
SD35 = _model("sd3.5_large_fp8_scaled.safetensors",
              "https://huggingface.co/Comfy-Org/stable-diffusion-3.5-fp8/resolve/main/"
              "sd3.5_large_fp8_scaled.safetensors", "checkpoints")
SDXL = _model("sd_xl_base_1.0.safetensors",
              "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
              "checkpoints")
ESRGAN = _model("RealESRGAN_x4plus.safetensors",
                "https://huggingface.co/Comfy-Org/Real-ESRGAN_repackaged/resolve/main/RealESRGAN_x4plus.safetensors",
                "upscale_models")
_QWEN = "https://huggingface.co/Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files/"
QWEN_UNET = _model("qwen_image_fp8_e4m3fn.safetensors", _QWEN + "diffusion_models/qwen_image_fp8_e4m3fn.safetensors",
                   "diffusion_models")
QWEN_TE = _model("qwen_2.5_vl_7b_fp8_scaled.safetensors",
                 _QWEN + "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors", "text_encoders")
QWEN_VAE = _model("qwen_image_vae.safetensors", _QWEN + "vae/qwen_image_vae.safetensors", "vae")

LUA_FLUX = "download/lua-flux [LUA · 16ch FLUX/SD3 · x2 x4 · Apache-2.0]"
PROMPT = ("a lighthouse on a rocky coast at sunset, dramatic clouds over a stormy sea, waves breaking on the "
          "rocks, highly detailed photograph")
NEGATIVE = "blurry, low resolution, jpeg artifacts, watermark, text"

GREEN = {"color": "#232", "bgcolor": "#353"}  # ComfyUI's colours for prompts
RED = {"color": "#322", "bgcolor": "#533"}
BLUE = {"color": "#223", "bgcolor": "#335"}  # this pack's nodes
NOTE_COLOR = {"color": "#432", "bgcolor": "#653"}

# heights the frontend gives each node (computeSize); widths default to COL
HEIGHT = {"UNETLoader": 82, "DualCLIPLoader": 130, "VAELoader": 58, "FluxGuidance": 58, "ConditioningZeroOut": 26,
          "EmptySD3LatentImage": 106, "EmptyLatentImage": 106, "KSampler": 262, "LUA_LoadModel": 82,
          "LUA_LatentUpscale": 126, "VAEDecode": 46, "VAEDecodeTiled": 150, "LatentUpscaleBy": 82,
          "UpscaleModelLoader": 58, "ImageUpscaleWithModel": 46, "ImageScaleBy": 82, "ImageStitch": 150,
          "CheckpointLoaderSimple": 98, "CLIPLoader": 106, "ModelSamplingAuraFlow": 58}
COL = 300
GAP = 40  # title bar (30) + 10
TOP = 40


def unwrap(markdown: str) -> str:
    """Join hard-wrapped lines: the frontend's markdown view drops a line break inside a paragraph
    without putting a space in its place ("Model\nwith" shows as "Modelwith")."""
    out: list[str] = []
    for line in markdown.strip().splitlines():
        stripped = line.strip()
        starts_block = not stripped or stripped.startswith(("#", "- ", "* ")) or re.match(r"\d+\. ", stripped)
        if out and out[-1] and not starts_block:
            out[-1] += " " + stripped
        else:
            out.append(stripped)
    return "\n".join(out) + "\n"


class Workflow:
    """One workflow being defined: the API prompt plus what the UI adds (layout, notes, models)."""

    def __init__(self, name: str, description: str):
        self.name = name
        self.description = description
        self.api: dict[str, dict] = {}
        self.layout: dict[str, dict] = {}
        self.node_models: dict[str, list] = {}
        self.notes: list[dict] = []
        self.thumbnail_nodes: list[int] = []  # what the template thumbnail frames (default: all)

    def add(self, node_id: int, class_type: str, title: str | None = None, models: list | None = None,
            **inputs: Any) -> int:
        values = {k: [str(v[0]), v[1]] if isinstance(v, tuple) else v for k, v in inputs.items()}
        self.api[str(node_id)] = {"inputs": values, "class_type": class_type}
        if title:
            self.api[str(node_id)]["_meta"] = {"title": title}
        if models:
            self.node_models[str(node_id)] = models
        return node_id

    def column(self, x: int, items: list, y: int = TOP, width: int = COL) -> None:
        """Stack nodes top to bottom at x: items are ids, or (id, width, height), or (id, height)."""
        for item in items:
            if isinstance(item, int):
                node_id, w, h = item, width, None
            elif len(item) == 3:
                node_id, w, h = item
            else:
                (node_id, h), w = item, width
            h = h or HEIGHT[self.api[str(node_id)]["class_type"]]
            self.layout.setdefault(str(node_id), {}).update(pos=[x, y], size=[w, h])
            y += h + GAP

    def colour(self, colours: dict, *ids: int) -> None:
        for node_id in ids:
            self.layout.setdefault(str(node_id), {}).update(colours)

    def note(self, node_id: int, text: str, title: str = "What this shows") -> None:
        self.notes.append({"id": node_id, "type": "MarkdownNote", "title": title, "text": unwrap(text)})
        self.colour(NOTE_COLOR, node_id)

    def models(self) -> list[dict]:
        """Top-level ``models``: every model a node needs, once, in node order."""
        seen: list[dict] = []
        for entries in self.node_models.values():
            seen.extend(m for m in entries if m not in seen)
        return seen

    def spec(self) -> dict:
        xs = [lay["pos"][0] + lay["size"][0] for lay in self.layout.values()]
        ys = [lay["pos"][1] + lay["size"][1] for lay in self.layout.values()]
        width, height = max(xs) + 40, max(ys) + 40
        # the view on open: all of it in a 1600x900 window, but not below 0.6 (text stays readable; the
        # note on the left comes first)
        scale = round(max(0.6, min(1.0, 1600 / width, 900 / height)), 3)
        return {"name": self.name, "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-lua/workflows/{self.name}")),
                "api": self.api, "layout": self.layout, "notes": self.notes, "node_models": self.node_models,
                "models": self.models(), "thumbnail_nodes": self.thumbnail_nodes or None,
                "extra": {"ds": {"scale": scale, "offset": [20, 40]},
                          "info": {"name": self.name, "author": "ComfyUI-LUA", "description": self.description}}}


def flux_front(wf: Workflow, width: int = 1024, height: int = 1024) -> None:
    """Nodes 1-8 of every FLUX workflow: split-file loaders, prompt, empty latent, KSampler (seed 42)."""
    wf.add(1, "UNETLoader", "Load FLUX.1 dev", [FLUX_UNET], unet_name=FLUX_UNET["name"], weight_dtype="default")
    wf.add(2, "DualCLIPLoader", "Load FLUX text encoders", [CLIP_L, T5XXL], clip_name1=CLIP_L["name"],
           clip_name2=T5XXL["name"], type="flux", device="default")
    wf.add(3, "VAELoader", "Load FLUX VAE", [FLUX_VAE], vae_name=FLUX_VAE["name"])
    wf.add(4, "CLIPTextEncode", "Prompt", text=PROMPT, clip=(2, 0))
    wf.add(5, "FluxGuidance", guidance=3.5, conditioning=(4, 0))
    wf.add(6, "ConditioningZeroOut", "Negative (unused at cfg 1)", conditioning=(4, 0))
    wf.add(7, "EmptySD3LatentImage", f"Generate at {width}x{height}", width=width, height=height, batch_size=1)
    wf.add(8, "KSampler", seed=42, steps=20, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0,
           model=(1, 0), positive=(5, 0), negative=(6, 0), latent_image=(7, 0))
    wf.colour(GREEN, 4)
    x0 = 500  # column 0 (x 0..460) is the note
    wf.column(x0, [1, 2, 3])
    wf.column(x0 + 340, [(4, 400, 180), 5, 6, 7], width=400)
    wf.column(x0 + 780, [8])


FLUX_MODELS_MD = """
**Models** (ComfyUI's *Missing Models* dialog offers each download):
- `flux1-dev.safetensors` → `models/diffusion_models`
  ([Comfy-Org/flux1-dev](https://huggingface.co/Comfy-Org/flux1-dev))
- `clip_l.safetensors`, `t5xxl_fp16.safetensors` → `models/text_encoders`
  ([comfyanonymous/flux_text_encoders](https://huggingface.co/comfyanonymous/flux_text_encoders))
- `ae.safetensors` → `models/vae` (the FLUX VAE, from
  [Comfy-Org/Lumina_Image_2.0_Repackaged](https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged))
- LUA: nothing to do. **Load LUA Model** downloads `lua_flux.pth`
  ([vaskers5/LUA-FLUX](https://huggingface.co/vaskers5/LUA-FLUX), Apache-2.0) into
  `models/latent_upscale_models` on the first run.
"""


def flux_lua_x2() -> Workflow:
    wf = Workflow("flux_lua_x2", "FLUX.1 dev at 1024, Latent Upscale (LUA) x2, one VAE decode at 2048")
    flux_front(wf)
    wf.add(9, "LUA_LoadModel", dtype="auto", model_name=LUA_FLUX, model=(1, 0))
    wf.add(10, "LUA_LatentUpscale", "Latent Upscale (LUA) x2", scale=2.0, latent_format="auto",
           tile=0, samples=(8, 0), upscale_model=(9, 0))
    wf.add(11, "VAEDecode", "VAE Decode at 2048x2048", samples=(10, 0), vae=(3, 0))
    wf.add(12, "SaveImage", filename_prefix="LUA/flux_2048", images=(11, 0))
    wf.colour(BLUE, 9, 10)
    wf.column(1280, [9], y=TOP + 262 + GAP)
    wf.column(1620, [10, (11, 300, 46)])
    wf.column(1960, [(12, 520, 560)])
    wf.thumbnail_nodes = [8, 9, 10, 11, 12]
    wf.note(20, """
# FLUX: 1024 → 2048 in latent space

**KSampler** generates at 1024×1024 (20 steps, seed 42). **Latent Upscale (LUA)** doubles the latent
(128×128 → 256×256, 16 channels) and **VAE Decode** runs once, at 2048×2048. No second diffusion pass, no
pixel-space upscaler.

- **Load LUA Model** → `download/lua-flux`: the official LUA weights (`auto` picks the same for a FLUX model).
- **scale** 2.0; for 4096 see *flux_lua_x4_tiled*. **tile** 0 = the whole latent at once (exact).
- **Expect**: the 1024 picture at 2048 px, same composition, with sharper edges and texture than
  *Upscale Latent By* (bicubic) gives; LUA adds no new objects (compare them in *compare_upscalers*).
  Decoding 2048² with the FLUX VAE takes several GB of VRAM; ComfyUI falls back to a tiled decode if it runs out.
""" + FLUX_MODELS_MD)
    wf.column(0, [(20, 460, 380)])
    return wf


def flux_lua_x4_tiled() -> Workflow:
    wf = Workflow("flux_lua_x4_tiled", "FLUX.1 dev at 1024, Latent Upscale (LUA) x4, tiled VAE decode at 4096")
    flux_front(wf)
    wf.add(9, "LUA_LoadModel", dtype="auto", model_name=LUA_FLUX, model=(1, 0))
    wf.add(10, "LUA_LatentUpscale", "Latent Upscale (LUA) x4", scale=4.0, latent_format="auto",
           tile=0, samples=(8, 0), upscale_model=(9, 0))
    wf.add(11, "VAEDecodeTiled", "VAE Decode (Tiled) at 4096x4096", tile_size=1024, overlap=64, temporal_size=64,
           temporal_overlap=8, samples=(10, 0), vae=(3, 0))
    wf.add(12, "SaveImage", filename_prefix="LUA/flux_4096", images=(11, 0))
    wf.colour(BLUE, 9, 10)
    wf.column(1280, [9], y=TOP + 262 + GAP)
    wf.column(1620, [10, 11])
    wf.column(1960, [(12, 520, 560)])
    wf.thumbnail_nodes = [8, 9, 10, 11, 12]
    wf.note(20, """
# FLUX: 1024 → 4096 in latent space, tiled decode

Like *flux_lua_x2*, with **scale 4.0**: LUA's x4 head turns the 128×128 latent into 512×512 in one pass,
and **VAE Decode (Tiled)** decodes it to 4096×4096 in 1024 px tiles (64 px overlap) so the decoder fits in
memory.

- LUA itself needs no tiling: its memory is planned automatically (it splits its own work exactly);
  set **tile** (latent pixels, e.g. 256) only if it still runs out of memory (approximate near seams).
- Lower **tile_size** (512) if the decode runs out of memory; keep overlap ≥ 64 to hide seams.
- **Expect**: a 4096×4096 PNG (tens of MB) of the 1024 composition. Detail is LUA's reconstruction
  of the latent, not re-sampled: for more invented detail run a low-denoise pass instead.
""" + FLUX_MODELS_MD)
    wf.column(0, [(20, 460, 400)])
    return wf


def sd3_lua_x2() -> Workflow:
    wf = Workflow("sd3_lua_x2", "SD3.5 Large at 1024, Latent Upscale (LUA) x2 with the FLUX-trained LUA weights")
    wf.add(1, "CheckpointLoaderSimple", "Load SD3.5 Large (fp8)", [SD35], ckpt_name=SD35["name"])
    wf.add(2, "CLIPTextEncode", "Prompt", text=PROMPT, clip=(1, 1))
    wf.add(3, "CLIPTextEncode", "Negative prompt", text=NEGATIVE, clip=(1, 1))
    wf.add(4, "EmptySD3LatentImage", "Generate at 1024x1024", width=1024, height=1024, batch_size=1)
    wf.add(5, "KSampler", seed=42, steps=20, cfg=4.0, sampler_name="euler", scheduler="sgm_uniform", denoise=1.0,
           model=(1, 0), positive=(2, 0), negative=(3, 0), latent_image=(4, 0))
    wf.add(6, "LUA_LoadModel", dtype="auto", model_name=LUA_FLUX, model=(1, 0))
    wf.add(7, "LUA_LatentUpscale", "Latent Upscale (LUA) x2", scale=2.0, latent_format="auto", tile=0,
           samples=(5, 0), upscale_model=(6, 0))
    wf.add(8, "VAEDecode", "VAE Decode at 2048x2048", samples=(7, 0), vae=(1, 2))
    wf.add(9, "SaveImage", filename_prefix="LUA/sd3_2048", images=(8, 0))
    wf.colour(GREEN, 2)
    wf.colour(RED, 3)
    wf.colour(BLUE, 6, 7)
    wf.column(500, [(1, 320, 98)])
    wf.column(860, [(2, 400, 160), (3, 400, 110), 4], width=400)
    wf.column(1300, [5, 6])
    wf.column(1640, [7, (8, 300, 46)])
    wf.column(1980, [(9, 520, 560)])
    wf.thumbnail_nodes = [5, 6, 7, 8, 9]
    wf.note(20, """
# SD3.5: 1024 → 2048 with the same LUA weights

SD3/SD3.5 latents have the same 16 channels as FLUX's, so **Latent Upscale (LUA)** runs on them with the
official LUA weights. **Load LUA Model** gets the SD3 MODEL, checks the channel count, and `auto`
would choose the same `lua-flux` download.

- The public LUA weights were trained on FLUX.1 latents; SD3 latents have the same 16 channels but not
  the same statistics, and no SD3-trained LUA weights are public. Expect a 2048 image of the 1024
  composition, but judge its quality on your prompts (compare with *Upscale Latent By*, as in
  *compare_upscalers*) before relying on it.
- Sampler settings as ComfyUI's SD3.5 example (20 steps, cfg 4, euler, sgm_uniform).

**Models**: `sd3.5_large_fp8_scaled.safetensors` → `models/checkpoints`
([Comfy-Org/stable-diffusion-3.5-fp8](https://huggingface.co/Comfy-Org/stable-diffusion-3.5-fp8); text
encoders and VAE included). LUA: downloaded by **Load LUA Model** on the first run
([vaskers5/LUA-FLUX](https://huggingface.co/vaskers5/LUA-FLUX) `lua_flux.pth`, Apache-2.0).
""")
    wf.column(0, [(20, 460, 360)])
    return wf


def compare_upscalers() -> Workflow:
    wf = Workflow("compare_upscalers", "One FLUX seed upscaled x2 three ways: bicubic latent, LUA, decode + RealESRGAN")
    flux_front(wf)
    wf.add(13, "UpscaleModelLoader", "Load RealESRGAN x4", [ESRGAN], model_name=ESRGAN["name"])
    # A: bicubic in latent space
    wf.add(9, "LatentUpscaleBy", "A: Upscale Latent By (bicubic) x2", upscale_method="bicubic", scale_by=2.0,
           samples=(8, 0))
    wf.add(14, "VAEDecode", "A: decode at 2048", samples=(9, 0), vae=(3, 0))
    wf.add(15, "SaveImage", "A: bicubic latent x2", filename_prefix="LUA/compare_A_bicubic", images=(14, 0))
    # B: LUA in latent space
    wf.add(10, "LUA_LoadModel", dtype="auto", model_name=LUA_FLUX, model=(1, 0))
    wf.add(11, "LUA_LatentUpscale", "B: Latent Upscale (LUA) x2", scale=2.0, latent_format="auto", tile=0,
           samples=(8, 0), upscale_model=(10, 0))
    wf.add(16, "VAEDecode", "B: decode at 2048", samples=(11, 0), vae=(3, 0))
    wf.add(17, "SaveImage", "B: LUA x2", filename_prefix="LUA/compare_B_lua", images=(16, 0))
    # C: decode at 1024, then a pixel-space upscaler (x4) brought back to x2
    wf.add(12, "VAEDecode", "C: decode at 1024", samples=(8, 0), vae=(3, 0))
    wf.add(18, "ImageUpscaleWithModel", "C: RealESRGAN x4 (4096)", upscale_model=(13, 0), image=(12, 0))
    wf.add(19, "ImageScaleBy", "C: down to 2048", upscale_method="lanczos", scale_by=0.5, image=(18, 0))
    wf.add(21, "SaveImage", "C: decode + RealESRGAN", filename_prefix="LUA/compare_C_esrgan", images=(19, 0))
    # side by side: A | B | C in one picture
    wf.add(22, "ImageStitch", "A | B", direction="right", match_image_size=True, spacing_width=16,
           spacing_color="black", image1=(14, 0), image2=(16, 0))
    wf.add(23, "ImageStitch", "A | B | C", direction="right", match_image_size=True, spacing_width=16,
           spacing_color="black", image1=(22, 0), image2=(19, 0))
    wf.add(24, "SaveImage", "A | B | C side by side", filename_prefix="LUA/compare_side_by_side", images=(23, 0))
    wf.colour(BLUE, 10, 11)
    lanes, save_y, lane_w = 1620, 460, 400  # one column per method, the three results side by side below
    wf.column(lanes, [9, (14, 46)], width=lane_w)
    wf.column(lanes + 440, [10, 11, (16, 46)], width=lane_w)
    wf.column(lanes + 880, [(13, 58), (12, 46), (18, 46), 19], width=lane_w)
    for lane, save in enumerate((15, 17, 21)):
        wf.column(lanes + 440 * lane, [(save, lane_w, 460)], y=save_y)
    wf.column(lanes + 1320, [(22, 150), (23, 150)], width=lane_w)
    wf.column(lanes + 1320, [(24, 620, 460)], y=save_y)
    wf.thumbnail_nodes = [9, 14, 15, 10, 11, 16, 17, 13, 12, 18, 19, 21]
    wf.note(20, """
# Three ways to 2048 from one seed

One FLUX generation at 1024 (seed 42), upscaled x2 three ways, saved separately and side by side:

- **A: Upscale Latent By (bicubic)**: ComfyUI's built-in latent resize. Decoded directly it is blurry and
  blotchy: a resized latent is not what the VAE was trained on (that is why hires fix re-samples).
- **B: Latent Upscale (LUA)**: a network trained to upscale FLUX latents, made to be decoded directly:
  it should be sharp, without A's artifacts.
- **C: decode at 1024, RealESRGAN x4, then down to 2048** (lanczos): the usual pixel-space route. Sharp,
  but its texture comes from a general photo upscaler; it costs a decode at 1024 plus the upscaler at 4096.

**Expect** three 2048×2048 PNGs (`LUA/compare_A_bicubic`, `_B_lua`, `_C_esrgan`) and one 6176×2048 strip
(A | B | C, 16 px black gaps). Zoom in on edges and fine texture to compare.

**Models**: the FLUX files as in *flux_lua_x2* (`flux1-dev.safetensors`, `clip_l.safetensors`,
`t5xxl_fp16.safetensors`, `ae.safetensors`), and `RealESRGAN_x4plus.safetensors` → `models/upscale_models`
([Comfy-Org/Real-ESRGAN_repackaged](https://huggingface.co/Comfy-Org/Real-ESRGAN_repackaged)). LUA: downloaded by
**Load LUA Model** on the first run ([vaskers5/LUA-FLUX](https://huggingface.co/vaskers5/LUA-FLUX), Apache-2.0).
""")
    wf.column(0, [(20, 460, 440)])
    return wf


def sdxl_latent_upscale_x2() -> Workflow:
    wf = Workflow("sdxl_latent_upscale_x2", "SDXL at 1024, city96 latent upscaler x2 (auto) + hires fix, 2048")
    wf.add(1, "CheckpointLoaderSimple", "Load SDXL base 1.0", [SDXL], ckpt_name=SDXL["name"])
    wf.add(2, "CLIPTextEncode", "Prompt", text=PROMPT, clip=(1, 1))
    wf.add(3, "CLIPTextEncode", "Negative prompt", text=NEGATIVE, clip=(1, 1))
    wf.add(4, "EmptyLatentImage", "Generate at 1024x1024", width=1024, height=1024, batch_size=1)
    wf.add(5, "KSampler", "Base pass: 1024", seed=42, steps=25, cfg=7.0, sampler_name="dpmpp_2m",
           scheduler="karras", denoise=1.0, model=(1, 0), positive=(2, 0), negative=(3, 0), latent_image=(4, 0))
    wf.add(6, "LUA_LoadModel", "Load LUA Model (auto: city96 for SDXL)", dtype="auto", model_name="auto",
           model=(1, 0))
    wf.add(7, "LUA_LatentUpscale", "Latent Upscale x2 (city96)", scale=2.0, latent_format="auto", tile=0,
           samples=(5, 0), upscale_model=(6, 0))
    wf.add(8, "KSampler", "Hires fix: 2048, denoise 0.45", seed=43, steps=20, cfg=7.0, sampler_name="dpmpp_2m",
           scheduler="karras", denoise=0.45, model=(1, 0), positive=(2, 0), negative=(3, 0), latent_image=(7, 0))
    wf.add(9, "VAEDecode", "VAE Decode at 2048x2048", samples=(8, 0), vae=(1, 2))
    wf.add(10, "SaveImage", filename_prefix="LUA/sdxl_2048", images=(9, 0))
    wf.colour(GREEN, 2)
    wf.colour(RED, 3)
    wf.colour(BLUE, 6, 7)
    wf.column(500, [(1, 320, 98)])
    wf.column(860, [(2, 400, 160), (3, 400, 110), 4], width=400)
    wf.column(1300, [5, (6, 340, 82)])
    wf.column(1680, [7])
    wf.column(2020, [8, (9, 300, 46)])
    wf.column(2360, [(10, 520, 560)])
    wf.thumbnail_nodes = [5, 6, 7, 8, 9, 10]
    wf.note(20, """
# SDXL (4 channels): city96 x2, then a hires-fix pass

LUA's weights are for 16-channel latents (FLUX, SD3). For SDXL's 4-channel latents **Load LUA Model**
with `auto` and the SDXL MODEL connected picks a 4-channel upscaler: city96's SD-Latent-Upscaler v2.1
for SDXL x2 (Apache-2.0), downloaded into `models/latent_upscale_models` on the first run (or the file
already there). To choose it explicitly, pick `download/city96-sdxl-x2`.

1. Base pass at 1024×1024 (25 steps, seed 42).
2. **Latent Upscale (LUA)** x2 with city96: 128×128 → 256×256 latent.
3. Hires fix: KSampler at **denoise 0.45** on the upscaled latent (seed 43) adds detail at 2048.
4. One VAE decode at 2048×2048.

**Expect** the 1024 composition at 2048 with re-sampled detail. city96's upscale decoded on its own
(right after step 2) is soft: it is made to be followed by a sampling pass like step 3. Lower denoise
(0.3) keeps more of the base image, higher (0.6) adds more detail and may change small things.

**Models**: `sd_xl_base_1.0.safetensors` → `models/checkpoints`
([stabilityai/stable-diffusion-xl-base-1.0](https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0)).
""")
    wf.column(0, [(20, 460, 360)])
    return wf


def qwen_image_sesqui_x2() -> Workflow:
    """ComfyUI's Qwen-Image text-to-image template graph (loaders, ModelSamplingAuraFlow shift 3.1, 1328x1328,
    20 steps, cfg 2.5, euler, simple), then SesquiLSR's Wan 2.1 upscaler, picked by ``auto``, at x2."""
    wf = Workflow("qwen_image_sesqui_x2", "Qwen-Image at 1328, SesquiLSR (auto) x2 in latent space, one VAE decode at "
                  "2656")
    wf.add(1, "UNETLoader", "Load Qwen-Image", [QWEN_UNET], unet_name=QWEN_UNET["name"], weight_dtype="default")
    wf.add(2, "CLIPLoader", "Load Qwen2.5-VL text encoder", [QWEN_TE], clip_name=QWEN_TE["name"], type="qwen_image",
           device="default")
    wf.add(3, "VAELoader", "Load Qwen-Image VAE", [QWEN_VAE], vae_name=QWEN_VAE["name"])
    wf.add(4, "CLIPTextEncode", "Prompt", text=PROMPT, clip=(2, 0))
    wf.add(5, "CLIPTextEncode", "Negative prompt", text="", clip=(2, 0))
    wf.add(6, "ModelSamplingAuraFlow", shift=3.1, model=(1, 0))
    wf.add(7, "EmptySD3LatentImage", "Generate at 1328x1328", width=1328, height=1328, batch_size=1)
    wf.add(8, "KSampler", seed=42, steps=20, cfg=2.5, sampler_name="euler", scheduler="simple", denoise=1.0,
           model=(6, 0), positive=(4, 0), negative=(5, 0), latent_image=(7, 0))
    wf.add(9, "LUA_LoadModel", "Load LUA Model (auto: SesquiLSR)", dtype="auto", model_name="auto",
           model=(1, 0))
    wf.add(10, "LUA_LatentUpscale", "Latent Upscale x2 (SesquiLSR)", scale=2.0, latent_format="auto", tile=0,
           samples=(8, 0), upscale_model=(9, 0))
    wf.add(11, "VAEDecode", "VAE Decode at 2656x2656", samples=(10, 0), vae=(3, 0))
    wf.add(12, "SaveImage", filename_prefix="LUA/qwen_image_2656", images=(11, 0))
    wf.colour(GREEN, 4)
    wf.colour(RED, 5)
    wf.colour(BLUE, 9, 10)
    x0 = 500  # column 0 (x 0..460) is the note
    wf.column(x0, [1, 2, 3])
    wf.column(x0 + 340, [(4, 400, 180), (5, 400, 110), 7], width=400)
    wf.column(x0 + 780, [6, 8, (9, 340, 82)])
    wf.column(x0 + 1160, [10, (11, 300, 46)])
    wf.column(x0 + 1500, [(12, 520, 560)])
    wf.thumbnail_nodes = [8, 9, 10, 11, 12]
    wf.note(20, """
# Qwen-Image: 1328 → 2656 with SesquiLSR

ComfyUI's Qwen-Image text-to-image graph (ModelSamplingAuraFlow shift 3.1, 1328×1328, 20 steps, cfg 2.5,
euler, seed 42), then **Latent Upscale (LUA)** x2 and one **VAE Decode** at 2656×2656. No second diffusion
pass, no pixel-space upscaler.

- **Load LUA Model** `auto` with the Qwen-Image MODEL connected picks SesquiLSR's Wan 2.1 upscaler (Qwen-Image
  makes Wan 2.1 latents: 16 channels, like FLUX's, but another latent space, so the LUA FLUX weights are never
  used here). On the first run it downloads `download/sesqui-wan21` (`upscaler_Wan21.safetensors`,
  [LoganBooker/SesquiLSR](https://github.com/LoganBooker/SesquiLSR), MIT) into `models/latent_upscale_models`;
  after that it uses the file on disk.
- **scale**: SesquiLSR does any factor from 1 to 2 (1.5 gives 1992×1992).
- **Expect**: the 1328 picture at 2656 px with the same composition; SesquiLSR reconstructs the latent at the
  higher resolution, it adds no new objects. Decoding 2656² with the Qwen-Image VAE needs a lot of VRAM; ComfyUI
  falls back to a tiled decode if it runs out.

**Models** (ComfyUI's *Missing Models* dialog offers each download), from
[Comfy-Org/Qwen-Image_ComfyUI](https://huggingface.co/Comfy-Org/Qwen-Image_ComfyUI):
- `qwen_image_fp8_e4m3fn.safetensors` → `models/diffusion_models`
- `qwen_2.5_vl_7b_fp8_scaled.safetensors` → `models/text_encoders`
- `qwen_image_vae.safetensors` → `models/vae`
""")
    wf.column(0, [(20, 460, 420)])
    return wf


DEFINITIONS = (flux_lua_x2, flux_lua_x4_tiled, sd3_lua_x2, compare_upscalers, sdxl_latent_upscale_x2,
               qwen_image_sesqui_x2)
# hand-made workflows: only their thumbnails are made here (framing these node ids)
EXISTING = {"progressive_sampler": [7, 8, 9, 10, 11], "progressive_building_blocks": [7, 8, 9, 10, 11, 12, 13, 14]}


def thumbnail(png: Path, jpg: Path) -> None:
    """Fit the graph screenshot into THUMB_SIZE on the canvas colour; JPEG, quality 85 (a few tens of KB)."""
    from PIL import Image

    with Image.open(png) as im:
        im = im.convert("RGB")
        scale = min(THUMB_SIZE[0] / im.width, THUMB_SIZE[1] / im.height)
        small = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
    canvas = Image.new("RGB", THUMB_SIZE, THUMB_BG)
    canvas.paste(small, ((THUMB_SIZE[0] - small.width) // 2, (THUMB_SIZE[1] - small.height) // 2))
    canvas.save(jpg, "JPEG", quality=85, optimize=True, progressive=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", help="build only this workflow (repeatable)")
    ap.add_argument("--keep", type=Path, help="keep the screenshots and raw outputs in this folder")
    ap.add_argument("--no-thumbnails", action="store_true")
    a = ap.parse_args(argv)
    if not (BROWSER / "node_modules" / "playwright-core").is_dir():
        ap.error("run `npm ci` in tests/browser first")
    specs = [d().spec() for d in DEFINITIONS]
    specs += [{"name": n, "ui": json.loads((WORKFLOWS / f"{n}.json").read_text(encoding="utf-8")),
               "thumbnail_nodes": ids} for n, ids in EXISTING.items()]
    if a.only:
        specs = [s for s in specs if s["name"] in a.only]
        if not specs:
            ap.error(f"no workflow named {a.only}")
    work = Path(tempfile.mkdtemp(prefix="lua_workflows_"))
    out = a.keep or work / "out"
    server = harness.ComfyServer(work / "comfy", custom_nodes={harness.PACK_INSTALL_NAME: harness.REPO_ROOT})
    try:
        server.start()
        (work / "spec.json").write_text(json.dumps(specs, ensure_ascii=False), encoding="utf-8")
        subprocess.run(["node", str(BROWSER / "build_workflows.mjs"), "--url", server.url, "--spec",
                        str(work / "spec.json"), "--out", str(out)], check=True, cwd=BROWSER)
    finally:
        server.stop()
    (WORKFLOWS / "api").mkdir(parents=True, exist_ok=True)
    for spec in specs:
        name = spec["name"]
        if "ui" not in spec:
            shutil.copyfile(out / f"{name}.json", WORKFLOWS / f"{name}.json")
            shutil.copyfile(out / f"{name}.api.json", WORKFLOWS / "api" / f"{name}.json")
        if not a.no_thumbnails:
            framed = out / f"{name}.thumb.png"
            thumbnail(framed if framed.is_file() else out / f"{name}.png", WORKFLOWS / f"{name}.jpg")
        print(f"{name}: workflows/{name}.json" + ("" if a.no_thumbnails else f", {name}.jpg "
              f"({(WORKFLOWS / f'{name}.jpg').stat().st_size // 1024} KB)"))
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
