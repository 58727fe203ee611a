"""Winograd 3x3 convolution against a float64 F.conv2d: shapes, layouts, bias, the weight cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lua_core.archs.lua import winograd
from lua_core.archs.lua.winograd import conv3x3, supports, transform_weight, worthwhile


def _case(n: int, cin: int, cout: int, h: int, w: int, layout: str, bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if layout == "tokens":  # how the model hands it over: (B, H*W, C) viewed as NCHW
        x = torch.randn(n, h * w, cin, generator=g).view(n, h, w, cin).permute(0, 3, 1, 2)
    else:
        x = torch.randn(n, cin, h, w, generator=g)
    weight = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
    b = torch.randn(cout, generator=g) if bias else None
    ref = F.conv2d(x.double(), weight.double(), None if b is None else b.double(), padding=1)
    return x, weight, b, ref


def _error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return (y.double() - ref).abs().max().item()


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize(
    ("n", "cin", "cout", "h", "w", "layout", "bias"),
    [
        (1, 16, 8, 1, 1, "nchw", True),
        (1, 16, 8, 1, 5, "tokens", True),
        (2, 16, 24, 7, 9, "nchw", True),
        (2, 24, 16, 7, 9, "tokens", False),
        (1, 16, 360, 17, 16, "tokens", True),
        (1, 32, 16, 40, 36, "nchw", False),  # several blocks, W not a multiple of 4
        (1, 8, 16, 27, 300, "tokens", True),  # several column blocks, odd H
        (1, 8, 16, 2, 3, "nchw", True),  # no interior tile column: edges only
    ],
)
def test_matches_conv2d(tile: int, n: int, cin: int, cout: int, h: int, w: int, layout: str, bias: bool) -> None:
    x, weight, b, ref = _case(n, cin, cout, h, w, layout, bias)
    y = conv3x3(x, weight, b, transform_weight(weight, tile))
    assert y.shape == (n, cout, h, w)
    assert y.is_contiguous(memory_format=torch.channels_last)
    direct = _error(F.conv2d(x, weight, b, padding=1), ref)
    # fp32 rounding only: F(2,3) is within a few times fp32 conv2d; F(4,3) amplifies its GEMM rounding
    floor = 1e-6 * max(1.0, ref.abs().max().item())
    assert _error(y, ref) <= (3 if tile == 2 else 20) * direct + floor


def test_default_path_and_weight_cache() -> None:
    x, weight, b, ref = _case(2, 16, 32, 10, 12, "tokens", True, seed=1)
    u = transform_weight(weight)
    y_cached = conv3x3(x, weight, b, u)
    y_fresh = conv3x3(x, weight, b)
    assert torch.equal(y_cached, y_fresh)  # the cache is exactly what an uncached call computes
    assert _error(y_cached, ref) <= 3 * _error(F.conv2d(x, weight, b, padding=1), ref) + 1e-6 * ref.abs().max().item()


def test_large_channels_accuracy() -> None:
    """The trunk's 360 -> 360 at a size with several bands: no worse than fp32 conv2d on NCHW input."""
    x, weight, b, ref = _case(1, 360, 360, 24, 20, "tokens", True, seed=2)
    err = _error(conv3x3(x, weight, b), ref)
    assert err <= 3 * _error(F.conv2d(x.contiguous(), weight, b, padding=1), ref)


@pytest.mark.parametrize(("band", "min_rows"), [(4, 1), (24, 2), (10_000, 1)])
def test_block_geometry(monkeypatch: pytest.MonkeyPatch, band: int, min_rows: int) -> None:
    """Any block split (1x1-tile blocks, several row/column blocks, one block) gives the same result."""
    x, weight, b, ref = _case(2, 8, 12, 21, 30, "tokens", True, seed=3)
    u = transform_weight(weight)
    expected = conv3x3(x, weight, b, u)
    monkeypatch.setattr(winograd, "_BAND_TILES", band)
    monkeypatch.setattr(winograd, "_MIN_BLOCK_ROWS", min_rows)
    y = conv3x3(x, weight, b, u)
    assert torch.allclose(y, expected, rtol=0, atol=1e-6)
    assert _error(y, ref) <= 3 * _error(F.conv2d(x, weight, b, padding=1), ref) + 1e-6 * ref.abs().max().item()


def test_worthwhile_rule() -> None:
    """Winograd only where its GEMM savings outweigh its channel-proportional transforms."""
    for cin, cout in [(360, 360), (360, 256), (256, 1024), (128, 256), (160, 160)]:
        assert worthwhile(cin, cout)
    for cin, cout in [(16, 360), (256, 16), (128, 128), (96, 360), (3, 180)]:
        assert not worthwhile(cin, cout)
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        assert supports(torch.randn(1, 160, 8, 8), torch.randn(160, 160, 3, 3))
        assert not supports(x, torch.randn(360, 16, 3, 3))  # conv_first: oneDNN is faster
        assert not supports(torch.randn(1, 160, 8, 8).double(), torch.randn(160, 160, 3, 3).double())


def test_rejects_mismatched_transform() -> None:
    x, weight, b, _ = _case(1, 16, 8, 4, 4, "nchw", True)
    with pytest.raises(ValueError):
        conv3x3(x, weight, b, transform_weight(torch.randn(8, 12, 3, 3)))


def test_lua_conv_module_uses_winograd_and_follows_weight_changes() -> None:
    from lua_core.archs.lua import Conv2d

    torch.manual_seed(0)
    conv = Conv2d(160, 192, 3, 1, 1)
    x = torch.randn(1, 160, 12, 10)
    with torch.no_grad():
        ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        y = conv(x)
        assert y.is_contiguous(memory_format=torch.channels_last)  # the Winograd path's output
        small = Conv2d(16, 24, 3, 1, 1)  # too few channels for Winograd to pay: the direct conv
        assert small(torch.randn(1, 16, 6, 6)).is_contiguous()
        assert _error(y, ref) <= 1e-5
        conv.weight.mul_(2.0)  # an in-place edit must not reuse the cached transform
        assert _error(conv(x), 2 * ref - conv.bias.double().view(1, -1, 1, 1)) <= 2e-5
    # with autograd recording it is the plain convolution, with gradients
    out = conv(x.requires_grad_())
    out.sum().backward()
    assert conv.weight.grad is not None and x.grad is not None


def test_trainable_bias_alone_takes_the_differentiable_path() -> None:
    """BitFit-style: frozen weight, trainable bias, autograd on: the plain convolution runs."""
    from lua_core.archs.lua import Conv2d

    conv = Conv2d(160, 160, 3, 1, 1)
    conv.weight.requires_grad_(False)
    conv(torch.randn(1, 160, 8, 8)).sum().backward()
    assert conv.bias.grad is not None
