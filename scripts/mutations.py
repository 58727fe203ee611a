"""The mutations ``scripts/mutate.py`` applies: one named, exact text replacement each, the tests that
should notice it, and what it breaks (issue #18 item 7).

Why exact text and not AST operators: each mutation is a mistake someone could really make (a term cut
from the graph, a resume that re-runs finished jobs, the raw weights read instead of the EMA ones), it
reads like a diff, and a replacement that no longer matches the code is reported as stale instead of
silently mutating something else. ``accept`` gives the reason a surviving mutant is tolerated
(equivalent, or guarded elsewhere); docs/testing.md lists them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str
    accept: str = ""


TRAIN_GRAD = ("tests/test_train_gradients.py",)
TRAIN_LOSSES = ("tests/test_train_losses.py", "tests/test_train_gradients.py")
INFERENCE = ("tests/test_lua_inference.py",)
NODES = ("tests/comfyui/test_nodes_inproc.py",)
BATCH = ("tests/test_batch_unit.py", "tests/test_batch_farm_unit.py", "tests/test_batch_resume_unit.py")
CHECKPOINTS = ("tests/test_checkpoints.py",)


def _m(name: str, path: str, old: str, new: str, tests: tuple[str, ...], why: str, accept: str = "") -> Mutation:
    return Mutation(name, path, old, new, tests, why, accept)


OBJ = "lua_core/train/objective.py"
LOSS = "lua_core/train/losses.py"

OBJECTIVE = [
    _m("objective.detach_latent_l1", OBJ, 'out["latent_l1"] = l1_loss(pred, hr)',
       'out["latent_l1"] = l1_loss(pred.detach(), hr)', TRAIN_GRAD, "stage I/II latent L1 cut from the graph"),
    _m("objective.detach_latent_fft", OBJ, 'out["latent_fft"] = fft_magnitude_l1(pred, hr)',
       'out["latent_fft"] = fft_magnitude_l1(pred.detach(), hr)', TRAIN_GRAD, "latent FFT term cut from the graph"),
    _m("objective.detach_hf_latent", OBJ, 'out["high_freq"] = high_frequency_l1(pred, hr)',
       'out["high_freq"] = high_frequency_l1(pred.detach(), hr)', TRAIN_GRAD,
       "stage II high-frequency term (latent domain) cut from the graph"),
    _m("objective.detach_decode", OBJ, "img = vae.decode(pred).float()", "img = vae.decode(pred.detach()).float()",
       TRAIN_GRAD, "no gradient through the frozen decoder: every stage II/III pixel term cut"),
    _m("objective.detach_consistency", OBJ, "downsample_consistency_l1(img, make_lr(hr_image, scale))",
       "downsample_consistency_l1(img.detach(), make_lr(hr_image, scale))", TRAIN_GRAD,
       "stage II decoded-consistency term cut from the graph"),
    _m("objective.detach_hf_pixel", OBJ, 'out["high_freq"] = high_frequency_l1(img, hr_image)',
       'out["high_freq"] = high_frequency_l1(img.detach(), hr_image)', TRAIN_GRAD,
       "stage II high-frequency term (through the decoder) cut from the graph"),
    _m("objective.detach_pixel_l1", OBJ, 'out["pixel_l1"] = l1_loss(img, hr_image)',
       'out["pixel_l1"] = l1_loss(img.detach(), hr_image)', TRAIN_GRAD, "stage III pixel L1 cut from the graph"),
    _m("objective.detach_pixel_fft", OBJ, 'out["pixel_fft"] = fft_magnitude_l1(img, hr_image)',
       'out["pixel_fft"] = fft_magnitude_l1(img.detach(), hr_image)', TRAIN_GRAD,
       "stage III pixel FFT term cut from the graph"),
    _m("objective.detach_eagle", OBJ, 'out["eagle"] = eagle_loss(img, hr_image)',
       'out["eagle"] = eagle_loss(img.detach(), hr_image)', TRAIN_GRAD, "stage III EAGLE term cut from the graph"),
    _m("objective.consistency_wrong_lr", OBJ, "make_lr(hr_image, scale)", "make_lr(hr_image, 2)", TRAIN_GRAD,
       "the x4 head's consistency compared with the x2 low-res image"),
    _m("objective.hf_domain_flipped", OBJ, 'if w.high_freq and stage.hf_domain == "latent":',
       'if w.high_freq and stage.hf_domain != "latent":', TRAIN_GRAD, "high-frequency term in the wrong domain"),
    _m("objective.unweighted_sum", OBJ, "total = total + weights[k] * v", "total = total + v", TRAIN_GRAD,
       "the paper's loss weights ignored"),
    _m("objective.gradient_ascent", OBJ, "total = total + weights[k] * v", "total = total - weights[k] * v",
       TRAIN_GRAD, "the optimiser climbs the loss (weights change, nothing is learnt)"),
    _m("objective.term_left_out", OBJ, "total = total + weights[k] * v",
       'total = total + (weights[k] * v if k != "eagle" else 0.0)', TRAIN_GRAD,
       "a term logged but left out of the optimised sum"),
    _m("objective.logged_not_averaged", OBJ, "v.detach() / len(heads)", "v.detach()", TRAIN_GRAD,
       "logged per-term values summed over heads instead of averaged"),
    _m("objective.first_head_only", OBJ, "for name, scale in heads:", "for name, scale in heads[:1]:", TRAIN_GRAD,
       "only the first head trained"),
    _m("objective.pixels_not_unit", OBJ, 'to_unit(batch["hr_pixels"])', 'batch["hr_pixels"].float()', TRAIN_GRAD,
       "pixel targets in [0, 255] instead of the VAE's [-1, 1]"),
]

LOSSES = [
    _m("losses.l1_is_mse", LOSS, "return (pred.float() - target.float()).abs().mean()",
       "return (pred.float() - target.float()).pow(2).mean()", TRAIN_LOSSES, "L1 replaced by MSE"),
    _m("losses.fft_backward_norm", LOSS, 'norm: str = "ortho"', 'norm: str = "backward"', TRAIN_LOSSES,
       "FFT loss unnormalised (documented: unitary)"),
    _m("losses.fft_complex_not_magnitude", LOSS, "return (fp.abs() - ft.abs()).abs().mean()",
       "return (fp - ft).abs().mean()", TRAIN_LOSSES, "FFT loss on complex values: phase-sensitive"),
    _m("losses.downsample_no_antialias", LOSS, 'mode="bicubic", align_corners=False, antialias=True)',
       'mode="bicubic", align_corners=False, antialias=False)', TRAIN_LOSSES,
       "consistency downsampling differs from the one that made the pairs"),
    _m("losses.consistency_sum", LOSS, "return (small - lr_image.float()).abs().mean()",
       "return (small - lr_image.float()).abs().sum()", TRAIN_LOSSES, "consistency summed, not averaged"),
    _m("losses.gauss_sigma", LOSS, "k = torch.exp(-0.5 * (x / sigma) ** 2)", "k = torch.exp(-(x / sigma) ** 2)",
       TRAIN_LOSSES, "Gaussian of the wrong width"),
    _m("losses.blur_replicate", LOSS, 'x = F.pad(x, (p, p, p, p), mode="reflect")',
       'x = F.pad(x, (p, p, p, p), mode="replicate")', TRAIN_LOSSES, "blur padding not reflect"),
    _m("losses.highpass_is_lowpass", LOSS, "return x - gaussian_blur(x, kernel_size, sigma)",
       "return gaussian_blur(x, kernel_size, sigma)", TRAIN_LOSSES, "high-frequency term sees the blur"),
    _m("losses.luma_weights", LOSS, "LUMA_WEIGHTS = (0.299, 0.587, 0.114)", "LUMA_WEIGHTS = (0.333, 0.333, 0.334)",
       TRAIN_LOSSES, "not BT.601 luminance"),
    _m("losses.sobel_not_scharr", LOSS, "(-10.0, 0.0, 10.0)", "(-2.0, 0.0, 2.0)", TRAIN_LOSSES,
       "Sobel instead of Scharr"),
    _m("losses.scharr_zero_pad", LOSS, 'g = F.pad(gray, (1, 1, 1, 1), mode="replicate")',
       'g = F.pad(gray, (1, 1, 1, 1), mode="constant")', TRAIN_LOSSES,
       "EAGLE's zero padding (a fake edge along the border)"),
    _m("losses.biased_variance", LOSS, ".var(dim=-1, unbiased=True)", ".var(dim=-1, unbiased=False)", TRAIN_LOSSES,
       "biased patch variance"),
    _m("losses.highpass_is_lowpass_fft", LOSS, "return 1.0 - torch.exp(-(u ** 2 + v ** 2) / (2.0 * cutoff ** 2))",
       "return torch.exp(-(u ** 2 + v ** 2) / (2.0 * cutoff ** 2))", TRAIN_LOSSES, "EAGLE weights low frequencies"),
    _m("losses.eagle_x_only", LOSS, "zip(scharr_gradients(gp), scharr_gradients(gt))",
       "zip(scharr_gradients(gp)[:1], scharr_gradients(gt)[:1])", TRAIN_LOSSES, "EAGLE without the y gradient"),
    _m("losses.psnr_range", LOSS, "data_range: float = 2.0", "data_range: float = 1.0", TRAIN_LOSSES,
       "PSNR for [0, 1] images"),
]

TIL = "lua_core/tiling.py"
INF = "lua_core/inference.py"

TILING = [
    _m("tiling.no_overlap", TIL, "stride = max(align, ((tile - overlap) // align) * align)",
       "stride = max(align, (tile // align) * align)", INFERENCE, "tiles do not overlap: hard seams"),
    _m("tiling.last_unaligned", TIL, "last = (length - tile) // align * align", "last = length - tile", INFERENCE,
       "the last tile starts off the window grid"),
    _m("tiling.no_feather", TIL, "r = (torch.arange(k, dtype=torch.float32) + 0.5) / k", "r = torch.ones(k)",
       INFERENCE, "no feathering over the overlaps"),
    _m("tiling.ramp_not_flipped", TIL, "w[-k:] = torch.minimum(w[-k:], r.flip(0))",
       "w[-k:] = torch.minimum(w[-k:], r)", INFERENCE, "the trailing ramp rises instead of falling"),
    _m("tiling.default_overlap", TIL, "overlap = max(align, ((tile // 4) // align) * align)",
       "overlap = max(align, ((tile // 8) // align) * align)", INFERENCE, "default overlap an eighth, not a quarter"),
    _m("tiling.weight_overwritten", TIL, "weight[..., sy, sx] += wt", "weight[..., sy, sx] = wt", INFERENCE,
       "blend weights overwritten, not summed"),
    _m("tiling.one_axis_short_circuit", TIL, "if len(ys) == 1 and len(xs) == 1:",
       "if len(ys) == 1 or len(xs) == 1:", INFERENCE, "a latent tiled along one axis only is not tiled"),
    _m("tiling.overlap_unclamped", TIL, "min(overlap, tile - 1) if tile > 1 else 0", "overlap if tile > 1 else 0",
       INFERENCE, "an overlap as large as the tile is kept"),
]

INFERENCE_MUTATIONS = [
    _m("inference.output_size_truncates", INF, "return max(1, int(round(h * scale))), max(1, int(round(w * scale)))",
       "return max(1, int(h * scale)), max(1, int(w * scale))", INFERENCE, "output size truncated, not rounded"),
    _m("inference.scale_below_one", INF, "if not math.isfinite(scale) or scale < 1.0:",
       "if not math.isfinite(scale) or scale < 0.5:", INFERENCE, "downscaling accepted"),
    _m("inference.frames_swapped", INF, "out = out.reshape(*frames, *out.shape[1:]).transpose(1, 2).contiguous()",
       "out = out.reshape(frames[1], frames[0], *out.shape[1:]).transpose(1, 2).contiguous()", INFERENCE,
       "5-D latents put back in the wrong (b, t) order"),
    _m("inference.no_halving", INF, "                if count > 1:\n", "                if count > 4:\n", INFERENCE,
       "an out-of-memory sub-batch of 2-4 latents is not halved"),
    _m("inference.tile_on_oom_inverted", INF, "if not tile_on_oom:", "if tile_on_oom:", INFERENCE,
       "tiles tried when the caller did not allow them"),
    _m("inference.min_tile_ignores_align", INF, "if nxt < max(MIN_TILE, 2 * self.model.tile_align):",
       "if nxt < MIN_TILE:", INFERENCE, "tiles smaller than two windows tried"),
    _m("inference.resample_no_antialias", INF, "\n                         antialias=True).to(latent.dtype)",
       "\n                         antialias=False).to(latent.dtype)", INFERENCE,
       "the resize down to an in-between scale aliases"),
    _m("inference.no_final_progress", INF, "            start += count\n            self.tell(start * PER_SAMPLE)",
       "            start += count", INFERENCE, "the last progress report is missing"),
    _m("inference.no_output_check", INF, "        if not bool(torch.isfinite(out).all()):",
       "        if False:", INFERENCE, "NaN output passed on"),
    _m("inference.no_input_check", INF, "    if not bool(torch.isfinite(latent).all()):", "    if False:", INFERENCE,
       "NaN input accepted"),
    _m("inference.budget_off_by_one", INF, "_budget(max_memory) // max(1, per_latent)))",
       "_budget(max_memory) // max(1, per_latent) + 1))", INFERENCE, "sub-batch one larger than the memory allows"),
    _m("inference.output_dtype_kept", INF, "outs.append(out.to(device=latent.device, dtype=latent.dtype, copy=True))",
       "outs.append(out)", INFERENCE, "the result in the model's dtype/device, not the input's"),
]

UPS = "nodes/upscale.py"
HND = "nodes/handle.py"

NODE_MUTATIONS = [
    _m("nodes.mask_not_resized", UPS, 'result["noise_mask"] = resize_mask(mask, latent.shape[-2:], out.shape[-2:])',
       'result["noise_mask"] = mask', NODES, "noise mask left at the old size"),
    _m("nodes.mask_axes_swapped", UPS, "th = max(1, round(mh * after[0] / before[0]))",
       "th = max(1, round(mh * after[1] / before[1]))", NODES, "mask height scaled by the width's factor"),
    _m("nodes.auto_format_ignored", UPS, 'fmt = handle.latent_format if choice == "auto" else choice',
       'fmt = None if choice == "auto" else choice', NODES, "'auto' does not use the loader's MODEL"),
    _m("nodes.format_channels_unchecked", UPS, "    if space.channels != channels:", "    if False:", NODES,
       "a latent_format contradicting the latent accepted"),
    _m("nodes.tile_dropped", UPS, "tile=tile or None,", "tile=None,", NODES, "the tile input ignored"),
    _m("nodes.channels_unchecked", UPS, "    if channels == has:\n        return", "    if True:\n        return",
       NODES, "a latent of the wrong channel count reaches the model"),
    _m("nodes.batch_index_dropped", UPS, "result = dict(samples)", 'result = {"samples": None}', NODES,
       "batch_index and other LATENT keys dropped"),
    _m("nodes.progress_not_monotonic", HND, "if progress is not None and done > told:",
       "if progress is not None:", NODES, "the progress bar is told the same value again",
       accept="equivalent for the user: ComfyUI's ProgressBar shows the same value again; the guard only saves "
              "repeated progress messages (lua_core reports a step under a hundredth again on purpose)"),
    _m("nodes.no_interrupt_check", HND, "        nonlocal told\n        mm.throw_exception_if_processing_interrupted()",
       "        nonlocal told", NODES, "a cancel does not stop a running upscale"),
    _m("nodes.output_not_fp32", HND, "return out.to(device=mm.intermediate_device(), dtype=torch.float32)",
       "return out", NODES, "LATENT output not float32 on the intermediate device"),
]

MAN = "lua_core/batch/manifest.py"
RUN = "lua_core/batch/runner.py"
FARM = "lua_core/batch/farm.py"
WRK = "lua_core/batch/worker.py"

BATCH_MUTATIONS = [
    _m("batch.torn_line_raises", MAN, "            except json.JSONDecodeError:\n                continue",
       "            except json.JSONDecodeError:\n                raise", BATCH,
       "a line cut by a crash makes the manifest unreadable"),
    _m("batch.torn_tail_not_separated", MAN, 'if f.read(1) != b"\\n":', "if False:", BATCH,
       "a row appended after a torn line is swallowed by it"),
    _m("batch.first_row_wins", MAN, '            if "key" in row:\n                out[str(row["key"])] = row',
       '            if "key" in row:\n                out.setdefault(str(row["key"]), row)', BATCH,
       "resume reads a job's first outcome, not its last"),
    _m("batch.journal_without_prompt_id", MAN, 'if "key" in row and "prompt_id" in row:', 'if "key" in row:', BATCH,
       "journal rows without a prompt id adopted"),
    _m("batch.retain_empty_keeps_file", MAN, "        if not rows:\n            self.clear()\n            return",
       "        if not rows:\n            return", BATCH, "an emptied journal stays on disk"),
    _m("batch.resume_reruns_nothing_failed", RUN,
       '(self.opts.retry_failed or row.get("status") not in ("error", "invalid"))', "self.opts.retry_failed", BATCH,
       "--skip-failed also skips lost/interrupted jobs"),
    _m("batch.resume_trusts_deleted_outputs", RUN,
       'return all((folder / name).is_file() for name in row.get("outputs") or [])', "return True", BATCH,
       "a finished job whose files were deleted is not re-run"),
    _m("batch.resume_success_rerun", RUN, "if row.get(\"status\") not in DONE and", "if True and", BATCH,
       "finished jobs are run again on resume"),
    _m("batch.adopt_single_server_off", RUN,
       "if row is not None and worker is None and len(self.workers) == 1:", "if False:", BATCH,
       "a journaled job is re-sent instead of looked up when the one server is spelled differently"),
    _m("batch.adopt_attempts_reset", RUN,
       '"collected)")\n                    self.book.attempts[job.key] = self.book.base[job.key] = '
       'int(row.get("attempt") or 1)',
       '"collected)")\n                    pass', BATCH,
       "a re-sent job's earlier attempts are forgotten (its next prompt id repeats an earlier run's)"),
    _m("batch.journal_keeps_done", RUN,
       'if k not in mine and (done.get(k) or {}).get("status") not in DONE])', "if k not in mine])", BATCH,
       "journal rows of finished jobs of other sweeps kept forever"),
    _m("batch.max_attempts_plus_one", FARM, "if attempt.attempt - self.base.get(job.key, 0) >= self.max_attempts:",
       "if attempt.attempt - self.base.get(job.key, 0) > self.max_attempts:", BATCH,
       "a lost job sent once more than --max-attempts"),
    _m("batch.lost_go_last", FARM,
       'times")]\n            self.pending.extendleft(reversed([a.job for a in again]))',
       'times")]\n            self.pending.extend([a.job for a in again])', BATCH,
       "lost jobs go to the end of the line"),
    _m("batch.lost_without_grace", WRK,
       '"success"}})\n            elif attempt.uncertain and now - attempt.sent_at < grace:',
       '"success"}})\n            elif False:', BATCH,
       "a just-sent prompt not yet in the queue counted as lost (sent twice)"),
    _m("batch.history_without_status", WRK,
       '            entry = self.client.history(pid)\n            if entry is not None and entry.get("status"):',
       '            entry = self.client.history(pid)\n            if entry is not None:', BATCH,
       "a history entry still being written counts as finished"),
]

CKP = "lua_core/checkpoints.py"

CHECKPOINT_MUTATIONS = [
    _m("checkpoints.raw_before_ema", CKP, '_CONTAINER_KEYS = ("params_ema", "params", "state_dict", "model")',
       '_CONTAINER_KEYS = ("params", "params_ema", "state_dict", "model")', CHECKPOINTS,
       "the raw weights read instead of the EMA ones"),
    _m("checkpoints.header_bound", CKP, "        if n > size - 8:", "        if n > size:", CHECKPOINTS,
       "a header running past the end not reported as truncation"),
    _m("checkpoints.tensor_bound", CKP, "if 8 + n + end > size:", "if n + end > size:", CHECKPOINTS,
       "a file cut inside its last tensor not reported as truncated"),
    _m("checkpoints.mixed_accepted", CKP, "if tensors and len(tensors) == len(obj):", "if tensors:", CHECKPOINTS,
       "a dict of tensors and other objects read as a state dict"),
    _m("checkpoints.empty_not_named", CKP, "    if p.stat().st_size == 0:", "    if False:", CHECKPOINTS,
       "an empty file not reported as an interrupted download"),
    _m("checkpoints.unsafe_pickle", CKP, "obj = torch.load(p, map_location=\"cpu\", weights_only=True)",
       "obj = torch.load(p, map_location=\"cpu\", weights_only=False)", CHECKPOINTS, "pickles may run code"),
    _m("checkpoints.diffusers_side_config", CKP,
       "if p.name == DIFFUSERS_WEIGHTS and side.is_file() and ckpt.config is None:", "if False:", CHECKPOINTS,
       "a diffusers weights file's config.json ignored"),
    _m("checkpoints.sniff_off", CKP, "if p.suffix.lower() in SAFETENSORS_SUFFIXES or _looks_like_safetensors(p, head):",
       "if p.suffix.lower() in SAFETENSORS_SUFFIXES:", CHECKPOINTS, "a safetensors file with another suffix"),
    _m("checkpoints.config_json_unchecked", CKP, "    if not isinstance(data, dict):\n        raise",
       "    if False:\n        raise", CHECKPOINTS, "a config.json that is not an object accepted"),
]

MUTATIONS: list[Mutation] = [*OBJECTIVE, *LOSSES, *TILING, *INFERENCE_MUTATIONS, *NODE_MUTATIONS, *BATCH_MUTATIONS,
                             *CHECKPOINT_MUTATIONS]
