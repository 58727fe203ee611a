"""The three-stage curriculum of LUA (arXiv 2511.10629, appendix "Training") as data.

Paper defaults, per stage:

=====  ==========================================================  ========  ======  ===============
stage  losses (weights)                                             steps     batch   Adam betas
=====  ==========================================================  ========  ======  ===============
I      latent L1 (1.0) + latent FFT-magnitude L1 (0.1)              125k      2048    (0.9, 0.995)
II     I + downsample consistency (0.1) + high-frequency L1 (0.05)  125k      32      (0.9, 0.995)
III    pixel L1 (10) + pixel FFT (1) + EAGLE (5e-5)                 125k      32      (0.9, 0.99)
=====  ==========================================================  ========  ======  ===============

All stages: Adam lr 2e-4, MultiStepLR at 62.5k / 93.75k / 112.5k (x0.5), EMA 0.999, grad-norm
clip 0.4, both heads every step, one random head per step in the last 50k steps. Here the
milestones and the random-head phase are stored as fractions of the stage (0.5, 0.75, 0.9; 0.4)
so a shorter or longer run keeps the paper's shape.

Readings that are ours (the paper does not say):

* the high-frequency term of stage II compares the decoded upscale with the high-res image
  (``hf_domain="pixel"``); ``"latent"`` applies it to the latents instead;
* stage III has only the pixel terms listed (no latent terms), as the appendix lists them;
* each stage starts from the previous stage's EMA weights (what the release ships, ``params_ema``),
  with a fresh optimizer, schedule and EMA;
* the per-head losses are summed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

PAPER_STEPS = 125_000


@dataclass(frozen=True)
class LossWeights:
    """Weight of each loss term (0 = off). Names match ``lua_core.train.objective.TERMS``."""

    latent_l1: float = 0.0
    latent_fft: float = 0.0
    consistency: float = 0.0
    high_freq: float = 0.0
    pixel_l1: float = 0.0
    pixel_fft: float = 0.0
    eagle: float = 0.0

    def active(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    def with_overrides(self, overrides: dict[str, float]) -> LossWeights:
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown loss term(s) {unknown}; terms: {[f.name for f in fields(self)]}")
        return replace(self, **overrides)


@dataclass(frozen=True)
class StageConfig:
    """Everything one stage's optimisation depends on."""

    stage: int
    weights: LossWeights
    steps: int = PAPER_STEPS
    batch_size: int = 32
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.995)
    weight_decay: float = 0.0
    milestones: tuple[float, ...] = (0.5, 0.75, 0.9)  # fractions of steps (62.5k, 93.75k, 112.5k of 125k)
    gamma: float = 0.5
    ema_decay: float = 0.999
    grad_clip: float = 0.4
    random_head_fraction: float = 0.4  # the last 50k of 125k steps
    hf_domain: str = "pixel"
    name: str = field(default="")

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")
        if self.hf_domain not in ("pixel", "latent"):
            raise ValueError(f"hf_domain must be 'pixel' or 'latent', not {self.hf_domain!r}")
        if not 0.0 <= self.random_head_fraction <= 1.0:
            raise ValueError("random_head_fraction must be in [0, 1]")
        if not self.grad_clip > 0.0:  # clip_grad_norm_ with a negative norm flips the gradient's sign
            raise ValueError(f"grad_clip must be a positive gradient norm (paper: 0.4), got {self.grad_clip}")
        if not self.weights.active():
            raise ValueError("a stage needs at least one loss term with a non-zero weight")

    @property
    def milestone_steps(self) -> list[int]:
        """MultiStepLR milestones in steps (paper: 62500, 93750, 112500 for 125k)."""
        return [max(1, round(m * self.steps)) for m in self.milestones]

    @property
    def random_head_start(self) -> int:
        """First step (0-based) at which one random head is trained instead of all."""
        return self.steps - round(self.random_head_fraction * self.steps)

    @property
    def needs_decoder(self) -> bool:
        w = self.weights
        pixel_hf = w.high_freq and self.hf_domain == "pixel"
        return bool(w.consistency or pixel_hf or w.pixel_l1 or w.pixel_fft or w.eagle)

    @property
    def needs_pixels(self) -> bool:
        return self.needs_decoder

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"], d["milestones"] = list(self.betas), list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageConfig:
        d = dict(d)
        d["weights"] = LossWeights(**d["weights"])
        d["betas"], d["milestones"] = tuple(d["betas"]), tuple(d["milestones"])
        return cls(**d)


STAGE_WEIGHTS = {
    1: LossWeights(latent_l1=1.0, latent_fft=0.1),
    2: LossWeights(latent_l1=1.0, latent_fft=0.1, consistency=0.1, high_freq=0.05),
    3: LossWeights(pixel_l1=10.0, pixel_fft=1.0, eagle=5e-5),
}
STAGE_BATCH = {1: 2048, 2: 32, 3: 32}
STAGE_BETAS = {1: (0.9, 0.995), 2: (0.9, 0.995), 3: (0.9, 0.99)}
STAGE_NAMES = {1: "latent", 2: "latent+consistency", 3: "pixel+edge"}


def paper_stage(stage: int, **overrides: Any) -> StageConfig:
    """Stage 1, 2 or 3 with the paper's settings; keyword overrides (e.g. ``steps=1000``) replace fields."""
    if stage not in STAGE_WEIGHTS:
        raise ValueError(f"stage must be 1, 2 or 3, not {stage!r}")
    cfg = StageConfig(stage=stage, weights=STAGE_WEIGHTS[stage], batch_size=STAGE_BATCH[stage],
                      betas=STAGE_BETAS[stage], name=STAGE_NAMES[stage])
    return replace(cfg, **overrides) if overrides else cfg


def finetune_stage(stage: int = 1, **overrides: Any) -> StageConfig:
    """Cross-VAE fine-tuning (paper: new input conv, fine-tuned on 500k latent pairs of the new VAE).

    The paper gives the data size only; the optimisation is stage ``stage``'s (default I: latent
    pairs are all it needs) with our defaults of 20k steps at batch 256 for stage I (about 10 passes
    over 500k pairs) or 32 for the decoding stages -- adjust ``steps``/``batch_size`` to your data.
    """
    cfg = paper_stage(stage, steps=20_000, batch_size=256 if stage == 1 else 32, name="cross-vae finetune")
    return replace(cfg, **overrides) if overrides else cfg
