"""Progressive (LSSGen-style) sampling nodes in the real ComfyUI 0.3.75 on CPU, no mocks.

Why it exists: the nodes' claims are numerical (each stage starts at the noise level the model
type's formula gives, FLUX's shift follows ComfyUI's formula per stage, the building-block form
equals the one-node form) and operational (server prompt to PNG, interruption between steps, the
example workflows run). Each is checked against values computed here independently: the noise from
the seed with ``torch.randn``, the upscale with ``F.interpolate`` or ``lua_core``, the schedule with
``comfy.samplers.calculate_sigmas``, the FLUX shift from ComfyUI's own ``ModelSamplingFlux`` node;
and what the model receives is captured by a ``model_function_wrapper`` on the MODEL.

The pack is loaded through ComfyUI's own loader (``lua_pack``); the server tests run a private
server with a generated LUA checkpoint in its ``latent_upscale_models`` folder.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from . import harness
from .workflow_swap import FRONTEND_ONLY, tiny_prompt, ui_to_api

pytestmark = pytest.mark.comfyui

NODE_IDS = ("LUA_ProgressiveSampler", "LUA_ReNoiseLatent")
# (latent format, model type): EPS SD1.5/SDXL, V-prediction SDXL, rectified flow SD3 (DiscreteFlow,
# shift 3) and FLUX (ModelSamplingFlux: resolution-dependent shift)
FAMILIES = [("SD15", "EPS"), ("SDXL", "EPS"), ("SDXL", "V_PREDICTION"), ("SD3", "FLOW"), ("Flux", "FLOW")]
WORKFLOWS = harness.REPO_ROOT / "workflows"


@dataclass
class Pack:
    """The loaded pack: its module and the pack's own ``lua_core`` and ``nodes.handle`` modules (the
    upscaler classes must be the pack's, not the test process's top-level ``lua_core``)."""

    module: ModuleType
    lua_core: ModuleType
    handle: ModuleType


@pytest.fixture(scope="module")
def pack(comfy_inproc: harness.InProcComfy, lua_pack: ModuleType) -> Pack:
    """This repository loaded in-process through ComfyUI's loader; it must register the nodes."""
    for node_id in NODE_IDS:
        assert node_id in comfy_inproc.nodes.NODE_CLASS_MAPPINGS, f"the pack does not register {node_id}"
    name = lua_pack.__name__
    return Pack(lua_pack, sys.modules[name + ".lua_core"], sys.modules[name + ".nodes.handle"])


# --------------------------------------------------------------------------------------------------
# Capturing what the model receives
# --------------------------------------------------------------------------------------------------


@dataclass
class Call:
    input: Any  # the noisy model-space latent the diffusion model gets
    sigma: float
    shift: float | None  # model_sampling.shift in effect (flow models)


@dataclass
class Recorder:
    """Every diffusion-model call of a run, grouped by latent size (each stage has its own size)."""

    calls: list[Call] = field(default_factory=list)
    on_call: Callable[[int], None] | None = None

    def wrapper(self) -> Callable[[Any, dict], Any]:
        """A ``model_function_wrapper``: a plain function (ModelPatcher.clone deep-copies model_options,
        which would copy a bound method's recorder, but keeps functions as they are)."""

        def record(apply_model: Any, args: dict) -> Any:
            sampling = apply_model.__self__.model_sampling
            self.calls.append(Call(args["input"].detach().clone(),
                                   float(args["c"]["transformer_options"]["sigmas"].flatten()[0]),
                                   float(sampling.shift) if hasattr(sampling, "shift") else None))
            out = apply_model(args["input"], args["timestep"], **args["c"])
            if self.on_call is not None:
                self.on_call(len(self.calls))
            return out

        return record

    def stages(self) -> list[list[Call]]:
        groups: dict[tuple[int, ...], list[Call]] = {}
        for call in self.calls:
            groups.setdefault(tuple(call.input.shape[-2:]), []).append(call)
        return list(groups.values())


def tiny_model(latent_format: str, model_type: str, recorder: Recorder | None = None) -> Any:
    model = harness.make_tiny_model_patcher(latent_format, model_type, seed=0)
    if recorder is not None:
        model.set_model_unet_function_wrapper(recorder.wrapper())
    return model


def empty_latent(model: Any, h: int = 8, w: int = 8, batch: int = 1) -> dict:
    import torch
    channels = model.get_model_object("latent_format").latent_channels
    return {"samples": torch.zeros(batch, channels, h, w)}


