"""LUA, the Latent Upscaler Adapter (arXiv 2511.10629), as released with the FLUX weights.

A SwinIR-style trunk shared across scales and one pixel-shuffle head per scale. Submodule names
mirror the released state dict, so official files load strictly, parameter for parameter. The two
buffers of the official files whose shape depends on the training size (``relative_position_index``
and ``attn_mask``) are not stored here: they are rebuilt for whatever size comes in.

The forward is written for inference at any size with bounded memory, and gives the official
numbers (fp32, within 1e-4):

* every Swin block works in a window-partitioned layout, where windows, LayerNorms and the MLP are
  independent per window, so they run in chunks of windows written back in place, the output
  projection and fc2 accumulating into the residual inside their GEMMs;
* the relative-position bias is built once per weights and broadcast over windows and batch; on
  CPU the shift mask is not added at all: in the rolled frame only the last row and column of
  windows hold more than one mask region, and attention runs per region (``window_regions``); on
  CUDA, where kernel launches cost more than exps, the mask is folded into one kept bias per window
  kind (``MASK_IN_BIAS_ON``) and the head dim padded inside kept weights (``PAD_HEAD_DIM_ON``);
* the heads' linear tails are folded into one convolution at the latent size (``folded_head``), and
  on CPU fp32 the wide 3x3 convolutions run as Winograd F(2x2, 3x3) (``winograd``);
* the convolutions of the heads (and the trunk's) can run in bands of rows with the halo each band
  needs.

A plain, differentiable path (no in-place writes) is used whenever autograd records, so the same
module trains (see ``lua_core.train``).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from . import folded_head, winograd
from .base import LatentUpscaler, StateDict, load_exact
from .derived import Derived, KeepsDerived

_log = logging.getLogger(__name__)

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # SwinIR's input mean, used only when in_chans == 3

# Constructor arguments of the official class that only matter for training or are fixed.
_IGNORED_KEYS = {"drop_rate", "attn_drop_rate", "drop_path_rate", "use_checkpoint", "norm_layer",
                 "upsampler", "upscale"}
_FIXED_KEYS = {"patch_size": 1, "ape": False}


@dataclass(frozen=True)
class HeadConfig:
    """One output head: ``scale`` is 2**n (n pixel-shuffle steps) or 3."""

    name: str
    scale: int
    out_chans: int
    num_feat: int | None = None  # None: the model's head_num_feat
    primary: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "scale": self.scale, "out_chans": self.out_chans}
        if self.num_feat is not None:
            d["num_feat"] = self.num_feat
        if self.primary:
            d["primary"] = True
        return d


@dataclass(frozen=True)
class LUAConfig:
    """The official constructor's arguments that shape the weights (same names as upstream)."""

    in_chans: int = 16
    embed_dim: int = 360
    depths: tuple[int, ...] = (6, 6, 6, 6, 6, 6)
    num_heads: tuple[int, ...] = (12, 12, 12, 12, 12, 12)
    window_size: int = 16
    img_size: int = 32
    mlp_ratio: float = 2.0
    resi_connection: str = "1conv"
    img_range: float = 1.0
    head_num_feat: int = 256
    heads: tuple[HeadConfig, ...] = field(default_factory=lambda: (
        HeadConfig("x2", 2, 16), HeadConfig("x4", 4, 16, primary=True)))
    primary_head: str | None = "x4"
    qkv_bias: bool = True
    qk_scale: float | None = None
    patch_norm: bool = True

    def __post_init__(self) -> None:
        problems = []
        if len(self.depths) != len(self.num_heads) or not self.depths:
            problems.append(f"depths {list(self.depths)} and num_heads {list(self.num_heads)} must be "
                            "non-empty lists of the same length")
        for h in self.num_heads:
            if h <= 0 or self.embed_dim % h:
                problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {h}")
        if self.resi_connection not in ("1conv", "3conv"):
            problems.append(f"resi_connection must be '1conv' or '3conv', not {self.resi_connection!r}")
        if self.window_size < 1 or self.img_size < 1:
            problems.append("window_size and img_size must be positive")
        if not self.heads:
            problems.append("a LUA model needs at least one head")
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            problems.append(f"head names must be unique, got {names}")
        if self.primary_head is not None and self.primary_head not in names:
            problems.append(f"primary_head {self.primary_head!r} is not one of the heads {names}")
        for h in self.heads:
            if not _upsample_steps(h.scale):
                problems.append(f"head {h.name!r}: scale {h.scale} is not 3 or a power of two >= 2")
        if self.ws_eff != self.window_size and self.window_size % self.ws_eff:
            problems.append(f"img_size {self.img_size} must divide window_size {self.window_size}")
        if problems:
            raise ValueError("invalid LUA config: " + "; ".join(problems))

    # The official construction shortcut: when img_size <= window_size the window shrinks to
    # img_size and no block is shifted (FORMAT.md, "Caveat").
    @property
    def ws_eff(self) -> int:
        return min(self.window_size, self.img_size)

    @property
    def shift(self) -> int:
        return 0 if self.img_size <= self.window_size else self.window_size // 2

    def head(self, name: str) -> HeadConfig:
        return next(h for h in self.heads if h.name == name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["depths"], d["num_heads"] = list(self.depths), list(self.num_heads)
        d["heads"] = [h.to_dict() for h in self.heads]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LUAConfig:
        """Build from the official constructor kwargs (or ``to_dict`` output)."""
        d = dict(d)
        for k, fixed in _FIXED_KEYS.items():
            value = d.pop(k, fixed)
            if value != fixed:
                raise ValueError(f"invalid LUA config: {k}={value!r} is not supported (only {fixed!r})")
        for k in _IGNORED_KEYS:
            d.pop(k, None)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"invalid LUA config: unknown fields {unknown}")
        if "heads" in d:
            d["heads"] = tuple(h if isinstance(h, HeadConfig) else HeadConfig(**h) for h in d["heads"])
        for k in ("depths", "num_heads"):
            if k in d:
                d[k] = tuple(int(v) for v in d[k])
        return cls(**d)


