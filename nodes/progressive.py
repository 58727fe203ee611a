"""LSSGen-style progressive generation as ComfyUI nodes: sample small, upscale the latent, finish big.

Why it exists: most of a diffusion model's work fixes the composition, which a low resolution
does as well as a high one at a fraction of the cost. ``LUA_ProgressiveSampler`` samples the
starting latent to sigma 0, upscales that denoised latent in latent space (a LUA_MODEL or
interpolation), re-noises it to the noise level where the next stage starts, and samples that
stage at the larger size; ``LUA_ReNoiseLatent`` is the re-noising step alone, for building the
same thing from KSampler / KSamplerAdvanced and ``LUA_LatentUpscale``.

Definitions (docs/progressive.md):

* stage k >= 1 runs like KSampler with ``denoise = strength`` on the upscaled latent: of the
  ``int(steps_k / strength)``-step schedule (at least ``steps_k + 1`` steps, where KSampler's
  rounding would start from pure noise) the last ``steps_k`` steps run, so the stage starts at that
  schedule's sigma a fraction ``strength`` from the clean end. The noise is added by ComfyUI's own
  ``model_sampling.noise_scaling`` (x0 + sigma * noise for EPS/V, (1 - sigma) * x0 + sigma * noise
  for flow models), seed ``seed + k``;
* FLUX.1's resolution-dependent shift is recomputed for each stage's size with ComfyUI's
  ``ModelSamplingFlux`` formula; SD3's shift does not depend on resolution and is the model's.
"""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..lua_core import LuaError
from .handle import LUAModel, LUAModelHandle
from .progressive_plan import FLUX_BASE_SHIFT, FLUX_MAX_SHIFT
from .progressive_run import MAX_SEED, renoise_latent, run_progressive

CATEGORY = "sampling/LUA"
INTERPOLATIONS = ["bicubic", "bilinear", "nearest-exact", "area", "bislerp"]


def _sampler_names() -> list[str]:
    import comfy.samplers
    return list(comfy.samplers.KSampler.SAMPLERS)


def _scheduler_names() -> list[str]:
    import comfy.samplers
    return list(comfy.samplers.KSampler.SCHEDULERS)