def progressive_inputs(model: Any, latent: dict, **overrides: Any) -> dict:
    cond = harness.zero_conditioning()
    kw = dict(model=model, positive=cond, negative=cond, latent_image=latent, seed=5, stages=3, scale=2.0,
              steps=9, stage_steps="4,3,2", cfg=1.0, sampler_name="euler", scheduler="simple", strength=0.75,
              upscale_method="bicubic", flux_shift_per_stage=True, max_shift=1.15, base_shift=0.5)
    kw.update(overrides)
    return kw


def flux_node_shift(comfy: harness.InProcComfy, model: Any, h: int, w: int) -> tuple[Any, float]:
    """ComfyUI's own ModelSamplingFlux node at this latent's image size (8 px per latent pixel)."""
    patched = comfy.run_node("ModelSamplingFlux", model=model, max_shift=1.15, base_shift=0.5,
                             width=8 * w, height=8 * h).outputs[0]
    return patched, float(patched.get_model_object("model_sampling").shift)


def seed_noise(shape: Any, seed: int) -> Any:
    """What ``comfy.sample.prepare_noise`` draws for this seed, computed without it."""
    import torch
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))


def model_space(model: Any, raw: Any) -> Any:
    """process_in written out from the format's constants: (z - shift_factor) * scale_factor."""
    fmt = model.get_model_object("latent_format")
    return (raw - getattr(fmt, "shift_factor", 0.0)) * fmt.scale_factor


# --------------------------------------------------------------------------------------------------
# The plan: stage sizes and step split (pure arithmetic)
# --------------------------------------------------------------------------------------------------


def test_step_split_and_sizes(pack: Pack) -> None:
    plan = sys.modules[pack.module.__name__ + ".nodes.progressive_plan"]
    assert plan.split_steps(30, 1) == [30]
    assert plan.split_steps(30, 2) == [20, 10]
    assert plan.split_steps(30, 3) == [17, 9, 4]
    assert plan.split_steps(30, 4) == [16, 8, 4, 2]
    assert plan.split_steps(4, 4) == [1, 1, 1, 1]
    for stages in range(1, 9):
        for total in range(stages, 60):
            split = plan.split_steps(total, stages)
            assert sum(split) == total and min(split) >= 1 and split == sorted(split, reverse=True), (total, split)
    with pytest.raises(ValueError, match="at least one. Raise steps to at least 3 or lower stages"):
        plan.split_steps(2, 3)
    assert plan.parse_stage_steps(" 20, 10 ", 2) == [20, 10]
    assert plan.parse_stage_steps("", 2) is None
    with pytest.raises(ValueError, match="for 3 stages"):
        plan.parse_stage_steps("20,10", 3)
    with pytest.raises(ValueError, match="whole numbers"):
        plan.parse_stage_steps("20,x", 2)
    assert plan.stage_sizes(64, 96, 3, 2.0) == [(64, 96), (128, 192), (256, 384)]
    assert plan.stage_sizes(5, 7, 2, 1.5) == [(5, 7), (8, 10)]  # round(7.5) = 8, round(10.5) = 10 as LatentUpscaleBy
    stages = plan.plan_stages(8, 8, stages=2, scale=2.0, steps=30, stage_steps="", strength=0.6)
    assert [(s.height, s.steps, s.denoise) for s in stages] == [(8, 20, 1.0), (16, 10, 0.6)]


def test_flux_shift_formula_is_comfyuis(comfy_inproc: harness.InProcComfy, pack: Pack) -> None:
    plan = sys.modules[pack.module.__name__ + ".nodes.progressive_plan"]
    model = tiny_model("Flux", "FLOW")
    for h, w in [(64, 64), (128, 128), (32, 48), (8, 8), (17, 9)]:
        _, expected = flux_node_shift(comfy_inproc, model, h, w)
        assert plan.flux_shift(h, w) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert plan.flux_shift(128, 128) == pytest.approx(1.15)  # 1024^2: max_shift
    assert plan.flux_shift(32, 32) == pytest.approx(0.5)  # 256^2: base_shift


