"""Make the registry's torchvision 0.28.0 (a CUDA build) importable beside CPU-only torch 2.13.0.

Its compiled ops never load without libtorch_cuda, and torchvision guards every fake-op
registration with ``extension._has_ops()`` except those for ``torchvision::nms`` and
``torchvision::qnms``, which then fail at import. ComfyUI imports torchvision unconditionally,
so we guard those two the same way. Idempotent.
"""

import importlib.util
import pathlib
import sys


def main() -> int:
    spec = importlib.util.find_spec("torchvision")  # locates the package without importing it
    path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
    src = path.read_text()
    changed = 0
    for op in ("nms", "qnms"):
        plain = f'@torch.library.register_fake("torchvision::{op}")'
        guarded = (f'@(torch.library.register_fake("torchvision::{op}") '
                   f"if torchvision.extension._has_ops() else (lambda f: f))")
        if guarded in src:
            continue
        if plain not in src:
            print(f"patch_torchvision: no registration for {op} in {path}", file=sys.stderr)
            return 1
        src = src.replace(plain, guarded)
        changed += 1
    path.write_text(src)
    print(f"patch_torchvision: {path.name}: guarded {changed} registration(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
