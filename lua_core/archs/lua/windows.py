"""Window geometry of LUA's Swin blocks: relative positions, shift-mask regions, token layouts, padding.

Pure index arithmetic (no weights): which tokens share a window, which regions of a shifted
window may attend to each other, and the token orders in which each kind of block sees its
windows as contiguous runs, so a block gathers once instead of roll + partition + reverse.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


class Layouts:
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