# --------------------------------------------------------------------------------------------------
# Noise level at the start of each stage, per model type
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("latent_format", "model_type"), FAMILIES)
def test_stage_noise_matches_formula(comfy_inproc: harness.InProcComfy, pack: Pack, latent_format: str,
                                     model_type: str) -> None:
    import comfy.samplers
    import torch
    import torch.nn.functional as F

    rec = Recorder()
    model = tiny_model(latent_format, model_type, rec)
    run = comfy_inproc.run_node("LUA_ProgressiveSampler", **progressive_inputs(model, empty_latent(model)))
    final, stage_latents = run.outputs
    channels = model.get_model_object("latent_format").latent_channels
    assert [tuple(s["samples"].shape) for s in stage_latents] == [(1, channels, n, n) for n in (8, 16, 32)]
    assert torch.equal(final["samples"], stage_latents[-1]["samples"])
    stages = rec.stages()
    assert [len(calls) for calls in stages] == [4, 3, 2], "euler at cfg 1: one model call per step"

    flow = model_type == "FLOW"
    for k, (calls, steps) in enumerate(zip(stages, (4, 3, 2))):
        size = 8 * 2 ** k
        sampling_model = model
        if latent_format == "Flux":
            sampling_model, shift = flux_node_shift(comfy_inproc, model, size, size)
            assert calls[0].shift == pytest.approx(shift, rel=1e-9)
        sampling = sampling_model.get_model_object("model_sampling")
        noise = seed_noise((1, channels, size, size), 5 + k)
        first = calls[0]
        if k == 0:  # from pure noise: KSampler's max_denoise scaling of an empty latent
            sigma = float(comfy.samplers.calculate_sigmas(sampling, "simple", steps)[0])
            assert first.sigma == pytest.approx(sigma, rel=1e-6)
            expected = noise * sigma if flow else noise * math.sqrt(1.0 + sigma ** 2)
        else:  # denoise = strength: the tail of the int(steps / 0.75)-step schedule, at least steps + 1
            length = max(int(steps / 0.75), steps + 1)
            sigma = float(comfy.samplers.calculate_sigmas(sampling, "simple", length)[-(steps + 1)])
            assert first.sigma == pytest.approx(sigma, rel=1e-6)
            x0 = model_space(model, F.interpolate(stage_latents[k - 1]["samples"], size=(size, size),
                                                  mode="bicubic"))
            expected = (1.0 - sigma) * x0 + sigma * noise if flow else x0 + sigma * noise
        torch.testing.assert_close(first.input, expected, rtol=1e-5, atol=1e-5)
    if latent_format == "Flux":  # FLUX: the shift grows with each stage's token count
        shifts = [calls[0].shift for calls in stages]
        assert shifts[0] < shifts[1] < shifts[2]
    elif latent_format == "SD3":
        assert [calls[0].shift for calls in stages] == [3.0, 3.0, 3.0]


def test_flux_shift_off_keeps_models_sampling(comfy_inproc: harness.InProcComfy, pack: Pack) -> None:
    rec = Recorder()
    model = tiny_model("Flux", "FLOW", rec)
    model, shift = flux_node_shift(comfy_inproc, model, 64, 64)  # the user's own ModelSamplingFlux
    comfy_inproc.run_node("LUA_ProgressiveSampler", **progressive_inputs(model, empty_latent(model),
                                                                         flux_shift_per_stage=False))
    assert [calls[0].shift for calls in rec.stages()] == [pytest.approx(shift)] * 3


def test_deterministic_and_stage_zero_is_ksampler(comfy_inproc: harness.InProcComfy, pack: Pack) -> None:
    import torch

    model = tiny_model("SDXL", "EPS")
    kw = progressive_inputs(model, empty_latent(model, 8, 12, batch=2), cfg=2.5, sampler_name="dpmpp_2m",
                            scheduler="karras", stages=2, stage_steps="", steps=6)
    a_final, a_stages = comfy_inproc.run_node("LUA_ProgressiveSampler", **kw).outputs
    b_final, b_stages = comfy_inproc.run_node("LUA_ProgressiveSampler", **kw).outputs
    assert tuple(a_final["samples"].shape) == (2, 4, 16, 24)
    assert torch.equal(a_final["samples"], b_final["samples"])
    assert all(torch.equal(a["samples"], b["samples"]) for a, b in zip(a_stages, b_stages))
    other = comfy_inproc.run_node("LUA_ProgressiveSampler", **{**kw, "seed": 6}).outputs[0]
    assert not torch.allclose(other["samples"], a_final["samples"])
    # stage 1 is exactly KSampler with the same seed (steps 6 over 2 stages: 4 + 2)
    ks = comfy_inproc.run_node("KSampler", model=model, seed=5, steps=4, cfg=2.5, sampler_name="dpmpp_2m",
                               scheduler="karras", positive=kw["positive"], negative=kw["negative"],
                               latent_image=kw["latent_image"], denoise=1.0).outputs[0]
    assert torch.equal(ks["samples"], a_stages[0]["samples"])


