"""What progressive (LSSGen-style) sampling costs compared with sampling at the target size directly.

Run by hand (not a test):

    .venv/bin/python benchmarks/progressive_cost.py                # cost model + counted FLOPs
    .venv/bin/python benchmarks/progressive_cost.py --measure      # + wall time of the real nodes

Three views, from cheapest to most concrete:

1. The cost model: per stage, model evaluations x tokens (linear layers, convolutions) and
   x tokens^2 (self-attention), summed and divided by the same sums for direct sampling. FLUX
   at 1024^2: 16-channel /8 latent, 2x2 patches -> 4096 image tokens, plus 512 T5 tokens in the
   joint attention. SDXL at 1024^2: 128^2 latent; its self-attention runs at /2 and /4 of that,
   a fixed factor that cancels in the ratio.
2. FLOPs counted with ``torch.utils.flop_counter`` on ComfyUI's own FLUX.1-dev and SDXL UNet
   modules, built on the ``meta`` device (real shapes and ops, no weights, no memory, no GPU).
3. ``--measure``: wall time of ``LUA_ProgressiveSampler`` against ``KSampler`` at the target size,
   both in an in-process ComfyUI with the tiny test models on the CPU (a single conv: cost linear
   in tokens, so this checks the bookkeeping and overheads, not attention); and, when CUDA is
   available, ComfyUI's FLUX architecture with random weights and a few blocks at the real sizes.

The upscale between stages is not counted: bicubic is free, LUA costs about 0.4 s per
512^2 -> 1024^2 on an L40S (quoted from the LUA paper, not measured here).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FLUX_TEXT_TOKENS = 512
sys.path.insert(0, str(REPO / "benchmarks"))
from runlog import add_log_argument, logged  # noqa: E402


@dataclass(frozen=True)
class Scheme:
    name: str
    latent_sizes: list[int]  # square latent side per stage, smallest first
    steps: list[int]


def load_file(name: str, path: Path) -> Any:
    """A module by file path: this repository's top-level ``nodes`` and ``tests`` would clash with
    ComfyUI's ``nodes.py`` and ``tests/`` on sys.path."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def split_steps(total: int, stages: int) -> list[int]:
    """The node's automatic split (nodes/progressive_plan.py: pure Python, loadable without ComfyUI)."""
    return load_file("_lua_progressive_plan", REPO / "nodes" / "progressive_plan.py").split_steps(total, stages)


def harness() -> Any:
    """The test harness (tests/comfyui/harness.py): ComfyUI in-process on the CPU, tiny models."""
    return load_file("_lua_comfy_test_harness", REPO / "tests" / "comfyui" / "harness.py")


