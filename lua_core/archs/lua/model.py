"""LUA's modules: Swin trunk and pixel-shuffle heads, with the inference paths that keep memory bounded.

Submodule names mirror the released state dict, so official files load strictly, parameter for
parameter. See the package docstring for what the inference forward does differently from the
official code (and why it gives the same numbers).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from ...scales import Scales
from ..base import LatentUpscaler
from ..derived import Derived, KeepsDerived
from . import attention, folded_head, winograd
from .attention import WindowAttention, Workspace, aligned, mask_in_bias
from .config import LUAConfig, released_flux_config, upsample_steps
from .memory import ForwardPlan, estimate_peak, kept_bytes, plan_forward
from .windows import Layouts, WindowLayout, reflect_pad, shift_mask, window_regions

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # SwinIR's input mean, used only when in_chans == 3


class Conv2d(KeepsDerived, nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) whose 3x3 same-padded inference on CPU
    fp32 runs as Winograd F(2x2, 3x3) (``winograd.conv3x3``) where that is faster (wide convs: the
    trunk's and the heads' inner ones, ``winograd.worthwhile``): 16/36 of the multiplies of the direct
    convolution, which already runs at the GEMM peak there, and within the direct convolution's own
    fp32 rounding (tested). Elsewhere (GPU, half precision, autograd, narrow convs such as
    conv_first and conv_last) it is the plain convolution.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._winograd = (self.kernel_size == (3, 3) and self.stride == (1, 1) and self.padding == (1, 1)
                          and self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == "zeros")
        self._transformed = Derived()

    def transformed_weight(self) -> torch.Tensor:
        """The Winograd-domain filter, kept until the weight changes (about 16/9 of its size)."""
        return self._transformed.get([self.weight], lambda: winograd.transform_weight(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._winograd and winograd.supports(x, self.weight):
            return winograd.conv3x3(x, self.weight, self.bias, self.transformed_weight())
        return super().forward(x)


def _conv_block(ch: int, resi_connection: str) -> nn.Module:
    if resi_connection == "1conv":
        return Conv2d(ch, ch, 3, 1, 1)
    q = ch // 4
    return nn.Sequential(Conv2d(ch, q, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
                         nn.Conv2d(q, q, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
                         Conv2d(q, ch, 3, 1, 1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) form, as released
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(KeepsDerived):
    def __init__(self, dim: int, num_heads: int, ws: int, shift: int, cfg: LUAConfig):
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, num_heads, cfg.qkv_bias, cfg.qk_scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        # inference keeps the biases built from the table (``region_biases``)
        self._biases = Derived()

    @property
    def bias_cache(self) -> torch.Tensor | None:
        """The flat storage of the kept biases (None until an inference call built them)."""
        value = self._biases._value
        return None if value is None else value[0]

    def _region_biases(self) -> dict[tuple[bool, bool], list[tuple[int, int, torch.Tensor]]]:
        """Per window kind, its regions as (first token, end token, (heads, n, n) bias).

        Where the mask goes into the bias (``mask_in_bias``) a kind is one region spanning the
        window, its bias the position bias plus the official -100 mask (in layout token order).
        """
        pos = self.attn.position_bias()
        masked = mask_in_bias(pos.device)
        kinds = [(False, False)] + ([(False, True), (True, False), (True, True)] if self.shift else [])
        out = {}
        for kind in kinds:
            order, ranges = window_regions(self.ws, self.shift, *kind)
            if len(ranges) == 1:
                out[kind] = [(0, len(order), pos)]
                continue
            idx = torch.tensor(order, device=pos.device)
            if masked:
                full = pos + shift_mask(self.ws, self.shift, *kind).to(pos.device, pos.dtype)
                out[kind] = [(0, len(order), full.index_select(1, idx).index_select(2, idx))]
                continue
            out[kind] = [(a, b, pos.index_select(1, idx[a:b]).index_select(2, idx[a:b])) for a, b in ranges]
        return out

    def region_biases(self) -> dict[tuple[bool, bool], list[tuple[int, int, torch.Tensor]]]:
        """``_region_biases``, built once per table state when no gradient is recorded.

        They are kept in one flat tensor, each bias starting at a multiple of 16 elements
        (``aligned``).
        """
        if torch.is_grad_enabled():
            return self._region_biases()
        return self._kept()[1]

    def _kept(self) -> tuple[torch.Tensor, dict, dict]:
        """(flat bias storage, its per-kind views, segments per layout), built once per table state
        (a GPU forward is bound by the host's time per block, so nothing is rebuilt per call)."""
        def build() -> tuple[torch.Tensor, dict, dict]:
            built = self._region_biases()
            parts, shapes, offset = [], {}, 0
            for kind, regions in built.items():
                shapes[kind] = []
                for a, b, bias in regions:
                    size = aligned(bias.numel())
                    parts += [bias.reshape(-1), bias.new_zeros(size - bias.numel())]
                    shapes[kind].append((a, b, offset, tuple(bias.shape)))
                    offset += size
            flat = torch.cat(parts)
            views = {kind: [(a, b, flat[o:o + math.prod(shape)].view(shape)) for a, b, o, shape in regions]
                     for kind, regions in shapes.items()}
            return flat, views, {}

        return self._biases.get([self.attn.relative_position_bias_table], build)

    def segments(self, layout: WindowLayout) -> list[tuple[int, int, int, int, torch.Tensor]]:
        """(first window, end window, first token, end token, bias) blocks of ``layout``."""
        def of(biases: dict) -> list[tuple[int, int, int, int, torch.Tensor]]:
            return [(g0, g1, a, b, bias) for g0, g1, lr, lc in layout.groups for a, b, bias in biases[(lr, lc)]]

        if torch.is_grad_enabled():
            return of(self._region_biases())
        _, views, by_layout = self._kept()
        hit = by_layout.get(id(layout))
        if hit is None or hit[0] is not layout:
            if len(by_layout) > 8:
                by_layout.clear()
            hit = by_layout[id(layout)] = (layout, of(views))
        return hit[1]

    def forward(self, t: torch.Tensor, layout: WindowLayout, chunk_windows: int | None = None,
                workspace: Workspace | None = None) -> torch.Tensor:
        """t: (B, L, C) tokens in ``layout`` order -> same shape and order.

        Inference accumulates the residuals in place, over chunks of at most ``chunk_windows``
        windows (all at once by default), with the output projections and fc2 accumulating into
        the residual stream inside their GEMMs; with autograd recording it runs out of place.
        """
        b, n_tok, c = t.shape
        n = self.ws * self.ws
        nw = n_tok // n
        win = t.view(b, nw, n, c)
        segments = self.segments(layout)
        if torch.is_grad_enabled() or torch.is_autocast_enabled(t.device.type):
            # autograd, or autocast (whose dtypes the in-place accumulation below would mix)
            win = win + self.attn(self.norm1(win), segments)
            return (win + self.mlp(self.norm2(win))).view(b, n_tok, c)
        kept = self.attn.inference_weights()
        fc1, fc2 = self.mlp.fc1, self.mlp.fc2
        fc1_in_gemm = fc1.bias is not None and attention.applies(attention.BIAS_IN_GEMM_ON, t)
        fused_fc1 = fc1.bias is not None and attention.onednn_linear(t)  # bias and GELU in its epilogue
        workspace = workspace or Workspace()
        for bs, w0, w1 in _chunks(b, nw, chunk_windows):
            w = win[bs, w0:w1]
            segs = [(max(g0, w0) - w0, min(g1, w1) - w0, a, e, bias) for g0, g1, a, e, bias in segments
                    if g0 < w1 and g1 > w0]
            att = self.attn.attend(self.norm1(w), segs, workspace)
            flat = w.view(-1, c)  # chunks are contiguous runs of windows
            flat += kept.proj_bias
            flat.addmm_(att.reshape(-1, att.shape[-1]), kept.proj.t())
            if fused_fc1:
                # oneDNN: bias and exact (erf) GELU in the GEMM's epilogue, from its fp32 accumulators
                hidden = torch.ops.mkldnn._linear_pointwise(self.norm2(w).view(-1, c), fc1.weight, fc1.bias,
                                                            "gelu", [], "none")
            else:
                hidden = workspace.get("hidden", (flat.shape[0], fc1.weight.shape[0]), flat)
                if fc1_in_gemm:
                    torch.addmm(fc1.bias, self.norm2(w).view(-1, c), fc1.weight.t(), out=hidden)
                else:
                    torch.mm(self.norm2(w).view(-1, c), fc1.weight.t(), out=hidden)
                    if fc1.bias is not None:
                        hidden += fc1.bias
                torch.ops.aten.gelu_(hidden)  # exact (erf) GELU, in place
            flat += fc2.bias
            flat.addmm_(hidden, fc2.weight.t())
        return win.view(b, n_tok, c)


def _chunks(b: int, nw: int, chunk_windows: int | None) -> list[tuple[slice, int, int]]:
    """(batch slice, first window, end window) steps of at most ``chunk_windows`` windows."""
    if chunk_windows is None or chunk_windows >= b * nw:
        return [(slice(0, b), 0, nw)]
    if chunk_windows >= nw:
        per = chunk_windows // nw
        return [(slice(i, min(i + per, b)), 0, nw) for i in range(0, b, per)]
    step = max(1, chunk_windows)
    return [(slice(i, i + 1), a, min(a + step, nw)) for i in range(b) for a in range(0, nw, step)]


class BasicLayer(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, cfg: LUAConfig):
        super().__init__()
        ws, shift = cfg.ws_eff, cfg.shift
        self.blocks = nn.ModuleList(
            [SwinBlock(dim, num_heads, ws, 0 if j % 2 == 0 else shift, cfg) for j in range(depth)])


class ResidualGroup(nn.Module):
    """RSTB: blocks, then a conv on the image, plus the group input."""

    def __init__(self, dim: int, depth: int, num_heads: int, cfg: LUAConfig):
        super().__init__()
        self.residual_group = BasicLayer(dim, depth, num_heads, cfg)
        self.conv = _conv_block(dim, cfg.resi_connection)


class PatchEmbed(nn.Module):
    """Only the (optional) LayerNorm of the official patch embedding has weights."""

    def __init__(self, dim: int, patch_norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if patch_norm else nn.Identity()


class Head(KeepsDerived):
    """conv + LeakyReLU, then (conv to f*f*num_feat, PixelShuffle(f)) per step, then conv_last."""

    def __init__(self, embed_dim: int, num_feat: int, scale: int, out_chans: int):
        super().__init__()
        self.scale = scale
        self.conv_before = nn.Sequential(Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        ups: list[nn.Module] = []
        for f in upsample_steps(scale):
            ups += [Conv2d(num_feat, f * f * num_feat, 3, 1, 1), nn.PixelShuffle(f)]
        self.upsample = nn.Sequential(*ups)
        self.conv_last = Conv2d(num_feat, out_chans, 3, 1, 1)
        # rows of input context one output row depends on: one per 3x3 conv, rounded up
        self.halo = 2 + len(ups) // 2
        self._folded = Derived()

    def tail(self, y: torch.Tensor) -> torch.Tensor:
        """Everything after conv_before, as released: upsample steps, then conv_last."""
        return self.conv_last(self.upsample(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """conv_before, then the linear tail folded into one 5x5 convolution at the input size
        (``folded_head``: the same numbers up to fp32 rounding, 6-7.6x fewer multiply-adds, no wide
        intermediates) for inference; the plain tail when autograd records.

        Every size folds, even where the edge strips cover the whole input: a band of
        ``conv_in_bands`` then computes each output row the way the whole image does.
        """
        y = self.conv_before(x)
        if torch.is_grad_enabled():
            return self.tail(y)
        convs = [m for m in self.upsample if isinstance(m, nn.Conv2d)]
        factors = [m.upscale_factor for m in self.upsample if isinstance(m, nn.PixelShuffle)]
        params = [p for m in [*convs, self.conv_last] for p in (m.weight, m.bias) if p is not None]
        weight, bias = self._folded.get(params, lambda: folded_head.fold_modules(convs, factors, self.conv_last))
        return folded_head.run_folded(y, weight, bias, factors, self.tail)


def conv_in_bands(module: nn.Module, x: torch.Tensor, rows: int | None, halo: int,
                  out_scale: int = 1, out_rows: int | None = None) -> torch.Tensor:
    """Apply a stack of same-padded convs (and pixel shuffles) band by band along H, exactly.

    Each band of ``rows`` input rows is run with ``halo`` rows of real context on each side
    (clipped at the image edge, where the conv's own zero padding is the true one) and the rows
    that depended on the cut are dropped. ``out_rows`` limits the input rows produced (a crop).
    """
    h = x.shape[-2] if out_rows is None else out_rows
    if rows is None or rows >= h and out_rows is None:
        return module(x)
    rows = max(1, rows if rows is not None else h)
    parts = []
    for a in range(0, h, rows):
        b = min(a + rows, h)
        ea, eb = max(0, a - halo), min(x.shape[-2], b + halo)
        y = module(x[..., ea:eb, :])
        parts.append(y[..., (a - ea) * out_scale:(b - ea) * out_scale, :])
    return torch.cat(parts, dim=-2)


def _clear_after_load(module: LUA, _incompatible_keys: Any) -> None:
    """load_state_dict hook (a module-level function, so models still pickle)."""
    module.clear_caches()


class LUA(LatentUpscaler):
    family = "lua"
    #: scales between the heads' are served by the next head up, resampled down (``plan_scale``)
    resample_to_any_scale = True
    memory_estimate = "LUA's own: the peak of its one-shot forward plan (memory.estimate_peak)"

    def __init__(self, config: LUAConfig | None = None):
        super().__init__()
        cfg = config or released_flux_config()
        self.config = cfg
        e = cfg.embed_dim
        self.conv_first = Conv2d(cfg.in_chans, e, 3, 1, 1)
        self.patch_embed = PatchEmbed(e, cfg.patch_norm)
        self.layers = nn.ModuleList(
            [ResidualGroup(e, d, h, cfg) for d, h in zip(cfg.depths, cfg.num_heads)])
        self.norm = nn.LayerNorm(e)
        self.conv_after_body = _conv_block(e, cfg.resi_connection)
        self.heads = nn.ModuleDict({h.name: Head(e, h.num_feat or cfg.head_num_feat, h.scale, h.out_chans)
                                    for h in cfg.heads})
        mean = RGB_MEAN if cfg.in_chans == 3 else (0.0,) * cfg.in_chans
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.gradient_checkpointing = False
        self.register_load_state_dict_post_hook(_clear_after_load)

    # -- interface ----------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return self.config.in_chans

    @property
    def native_scales(self) -> Scales:
        return Scales.of(*(h.scale for h in self.config.heads))

    @property
    def tile_align(self) -> int:
        """Tiles start on the attention window's grid, so a tile's windows are the whole latent's."""
        return self.config.window_size

    def working_memory(self, shape: tuple[int, ...], scale: float) -> int:
        """The one-shot forward's estimated peak (``memory.estimate_peak``); the forward itself then
        chunks to the memory actually free, so this is what lets it run unchunked."""
        return estimate_peak(self.config, tuple(shape), self.head_for(scale), ForwardPlan(), self.dtype.itemsize)

    def kept_memory(self, device: torch.device | str) -> int:
        """The attention biases built from its tables and, on CUDA, its padded attention weights
        (``memory.kept_bytes``), which depend on the device they are built on."""
        return kept_bytes(self.config, self.dtype.itemsize, device)

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def head_for(self, scale: float) -> str:
        for h in self.config.heads:
            if h.scale == scale:
                return h.name
        raise ValueError(f"this LUA model has no x{scale:g} head (heads: "
                         + ", ".join(f"{h.name} (x{h.scale})" for h in self.config.heads) + ")")

    def upscale(self, latent: torch.Tensor, scale: float, *, latent_format: str | None = None,
                plan: ForwardPlan | None = None, max_memory: int | None = None,
                progress: Callable[[int, int], None] | None = None, **_: Any) -> torch.Tensor:
        """Exact forward within ``max_memory`` bytes of working memory (None: the device's free memory).

        The plan comes from ``plan_forward``'s estimate; if the device still runs out of memory
        re-planned for half the estimated peak and retried (results do not depend on the chunking).
        """
        from ...devices import available_memory, is_out_of_memory, release_cached_memory
        head = self.head_for(scale)
        if not torch.is_grad_enabled():
            self.prepare()  # the kept biases exist before the free memory is read
        if plan is None:
            budget = max_memory if max_memory is not None else available_memory(latent.device)
            plan = plan_forward(self.config, tuple(latent.shape), head, budget, latent.element_size())
        while True:
            try:
                return self.forward(latent, head, plan, progress)
            except (RuntimeError, MemoryError) as e:
                if not is_out_of_memory(e):
                    raise
                # re-plan for half of what this plan was estimated to need: attention chunks and head
                # bands shrink first, the trunk's conv bands only at the end (as plan_forward orders them)
                elem = latent.element_size()
                shape = tuple(latent.shape)
                need = estimate_peak(self.config, shape, head, plan, elem)
                smaller = plan_forward(self.config, shape, head, need // 2, elem)
                if smaller == plan:
                    raise
                release_cached_memory(latent.device)
                plan = smaller

    # -- kept derived values -------------------------------------------------------------------
    def prepare(self) -> None:
        """Build the attention biases and weights inference keeps (otherwise built by the first
        forward), without autograd history whatever the caller's grad mode."""
        with torch.no_grad():
            for layer in self.layers:
                for blk in layer.residual_group.blocks:
                    blk.region_biases()
                    blk.attn.inference_weights()

    def clear_caches(self) -> None:
        """Drop what inference keeps (attention biases, the attention weights and biases as
        inference multiplies with them, folded heads, Winograd filters).

        They are rebuilt when the weights change in any way autograd sees, after ``.to()`` and
        after ``load_state_dict``; call this after writes it does not see (through ``.data``, or to
        inference tensors).
        """
        for m in self.modules():
            if isinstance(m, KeepsDerived):
                m.clear_derived()

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, head: str | None = None, plan: ForwardPlan | None = None,
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Official forward: reflect-pad to the window, trunk, head, crop. x: (B, C, H, W).

        Inference in fp32 on CUDA runs without TF32 (``devices.exact_fp32``)."""
        if not torch.is_grad_enabled():
            from ...devices import exact_fp32
            with exact_fp32(x.device, x.dtype):
                return self._forward(x, head, plan, progress)
        return self._forward(x, head, plan, progress)

    def _forward(self, x: torch.Tensor, head: str | None, plan: ForwardPlan | None,
                 progress: Callable[[int, int], None] | None) -> torch.Tensor:
        plan = plan or ForwardPlan()
        name = head or self.config.primary_head or self.config.heads[0].name
        hd = self.heads[name]
        h, w = x.shape[-2:]
        ws = self.config.window_size
        x = reflect_pad(x, (ws - h % ws) % ws, (ws - w % ws) % ws)
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.config.img_range
        feat = self.features(x, plan, progress)
        out = conv_in_bands(hd, feat, plan.head_rows, hd.halo, hd.scale, out_rows=h)
        if progress is not None:
            progress(len(self.layers) + 1, len(self.layers) + 1)
        out = out[..., : h * hd.scale, : w * hd.scale]
        return out / self.config.img_range + mean

    def layouts(self, h: int, w: int, device: torch.device) -> Layouts:
        """Window layouts for a padded h x w map (cached per size and device)."""
        key = (h, w, str(device))
        cache = self.__dict__.setdefault("_layout_cache", {})
        if key not in cache:
            if len(cache) > 8:
                cache.clear()
            shifts = {blk.shift for layer in self.layers for blk in layer.residual_group.blocks}
            # normal tensors even when built under inference_mode: autograd saves the gather indices
            # when the same model is trained later, and refuses inference tensors
            with torch.inference_mode(False):
                cache[key] = Layouts(h, w, self.config.ws_eff, shifts, device)
        return cache[key]

    def features(self, x: torch.Tensor, plan: ForwardPlan | None = None,
                 progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Shallow + deep features with the long skip: (B, C, H, W) padded input -> (B, E, H, W).

        Tokens stay in window layouts between blocks: one gather per block moves them from one
        block's windows to the next's (instead of roll + partition + reverse + roll back).
        """
        plan = plan or ForwardPlan()
        b, _, h, w = x.shape
        lays = self.layouts(h, w, x.device)
        halo = 1 if self.config.resi_connection == "1conv" else 2
        f0 = conv_in_bands(self.conv_first, x, plan.conv_rows, 1)
        e = f0.shape[1]
        t = self.patch_embed.norm(f0.permute(0, 2, 3, 1)).reshape(b, h * w, e)  # row-major tokens
        checkpointing = self.gradient_checkpointing and torch.is_grad_enabled()
        workspace = Workspace()
        for i, layer in enumerate(self.layers):
            res, cur = t, None
            for blk in layer.residual_group.blocks:
                t = lays.move(t, cur, blk.shift)
                cur = blk.shift
                layout = lays.by_shift[cur]
                if checkpointing:
                    t = torch.utils.checkpoint.checkpoint(blk, t, layout, use_reentrant=False)
                else:
                    t = blk(t, layout, plan.chunk_windows, workspace)
            img = lays.move(t, cur, None).view(b, h, w, e).permute(0, 3, 1, 2)
            t = conv_in_bands(layer.conv, img, plan.conv_rows, halo).permute(0, 2, 3, 1).reshape(b, h * w, e) + res
            if progress is not None:
                progress(i + 1, len(self.layers) + 1)
        t = self.norm(t).view(b, h, w, e).permute(0, 3, 1, 2)
        return conv_in_bands(self.conv_after_body, t, plan.conv_rows, halo) + f0