def released_flux_config() -> LUAConfig:
    """The config of ``vaskers5/LUA-FLUX`` ``lua_flux.pth`` (54.9M parameters)."""
    return LUAConfig()


def _upsample_steps(scale: int) -> list[int]:
    """Pixel-shuffle factors of a head: [2]*n for 2**n, [3] for 3, [] if unsupported."""
    if scale == 3:
        return [3]
    if scale >= 2 and scale & (scale - 1) == 0:
        return [2] * int(math.log2(scale))
    return []


# --------------------------------------------------------------------------------------------
# Building blocks (names match the state-dict keys)
# --------------------------------------------------------------------------------------------

def relative_position_index(ws: int) -> torch.Tensor:
    """(N, N) index into the (2ws-1)^2-row bias table; tokens numbered row by row."""
    ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + ws - 1
    dx = xs[:, None] - xs[None, :] + ws - 1
    return dy * (2 * ws - 1) + dx


def _region_labels(ws: int, shift: int, last: bool) -> torch.Tensor:
    """Region label (0, 1, 2) of each of the ws positions along one axis of a window.

    In the rolled frame the bands are [0, L-ws), [L-ws, L-shift), [L-shift, L): every window but
    the last along an axis lies in band 0; the last one holds bands 1 and 2.
    """
    if not last:
        return torch.zeros(ws, dtype=torch.long)
    return (torch.arange(ws) >= ws - shift).long() + 1


def shift_mask(ws: int, shift: int, last_row: bool, last_col: bool) -> torch.Tensor:
    """(N, N) additive mask of one window kind, as the official code adds it: -100 between tokens
    of different regions (kept as the reference the region split is tested against)."""
    r = _region_labels(ws, shift, last_row)
    c = _region_labels(ws, shift, last_col)
    labels = (r[:, None] * 3 + c[None, :]).flatten()
    return (labels[:, None] != labels[None, :]).float() * -100.0


@functools.lru_cache(maxsize=64)
def window_regions(ws: int, shift: int, last_row: bool, last_col: bool) -> tuple[tuple[int, ...],
                                                                                 tuple[tuple[int, int], ...]]:
    """In-window token order that lists each shift-mask region's tokens together, and the regions'
    [start, end) ranges in that order.

    The official shifted blocks add -100 to the logits between tokens of different regions. After
    softmax such a pair weighs exp(d - 100) relative to the row's best same-region pair, d being how
    far its raw logit lies above that one: below fp32's resolution (6e-8) unless d > 83, which no
    trained model comes near (and where the official mask itself would leak). So each region attends
    only to itself, and attention runs per region on (region, region) logits: the same numbers with
    fewer exps (a quarter of them in the corner window) and no mask to add. Unshifted windows and
    inner windows are one region.
    """
    r = _region_labels(ws, shift, last_row)
    c = _region_labels(ws, shift, last_col)
    labels = (r[:, None] * 3 + c[None, :]).flatten()
    order = torch.argsort(labels, stable=True)  # region by region, row-major inside each
    ordered = labels[order].tolist()
    ranges, start = [], 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[start]:
            ranges.append((start, i))
            start = i
    return tuple(order.tolist()), tuple(ranges)