def schemes(target_latent: int, total_steps: int) -> list[Scheme]:
    out = [Scheme("direct", [target_latent], [total_steps])]
    for stages in (2, 3):
        sizes = [target_latent // 2 ** (stages - 1 - k) for k in range(stages)]
        out.append(Scheme(f"{stages} stages", sizes, split_steps(total_steps, stages)))
    return out


def model_cost(scheme: Scheme, tokens_of: Callable[[int], int]) -> tuple[float, float, float]:
    """(evaluations, sum of evals x tokens, sum of evals x tokens^2)."""
    evals = float(sum(scheme.steps))
    linear = sum(n * tokens_of(s) for n, s in zip(scheme.steps, scheme.latent_sizes))
    attention = sum(n * tokens_of(s) ** 2 for n, s in zip(scheme.steps, scheme.latent_sizes))
    return evals, float(linear), float(attention)


def flux_tokens(latent: int) -> int:
    return (latent // 2) ** 2 + FLUX_TEXT_TOKENS


def sdxl_tokens(latent: int) -> int:
    return latent ** 2


def print_cost_model(total_steps: int) -> None:
    print(f"== cost model: {total_steps} steps in all, 1024^2 target; ratio = progressive / direct ==")
    for label, tokens_of in (("FLUX (4096 image + 512 text tokens at 1024^2)", flux_tokens),
                             ("SDXL (128^2 latent)", sdxl_tokens)):
        print(label)
        rows = schemes(128, total_steps)
        _, lin0, att0 = model_cost(rows[0], tokens_of)
        for scheme in rows:
            evals, lin, att = model_cost(scheme, tokens_of)
            sizes = " -> ".join(f"{8 * s}^2" for s in scheme.latent_sizes)
            print(f"  {scheme.name:9s} {sizes:26s} steps {','.join(map(str, scheme.steps)):9s} "
                  f"evals {evals:3.0f}  evals x tokens {lin / lin0:5.3f}  evals x tokens^2 {att / att0:5.3f}"
                  f"  (speed-up {lin0 / lin:4.2f}x / {att0 / att:4.2f}x)")


# --------------------------------------------------------------------------------------------------
# FLOPs of the real architectures (meta device)
# --------------------------------------------------------------------------------------------------


def import_comfy() -> None:
    """ComfyUI on sys.path, CPU forced; PyTorch attention so meta tensors work (ComfyUI's CPU default,
    sub-quadratic attention, asks the device for free memory)."""
    harness().ensure_comfy_importable()
    from comfy.cli_args import args

    args.use_pytorch_cross_attention = True


def build_flux(device: str, dtype: Any, hidden: int = 3072, heads: int = 24, depth: int = 19,
               single_depth: int = 38) -> Any:
    """ComfyUI's FLUX.1-dev module (``comfy.ldm.flux.model.Flux``), dev's config unless told otherwise."""
    import comfy.ldm.flux.model
    import comfy.ops

    pe = hidden // heads
    axes = [pe - 2 * (pe * 7 // 16), pe * 7 // 16, pe * 7 // 16]  # [16, 56, 56] for 128
    return comfy.ldm.flux.model.Flux(
        image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
        hidden_size=hidden, mlp_ratio=4.0, num_heads=heads, depth=depth, depth_single_blocks=single_depth,
        axes_dim=axes, theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True, device=device, dtype=dtype,
        operations=comfy.ops.disable_weight_init)


def flux_inputs(latent: int, device: str, dtype: Any, batch: int = 1) -> tuple[tuple, dict]:
    import torch

    x = torch.randn(batch, 16, latent, latent, device=device, dtype=dtype) if device != "meta" else \
        torch.empty(batch, 16, latent, latent, device=device, dtype=dtype)
    ctx = torch.zeros(batch, FLUX_TEXT_TOKENS, 4096, device=device, dtype=dtype)
    return (x, torch.full((batch,), 0.5, device=device), ctx), {
        "y": torch.zeros(batch, 768, device=device, dtype=dtype), "guidance": torch.full((batch,), 3.5, device=device)}


def build_sdxl(device: str, dtype: Any) -> Any:
    """ComfyUI's SDXL UNet (``openaimodel.UNetModel``, SDXL's config from comfy.model_detection)."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops

    config = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                  num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=320,
                  num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4],
                  transformer_depth_middle=10, use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
                  transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], use_temporal_attention=False,
                  use_temporal_resblock=False)
    return openaimodel.UNetModel(**config, dtype=dtype, device=device, operations=comfy.ops.disable_weight_init)


def sdxl_inputs(latent: int, device: str, dtype: Any) -> tuple[tuple, dict]:
    import torch

    x = torch.empty(1, 4, latent, latent, device=device, dtype=dtype)
    return (x, torch.full((1,), 500.0, device=device), torch.zeros(1, 77, 2048, device=device, dtype=dtype)), {
        "y": torch.zeros(1, 2816, device=device, dtype=dtype)}


def counted_flops(model: Any, make_inputs: Callable[[int], tuple[tuple, dict]], latent: int) -> tuple[float, float]:
    """(all FLOPs, attention FLOPs: batched matmuls and SDPA) of one evaluation at this latent side."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    args, kwargs = make_inputs(latent)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*args, **kwargs)
    by_op = counter.get_flop_counts().get("Global", {})
    attention = sum(v for k, v in by_op.items() if "bmm" in str(k) or "attention" in str(k))
    return float(counter.get_total_flops()), float(attention)


def print_counted_flops(total_steps: int) -> None:
    import torch

    import_comfy()
    print(f"\n== FLOPs counted on ComfyUI's modules (meta device), {total_steps} steps, per image ==")
    for label, build, make_inputs, evals_per_step in (
            ("FLUX.1-dev (guidance-distilled: 1 evaluation per step)", build_flux,
             lambda s: flux_inputs(s, "meta", torch.bfloat16), 1),
            ("SDXL (cfg: 2 evaluations per step)", build_sdxl, lambda s: sdxl_inputs(s, "meta", torch.float16), 2)):
        model = build("meta", torch.bfloat16 if "FLUX" in label else torch.float16)
        per_size = {s: counted_flops(model, make_inputs, s) for s in (32, 64, 128)}
        print(label)
        for s, (flops, attn) in per_size.items():
            print(f"  one evaluation at {8 * s:4d}^2: {flops / 1e12:7.2f} TFLOP ({100 * attn / flops:4.1f}% attention)")
        rows = schemes(128, total_steps)
        direct = sum(n * per_size[s][0] for n, s in zip(rows[0].steps, rows[0].latent_sizes)) * evals_per_step
        for scheme in rows:
            total = sum(n * per_size[s][0] for n, s in zip(scheme.steps, scheme.latent_sizes)) * evals_per_step
            print(f"  {scheme.name:9s} steps {','.join(map(str, scheme.steps)):9s} {total / 1e15:7.2f} PFLOP  "
                  f"ratio {total / direct:5.3f}  (speed-up {direct / total:4.2f}x)")


# --------------------------------------------------------------------------------------------------
# --measure: wall time
# --------------------------------------------------------------------------------------------------


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_tiny_nodes(total_steps: int, target_latent: int, repeats: int) -> None:
    """The real nodes in an in-process ComfyUI, tiny FLUX-type model, CPU."""
    import tempfile

    import torch

    h = harness()
    comfy = h.init_inprocess(Path(tempfile.mkdtemp(prefix="lua_progressive_bench_")))
    comfy.load_pack(REPO)
    model = h.make_tiny_model_patcher("Flux", "FLOW")
    cond = h.zero_conditioning()
    common = dict(model=model, positive=cond, negative=cond, cfg=1.0, sampler_name="euler", scheduler="simple")
    print(f"\n== wall time, tiny FLUX-type model (one conv), CPU, {total_steps} steps, "
          f"{8 * target_latent}^2 target, median of {repeats} ==")

    def direct() -> Any:
        latent = {"samples": torch.zeros(1, 16, target_latent, target_latent)}
        return comfy.run_node("KSampler", seed=0, steps=total_steps, latent_image=latent, denoise=1.0, **common)

    t_direct = median_time(direct, repeats)
    print(f"  direct    {t_direct * 1e3:8.1f} ms")
    for stages in (2, 3):
        side = target_latent // 2 ** (stages - 1)

        def progressive(stages: int = stages, side: int = side) -> Any:
            latent = {"samples": torch.zeros(1, 16, side, side)}
            return comfy.run_node("LUA_ProgressiveSampler", latent_image=latent, seed=0, stages=stages, scale=2.0,
                                  steps=total_steps, stage_steps="", strength=0.75, upscale_method="bicubic",
                                  flux_shift_per_stage=True, max_shift=1.15, base_shift=0.5, **common)

        t = median_time(progressive, repeats)
        rows = schemes(target_latent, total_steps)
        predicted = model_cost(rows[stages - 1], sdxl_tokens)[1] / model_cost(rows[0], sdxl_tokens)[1]
        print(f"  {stages} stages  {t * 1e3:8.1f} ms  ratio {t / t_direct:5.3f} "
              f"(evals x latent pixels predicts {predicted:5.3f})")


def measure_flux_architecture(total_steps: int, depth: int, single_depth: int, repeats: int, device: str,
                              hidden: int = 3072, heads: int = 24) -> None:
    """ComfyUI's FLUX module with random weights and a few blocks, at the real sizes: one evaluation per
    step, direct vs progressive (the sampler's own overhead is negligible at this size)."""
    import torch

    import_comfy()
    dtype = torch.bfloat16
    model = build_flux("cpu", dtype, hidden=hidden, heads=heads, depth=depth, single_depth=single_depth).to(device)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    print(f"\n== wall time, ComfyUI FLUX module (width {hidden}), {depth}+{single_depth} of 19+38 blocks, "
          f"random weights, {device}, bf16, median of {repeats} ==")
    per_eval = {}
    for s in (32, 64, 128):
        args, kwargs = flux_inputs(s, device, dtype)

        def once(args: tuple = args, kwargs: dict = kwargs) -> None:
            with torch.no_grad():
                model(*args, **kwargs)
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        per_eval[s] = median_time(once, repeats)
        print(f"  one evaluation at {8 * s:4d}^2: {per_eval[s] * 1e3:8.2f} ms")
    rows = schemes(128, total_steps)
    direct = sum(n * per_eval[s] for n, s in zip(rows[0].steps, rows[0].latent_sizes))
    for scheme in rows:
        t = sum(n * per_eval[s] for n, s in zip(scheme.steps, scheme.latent_sizes))
        print(f"  {scheme.name:9s} steps {','.join(map(str, scheme.steps)):9s} {t:7.3f} s  ratio {t / direct:5.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="total steps (direct: all at the target size)")
    parser.add_argument("--no-flops", action="store_true", help="skip counting FLOPs on ComfyUI's modules")
    parser.add_argument("--measure", action="store_true", help="time the nodes (tiny models, CPU) and, with CUDA, "
                        "ComfyUI's FLUX module")
    parser.add_argument("--tiny-latent", type=int, default=64, help="--measure: target latent side of the tiny run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--flux-blocks", type=int, nargs=2, default=(2, 4), metavar=("DOUBLE", "SINGLE"),
                        help="--measure with CUDA: FLUX blocks to build (memory and time)")
    add_log_argument(parser)
    args = parser.parse_args(argv)
    with logged(args.log):
        run(args)


def run(args: argparse.Namespace) -> None:
    print_cost_model(args.steps)
    if not args.no_flops:
        print_counted_flops(args.steps)
    if args.measure:
        measure_tiny_nodes(args.steps, args.tiny_latent, args.repeats)
        import torch

        if torch.cuda.is_available():
            measure_flux_architecture(args.steps, *args.flux_blocks, args.repeats, "cuda")
        else:
            print("\n(no CUDA device: ComfyUI's FLUX module was not timed)")


if __name__ == "__main__":
    main()
