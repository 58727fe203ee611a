"""The work behind the progressive nodes: the stage loop and the re-noising of a LATENT.

Why apart from the node classes: the nodes stay thin schemas, and this is the part that talks to
ComfyUI's sampling (``comfy.sample.sample``, ``prepare_noise``, the progress bar, previews,
interruption) and to the pack's upscaler handle. Definitions: docs/progressive.md.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..lua_core import LuaError, families_with_channels, format_name
from .handle import LUAModelHandle, run_upscale
from .progressive_noise import renoise, schedule, stage_sigmas, uses_flux_shift, with_flux_shift
from .progressive_plan import FLUX_BASE_SHIFT, FLUX_MAX_SHIFT, Stage, plan_stages, schedule_length

log = logging.getLogger(__name__)

MAX_SEED = 0xFFFFFFFFFFFFFFFF


def stage_seed(seed: int, stage: int) -> int:
    """Stage k's noise seed: ``seed + k`` (stage 0 is then exactly KSampler with ``seed``); distinct
    seeds because noise of different sizes from one seed would share its first values."""
    return (int(seed) + stage) % (MAX_SEED + 1)


def upscaler_latent_format(model: Any) -> Any:
    """The MODEL's ComfyUI latent format, when lua_core knows it (families trained on scaled latents,
    like LSSGen's, need it); None for formats it does not know."""
    latent_format = model.get_model_object("latent_format")
    try:
        format_name(latent_format)
    except LuaError:
        return None
    return latent_format


def upscale_stage(samples: torch.Tensor, size: tuple[int, int], scale: float, *, model: Any,
                  upscale_model: LUAModelHandle | None, interpolation: str) -> torch.Tensor:
    """Upscale one stage's denoised latent to the next stage's ``size`` (raw latents in, raw out)."""
    import comfy.utils
    h, w = size
    if upscale_model is None:
        return comfy.utils.common_upscale(samples, w, h, interpolation, "disabled")
    out = run_upscale(upscale_model, samples, scale, latent_format=upscaler_latent_format(model))
    if tuple(out.shape[-2:]) != (h, w):  # a family that sizes its output its own way
        out = comfy.utils.common_upscale(out, w, h, "bicubic", "disabled")
    return out


def check_upscaler(upscale_model: LUAModelHandle | None, channels: int, scale: float = 2.0,
                   stages: int = 2, model: Any = None) -> None:
    """Refuse a channel mismatch, latents the upscaler was not made for (same channel count, other VAE)
    or a scale it cannot do before any sampling, not after the first stage's work (the upscaler only
    runs between stages)."""
    if upscale_model is None or stages < 2:
        return
    if upscale_model.latent_channels != channels:
        fits = families_with_channels(upscale_model.latent_channels) or f"{upscale_model.latent_channels}-channel"
        have = families_with_channels(channels) or f"{channels}-channel"
        raise ValueError(f"the upscaler {upscale_model.describe()} takes {fits} latents, "
                         f"but this MODEL's latents have {channels} channels ({have}). Load an upscaler for "
                         "this model, or leave upscale_model unconnected to interpolate.")
    latent_format = upscaler_latent_format(model) if model is not None else None
    if latent_format is not None:
        try:
            upscale_model.check_format(format_name(latent_format), "this MODEL")
        except LuaError as e:
            raise ValueError(str(e)) from None
    if float(scale) == 1.0:  # x1 returns the latent without running the upscaler (upscale_latent)
        return
    try:
        upscale_model.upscaler.plan_scale(float(scale))
    except LuaError as e:
        raise ValueError(f"scale {scale:g} between stages: {e}. Set scale to one it "
                         "does, or leave upscale_model unconnected to interpolate.") from None


def check_final_size(height: int, width: int, stages: int, scale: float) -> None:
    """Refuse, before any sampling, a plan whose last stage is larger than any ComfyUI node makes (the
    widgets allow 6 stages at x4: a 128^2 latent would end at 131072^2 latent pixels, out of memory
    only after the cheap stages ran)."""
    import nodes as comfy_nodes

    largest = comfy_nodes.MAX_RESOLUTION // 8  # in latent pixels (the /8 VAEs)
    if max(height, width) > largest:
        raise ValueError(f"{stages} stages at x{scale:g} would end at {height}x{width} latent pixels (about "
                         f"{height * 8}x{width * 8} px), above ComfyUI's largest size ({comfy_nodes.MAX_RESOLUTION} "
                         "px): lower stages or scale, or start from a smaller latent.")


class _Bar:
    """One ComfyUI progress bar over all stages that only moves forward: adaptive samplers such as
    dpm_adaptive call back more (or fewer) times than a stage has steps, so a stage's callbacks are
    kept inside its own steps and each finished stage fills up to its end."""

    def __init__(self, total: int):
        import comfy.utils
        self.bar, self.total, self.shown = comfy.utils.ProgressBar(total), total, 0

    def show(self, value: int, preview: Any = None) -> None:
        if value > self.shown or preview is not None:  # a new preview at the same value still shows
            self.shown = max(value, self.shown)
            self.bar.update_absolute(self.shown, self.total, preview)


def _step_callback(model: Any, bar: _Bar, offset: int, steps: int) -> Any:
    """Per-step callback: the overall progress bar (with ComfyUI's latent preview) and a cancel check."""
    import comfy.model_management
    import latent_preview
    previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)

    def callback(step: int, x0: torch.Tensor, x: torch.Tensor, stage_total: int) -> None:
        preview = previewer.decode_latent_to_preview_image("JPEG", x0) if previewer else None
        bar.show(offset + min(step + 1, steps), preview)
        comfy.model_management.throw_exception_if_processing_interrupted()

    return callback


