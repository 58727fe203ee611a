"""The head's linear tail folded into one convolution (lua_core.archs.lua.folded_head) equals the
released chain: exactly in float64 (any size, x2/x3/x4, batch, edges), to fp32 rounding in fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lua_core.archs.lua import Head
from lua_core.archs.lua.folded_head import fold, fold_step


def _head(scale: int, seed: int = 0, dtype=torch.float64, nf: int = 12, out: int = 5) -> Head:
    torch.manual_seed(seed)
    head = Head(20, nf, scale, out)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return head.to(dtype).eval()


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 2, 5), (1, 4, 3), (1, 7, 9), (1, 12, 12), (2, 13, 29), (1, 40, 17),
                                   (1, 16, 64)])
def test_folded_head_equals_the_chain_in_float64(scale, shape):
    b, h, w = shape
    head = _head(scale, seed=h * w)
    x = torch.randn(b, 20, h, w, dtype=torch.float64)
    with torch.no_grad():
        ref = head.tail(head.conv_before(x))  # the released chain, step by step
    with torch.inference_mode():
        out = head(x)
    assert out.shape == (b, 5, h * scale, w * scale)
    assert (out - ref).abs().max().item() <= 1e-11 * ref.abs().max().item()


def test_edges_are_what_the_fold_alone_gets_wrong():
    """Without the edge strips the folded conv differs from the chain on the outer ring only, so the
    strips are needed and sufficient."""
    head = _head(2, seed=5)
    x = torch.randn(1, 20, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        y = head.conv_before(x)
        ref = head.tail(y)
        convs = [m for m in head.upsample if isinstance(m, torch.nn.Conv2d)]
        w, b = fold([(c.weight, c.bias, 2) for c in convs], head.conv_last.weight, head.conv_last.bias)
        raw = F.pixel_shuffle(F.conv2d(y, w, b, padding=w.shape[-1] // 2), 2)
    diff = (raw - ref).abs()
    assert diff[..., 2:-2, 2:-2].max().item() <= 1e-11  # interior: exact
    assert diff[..., :2, :].max().item() > 1e-3 and diff[..., :, -2:].max().item() > 1e-3  # edges: not


def test_fold_step_shapes_and_order():
    up = torch.randn(4 * 6, 3, 3, 3, dtype=torch.float64)
    last = torch.randn(5, 6, 3, 3, dtype=torch.float64)
    k, b = fold_step(up, torch.randn(24, dtype=torch.float64), 2, last, torch.randn(5, dtype=torch.float64))
    assert k.shape == (5 * 4, 3, 5, 5) and b.shape == (20,)
    with pytest.raises(ValueError, match="channels"):
        fold_step(up, None, 2, torch.randn(5, 7, 3, 3, dtype=torch.float64), None)


def test_fp32_head_within_rounding():
    head = _head(4, seed=3, dtype=torch.float32, nf=64, out=16)
    x = torch.randn(1, 20, 24, 24)
    with torch.no_grad():
        ref = head.double().tail(head.conv_before(x.double()))
        head.float()
    with torch.inference_mode():
        out = head(x)
    assert (out.double() - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_fold_follows_weight_changes():
    head = _head(2, seed=7)
    x = torch.randn(1, 20, 16, 16, dtype=torch.float64)
    with torch.inference_mode():
        first = head(x)
    with torch.no_grad():
        head.conv_last.weight.mul_(-1.0)
        ref = head.tail(head.conv_before(x))
    with torch.inference_mode():
        second = head(x)
    assert (second - first).abs().max().item() > 1e-3
    assert (second - ref).abs().max().item() <= 1e-11 * ref.abs().max().item()
