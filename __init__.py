"""ComfyUI-LUA: latent upscalers (LUA for FLUX/SD3; city96, NNLatentUpscale, LSSGen) as ComfyUI nodes.

Why this file is small: ComfyUI imports every custom node pack at start-up, and a pack that
imports heavy code there slows every start, or breaks it when a dependency is missing. So this
module imports only ComfyUI's V3 API; the nodes (and ``lua_core``) are imported when ComfyUI asks
for the node list, after a check of ``requirements.txt`` that turns a missing package into one log
line naming it and the fix. V3 registration only: no ``NODE_CLASS_MAPPINGS`` (with one, ComfyUI
would ignore ``comfy_entrypoint``).
"""

from __future__ import annotations

import logging
import os
import re
import sys

log = logging.getLogger("ComfyUI-LUA")

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS_FOLDER = "latent_upscale_models"

try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # not inside ComfyUI (pytest imports this file too), or one without the V3 node API
    ComfyExtension = None  # type: ignore[assignment,misc]
    if "comfy" in sys.modules:  # inside ComfyUI: say why the nodes are missing
        log.error("ComfyUI-LUA needs ComfyUI 0.3.75 or newer (the V3 node API, comfy_api.latest); update ComfyUI.")


def missing_requirements(path: str = os.path.join(HERE, "requirements.txt")) -> list[str]:
    """The lines of ``requirements.txt`` this Python does not satisfy (absent, or an older version)."""
    from importlib import metadata

    problems = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln.split("#", 1)[0].strip() for ln in f]
    except OSError:
        return []
    for line in filter(None, lines):
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:>=\s*([0-9][^,;\s]*))?", line)
        if not m:
            continue
        name, minimum = m.group(1), m.group(2)
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{line} (not installed)")
            continue
        if minimum and _older(have, minimum):
            problems.append(f"{line} (installed: {have})")
    return problems


def _older(have: str, minimum: str) -> bool:
    try:
        from packaging.version import Version

        return Version(have) < Version(minimum)
    except Exception:  # no packaging, or an unusual version string: do not block on it
        return False


def register_models_folder() -> None:
    """Give ComfyUI a ``latent_upscale_models`` folder when it has none (older than 0.3.75's).

    A folder already configured (by ComfyUI itself or extra_model_paths.yaml) keeps its paths; an
    entry created by the yaml alone gets the default models/ path appended and the model file
    extensions, which ``add_model_folder_path`` leaves empty.
    """
    import folder_paths

    default = os.path.join(folder_paths.models_dir, MODELS_FOLDER)
    if MODELS_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[MODELS_FOLDER] = ([default], set(folder_paths.supported_pt_extensions))
        return
    paths, exts = folder_paths.folder_names_and_paths[MODELS_FOLDER]
    if not exts:
        folder_paths.folder_names_and_paths[MODELS_FOLDER] = (paths, set(folder_paths.supported_pt_extensions))
    if default not in paths:
        paths.append(default)


if ComfyExtension is not None:

    class LUAExtension(ComfyExtension):
        async def get_node_list(self) -> list[type]:
            problems = missing_requirements()
            if problems:  # ComfyUI logs this one line (no traceback) and marks the pack IMPORT FAILED
                raise RuntimeError(
                    "ComfyUI-LUA is missing Python packages: " + "; ".join(problems)
                    + f". Fix: run  pip install -r {os.path.join(HERE, 'requirements.txt')}  with ComfyUI's Python, "
                    "then restart ComfyUI.")
            register_models_folder()
            from .nodes import node_classes

            return node_classes()

    async def comfy_entrypoint() -> LUAExtension:
        return LUAExtension()