@dataclass(frozen=True)
class WindowLayout:
    """A token order in which one kind of block sees its windows as contiguous runs.

    ``order[i]`` is the row-major map position of the token at position i. Windows are ws x ws
    tiles of the (rolled, for shifted blocks) map. Shifted layouts list the windows grouped by mask
    kind, and inside each window its mask regions one after the other (``window_regions``), so each
    (group, region) is a strided block of whole windows sharing one bias.
    ``groups``: (first window, end window, last_row, last_col).
    """

    order: torch.Tensor
    groups: tuple[tuple[int, int, bool, bool], ...]


def window_layout(h: int, w: int, ws: int, shift: int) -> WindowLayout:
    nh, nw = h // ws, w // ws
    if shift:
        kinds = [(False, False), (False, True), (True, False), (True, True)]
        rows = {False: range(nh - 1), True: range(nh - 1, nh)}
        cols = {False: range(nw - 1), True: range(nw - 1, nw)}
    else:
        kinds = [(False, False)]
        rows, cols = {False: range(nh)}, {False: range(nw)}
    pieces, groups, first = [], [], 0
    for lr, lc in kinds:
        windows = [(r, c) for r in rows[lr] for c in cols[lc]]
        if not windows:
            continue
        order = torch.tensor(window_regions(ws, shift, lr, lc)[0])
        i, j = (order // ws).view(1, -1), (order % ws).view(1, -1)
        wr = torch.tensor([r for r, _ in windows]).view(-1, 1)
        wc = torch.tensor([c for _, c in windows]).view(-1, 1)
        # a token at (y, x) of the rolled map is the token at (y + shift, x + shift) of the map
        y = (wr * ws + i + shift) % h
        x = (wc * ws + j + shift) % w
        pieces.append((y * w + x).flatten())
        groups.append((first, first + len(windows), lr, lc))
        first += len(windows)
    return WindowLayout(torch.cat(pieces), tuple(groups))


class _Layouts:
    """The layouts of one input size and the gathers between them, built once per size."""

    def __init__(self, h: int, w: int, ws: int, shifts: set[int], device: torch.device):
        self.by_shift = {s: window_layout(h, w, ws, s) for s in sorted(shifts)}
        self._inverse = {s: torch.argsort(lay.order) for s, lay in self.by_shift.items()}
        self._moves: dict[tuple[int | None, int | None], torch.Tensor] = {}
        for a in [None, *self.by_shift]:
            for b in [None, *self.by_shift]:
                if a != b:
                    src = self._inverse[a] if a is not None else None
                    dst = self.by_shift[b].order if b is not None else None
                    idx = src if dst is None else dst if src is None else src[dst]
                    self._moves[(a, b)] = idx.to(device)

    def move(self, t: torch.Tensor, src: int | None, dst: int | None) -> torch.Tensor:
        """Re-order tokens (B, L, C) from layout src to dst (None = row-major map order)."""
        return t if src == dst else t.index_select(1, self._moves[(src, dst)])


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


#: devices whose fused attention kernels need head_dim to be a multiple of 8 (the released model has
#: 30); elsewhere the unpadded call is already fused (the CPU flash kernel takes any head_dim)
PAD_HEAD_DIM_ON = ("cuda",)

#: devices where a shifted block runs one attention call per window kind with the shift mask
#: folded into its kept bias (the official arithmetic), instead of one call per mask region: on a
#: GPU the number of kernel launches costs more than the exps the regions save (a CPU's opposite)
MASK_IN_BIAS_ON = ("cuda",)


#: devices whose GEMMs add a bias vector in their epilogue for free (cuBLASLt), where a separate
#: add costs a kernel launch and a pass over the output; a CPU GEMM would copy the bias first
BIAS_IN_GEMM_ON = ("cuda",)


class AttentionWeights(NamedTuple):
    """What inference multiplies with (``WindowAttention.inference_weights``), kept per weights."""

    qkv: torch.Tensor  # (3 * heads * head_dim, C)
    qkv_bias: torch.Tensor | None  # (3 * heads * head_dim,): the query bias, zeros for keys and values
    proj: torch.Tensor  # (C, heads * head_dim)
    proj_bias: torch.Tensor  # (C,): proj's bias with the value bias folded in (``proj_bias``)
    head_dim: int  # padded where ``PAD_HEAD_DIM_ON``


def head_dim_pad(head_dim: int, device: torch.device | str) -> int:
    """Zero columns appended to each head on ``device`` so fused attention takes it (``PAD_HEAD_DIM_ON``)."""
    return (-head_dim) % 8 if torch.device(device).type in PAD_HEAD_DIM_ON else 0


def mask_in_bias(device: torch.device | str) -> bool:
    """Whether attention on ``device`` adds the shift mask (True) or splits by region (False)."""
    return torch.device(device).type in MASK_IN_BIAS_ON


def window_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """SDPA with an additive bias, keeping CUDA on its memory-efficient kernel.

    PyTorch's memory-efficient CUDA kernel (the fused one that takes a float mask) needs head_dim
    aligned to 8 for half precision (4 for fp32); otherwise it falls back to the math kernel, which
    materialises every window's (heads, N, N) scores. Zero columns appended to q, k and v leave
    q @ k^T unchanged and come out as zero columns of the output, dropped again: exact.
    """
    hd = q.shape[-1]
    pad = head_dim_pad(hd, q.device)
    if pad:
        q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    return out[..., :hd] if pad else out


class Workspace:
    """Buffers reused by every block of one forward (qkv, attention output, MLP hidden).

    Fresh tensors of these sizes (tens of MB at 64^2) cost a page-faulting allocation each, and
    the GEMMs can write into warm memory instead (``out=``).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < size or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[name] = torch.empty(size, dtype=like.dtype, device=like.device)
        return buf[:size].view(shape)


class WindowAttention(KeepsDerived):
    def __init__(self, dim: int, ws: int, num_heads: int, qkv_bias: bool, qk_scale: float | None):
        super().__init__()
        self.ws, self.num_heads = ws, num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else self.head_dim ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(ws), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self._kept = Derived()

    def inference_weights(self) -> AttentionWeights:
        """The weights inference multiplies with, built once per weights.

        Where fused attention wants an aligned head_dim (``PAD_HEAD_DIM_ON``) the padding lives in
        these copies: zero rows in qkv give q, k and v zero columns straight out of the GEMM, and
        zero columns in proj drop the (zero) padded outputs, so no per-call pad and crop copies are
        made. Exact: the zero columns add nothing to q @ k^T nor to the output.
        """
        w, c = self.qkv.weight, self.qkv.weight.shape[1]
        pad = head_dim_pad(self.head_dim, w.device)
        heads, hd, hp = self.num_heads, self.head_dim, self.head_dim + pad

        def build() -> AttentionWeights:
            wq, wp = w, self.proj.weight
            if pad:
                wq = w.new_zeros(3, heads, hp, c)
                wq[:, :, :hd] = w.view(3, heads, hd, c)
                wp = self.proj.weight.new_zeros(c, heads, hp)
                wp[:, :, :hd] = self.proj.weight.view(c, heads, hd)
                wq, wp = wq.view(-1, c), wp.view(c, -1)
            bq = None
            if self.qkv.bias is not None:
                bq = w.new_zeros(3, heads, hp)
                bq[0, :, :hd] = self.qkv.bias[:c].view(heads, hd)
                bq = bq.view(-1)
            return AttentionWeights(wq, bq, wp, self.proj_bias(), hp)

        params = [w, self.proj.weight, self.proj.bias] + ([self.qkv.bias] if self.qkv.bias is not None else [])
        return self._kept.get(params, build)

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N) relative-position bias of this block, contiguous (SDPA would copy it otherwise)."""
        n = self.ws * self.ws
        table = self.relative_position_bias_table.t()
        return table.index_select(1, self.relative_position_index.view(-1)).view(-1, n, n)

    def proj_bias(self) -> torch.Tensor:
        """The output projection's bias with the value bias folded in.

        Attention rows sum to one, so the value bias passes through attention unchanged and
        ``proj`` maps it to ``W_proj @ b_v``; the key bias adds the same amount to every logit of a
        query row, which softmax ignores. Only the query bias is left to add (see ``attend``).
        """
        if self.qkv.bias is None:
            return self.proj.bias
        c = self.proj.weight.shape[0]
        return torch.addmv(self.proj.bias, self.proj.weight, self.qkv.bias[2 * c:])

    def attend(self, x: torch.Tensor, segments: list[tuple[int, int, int, int, torch.Tensor]],
               workspace: Workspace | None = None) -> torch.Tensor:
        """Attention of normalised windows x: (B, W, N, C) -> (B, W, N, C), before ``proj``.

        ``segments`` are (first window, end window, first token, end token, (heads, n, n) bias)
        blocks covering all windows and tokens; attention runs inside each block. The qkv
        projection runs once over all windows (one large GEMM), without the key and value biases
        (see ``proj_bias``). With a ``workspace`` (inference) the GEMM and the attention output
        reuse its buffers.
        """
        b, nw, n, c = x.shape
        grad = torch.is_grad_enabled()
        if workspace is not None and not grad:
            # the head dim may be padded here (inference_weights); the output is then wider than c,
            # as SwinBlock's output projection (kept.proj) expects
            kept = self.inference_weights()
            hd, c = kept.head_dim, kept.qkv.shape[0] // 3
            buf = workspace.get("qkv", (b * nw * n, 3 * c), x)
            flat = x.reshape(-1, x.shape[-1])
            if kept.qkv_bias is not None and x.device.type in BIAS_IN_GEMM_ON:
                qkv, qbias = torch.addmm(kept.qkv_bias, flat, kept.qkv.t(), out=buf), None
            else:
                qkv = torch.mm(flat, kept.qkv.t(), out=buf)
                qbias = None if kept.qkv_bias is None else kept.qkv_bias[:c]
        else:
            hd, qbias = self.head_dim, None if self.qkv.bias is None else self.qkv.bias[:c]
            qkv = torch.matmul(x, self.qkv.weight.t())
        if qbias is not None:
            qkv[..., :c] += qbias
        qkv = qkv.view(b, nw, n, 3, self.num_heads, hd)
        att = None
        if not grad and len(segments) > 1:
            att = workspace.get("att", (b, nw, n, c), x) if workspace is not None else qkv.new_empty(b, nw, n, c)
        rows: dict[tuple[int, int], list[torch.Tensor]] = {}
        for w0, w1, o0, o1, bias in segments:
            part = qkv[:, w0:w1, o0:o1].reshape(-1, o1 - o0, 3, self.num_heads, hd)
            q, k, v = part.permute(2, 0, 3, 1, 4).unbind(0)  # each (windows, heads, n, hd)
            # a 4-D mask keeps SDPA on its fused CPU kernel (a 3-D one falls back to the math path)
            out = window_sdpa(q, k, v, bias.unsqueeze(0).to(q.dtype), self.scale)
            out = out.transpose(1, 2).reshape(b, w1 - w0, o1 - o0, c)
            if len(segments) == 1:
                return out
            if grad:
                rows.setdefault((w0, w1), []).append(out)
            else:
                att[:, w0:w1, o0:o1] = out
        if grad:
            return torch.cat([torch.cat(parts, dim=2) for parts in rows.values()], dim=1)
        return att

    def forward(self, x: torch.Tensor, segments: list[tuple[int, int, int, int, torch.Tensor]]) -> torch.Tensor:
        """Attention and output projection of normalised windows x: (B, W, N, C)."""
        return F.linear(self.attend(x, segments), self.proj.weight, self.proj_bias())


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) form, as released
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _aligned(size: int) -> int:
    """Elements a kept bias occupies: fused CUDA attention kernels want masks 16-element aligned."""
    return size + (-size) % 16


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
        (``_aligned``).
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
                    size = _aligned(bias.numel())
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
        fc1_in_gemm = fc1.bias is not None and t.device.type in BIAS_IN_GEMM_ON
        workspace = workspace or Workspace()
        for bs, w0, w1 in _chunks(b, nw, chunk_windows):
            w = win[bs, w0:w1]
            segs = [(max(g0, w0) - w0, min(g1, w1) - w0, a, e, bias) for g0, g1, a, e, bias in segments
                    if g0 < w1 and g1 > w0]
            att = self.attn.attend(self.norm1(w), segs, workspace)
            flat = w.view(-1, c)  # chunks are contiguous runs of windows
            flat += kept.proj_bias
            flat.addmm_(att.reshape(-1, att.shape[-1]), kept.proj.t())
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
        for f in _upsample_steps(scale):
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


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ForwardPlan:
    """How to bound memory in one forward; None everywhere = everything at once.

    ``chunk_windows``: windows per attention/MLP step; ``head_rows``: latent rows per head band;
    ``conv_rows``: rows per band of the trunk's 3x3 convolutions.
    """

    chunk_windows: int | None = None
    head_rows: int | None = None
    conv_rows: int | None = None