def test_one_progress_bar_over_all_stages(comfy_inproc: harness.InProcComfy, pack: Pack) -> None:
    import comfy.utils

    updates: list[tuple[int, int]] = []
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, **kw: updates.append((value, total)))
    try:
        model = tiny_model("SD15", "EPS")
        comfy_inproc.run_node("LUA_ProgressiveSampler", **progressive_inputs(model, empty_latent(model)))
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    assert updates == [(n, 9) for n in range(1, 10)]  # 4 + 3 + 2 steps, one bar


def test_progress_never_goes_back_with_an_adaptive_sampler(comfy_inproc: harness.InProcComfy, pack: Pack) -> None:
    """dpm_adaptive calls back more often than a stage has steps: the bar stays within the stage."""
    import comfy.utils

    updates: list[int] = []
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, **kw: updates.append(value))
    try:
        model = tiny_model("SD15", "EPS")
        comfy_inproc.run_node("LUA_ProgressiveSampler", **progressive_inputs(
            model, empty_latent(model), sampler_name="dpm_adaptive", stage_steps="4,2,1", steps=7))
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    assert updates == sorted(updates) and updates[-1] == 7, updates


# --------------------------------------------------------------------------------------------------
# Building blocks: KSampler + upscale + LUA_ReNoiseLatent + KSamplerAdvanced == the one node
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("latent_format", "model_type", "sampler", "scheduler"), [
    ("SD15", "EPS", "dpmpp_2m", "karras"), ("SDXL", "V_PREDICTION", "euler", "normal"),
    ("SD3", "FLOW", "dpm_2", "simple"), ("Flux", "FLOW", "euler", "simple")])
def test_building_blocks_equal_progressive(comfy_inproc: harness.InProcComfy, pack: Pack, latent_format: str,
                                           model_type: str, sampler: str, scheduler: str) -> None:
    import torch

    model = tiny_model(latent_format, model_type)
    kw = progressive_inputs(model, empty_latent(model), seed=11, stages=2, stage_steps="5,10", cfg=2.0,
                            sampler_name=sampler, scheduler=scheduler)
    final, stage_latents = comfy_inproc.run_node("LUA_ProgressiveSampler", **kw).outputs
    m0 = m1 = model
    if latent_format == "Flux":  # what the user wires by hand: ModelSamplingFlux at each stage's size
        m0, m1 = flux_node_shift(comfy_inproc, model, 8, 8)[0], flux_node_shift(comfy_inproc, model, 16, 16)[0]
    common = dict(cfg=2.0, sampler_name=sampler, scheduler=scheduler, positive=kw["positive"],
                  negative=kw["negative"])
    stage1 = comfy_inproc.run_node("KSampler", model=m0, seed=11, steps=5, latent_image=kw["latent_image"],
                                   denoise=1.0, **common).outputs[0]
    assert torch.equal(stage1["samples"], stage_latents[0]["samples"])
    up = comfy_inproc.run_node("LatentUpscaleBy", samples=stage1, upscale_method="bicubic", scale_by=2.0).outputs[0]
    noisy, steps, start, sigma, sigmas = comfy_inproc.run_node(
        "LUA_ReNoiseLatent", samples=up, model=m1, seed=12, strength=0.75, steps=10, sampler_name=sampler,
        scheduler=scheduler, sigma=0.0).outputs
    assert (steps, start) == (13, 3)  # int(10 / 0.75) = 13, of which the last 10 run
    assert len(sigmas) == 11 and float(sigmas[0]) == pytest.approx(sigma) and float(sigmas[-1]) == 0.0
    blocks = comfy_inproc.run_node("KSamplerAdvanced", model=m1, add_noise="disable", noise_seed=0, steps=steps,
                                   latent_image=noisy, start_at_step=start, end_at_step=10000,
                                   return_with_leftover_noise="disable", **common).outputs[0]
    torch.testing.assert_close(blocks["samples"], final["samples"], rtol=1e-4, atol=1e-5)
    # and, with enough steps for KSampler's rounding, plain KSampler img2img at denoise = strength
    ks = comfy_inproc.run_node("KSampler", model=m1, seed=12, steps=10, latent_image=up, denoise=0.75,
                               **common).outputs[0]
    torch.testing.assert_close(ks["samples"], final["samples"], rtol=1e-4, atol=1e-5)