class ProgressiveSampler(io.ComfyNode):
    """Sample at the starting latent's size, then upscale + re-noise + sample for each later stage."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LUA_ProgressiveSampler",
            display_name="LUA Progressive Sampler",
            category=CATEGORY,
            description=(
                "LSSGen-style progressive generation: sample the starting latent (the low resolution), "
                "upscale the result in latent space (LUA_MODEL, or interpolation when none is connected), "
                "re-noise it to `strength` and finish at the larger size; repeat for each stage. "
                "Steps are weighted toward the cheap low-resolution stages."),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model that samples every stage."),
                io.Conditioning.Input("positive", tooltip="What to generate, as for KSampler."),
                io.Conditioning.Input("negative", tooltip="What to avoid, as for KSampler."),
                io.Latent.Input("latent_image", tooltip="The first stage's latent: its size is the lowest "
                                "resolution (e.g. an empty 512x512 latent for a 1024x1024 result in 2 stages)."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Noise seed of the first stage; stage k uses seed + k."),
                io.Int.Input("stages", default=2, min=1, max=6,
                             tooltip="Number of resolutions. The result is the starting latent times "
                             "scale^(stages - 1)."),
                io.Float.Input("scale", default=2.0, min=1.0, max=4.0, step=0.05,
                               tooltip="Upscale factor from one stage to the next."),
                io.Int.Input("steps", default=30, min=1, max=10000,
                             tooltip="Total steps over all stages, each stage getting half the steps of the "
                             "one before (30 over 2 stages: 20,10). Ignored when stage_steps is set."),
                io.String.Input("stage_steps", default="", tooltip="Steps per stage as a comma list, e.g. "
                                "'20,10' (one count per stage); empty to split `steps` automatically."),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale, as for KSampler, in every stage."),
                io.Combo.Input("sampler_name", options=_sampler_names(), tooltip="ComfyUI sampler for every stage."),
                io.Combo.Input("scheduler", options=_scheduler_names(),
                               tooltip="ComfyUI scheduler; each stage builds its own schedule."),
                io.Float.Input("strength", default=0.75, min=0.01, max=1.0, step=0.01,
                               tooltip="Re-noise strength of the later stages, as KSampler's denoise: a stage "
                               "of n steps runs the last n steps of an int(n / strength)-step schedule "
                               "(at least n + 1), starting that far from the clean end. 1.0 = pure noise."),
                io.Combo.Input("upscale_method", options=INTERPOLATIONS, default="bicubic",
                               tooltip="Interpolation used when no upscale_model is connected."),
                io.Boolean.Input("flux_shift_per_stage", default=True,
                                 tooltip="FLUX.1: set the resolution-dependent shift for each stage's size, as "
                                 "ComfyUI's ModelSamplingFlux node does (replaces a shift set on the model). "
                                 "Other models keep their own sampling."),
                io.Float.Input("max_shift", default=FLUX_MAX_SHIFT, min=0.0, max=100.0, step=0.01,
                               tooltip="FLUX.1 only: ModelSamplingFlux max_shift (at 4096 tokens, 1024x1024)."),
                io.Float.Input("base_shift", default=FLUX_BASE_SHIFT, min=0.0, max=100.0, step=0.01,
                               tooltip="FLUX.1 only: ModelSamplingFlux base_shift (at 256 tokens, 256x256)."),
                LUAModel.Input("upscale_model", optional=True,
                               tooltip="From Load LUA Model: the latent upscaler between stages (its model "
                               "input can stay empty: the latent format is read from this node's MODEL). "
                               "Unconnected: `upscale_method` interpolation."),
            ],
            outputs=[
                io.Latent.Output("LATENT", display_name="samples", tooltip="The last stage's latent (the full size)."),
                io.Latent.Output("STAGE_LATENTS", display_name="stage_latents", is_output_list=True,
                                 tooltip="The denoised latent of every stage, smallest first (a list)."),
            ],
        )

    @classmethod
    def execute(cls, model: Any, positive: Any, negative: Any, latent_image: dict, seed: int, stages: int,
                scale: float, steps: int, stage_steps: str, cfg: float, sampler_name: str, scheduler: str,
                strength: float, upscale_method: str, flux_shift_per_stage: bool, max_shift: float,
                base_shift: float, upscale_model: LUAModelHandle | None = None) -> io.NodeOutput:
        try:
            final, stage_outputs = run_progressive(
                model, positive, negative, latent_image, seed=seed, stages=stages, scale=scale, steps=steps,
                stage_steps=stage_steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                strength=strength, upscale_method=upscale_method, flux_shift_per_stage=flux_shift_per_stage,
                max_shift=max_shift, base_shift=base_shift, upscale_model=upscale_model)
        except (LuaError, ValueError) as e:  # the plan's and the upscaler's user-facing errors
            raise _named("LUA Progressive Sampler", e) from None
        return io.NodeOutput(final, stage_outputs)


class ReNoiseLatent(io.ComfyNode):
    """Noise a (denoised, upscaled) LATENT to where a later stage starts, for KSamplerAdvanced."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LUA_ReNoiseLatent",
            display_name="LUA Re-Noise Latent",
            category=CATEGORY,
            description=(
                "Adds noise to a LATENT up to the noise level where sampling resumes, with the MODEL's own "
                "noise formula (EPS/V: x + sigma*noise; flow: (1-sigma)*x + sigma*noise). Feed the result to "
                "KSamplerAdvanced with add_noise disabled, steps = `steps` and start_at_step = "
                "`start_at_step` (same sampler and scheduler), or to SamplerCustom (add_noise off) with "
                "`sigmas`. With the same seed this equals KSampler with denoise = strength."),
            inputs=[
                io.Latent.Input("samples", tooltip="The clean latent to re-noise (e.g. from Latent Upscale (LUA))."),
                io.Model.Input("model", tooltip="The model that samples next (for FLUX.1: patched with the "
                               "shift of this resolution, e.g. by ModelSamplingFlux)."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Seed of the added noise."),
                io.Float.Input("strength", default=0.75, min=0.01, max=1.0, step=0.01,
                               tooltip="As KSampler's denoise: the continuation runs the last `steps` steps of "
                               "an int(steps / strength)-step schedule (at least steps + 1)."),
                io.Int.Input("steps", default=10, min=1, max=10000,
                             tooltip="Steps the continuation runs from this noise level."),
                io.Combo.Input("sampler_name", options=_sampler_names(),
                               tooltip="The continuation's sampler (dpm_2, uni_pc... get an extra schedule step)."),
                io.Combo.Input("scheduler", options=_scheduler_names(),
                               tooltip="The scheduler of the sampler that continues (sets the start sigma)."),
                io.Float.Input("sigma", default=0.0, min=0.0, max=20000.0, step=0.001, round=False,
                               tooltip="If above 0: noise to exactly this sigma instead of the strength's. "
                               "`sigmas` then starts at it; start_at_step is the first step of the full "
                               "`steps` schedule at or below it."),
            ],
            outputs=[
                io.Latent.Output("LATENT", display_name="samples",
                                 tooltip="The noisy latent, for KSamplerAdvanced with add_noise disabled."),
                io.Int.Output("STEPS", display_name="steps", tooltip="KSamplerAdvanced steps."),
                io.Int.Output("START_AT_STEP", display_name="start_at_step",
                              tooltip="KSamplerAdvanced start_at_step."),
                io.Float.Output("SIGMA", display_name="sigma", tooltip="The noise level of the output."),
                io.Sigmas.Output("SIGMAS", display_name="sigmas",
                                 tooltip="The schedule from this noise level to 0, for SamplerCustom."),
            ],
        )

    @classmethod
    def execute(cls, samples: dict, model: Any, seed: int, strength: float, steps: int, sampler_name: str,
                scheduler: str, sigma: float) -> io.NodeOutput:
        try:
            noisy, total, start, start_sigma, sigmas = renoise_latent(
                model, samples, seed=seed, strength=strength, steps=steps, sampler_name=sampler_name,
                scheduler=scheduler, sigma=sigma)
        except ValueError as e:
            raise _named("LUA Re-Noise Latent", e) from None
        return io.NodeOutput(noisy, total, start, start_sigma, sigmas)


def _named(node: str, e: Exception) -> ValueError:
    """The error as the user sees it: prefixed with the node's display name."""
    return ValueError(f"{node}: {e}")


NODES: list[type] = [ProgressiveSampler, ReNoiseLatent]
