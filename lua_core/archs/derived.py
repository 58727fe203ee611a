"""Values computed from parameters (folded kernels, Winograd filters, attention biases), kept
between calls and rebuilt when the parameters change.

Why: building them per call costs time (the attention biases) or a lot of it (folding a head), while
the weights of a loaded upscaler normally never change. "Change" is detected the cheap ways: a
different parameter object (ComfyUI's ``set_attr_param`` replaces parameters), moved storage, a moved
version counter (every in-place op through autograd's view of the tensor: optimiser steps,
``load_state_dict``), or a different dtype/device. Writes that bypass version counters (``.data``
copies, edits of inference tensors) are invisible: the owner's ``clear()`` (``LUA.clear_caches``) is
the way to say so, and the owning modules clear on ``.to()`` and after ``load_state_dict``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # an inference tensor: it has no version counter
        return None


class Derived:
    """One value derived from ``params``, rebuilt by ``build`` when any of them changed."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._value: Any = None
        self._key: tuple | None = None
        self._refs: list[weakref.ref] | None = None

    def get(self, params: Sequence[torch.Tensor], build: Callable[[], Any]) -> Any:
        key = tuple((p.data_ptr(), _version(p), p.dtype, p.device) for p in params)
        same = (self._refs is not None and len(self._refs) == len(params)
                and all(r() is p for r, p in zip(self._refs, params)))
        if self._value is None or not same or key != self._key:
            value = build()
            self._value, self._key, self._refs = value, key, [weakref.ref(p) for p in params]
        return self._value

    def __deepcopy__(self, memo: dict) -> Derived:
        return Derived()  # a copy has its own parameters: it builds its own values

    def __getstate__(self) -> dict:
        return {}  # pickled modules (torch.save(model)) rebuild their values; weakrefs do not pickle

    def __setstate__(self, state: dict) -> None:
        self.clear()


class KeepsDerived(nn.Module):
    """A module holding ``Derived`` attributes: ``clear_derived`` drops them all, and so does every
    ``.to()`` / ``.half()`` (``_apply``), so they are rebuilt on the new device and dtype when used
    instead of staying behind on the old one."""

    def clear_derived(self) -> None:
        for value in vars(self).values():
            if isinstance(value, Derived):
                value.clear()

    def _apply(self, fn: Callable, recurse: bool = True) -> nn.Module:
        self.clear_derived()
        return super()._apply(fn, recurse)