def test_renoise_to_a_sigma_for_sampler_custom(comfy_inproc: harness.InProcComfy, pack: Pack) -> None:
    import torch

    rec = Recorder()
    model = tiny_model("Flux", "FLOW", rec)
    x0 = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    noisy, steps, start, sigma, sigmas = comfy_inproc.run_node(
        "LUA_ReNoiseLatent", samples={"samples": x0}, model=model, seed=3, strength=0.75, steps=8,
        sampler_name="euler", scheduler="simple", sigma=0.5).outputs
    full = [float(s) for s in comfy_inproc.run_node("BasicScheduler", model=model, scheduler="simple", steps=8,
                                                    denoise=1.0).outputs[0]]
    assert sigma == 0.5 and steps == 8
    assert full[start] <= 0.5 < full[start - 1]  # KSamplerAdvanced's first step at or below the level
    assert [float(s) for s in sigmas] == pytest.approx([0.5] + full[start:])
    sampler = comfy_inproc.run_node("KSamplerSelect", sampler_name="euler").outputs[0]
    cond = harness.zero_conditioning()
    comfy_inproc.run_node("SamplerCustom", model=model, add_noise=False, noise_seed=0, cfg=1.0, positive=cond,
                          negative=cond, sampler=sampler, sigmas=sigmas, latent_image=noisy)
    first = rec.calls[0]
    assert first.sigma == pytest.approx(0.5)
    expected = 0.5 * model_space(model, x0) + 0.5 * seed_noise(x0.shape, 3)
    torch.testing.assert_close(first.input, expected, rtol=1e-5, atol=1e-5)
    assert len(rec.calls) == len(sigmas) - 1


def test_renoise_refuses_what_a_continuation_cannot_use(comfy_inproc: harness.InProcComfy, pack: Pack) -> None:
    """A sigma above a flow model's range (x would get a negative weight) and a latent with a noise
    mask (KSamplerAdvanced without added noise would keep the unmasked area noisy) are refused with
    the node's name and the fix."""
    import torch

    model = tiny_model("SD3", "FLOW")
    renoise = dict(model=model, seed=0, strength=0.5, steps=4, sampler_name="euler", scheduler="simple")
    with pytest.raises(ValueError, match=r"^LUA Re-Noise Latent: sigma 1.5 is above this flow model's noise "
                                         r"range \(0 to 1\): set sigma to at most 1"):
        comfy_inproc.run_node("LUA_ReNoiseLatent", samples=empty_latent(model), sigma=1.5, **renoise)
    masked = {**empty_latent(model), "noise_mask": torch.ones(1, 1, 8, 8)}
    with pytest.raises(ValueError, match=r"^LUA Re-Noise Latent: the latent has a noise_mask.*LUA Progressive "
                                         r"Sampler"):
        comfy_inproc.run_node("LUA_ReNoiseLatent", samples=masked, sigma=0.0, **renoise)
    eps = tiny_model("SD15", "EPS")  # EPS models take any sigma (x + sigma * noise)
    out = comfy_inproc.run_node("LUA_ReNoiseLatent", samples=empty_latent(eps), sigma=20.0,
                                **{**renoise, "model": eps}).outputs
    assert out[3] == pytest.approx(20.0)


def test_renoise_refuses_pure_noise_for_flow(comfy_inproc: harness.InProcComfy, pack: Pack) -> None:
    model = tiny_model("SD3", "FLOW")
    with pytest.raises(ValueError, match="pure noise"):
        comfy_inproc.run_node("LUA_ReNoiseLatent", samples=empty_latent(model), model=model, seed=0, strength=1.0,
                              steps=4, sampler_name="euler", scheduler="simple", sigma=0.0)