def run_progressive(model: Any, positive: Any, negative: Any, latent: dict, *, seed: int, stages: int,
                    scale: float, steps: int, stage_steps: str, cfg: float, sampler_name: str, scheduler: str,
                    strength: float, upscale_method: str = "bicubic", flux_shift_per_stage: bool = True,
                    max_shift: float = FLUX_MAX_SHIFT, base_shift: float = FLUX_BASE_SHIFT,
                    upscale_model: LUAModelHandle | None = None) -> tuple[dict, list[dict]]:
    """The sampler node's work: (final LATENT, every stage's denoised LATENT)."""
    import comfy.model_management
    import comfy.sample
    import comfy.utils

    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    if samples.ndim != 4:
        raise ValueError(f"the progressive sampler takes image latents [B, C, H, W], got shape {tuple(samples.shape)}")
    check_upscaler(upscale_model, samples.shape[1], scale, stages, model)
    plan = plan_stages(samples.shape[-2], samples.shape[-1], stages=stages, scale=scale, steps=steps,
                       stage_steps=stage_steps, strength=strength)
    check_final_size(plan[-1].height, plan[-1].width, stages, scale)
    flux = flux_shift_per_stage and uses_flux_shift(model)
    batch_index = latent.get("batch_index")
    total = sum(stage.steps for stage in plan)
    bar = _Bar(total)
    disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED
    outputs: list[dict] = []
    done = 0
    for stage in plan:
        if stage.index > 0:
            samples = upscale_stage(samples, (stage.height, stage.width), scale, model=model,
                                    upscale_model=upscale_model, interpolation=upscale_method)
            # a cancel during an upscaler that reports no progress (and so checks for none) stops here,
            # not after the next, larger stage's first step
            comfy.model_management.throw_exception_if_processing_interrupted()
        stage_model, shift = model, None
        if flux:
            stage_model, shift = with_flux_shift(model, stage.height, stage.width, max_shift, base_shift)
        sigmas = stage_sigmas(stage_model, stage.steps, stage.denoise, sampler_name, scheduler)
        _log_stage(stage, sigmas, shift)
        noise = comfy.sample.prepare_noise(samples, stage_seed(seed, stage.index), batch_index)
        callback = _step_callback(stage_model, bar, done, stage.steps)
        samples = comfy.sample.sample(stage_model, noise, stage.steps, cfg, sampler_name, scheduler, positive,
                                      negative, samples, denoise=stage.denoise, noise_mask=latent.get("noise_mask"),
                                      sigmas=sigmas, callback=callback, disable_pbar=disable_pbar,
                                      seed=stage_seed(seed, stage.index))
        done += stage.steps
        bar.show(done)
        outputs.append(_latent_like(latent, samples, keep_mask=False))
    return _latent_like(latent, samples, keep_mask=True), outputs


def _latent_like(latent: dict, samples: torch.Tensor, keep_mask: bool) -> dict:
    out = {k: v for k, v in latent.items() if keep_mask or k != "noise_mask"}
    out["samples"] = samples
    return out


def _log_stage(stage: Stage, sigmas: torch.Tensor, shift: float | None) -> None:
    extra = f", FLUX shift {shift:.4f}" if shift is not None else ""
    log.info("LUA progressive stage %d: latent %dx%d, %d steps, denoise %.2f, start sigma %.4f%s",
             stage.index + 1, stage.width, stage.height, stage.steps, stage.denoise, float(sigmas[0]), extra)


def renoise_latent(model: Any, latent: dict, *, seed: int, strength: float, steps: int, sampler_name: str,
                   scheduler: str, sigma: float = 0.0) -> tuple[dict, int, int, float, torch.Tensor]:
    """The re-noise node's work: (noisy LATENT, KSamplerAdvanced steps, start_at_step, sigma, sigmas)."""
    import comfy.sample
    if strength <= 0.0 and sigma <= 0.0:
        raise ValueError("strength 0 adds no noise and leaves nothing to sample: use a strength above 0")
    if latent.get("noise_mask") is not None:
        # KSamplerAdvanced (add_noise disabled) would keep the unmasked area as this node's output,
        # i.e. noisy: only the one-node sampler adds the matching noise to the kept area per step
        raise ValueError("the latent has a noise_mask: after a re-noise, KSamplerAdvanced with add_noise disabled "
                         "would leave the unmasked area noisy. Use LUA Progressive Sampler (it keeps masks like "
                         "KSampler), or apply the mask after sampling (e.g. a latent composite)")
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    if sigma > 0.0:
        import comfy.model_sampling
        sampling = model.get_model_object("model_sampling")
        top = float(sampling.sigma_max)
        if isinstance(sampling, comfy.model_sampling.CONST) and sigma > top * (1 + 1e-6):
            # flow models mix sigma * noise + (1 - sigma) * x: above their largest sigma x gets a negative weight
            raise ValueError(f"sigma {sigma:g} is above this flow model's noise range (0 to {top:g}): set sigma to "
                             f"at most {top:g}, or to 0 to use strength")
        full = schedule(model, steps, sampler_name, scheduler)
        start = next(i for i, s in enumerate(full.tolist()) if s <= sigma or i == len(full) - 1)
        total = steps
        rest = full[start:]
        sigmas = rest if abs(float(rest[0]) - sigma) <= 1e-6 * max(1.0, sigma) else torch.cat(
            [torch.tensor([float(sigma)]), rest])
        start_sigma = float(sigma)
    else:
        total = schedule_length(steps, strength)
        start = total - steps
        sigmas = schedule(model, total, sampler_name, scheduler)[start:]
        start_sigma = float(sigmas[0])
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    out = dict(latent)
    out["samples"] = renoise(model, samples, start_sigma, noise)
    return out, total, start, start_sigma, sigmas