def _padded(n: int, ws: int) -> int:
    return n + (ws - n % ws) % ws


def estimate_peak(cfg: LUAConfig, shape: tuple[int, ...], head: str, plan: ForwardPlan, elem: int = 4) -> int:
    """Estimated peak working memory (bytes, excluding weights) of one forward with ``plan``.

    Counts the tensors alive at the widest point of each phase: the trunk keeps the shallow
    features, the group residual and two token buffers (a gather reads one, writes the other);
    a window chunk adds norm/qkv/attention/MLP temporaries; a head band holds conv_before's output,
    the folded tail's output and its pixel-shuffled copies, and the released chain run on two
    strips of the edge ring (one batch), next to the growing output. Convolutions count their
    output twice: CPU (oneDNN) convolutions compute in a blocked layout and reorder, which measured
    peaks (benchmarks/lua_speed.py memory) show.
    """
    b, _, h, w = shape
    ws = cfg.window_size
    hp, wp = _padded(h, ws), _padded(w, ws)
    e = cfg.embed_dim
    hidden = int(e * cfg.mlp_ratio)
    tokens = b * hp * wp
    n = cfg.ws_eff ** 2
    trunk = 5 * tokens * e
    chunk_tokens = tokens if plan.chunk_windows is None else min(tokens, plan.chunk_windows * n)
    heads_max = max(cfg.num_heads)
    window = chunk_tokens * max(8 * e, 2 * hidden + 3 * e) + (chunk_tokens // n) * heads_max * n * n // 8
    hc = cfg.head(head)
    nf = hc.num_feat or cfg.head_num_feat
    s = hc.scale
    halo = 2 + len(_upsample_steps(s))
    rows = h if plan.head_rows is None else min(h, plan.head_rows)
    band_rows = min(hp, rows + 2 * halo)
    # inference folds the head's tail (folded_head): conv_before's output and the folded conv's
    # output (plus its pixel-shuffled copies) over the band, next to the released chain on a strip
    # of the edge ring (its widest conv's input and output, pixel-shuffled copy)
    strip = folded_head.RING + 2
    band = b * band_rows * wp * (2 * nf + 3 * hc.out_chans * s * s) + \
        2 * b * strip * max(wp, band_rows) * nf * s * s * 13 // 4  # two strips run as one batch
    out = 2 * b * hc.out_chans * (h * s) * (w * s)
    head_phase = tokens * e + band + out
    return int(elem * max(trunk + window, trunk + 3 * tokens * e, head_phase))


def bias_cache_bytes(cfg: LUAConfig, elem: int = 4, masked: bool = False) -> int:
    """Bytes of the attention biases inference keeps per model (``SwinBlock.region_biases``):
    each block's (heads, N, N) position bias, plus in shifted blocks its mask regions' biases
    (``masked``: one full masked bias per window kind, see ``mask_in_bias``), each padded to a
    multiple of 16 elements."""
    ws, shift = cfg.ws_eff, cfg.shift
    total = 0
    for depth, heads in zip(cfg.depths, cfg.num_heads):
        full = _aligned(heads * ws ** 4)
        if masked:
            shifted = 4 * full if shift else full
        else:
            shifted = full + sum(_aligned(heads * (b - a) ** 2)
                                 for kind in ((False, True), (True, False), (True, True))
                                 for a, b in window_regions(ws, shift, *kind)[1]) if shift else full
        n_shifted = depth // 2
        total += (depth - n_shifted) * full + n_shifted * shifted
    return total * elem


def kept_bytes(cfg: LUAConfig, elem: int = 4, device: torch.device | str = "cpu") -> int:
    """Bytes inference keeps per model on ``device`` beyond its weights: the attention biases
    (``bias_cache_bytes``) and each block's ``AttentionWeights`` (its bias vectors; where the head
    dim is padded, ``PAD_HEAD_DIM_ON``, padded copies of qkv and proj too)."""
    total = bias_cache_bytes(cfg, elem, masked=mask_in_bias(device))
    e = cfg.embed_dim
    for depth, heads in zip(cfg.depths, cfg.num_heads):
        pad = head_dim_pad(e // heads, device)
        hp = e // heads + pad
        # q bias vector and folded proj bias (proj's own bias when there is no qkv bias), and
        # padded weight copies only where a padding happens
        per_block = (3 * heads * hp + e if cfg.qkv_bias else 0) + (4 * heads * hp * e if pad else 0)
        total += depth * elem * per_block
    return total


def plan_forward(cfg: LUAConfig, shape: tuple[int, ...], head: str, max_memory: int | None,
                 elem: int = 4) -> ForwardPlan:
    """The least-chunked plan whose estimated peak fits ``max_memory`` (None: no bound).

    Chunks only shrink where they must: first the head bands (where x4 spends its memory), then
    the window chunks. If even the smallest plan does not fit, the smallest is returned (the trunk's
    feature maps cannot be chunked without changing the result: that is what ``tile`` is for).
    """
    one_shot = ForwardPlan()
    if max_memory is None or estimate_peak(cfg, shape, head, one_shot, elem) <= max_memory:
        return one_shot
    b, _, h, w = shape
    ws = cfg.window_size
    n_windows = b * (_padded(h, ws) // cfg.ws_eff) * (_padded(w, ws) // cfg.ws_eff)
    rows = h
    plan = ForwardPlan(chunk_windows=n_windows, head_rows=rows, conv_rows=None)
    while rows > 1 and estimate_peak(cfg, shape, head, plan, elem) > max_memory:
        rows = max(1, rows // 2)
        plan = replace(plan, head_rows=rows)
    cw = n_windows
    while cw > 1 and estimate_peak(cfg, shape, head, plan, elem) > max_memory:
        cw = max(1, cw // 2)
        plan = replace(plan, chunk_windows=cw)
    if estimate_peak(cfg, shape, head, plan, elem) > max_memory:
        plan = replace(plan, conv_rows=max(1, min(h, 4 * ws)))
    return plan


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


def reflect_pad(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """Pad bottom/right by reflection, as the official wrapper does, for any size.

    ``F.pad(mode="reflect")`` needs pad < size, so the official code fails for sides <= ws/2.
    Where it works this gives the same result; beyond that it keeps reflecting back and forth
    (numpy's "reflect" for large pads), and a side of 1 is repeated.
    """
    if pad_h == 0 and pad_w == 0:
        return x
    h, w = x.shape[-2:]
    if pad_h < h and pad_w < w:
        return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")

    def idx(n: int, pad: int) -> torch.Tensor:
        i = torch.arange(n + pad)
        if n == 1:
            return torch.zeros_like(i)
        period = 2 * (n - 1)
        m = i % period
        return torch.where(m < n, m, period - m).to(x.device)

    return x.index_select(-2, idx(h, pad_h)).index_select(-1, idx(w, pad_w))


def _clear_after_load(module: LUA, _incompatible_keys: Any) -> None:
    """load_state_dict hook (a module-level function, so models still pickle)."""
    module.clear_caches()


class LUA(LatentUpscaler):
    family = "lua"
    #: scales between the heads' are served by the next head up, resampled down (inference.plan_scale)
    resample_to_any_scale = True

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
    def native_scales(self) -> frozenset[float]:
        return frozenset(float(h.scale) for h in self.config.heads)

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
        from ..devices import available_memory, is_out_of_memory, release_cached_memory
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
    @property
    def tile_align(self) -> int:
        return self.config.window_size

    def forward(self, x: torch.Tensor, head: str | None = None, plan: ForwardPlan | None = None,
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Official forward: reflect-pad to the window, trunk, head, crop. x: (B, C, H, W).

        Inference in fp32 on CUDA runs without TF32 (``devices.exact_fp32``)."""
        if not torch.is_grad_enabled():
            from ..devices import exact_fp32
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

    def layouts(self, h: int, w: int, device: torch.device) -> _Layouts:
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
                cache[key] = _Layouts(h, w, self.config.ws_eff, shifts, device)
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


# --------------------------------------------------------------------------------------------
# Recognising and building from a state dict
# --------------------------------------------------------------------------------------------

DERIVED_BUFFER_SUFFIXES = (".relative_position_index", ".attn_mask")


def detect(sd: StateDict) -> bool:
    return "conv_first.weight" in sd and any(k.startswith("heads.") for k in sd) and \
        any(k.endswith(".attn.relative_position_bias_table") for k in sd)


def infer_config(sd: StateDict) -> LUAConfig:
    """Config from tensor shapes alone (for files that carry none).

    Unknowable from weights and left at the released defaults: img_range (1.0) and qk_scale.
    img_size comes from a stored attn_mask when there is one; otherwise 2 * window_size, which
    gives the same outputs as any img_size > window_size.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise KeyError(key)
        return tuple(sd[key].shape)

    e, in_chans = shape("conv_first.weight")[:2]
    depths, heads = [], []
    i = 0
    while f"layers.{i}.residual_group.blocks.0.norm1.weight" in sd:
        j = 0
        while f"layers.{i}.residual_group.blocks.{j}.norm1.weight" in sd:
            j += 1
        depths.append(j)
        heads.append(shape(f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table")[1])
        i += 1
    if not depths:
        raise KeyError("layers.0.residual_group.blocks.0.norm1.weight")
    rows = shape("layers.0.residual_group.blocks.0.attn.relative_position_bias_table")[0]
    ws = (math.isqrt(rows) + 1) // 2
    hidden = shape("layers.0.residual_group.blocks.0.mlp.fc1.weight")[0]
    resi = "1conv" if "layers.0.conv.weight" in sd else "3conv"
    img_size = 2 * ws
    mask_key = next((k for k in sd if k.endswith(".attn_mask")), None)
    shifted = mask_key is not None or not any(k.endswith(".relative_position_index") for k in sd)
    if mask_key is not None:
        img_size = math.isqrt(sd[mask_key].shape[0]) * ws
    elif not shifted:  # index buffers stored but no mask: the img_size <= window_size shortcut
        img_size = ws
        _log.warning("this LUA checkpoint was built with img_size <= window_size (windows of %d): its "
                     "window_size, which sets the input padding, is not in the weights and is taken as %d. If "
                     "it was larger, outputs differ near the bottom/right edges of latents whose sides are not "
                     "multiples of it (a .safetensors conversion keeps this guess in its config)", ws, ws)
    head_names = sorted({k.split(".")[1] for k in sd if k.startswith("heads.")})
    head_cfgs = []
    head_nf = None
    for name in head_names:
        nf = shape(f"heads.{name}.conv_before.0.weight")[0]
        head_nf = head_nf or nf
        factors = []
        k = 0
        while f"heads.{name}.upsample.{k}.weight" in sd:
            factors.append(math.isqrt(shape(f"heads.{name}.upsample.{k}.weight")[0] // nf))
            k += 2
        scale = math.prod(factors) if factors else 1
        out = shape(f"heads.{name}.conv_last.weight")[0]
        head_cfgs.append(HeadConfig(name, scale, out, None if nf == head_nf else nf))
    primary = max(head_cfgs, key=lambda h: h.scale).name
    head_cfgs = [replace(h, primary=h.name == primary) for h in head_cfgs]
    return LUAConfig(in_chans=in_chans, embed_dim=e, depths=tuple(depths), num_heads=tuple(heads),
                     window_size=ws, img_size=img_size, mlp_ratio=hidden / e, resi_connection=resi,
                     head_num_feat=head_nf or 256, heads=tuple(head_cfgs), primary_head=primary,
                     qkv_bias=any(k.endswith(".attn.qkv.bias") for k in sd),
                     patch_norm="patch_embed.norm.weight" in sd)


def build(sd: StateDict, config: dict[str, Any] | None, hints: dict[str, Any]) -> LUA:
    """Build a LUA module from a state dict (derived buffers ignored) and an optional config."""
    cfg = LUAConfig.from_dict(config) if config else infer_config(sd)
    model = LUA(cfg)
    load_exact(model, {k: v for k, v in sd.items() if not k.endswith(DERIVED_BUFFER_SUFFIXES)}, "LUA config")
    return model.eval().requires_grad_(False)