# --------------------------------------------------------------------------------------------------
# Upscalers between stages
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lua_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated 16-channel LUA checkpoint (official layout, tiny config), saved as safetensors."""
    import lua_core
    from factories import make_lua, tiny_config

    return lua_core.save_model(make_lua(tiny_config(in_chans=16)),
                               tmp_path_factory.mktemp("lua") / "tiny_lua16.safetensors")


@pytest.mark.parametrize("latent_format", ["Flux", "SD3"])
def test_lua_upscaler_between_stages(comfy_inproc: harness.InProcComfy, pack: Pack, tiny_lua_file: Path,
                                     latent_format: str) -> None:
    import torch
    import torch.nn.functional as F

    upscaler = pack.lua_core.load_model(tiny_lua_file)
    handle = pack.handle.make_handle(upscaler, "tiny LUA")
    rec = Recorder()
    model = tiny_model(latent_format, "FLOW", rec)
    final, stage_latents = comfy_inproc.run_node(
        "LUA_ProgressiveSampler", **progressive_inputs(model, empty_latent(model), stages=2, stage_steps="3,3",
                                                       upscale_model=handle)).outputs
    assert tuple(final["samples"].shape) == (1, 16, 16, 16)
    x0 = stage_latents[0]["samples"]
    up = pack.lua_core.upscale_latent(upscaler, x0, 2.0)
    assert not torch.allclose(up, F.interpolate(x0, scale_factor=2, mode="bicubic"), atol=1e-3)
    first = rec.stages()[1][0]
    expected = (1 - first.sigma) * model_space(model, up) + first.sigma * seed_noise(up.shape, 6)
    torch.testing.assert_close(first.input, expected, rtol=1e-5, atol=1e-5)


def test_lssgen_upscaler_gets_models_latent_format(comfy_inproc: harness.InProcComfy, pack: Pack) -> None:
    """LSSGen works in the model's scaled space: the node must hand it the MODEL's latent format."""
    import torch

    upscaler = pack.lua_core.load_model(harness.REPO_ROOT / "tests" / "data" / "peers" / "lssgen16")
    assert upscaler.needs_latent_format
    handle = pack.handle.make_handle(upscaler, "LSSGen 16")  # no format on the handle itself
    for latent_format, name in (("Flux", "flux"), ("SD3", "sd3")):
        rec = Recorder()
        model = tiny_model(latent_format, "FLOW", rec)
        _, stage_latents = comfy_inproc.run_node(
            "LUA_ProgressiveSampler", **progressive_inputs(model, empty_latent(model), stages=2, stage_steps="2,2",
                                                           upscale_model=handle)).outputs
        x0 = stage_latents[0]["samples"]
        up = pack.lua_core.upscale_latent(upscaler, x0, 2.0, latent_format=name)
        other = pack.lua_core.upscale_latent(upscaler, x0, 2.0, latent_format="sd3" if name == "flux" else "flux")
        assert not torch.allclose(up, other, atol=1e-3)
        first = rec.stages()[1][0]
        expected = (1 - first.sigma) * model_space(model, up) + first.sigma * seed_noise(up.shape, 6)
        torch.testing.assert_close(first.input, expected, rtol=1e-5, atol=1e-5)


def test_errors_before_any_sampling(comfy_inproc: harness.InProcComfy, pack: Pack, tiny_lua_file: Path) -> None:
    handle = pack.handle.make_handle(pack.lua_core.load_model(tiny_lua_file), "tiny LUA")
    rec = Recorder()
    model = tiny_model("SD15", "EPS", rec)
    with pytest.raises(ValueError, match="4 channels"):
        comfy_inproc.run_node("LUA_ProgressiveSampler",
                              **progressive_inputs(model, empty_latent(model), upscale_model=handle))
    with pytest.raises(ValueError, match=r"^LUA Progressive Sampler: .*for 3 stages: give one count per stage"):
        comfy_inproc.run_node("LUA_ProgressiveSampler", **progressive_inputs(model, empty_latent(model),
                                                                             stage_steps="20,10"))
    with pytest.raises(ValueError, match=r"^LUA Progressive Sampler: .*at least one. Raise steps"):
        comfy_inproc.run_node("LUA_ProgressiveSampler", **progressive_inputs(model, empty_latent(model),
                                                                             stage_steps="", steps=2))
    assert rec.calls == []
    flow = tiny_model("SD3", "FLOW", rec)  # the 16-channel LUA fits, but does scales 1 to 4 only
    with pytest.raises(ValueError, match=r"^LUA Progressive Sampler: scale 5 between stages: .*any scale from 1 to "
                                         r"4.*Set scale to one it does"):
        comfy_inproc.run_node("LUA_ProgressiveSampler", **progressive_inputs(flow, empty_latent(flow), scale=5.0,
                                                                             upscale_model=handle))
    # the widgets allow 6 stages at x4: from 8^2 that ends at 8192^2 latent pixels, beyond any ComfyUI size (a model
    # that raises if sampled: without the check the run would go on to stages that exhaust memory)
    never = tiny_model("SD3", "FLOW")

    def sampled(apply: Any, args: dict) -> Any:
        raise RuntimeError("sampled before the plan was refused")

    never.set_model_unet_function_wrapper(sampled)
    with pytest.raises(ValueError, match=r"^LUA Progressive Sampler: 6 stages at x4 would end at 8192x8192 latent "
                                         r"pixels \(about 65536x65536 px\), above ComfyUI's largest size \(16384 px\)"):
        comfy_inproc.run_node("LUA_ProgressiveSampler", **progressive_inputs(never, empty_latent(never), stages=6,
                                                                             scale=4.0, stage_steps=""))
    # a 16-channel file made for Wan 2.1 (Qwen-Image) latents, loaded without a MODEL, and a FLUX MODEL
    made_for_qwen = dataclasses.replace(handle, fits=("wan21",))
    flux = tiny_model("Flux", "FLOW", rec)
    with pytest.raises(ValueError, match=r"^LUA Progressive Sampler: this MODEL says FLUX latents, but tiny LUA is a "
                                         r"LUA upscaler made for Wan 2\.1 latents"):
        comfy_inproc.run_node("LUA_ProgressiveSampler", **progressive_inputs(flux, empty_latent(flux),
                                                                             upscale_model=made_for_qwen))
    assert rec.calls == []


def x2_upscaler(pack: Pack, upscale: Callable[[Any, float], Any]) -> Any:
    """A handle to a stand-in 4-channel x2 upscaler (the pack's own LatentUpscaler class) whose work
    is ``upscale(latent, scale)``."""
    import torch

    base = importlib.import_module(pack.module.__name__ + ".lua_core.archs.base")  # imported here if not yet

    class StandIn(base.LatentUpscaler):
        family = "test"

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        @property
        def latent_channels(self) -> int:
            return 4

        @property
        def native_scales(self) -> Any:
            return importlib.import_module(pack.module.__name__ + ".lua_core").Scales.of(2)

        def upscale(self, latent: torch.Tensor, scale: float, **_: Any) -> torch.Tensor:
            return upscale(latent, scale)

    return pack.handle.make_handle(StandIn(), "stand-in x2")


def test_scale_one_needs_no_scale_from_the_upscaler(comfy_inproc: harness.InProcComfy, pack: Pack) -> None:
    """At x1 the upscaler is never run (upscale_latent returns the latent), so a fixed-x2 upscaler
    is no reason to refuse the run."""
    def never(latent: Any, scale: float) -> Any:
        raise AssertionError("not called at x1")

    model = tiny_model("SD15", "EPS")
    final, stages = comfy_inproc.run_node("LUA_ProgressiveSampler", **progressive_inputs(
        model, empty_latent(model), scale=1.0, upscale_model=x2_upscaler(pack, never))).outputs
    assert tuple(final["samples"].shape[-2:]) == (8, 8) and len(stages) == 3


def test_a_cancel_during_an_upscaler_stops_before_the_next_stage(comfy_inproc: harness.InProcComfy,
                                                                  pack: Pack) -> None:
    """An upscaler that reports no progress (city96, NNLatentUpscale, LSSGen) checks for no cancel
    inside itself: the run stops right after it, before the larger stage's first model call."""
    import comfy.model_management as mm
    import torch

    def cancelled_during(latent: Any, scale: float) -> Any:
        mm.interrupt_current_processing(True)  # the user presses cancel while it runs
        return torch.nn.functional.interpolate(latent, scale_factor=scale, mode="nearest")

    rec = Recorder()
    model = tiny_model("SD15", "EPS", rec)
    handle = x2_upscaler(pack, cancelled_during)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            comfy_inproc.run_node("LUA_ProgressiveSampler", **progressive_inputs(model, empty_latent(model),
                                                                                 upscale_model=handle))
    finally:
        mm.interrupt_current_processing(False)
    assert [len(calls) for calls in rec.stages()] == [4]


# --------------------------------------------------------------------------------------------------
# Interruption
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("stop_after", "expected_stages"), [(4, [4]), (6, [4, 2])])
def test_interrupt_stops_between_steps(comfy_inproc: harness.InProcComfy, pack: Pack, stop_after: int,
                                       expected_stages: list[int]) -> None:
    """ComfyUI's interrupt flag, set during a step, stops the run before the next model call: at the end
    of stage 1 nothing is upscaled or sampled further; inside stage 2 that stage stops at once."""
    import comfy.model_management as mm

    def interrupt(n: int) -> None:
        if n == stop_after:
            mm.interrupt_current_processing(True)

    rec = Recorder(on_call=interrupt)
    model = tiny_model("SD3", "FLOW", rec)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            comfy_inproc.run_node("LUA_ProgressiveSampler", **progressive_inputs(model, empty_latent(model)))
    finally:
        mm.interrupt_current_processing(False)
    assert [len(calls) for calls in rec.stages()] == expected_stages
    rec.calls.clear()  # and the flag is consumed: the next run is not affected
    rec.on_call = None
    comfy_inproc.run_node("LUA_ProgressiveSampler", **progressive_inputs(model, empty_latent(model)))
    assert [len(calls) for calls in rec.stages()] == [4, 3, 2]


