"""The pack's ComfyUI nodes: thin V3 nodes over ``lua_core``. The only package that imports comfy.

Each node module exports ``NODES: list[type]``; ``node_classes`` collects them, including the
progressive sampler's module when it is present.
"""

from __future__ import annotations

import importlib

#: node modules in menu order; a missing optional one is skipped, any other import error propagates
_MODULES = ("loader", "upscale", "progressive")
_OPTIONAL = frozenset({"progressive"})


def node_classes() -> list[type]:
    """Every node class of the pack, in menu order."""
    classes: list[type] = []
    for name in _MODULES:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if name in _OPTIONAL and e.name == f"{__name__}.{name}":
                continue
            raise
        classes.extend(module.NODES)
    return classes
