"""Noise levels and re-noising with the MODEL's own sampling objects (ComfyUI's, never a copy).

Why it exists: a later progressive stage starts from the upscaled denoised latent at an intermediate
noise level, and what "noise level" means depends on the model type. ComfyUI already encodes that
in ``model_sampling`` (``comfy/model_sampling.py``):

* EPS / V-prediction: ``noise_scaling(sigma, noise, x0) = x0 + sigma * noise``
  (``x0 + sqrt(1 + sigma^2) * noise`` when sigma is the schedule's maximum: ``max_denoise``);
* rectified flow (``CONST``: SD3, FLUX): ``sigma * noise + (1 - sigma) * x0``.

Both act on the model-space latent (``latent_format.process_in`` of the raw LATENT), which is
where ComfyUI's sampler adds its noise. The start sigma of a stage is an entry of the schedule
``comfy.samplers.KSampler`` builds (:func:`stage_sigmas`), so KSampler / KSamplerAdvanced start
from exactly the same one.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .progressive_plan import flux_shift, schedule_length


def uses_flux_shift(model: Any) -> bool:
    """Whether the MODEL is FLUX.1 dev-like: a FLUX.1 config sampled with ComfyUI's ``ModelSamplingFlux``.

    Those are the models whose shift ComfyUI's ``ModelSamplingFlux`` node sets from the image size
    (FLUX.1 dev and checkpoints loaded as FLUX.1). Left alone: FLUX.1 schnell (``ModelSamplingDiscreteFlow``,
    no resolution shift), FLUX.2 (its own latent format and formula) and Chroma (its own config, shift 1).
    """
    import comfy.latent_formats
    import comfy.model_sampling
    import comfy.supported_models
    sampling = model.get_model_object("model_sampling")
    latent_format = model.get_model_object("latent_format")
    return (isinstance(sampling, comfy.model_sampling.ModelSamplingFlux)
            and isinstance(latent_format, comfy.latent_formats.Flux)
            and isinstance(model.model.model_config, comfy.supported_models.Flux))


def with_flux_shift(model: Any, latent_height: int, latent_width: int, max_shift: float,
                    base_shift: float) -> tuple[Any, float]:
    """A clone of ``model`` whose sampling has FLUX's shift for this latent size, and that shift.

    Patched the way ComfyUI's ``ModelSamplingFlux`` node patches it (a ``ModelSamplingFlux`` +
    ``CONST`` object from the model's config, ``set_parameters(shift)``, ``add_object_patch``), with
    the node's formula evaluated at this stage's size (:func:`progressive_plan.flux_shift`).
    """
    import comfy.model_sampling

    class ModelSamplingAdvanced(comfy.model_sampling.ModelSamplingFlux, comfy.model_sampling.CONST):
        pass

    shift = flux_shift(latent_height, latent_width, max_shift, base_shift)
    patched = model.clone()
    sampling = ModelSamplingAdvanced(model.model.model_config)
    sampling.set_parameters(shift=shift)
    patched.add_object_patch("model_sampling", sampling)
    return patched, shift


def schedule(model: Any, steps: int, sampler_name: str, scheduler: str) -> torch.Tensor:
    """The full ``steps``-step schedule KSampler builds (``comfy.samplers.KSampler.sigmas``, which
    gives dpm_2, uni_pc... their extra step)."""
    import comfy.samplers
    ks = comfy.samplers.KSampler(model, steps=steps, device=torch.device("cpu"), sampler=sampler_name,
                                 scheduler=scheduler)
    return ks.sigmas.detach().to("cpu", torch.float32)


def stage_sigmas(model: Any, steps: int, strength: float, sampler_name: str, scheduler: str) -> torch.Tensor:
    """The ``steps + 1`` sigmas a stage runs: the tail of the ``schedule_length(steps, strength)``-step
    schedule. Equal to ``KSampler(steps, denoise=strength).sigmas`` except where KSampler's rounding
    would start from pure noise (see :func:`progressive_plan.schedule_length`)."""
    total = schedule_length(steps, strength)
    return schedule(model, total, sampler_name, scheduler)[total - steps:]


def is_max_denoise(model_sampling: Any, sigma: float) -> bool:
    """ComfyUI's ``KSAMPLER.max_denoise``: the start sigma is (at least) the schedule's maximum."""
    max_sigma = float(model_sampling.sigma_max)
    return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma


def to_model_space(model: Any, samples: torch.Tensor) -> torch.Tensor:
    """Raw LATENT -> the model's sampling space, as ComfyUI's sampler does it (an all-zero latent,
    an "empty" one, is left as is: ``CFGGuider.inner_sample``)."""
    if torch.count_nonzero(samples) == 0:
        return samples
    return model.get_model_object("latent_format").process_in(samples)


def renoise(model: Any, samples: torch.Tensor, sigma: float, noise: torch.Tensor) -> torch.Tensor:
    """Noise raw latents to ``sigma`` and return them in ComfyUI's LATENT convention for noisy latents.

    The model-space sample is ``model_sampling.noise_scaling(sigma, noise, process_in(x0))``, what
    ComfyUI's sampler builds at its first step. A LATENT carries a noisy latent the way
    KSamplerAdvanced's ``return_with_leftover_noise`` leaves it: ``process_out`` of
    ``inverse_noise_scaling(sigma, x)`` (for flow models ``x / (1 - sigma)``; the next sampler's
    ``noise_scaling`` with zero noise multiplies it back by ``1 - sigma``). So this LATENT fed to
    KSamplerAdvanced (add_noise disabled, starting at this sigma) or SamplerCustom (add_noise off)
    reproduces the noisy sample exactly.
    """
    sampling = model.get_model_object("model_sampling")
    latent_format = model.get_model_object("latent_format")
    sig = torch.tensor(float(sigma), dtype=torch.float32)
    x0 = to_model_space(model, samples.to(torch.float32))
    noisy = sampling.noise_scaling(sig, noise.to(x0), x0.clone(), max_denoise=is_max_denoise(sampling, sigma))
    stored = latent_format.process_out(sampling.inverse_noise_scaling(sig, noisy))
    if not bool(torch.isfinite(stored).all()):
        raise ValueError(f"sigma {sigma:g} is pure noise for this model (a flow model at sigma 1 keeps nothing "
                         "of the latent) and cannot be stored as a noisy LATENT: use a strength below 1.0 (or a "
                         "sigma below 1), or an empty latent with add_noise enabled")
    return stored