# --------------------------------------------------------------------------------------------------
# In a server: a prompt, and the example workflows
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(comfyui_path: Path, test_vaes: dict[str, Path], tiny_lua_file: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.ComfyServer]:
    """A private server (the pack, the test pack, the test VAEs and the tiny LUA checkpoint): the shared
    one's latent_upscale_models folder stays as other tests expect it."""
    srv = harness.ComfyServer(tmp_path_factory.mktemp("progressive_server"), comfy_dir=comfyui_path,
                              custom_nodes={harness.TEST_PACK_INSTALL_NAME: harness.TEST_PACK_DIR,
                                            harness.PACK_INSTALL_NAME: harness.REPO_ROOT},
                              model_files={"vae": test_vaes, "latent_upscale_models": [tiny_lua_file]})
    try:
        yield srv.start()
    finally:
        srv.stop()


@pytest.mark.comfyui_server
def test_server_prompt_to_png(server: harness.ComfyServer) -> None:
    prompt = {
        "model": {"class_type": "LUATest_TinyModel", "inputs": {"latent_format": "SD15", "model_type": "EPS",
                                                                "seed": 0}},
        "cond": {"class_type": "LUATest_ZeroConditioning", "inputs": {"tokens": 1, "dim": 8}},
        "latent": {"class_type": "LUATest_EmptyLatentForModel",
                   "inputs": {"model": ["model", 0], "width": 64, "height": 48, "batch": 1}},
        "sampler": {"class_type": "LUA_ProgressiveSampler", "inputs": {
            "model": ["model", 0], "positive": ["cond", 0], "negative": ["cond", 0], "latent_image": ["latent", 0],
            "seed": 1, "stages": 2, "scale": 2.0, "steps": 6, "stage_steps": "", "cfg": 3.0,
            "sampler_name": "euler_ancestral", "scheduler": "karras", "strength": 0.6, "upscale_method": "bilinear",
            "flux_shift_per_stage": True, "max_shift": 1.15, "base_shift": 0.5}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "lua_test_taesd_4ch.safetensors"}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "progressive"}},
        "stages": {"class_type": "LUATest_LatentInfo", "inputs": {"samples": ["sampler", 1]}},
    }
    entry = server.run_prompt(prompt, timeout=120)
    images = server.output_images(entry)
    assert len(images) == 1
    assert harness.png_size(server.view(images[0])) == (128, 96)  # 64x48 px start, x2, via 8x6 -> 16x12 latents
    infos = entry["outputs"]["stages"]["latent_info"]  # the list output: one entry per stage
    assert [info["shape"] for info in infos] == [[1, 4, 6, 8], [1, 4, 12, 16]]
    assert all(info["finite"] for info in infos)


