"""The arithmetic of a progressive (LSSGen-style) run: stage sizes, the step split, FLUX's shift.

Pure Python on purpose (no torch, no comfy): the sampler node, the benchmark and the tests all use
the same numbers, and they can be checked without a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: ComfyUI's ``ModelSamplingFlux`` node defaults (``comfy_extras/nodes_model_advanced.py``)
FLUX_MAX_SHIFT = 1.15
FLUX_BASE_SHIFT = 0.5
#: the token counts at which that node's linear shift reaches base_shift and max_shift
FLUX_BASE_TOKENS = 256
FLUX_MAX_TOKENS = 4096


@dataclass(frozen=True)
class Stage:
    """One stage: the latent size it samples at, its steps, and its denoise (1.0 = from pure noise)."""

    index: int
    height: int
    width: int
    steps: int
    denoise: float


def stage_sizes(height: int, width: int, stages: int, scale: float) -> list[tuple[int, int]]:
    """Latent (h, w) of every stage: each stage is the previous one times ``scale``, rounded.

    The rounding is the upscalers' (``lua_core.inference.output_size``) and ComfyUI's
    ``LatentUpscaleBy`` (``round(side * scale)``), so the building-block form gives the same sizes.
    """
    if stages < 1:
        raise ValueError(f"stages must be at least 1, got {stages}")
    if not math.isfinite(scale) or scale < 1.0:
        raise ValueError(f"scale must be a finite number >= 1, got {scale!r}")
    sizes = [(int(height), int(width))]
    for _ in range(stages - 1):
        h, w = sizes[-1]
        sizes.append((max(1, int(round(h * scale))), max(1, int(round(w * scale)))))
    return sizes


def split_steps(total: int, stages: int) -> list[int]:
    """Split ``total`` sampling steps over ``stages``, each stage getting half the steps of the one before.

    Why halving: a stage at scale 2 has 4x the tokens of the previous one, so its steps cost at
    least 4x (more where attention is quadratic); the low-resolution stage fixes the composition
    and deserves most of the steps, the later ones only refine (LSSGen's
    ``shorten_intermediate_steps`` halves the steps per stage the same way). Weights
    ``2^-k`` (k = 0 for the first, smallest stage), rounded by largest remainder (ties to the
    earlier stage), every stage at least one step: 30 over 2 stages -> [20, 10]; over 3 ->
    [17, 9, 4]; over 4 -> [16, 8, 4, 2].
    """
    if stages < 1:
        raise ValueError(f"stages must be at least 1, got {stages}")
    if total < stages:
        raise ValueError(f"{total} steps cannot be split over {stages} stages: each stage needs at least one. "
                         f"Raise steps to at least {stages} or lower stages")
    weights = [2.0 ** -k for k in range(stages)]
    ideal = [total * w / sum(weights) for w in weights]
    steps = [int(math.floor(x)) for x in ideal]
    by_remainder = sorted(range(stages), key=lambda k: (-(ideal[k] - steps[k]), k))
    for k in by_remainder[: total - sum(steps)]:
        steps[k] += 1
    for k in range(stages):  # a late stage rounded to 0 takes a step from the largest one (the last of
        if steps[k] == 0:    # equals, so the counts stay non-increasing: 6 over 5 -> [2, 1, 1, 1, 1])
            top = max(steps)
            steps[max(i for i, n in enumerate(steps) if n == top)] -= 1
            steps[k] = 1
    return steps


def parse_stage_steps(text: str, stages: int) -> list[int] | None:
    """``"20,10"`` -> [20, 10] (one positive count per stage); ``""`` -> None (split automatically)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        steps = [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"stage_steps must be whole numbers separated by commas (e.g. '20,10'), "
                         f"got {text!r}") from None
    if len(steps) != stages:
        raise ValueError(f"stage_steps gives {len(steps)} step counts ({text!r}) for {stages} stages: give one "
                         "count per stage, or leave stage_steps empty to split steps automatically")
    if any(n < 1 for n in steps):
        raise ValueError(f"every stage needs at least one step, got {text!r}")
    return steps


def plan_stages(height: int, width: int, *, stages: int, scale: float, steps: int, stage_steps: str,
                strength: float) -> list[Stage]:
    """The stages of a run: sizes from :func:`stage_sizes`, steps from ``stage_steps`` or
    :func:`split_steps`, denoise 1.0 for the first stage and ``strength`` for the others."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be within 0..1, got {strength!r}")
    counts = parse_stage_steps(stage_steps, stages) or split_steps(steps, stages)
    sizes = stage_sizes(height, width, stages, scale)
    return [Stage(k, h, w, n, 1.0 if k == 0 else float(strength))
            for k, ((h, w), n) in enumerate(zip(sizes, counts))]


def schedule_length(steps: int, strength: float) -> int:
    """Length of the schedule a stage of ``steps`` steps at ``strength`` runs the tail of.

    KSampler's ``denoise`` rule (``KSampler.set_steps``): ``int(steps / strength)`` steps, of which
    the last ``steps`` run, so the stage starts at the sigma a fraction ``strength`` from the clean
    end (rounded toward more noise). One change: at least ``steps + 1`` when strength < 1, because
    KSampler's floor makes e.g. 2 steps at 0.75 a full schedule (pure noise, the upscaled latent
    thrown away). Strength above 0.9999 is the full schedule, as in KSampler.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if strength > 0.9999:
        return steps
    if strength <= 0.0:
        raise ValueError("strength 0 starts at sigma 0: nothing to sample")
    return max(int(steps / strength), steps + 1)


def flux_shift(latent_height: int, latent_width: int, max_shift: float = FLUX_MAX_SHIFT,
               base_shift: float = FLUX_BASE_SHIFT) -> float:
    """FLUX's resolution-dependent shift (``mu``) for a latent of this size.

    ComfyUI's ``ModelSamplingFlux`` node computes it from the image size as
    ``width * height / (8 * 8 * 2 * 2) * m + b``: the number of 2x2-patch tokens of the /8 latent,
    on the line through (256 tokens, base_shift) and (4096 tokens, max_shift). In latent pixels that
    is ``h * w / 4`` tokens. Same formula as diffusers' ``calculate_shift`` (LSSGen's per-stage mu).
    """
    slope = (max_shift - base_shift) / (FLUX_MAX_TOKENS - FLUX_BASE_TOKENS)
    intercept = base_shift - slope * FLUX_BASE_TOKENS
    return (latent_height * latent_width / 4.0) * slope + intercept
