"""Window attention of LUA's Swin blocks, and the per-device choices of how it runs.

The arithmetic is the official one; what differs per device is only how it is laid out for the
kernels: CPU splits shifted windows by mask region, CUDA folds the mask into a kept bias, pads
the head dim inside kept weights and adds biases inside its GEMMs (the ``*_ON`` tuples below, read
at call time so tests can switch them on for the CPU).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..derived import Derived, KeepsDerived
from .windows import relative_position_index

#: 30); elsewhere the unpadded call is already fused (the CPU flash kernel takes any head_dim)
PAD_HEAD_DIM_ON = ("cuda",)

#: devices where a shifted block runs one attention call per window kind with the shift mask
#: folded into its kept bias (the official arithmetic), instead of one call per mask region: on a
#: GPU the number of kernel launches costs more than the exps the regions save (a CPU's opposite)
MASK_IN_BIAS_ON = ("cuda",)


#: devices whose GEMMs add a bias vector in their epilogue for free (cuBLASLt), where a separate
#: add costs a kernel launch and a pass over the output; a CPU GEMM copies the bias into its output
#: first, a pass as costly as the add: no faster in fp32 (``benchmarks/cpu_alternatives.py``) nor in
#: bf16 with AMX (``benchmarks/cpu_bf16.py``, "epilogue": within 4% either way, wall against CPU time).
#: Entries are device types, or "type:dtype" for one dtype on a device (``applies``).
BIAS_IN_GEMM_ON = ("cuda",)


class AttentionWeights(NamedTuple):
    """What inference multiplies with (``WindowAttention.inference_weights``), kept per weights."""

    qkv: torch.Tensor  # (3 * heads * head_dim, C)
    qkv_bias: torch.Tensor | None  # (3 * heads * head_dim,): the query bias, zeros for keys and values
    proj: torch.Tensor  # (C, heads * head_dim)
    proj_bias: torch.Tensor  # (C,): proj's bias with the value bias folded in (``proj_bias``)
    head_dim: int  # padded where ``PAD_HEAD_DIM_ON``


#: where the qkv projection (with the query bias) and fc1 (with its bias and the GELU) run as oneDNN
#: linears with the bias and GELU in the GEMM's epilogue (``torch.ops.mkldnn._linear_pointwise``): bf16 on
#: the CPU, where that saves a pass over their outputs each (the strided query-bias add, the fc1 bias add
#: and GELU) and rounds to bf16 once, after them (``benchmarks/cpu_bf16.py``, "onednn"). fp32 keeps
#: its own ops: exact as tested, and the fused form was no faster there (``cpu_alternatives.py``)
ONEDNN_LINEAR_ON = ("cpu:bfloat16",)


@functools.cache
def _has_onednn_linear() -> bool:
    """This torch build has the fused linear, and oneDNN can run it in bf16 on this CPU: without AVX-512
    (an AMD EPYC of this project's CI kind, or ``ONEDNN_MAX_CPU_ISA=AVX2``) it cannot create the bf16 primitive
    and raises, where torch's own mm emulates bf16."""
    try:
        return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
                and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    except (AttributeError, RuntimeError):
        return False


def onednn_linear(t: torch.Tensor) -> bool:
    """Whether linears on tensors like ``t`` run through oneDNN's fused form (``ONEDNN_LINEAR_ON``, and
    this torch build has it)."""
    return applies(ONEDNN_LINEAR_ON, t) and _has_onednn_linear()


def applies(flags: tuple[str, ...], t: torch.Tensor) -> bool:
    """Whether a ``*_ON`` choice holds for tensors like ``t``: its device type is listed, or its
    "type:dtype" ("cpu:bfloat16")."""
    kind = t.device.type
    return kind in flags or f"{kind}:{str(t.dtype).removeprefix('torch.')}" in flags


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
            flat = x.reshape(-1, x.shape[-1])
            if kept.qkv_bias is not None and onednn_linear(x):  # oneDNN allocates its own output
                qkv = torch.ops.mkldnn._linear_pointwise(flat, kept.qkv, kept.qkv_bias, "none", [], "")
                qbias = None
            elif kept.qkv_bias is not None and applies(BIAS_IN_GEMM_ON, x):
                buf = workspace.get("qkv", (b * nw * n, 3 * c), x)
                qkv, qbias = torch.addmm(kept.qkv_bias, flat, kept.qkv.t(), out=buf), None
            else:
                qkv = torch.mm(flat, kept.qkv.t(), out=workspace.get("qkv", (b * nw * n, 3 * c), x))
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


def aligned(size: int) -> int:
    """Elements a kept bias occupies: fused CUDA attention kernels want masks 16-element aligned."""
    return size + (-size) % 16
