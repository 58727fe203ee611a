"""Test-only ComfyUI node pack (ids ``LUATest_*``), linked into the test server as ``lua_test_nodes``.

Why it exists: workflow and server tests need a MODEL, a CONDITIONING and latents without downloading
checkpoints, plus a few probes (latent statistics in the history, a slow node to kill a server in
mid-prompt). The models come from ``tests/comfyui/harness.py``, which this pack loads by file path:
inside the server process the tests package is not importable. V1 ``NODE_CLASS_MAPPINGS`` on purpose:
the pack under test uses the V3 API, so a server run exercises both loader paths.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
from types import ModuleType
from typing import Any

_HARNESS_ALIAS = "_lua_comfy_test_harness"


def _harness() -> ModuleType:
    """The harness module: the one already imported (pytest process) or harness.py loaded by path."""
    mod = sys.modules.get(_HARNESS_ALIAS)
    if mod is None:
        path = os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir, "harness.py")
        spec = importlib.util.spec_from_file_location(_HARNESS_ALIAS, os.path.normpath(path))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[_HARNESS_ALIAS] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[_HARNESS_ALIAS]
            raise
    return mod


_H = _harness()
CATEGORY = "LUA/testing"


class LUATestTinyModel:
    """Checkpoint-free MODEL: a tiny deterministic conv in a real BaseModel + ModelPatcher."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "latent_format": (list(_H.LATENT_FORMATS), {"default": "SD15"}),
            "model_type": (list(_H.MODEL_TYPES), {"default": "EPS"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = CATEGORY

    def build(self, latent_format: str, model_type: str, seed: int) -> tuple:
        return (_H.make_tiny_model_patcher(latent_format, model_type, seed),)


class LUATestZeroConditioning:
    """CONDITIONING of zeros (the tiny model ignores conditioning)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "tokens": ("INT", {"default": 1, "min": 1, "max": 512}),
            "dim": ("INT", {"default": 8, "min": 1, "max": 4096}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = CATEGORY

    def make(self, tokens: int, dim: int) -> tuple:
        return (_H.zero_conditioning(tokens, dim),)


class LUATestEmptyLatentForModel:
    """Empty LATENT with the MODEL's latent channel count (4 for SD15/SDXL, 16 for SD3/Flux/Wan21), 1/8 size
    (4-D; for Wan21 KSampler adds the frame axis, as for ComfyUI's own empty latents)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": ("MODEL",),
            "width": ("INT", {"default": 64, "min": 8, "max": 8192, "step": 8}),
            "height": ("INT", {"default": 64, "min": 8, "max": 8192, "step": 8}),
            "batch": ("INT", {"default": 1, "min": 1, "max": 64}),
        }}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = CATEGORY

    def make(self, model: Any, width: int, height: int, batch: int) -> tuple:
        import torch

        channels = model.get_model_object("latent_format").latent_channels
        return ({"samples": torch.zeros(batch, channels, height // 8, width // 8)},)


class LUATestLatentInfo:
    """Output node: puts the latent's shape and statistics into the prompt's history (``latent_info``)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"samples": ("LATENT",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY

    def report(self, samples: dict) -> dict:
        t = samples["samples"].float()
        finite = bool(t.isfinite().all())
        info = {"shape": list(t.shape), "dtype": str(samples["samples"].dtype), "finite": finite,
                "mean": float(t.mean()) if finite else math.nan,
                "std": float(t.std()) if t.numel() > 1 else 0.0,
                "min": float(t.min()), "max": float(t.max()), "keys": sorted(samples)}
        return {"ui": {"latent_info": [info]}, "result": (samples,)}


class LUATestSleep:
    """Passes a LATENT through after ``seconds`` (interruptible; never cached): for kill/crash tests."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "samples": ("LATENT",),
            "seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 600.0, "step": 0.1}),
        }}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sleep"
    CATEGORY = CATEGORY

    @classmethod
    def IS_CHANGED(cls, **kwargs: Any) -> float:
        return float("nan")  # never equal to itself: re-run every time

    def sleep(self, samples: dict, seconds: float) -> tuple:
        import comfy.model_management

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        return (samples,)


NODE_CLASS_MAPPINGS = {
    "LUATest_TinyModel": LUATestTinyModel,
    "LUATest_ZeroConditioning": LUATestZeroConditioning,
    "LUATest_EmptyLatentForModel": LUATestEmptyLatentForModel,
    "LUATest_LatentInfo": LUATestLatentInfo,
    "LUATest_Sleep": LUATestSleep,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LUATest_TinyModel": "LUA Test: Tiny Model",
    "LUATest_ZeroConditioning": "LUA Test: Zero Conditioning",
    "LUATest_EmptyLatentForModel": "LUA Test: Empty Latent For Model",
    "LUATest_LatentInfo": "LUA Test: Latent Info",
    "LUATest_Sleep": "LUA Test: Sleep",
}