def load_workflow(name: str) -> tuple[dict, dict]:
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text(encoding="utf-8"))
    return ui, api


@pytest.mark.comfyui_server
def test_example_workflows_load_and_run(server: harness.ComfyServer, tiny_lua_file: Path) -> None:
    object_info = server.object_info()
    listed = server.get_json("/workflow_templates").get(harness.PACK_INSTALL_NAME, [])
    assert {"progressive_sampler", "progressive_building_blocks"} <= set(listed)  # the api/ twins are not
    finals = {}
    for name in ("progressive_sampler", "progressive_building_blocks"):
        ui, api = load_workflow(name)
        assert ui["version"] == 0.4
        assert any(node["type"] in FRONTEND_ONLY and node["widgets_values"][0].strip() for node in ui["nodes"])
        # not the LUA weights: Load LUA Model downloads them (the frontend would refuse to fetch a .pth)
        assert {m["directory"] for m in ui["models"]} == {"checkpoints"}
        for node in ui["nodes"]:
            for model in node["properties"].get("models", []):
                assert model["url"].startswith("https://huggingface.co/") and model in ui["models"]
        assert ui_to_api(ui, object_info) == {k: {"inputs": v["inputs"], "class_type": v["class_type"]}
                                              for k, v in api.items()}, f"{name}: UI and API twin differ"
        prompt = tiny_prompt(api, tiny_lua_file.name)
        save = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
        decode = prompt[save]["inputs"]["images"][0]
        prompt["probe"] = {"class_type": "LUATest_LatentInfo",
                           "inputs": {"samples": prompt[decode]["inputs"]["samples"]}}
        entry = server.run_prompt(prompt, timeout=180)
        saved = entry["outputs"][save]["images"]
        assert len(saved) == 1 and harness.png_size(server.view(saved[0])) == (128, 128)  # 64 px x2
        finals[name] = entry["outputs"]["probe"]["latent_info"][0]
    one, blocks = finals["progressive_sampler"], finals["progressive_building_blocks"]
    assert one["shape"] == blocks["shape"] == [1, 16, 16, 16]
    assert one["finite"] and one["std"] > 0.01
    for stat in ("mean", "std", "min", "max"):  # the two forms give the same latent
        assert one[stat] == pytest.approx(blocks[stat], rel=1e-4, abs=1e-5), stat
