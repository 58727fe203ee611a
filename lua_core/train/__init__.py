"""Training LUA (arXiv 2511.10629): data, losses, the three-stage curriculum, cross-VAE fine-tuning.

The first public implementation of the paper's training recipe (appendix "Training"); the
official release is inference-only. Produces ``lua_core.save_model`` checkpoints that
``lua_core.load_model`` and the ComfyUI loader read. Pure torch, plus diffusers (the frozen VAE)
and PIL (images); optional ``lpips`` and ``tensorboard``. Walkthrough: ``docs/training.md``.

Modules (one concern each, imported on use so ``import lua_core.train`` stays light):

* ``vae``: load a frozen AutoencoderKL from a diffusers folder or a ComfyUI/ldm single file
* ``data``: images -> crops -> bicubic low-res -> latent shards (``prepare``)
* ``dataset``: reading shards in a resumable, seed-determined order
* ``losses``: every loss term, one function each
* ``curriculum``: the stages' settings (``paper_stage``, ``finetune_stage``)
* ``objective``: one step's weighted loss over the heads
* ``model``: configs, initialisation, channel adaptation, freezing
* ``ema``, ``runlog``, ``trainer``: the loop, EMA, logs, exact resume
* ``pipeline``: stages in order (``train_curriculum``); ``finetune``: cross-VAE
* ``evaluate``: PSNR/LPIPS vs bicubic; ``export``: training checkpoint -> safetensors
* ``synthetic``: a tiny random VAE and synthetic images for smoke tests
"""
