"""LUA's shifted-window attention as computed here: per shift-mask region, with cached biases.

The official shifted blocks add a -100 mask between regions; lua_core drops those pairs instead
(``window_regions``). These tests pin that the regions are exactly the mask's zero blocks, that the
result equals the masked softmax even with large logits, and that the bias cache follows the weights.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from factories import make_lua, tiny_config
from lua_baseline import baseline_forward
from lua_core.archs.lua import bias_cache_bytes, shift_mask, window_layout, window_regions

KINDS = list(itertools.product([False, True], repeat=2))


@pytest.mark.parametrize("ws,shift", [(16, 8), (8, 4), (7, 3), (4, 1)])
@pytest.mark.parametrize("kind", KINDS)
def test_regions_are_the_mask_zero_blocks(ws, shift, kind):
    order, ranges = window_regions(ws, shift, *kind)
    assert sorted(order) == list(range(ws * ws))
    assert ranges[0][0] == 0 and ranges[-1][1] == ws * ws
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    idx = list(order)
    mask = shift_mask(ws, shift, *kind)[idx][:, idx]  # the official mask in region order
    region = torch.empty(ws * ws, dtype=torch.long)
    for r, (a, b) in enumerate(ranges):
        region[a:b] = r
    same = region[:, None] == region[None, :]
    assert torch.equal(mask == 0, same)
    assert (mask[~same] == -100).all()
    assert len(ranges) == 1 + kind[0] + kind[1] + kind[0] * kind[1]


@pytest.mark.parametrize("h,w,ws,shift", [(64, 64, 16, 8), (16, 48, 16, 8), (24, 8, 8, 4), (32, 32, 8, 0)])
def test_layout_is_a_permutation_grouping_windows_by_kind(h, w, ws, shift):
    layout = window_layout(h, w, ws, shift)
    assert sorted(layout.order.tolist()) == list(range(h * w))
    n = ws * ws
    assert layout.groups[0][0] == 0 and layout.groups[-1][1] == h * w // n
    # every window holds the ws x ws block of the rolled map it claims
    for g0, g1, *_ in layout.groups:
        for win in range(g0, g1):
            pos = layout.order[win * n:(win + 1) * n]
            ys, xs = (pos // w - shift) % h, (pos % w - shift) % w
            assert ys.max() - ys.min() == ws - 1 and xs.max() - xs.min() == ws - 1
            assert ys.min() % ws == 0 and xs.min() % ws == 0


def _masked_reference(q, k, v, bias, mask, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=(bias + mask).unsqueeze(0), scale=scale)


@pytest.mark.parametrize("logit_scale", [1.0, 8.0, 30.0])
def test_region_attention_equals_the_masked_softmax(logit_scale):
    """Equal wherever no cross-region logit lies more than ~80 above its row's best same-region
    logit (the documented bound); at logit spreads of +-100 (scale 30) some rows pass it, and only
    those may differ."""
    torch.manual_seed(0)
    ws, shift, heads, hd = 8, 4, 2, 6
    n = ws * ws
    scale = hd ** -0.5
    checked = 0
    for kind in KINDS:
        order, ranges = window_regions(ws, shift, *kind)
        q, k, v = (torch.randn(3, heads, n, hd) for _ in range(3))
        q = q * logit_scale
        bias = torch.randn(heads, n, n)
        mask = shift_mask(ws, shift, *kind)
        ref = _masked_reference(q, k, v, bias, mask, scale)
        idx = torch.tensor(order)
        out = torch.empty_like(ref)
        for a, b in ranges:
            sel = idx[a:b]
            out[:, :, sel] = F.scaled_dot_product_attention(
                q[:, :, sel], k[:, :, sel], v[:, :, sel], attn_mask=bias[:, sel][:, :, sel].unsqueeze(0),
                scale=scale)
        logits = q @ k.transpose(-1, -2) * scale + bias
        same = mask == 0
        best_same = logits.masked_fill(~same, float("-inf")).amax(-1)
        best_cross = logits.masked_fill(same, float("-inf")).amax(-1)
        inside = (best_cross - best_same) < 80  # rows within the bound (all rows when nothing is masked)
        err = (out - ref).abs().amax(-1)
        assert (err[inside] <= 1e-5 * max(1.0, ref.abs().max().item())).all()
        checked += int(inside.sum())
    assert checked > 0


def test_whole_model_with_large_logits_matches_the_official_algorithm():
    """qkv weights scaled so logits reach tens: the region split still equals the -100 mask."""
    model = make_lua(tiny_config(), seed=3)
    with torch.no_grad():
        for blk in model.layers[0].residual_group.blocks:
            blk.attn.qkv.weight.mul_(8.0)
    x = torch.randn(2, 16, 24, 24)
    with torch.inference_mode():
        ref = baseline_forward(model, x, "x2")
        out = model(x, "x2")
    assert (out - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_bias_cache_follows_the_table_and_the_device():
    model = make_lua(tiny_config(), seed=1)
    blk = model.layers[0].residual_group.blocks[1]  # shifted
    x = torch.randn(1, 16, 16, 16)
    with torch.inference_mode():
        first = model(x, "x2")
    assert blk.bias_cache is not None
    assert sum(b.bias_cache.numel() * 4 for layer in model.layers
               for b in layer.residual_group.blocks) == bias_cache_bytes(model.config)
    # weights changed in place (as an optimiser step does): the cached biases must not be reused
    with torch.no_grad():
        table = blk.attn.relative_position_bias_table
        table.add_(torch.randn_like(table))
    with torch.inference_mode():
        changed = model(x, "x2")
        ref = baseline_forward(model, x, "x2")
    assert (changed - first).abs().max().item() > 1e-3
    assert (changed - ref).abs().max().item() <= 1e-5
    # .to() drops what was kept (rebuilt in the new dtype/device); it is never in the state dict
    model.to(torch.float64)
    assert blk.bias_cache is None
    assert not any("cache" in k for k in model.state_dict())
    with torch.inference_mode():
        out64 = model(x.double(), "x2")
    assert blk.bias_cache.dtype == torch.float64
    assert (out64 - ref.double()).abs().max().item() <= 1e-5


def test_writes_autograd_does_not_see_are_caught_or_cleared():
    """ComfyUI loads models under inference mode (inference tensors have no version counter) and
    its patcher writes through ``.data`` or replaces parameters: none of these may leave stale
    biases, folded heads or Winograd filters behind."""
    cfg = tiny_config(embed_dim=160, num_heads=(2,), head_num_feat=160)  # wide enough for Winograd
    x = torch.randn(1, 16, 16, 16)
    with torch.inference_mode():  # parameters are inference tensors, as in a ComfyUI node
        model = make_lua(cfg, seed=3)
        model(x, "x2")
    donor = make_lua(cfg, seed=4)
    with torch.no_grad():
        base = baseline_forward(donor, x, "x2")  # fp32 rounding relative to outputs of ~15 (Winograd, 160 wide)
        assert (donor(x, "x2") - base).abs().max().item() <= 1e-5 * base.abs().max().item()
    with torch.inference_mode():  # what a model freshly built with the new weights gives: stale values differ by ~1-10
        ref = make_lua(cfg, seed=4)(x, "x2").clone()
    # load_state_dict into inference tensors: no version bump, caught by the post-load hook
    with torch.inference_mode():
        model.load_state_dict(donor.state_dict())
        assert (model(x, "x2") - ref).abs().max().item() <= 1e-5
    # a write through .data on normal tensors: invisible to version counters; clear_caches() says so
    model2 = make_lua(cfg, seed=3)
    with torch.inference_mode():
        model2(x, "x2")
    for (_, p), (_, q) in zip(model2.named_parameters(), donor.named_parameters()):
        p.data.copy_(q.data)
    model2.clear_caches()
    with torch.inference_mode():
        assert (model2(x, "x2") - ref).abs().max().item() <= 1e-5
    # a replaced parameter object (ComfyUI's set_attr_param) is a different object: rebuilt
    model3 = make_lua(cfg, seed=3)
    with torch.inference_mode():
        model3(x, "x2")
    for name, q in donor.named_parameters():
        mod_name, attr = name.rsplit(".", 1)
        setattr(model3.get_submodule(mod_name), attr, torch.nn.Parameter(q.detach().clone()))
    with torch.inference_mode():
        assert (model3(x, "x2") - ref).abs().max().item() <= 1e-5


def test_autocast_inference_runs_and_stays_close():
    model = make_lua(tiny_config(), seed=5)
    x = torch.randn(1, 16, 24, 24)
    with torch.no_grad():
        ref = model(x, "x2")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, "x2")
    assert (out.float() - ref).abs().max().item() <= 0.1 * ref.abs().max().item()


def test_training_path_does_not_cache_and_gives_gradients():
    model = make_lua(tiny_config(), seed=2).train()
    x = torch.randn(1, 16, 16, 16)
    out = model(x, "x2")
    out.square().mean().backward()
    table = model.layers[0].residual_group.blocks[1].attn.relative_position_bias_table
    assert table.grad is not None and table.grad.abs().sum() > 0
    assert all(b.bias_cache is None for b in model.layers[0].residual_group.blocks)


def test_a_used_model_pickles_and_copies():
    """torch.save of a whole module and deepcopy (EMA) work after inference built its values."""
    import copy
    import io

    model = make_lua(tiny_config(), seed=6)
    x = torch.randn(1, 16, 16, 16)
    with torch.inference_mode():
        ref = model(x, "x2")
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    twin = copy.deepcopy(model)
    with torch.inference_mode():
        assert torch.equal(loaded(x, "x2"), ref)
        assert torch.equal(twin(x, "x2"), ref)
