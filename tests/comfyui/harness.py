"""Test harness for running this node pack inside a real ComfyUI (0.3.75 and 0.33.0) on CPU.

Why it exists: the pack's nodes, workflows and server behaviour must be tested against ComfyUI's own
code (its node loader, executor, model patcher, samplers and HTTP API), not against mocks. This module
gives every test two ways to do that:

* In-process (:func:`init_inprocess`, :class:`InProcComfy`): imports ComfyUI into the test process with
  the CPU forced, points ``folder_paths`` at a throw-away base directory, and loads node packs through
  ComfyUI's own ``nodes.load_custom_node`` (so V1 ``NODE_CLASS_MAPPINGS`` and V3 ``comfy_entrypoint``
  packs register exactly as in the server). Nodes run through ``execution.get_output_data``.
* A real server (:class:`ComfyServer`): ``python main.py --cpu ...`` in a subprocess on a free port,
  with its own base directory (custom_nodes/, models/, input/, output/, user/), driven over HTTP with
  the standard library only. Stopped by PID, never by process name.

It also builds checkpoint-free models: :func:`make_tiny_model_patcher` wraps a tiny deterministic conv in
a real ``comfy.model_base.BaseModel`` + ``ModelPatcher`` so KSampler and model patch nodes run in
milliseconds.

Which ComfyUI is tested is chosen by the environment: ``COMFYUI_DIR`` (its source) and the Python that
runs pytest (servers run under the same interpreter; ComfyUI 0.33.0 has its own venv, see
scripts/setup_comfyui.sh). :func:`comfyui_version` tells tests which one it is, and
:func:`skip_unless_comfyui` / the ``requires_comfyui`` marker (conftest.py) skip a test that needs a newer
one, with the reason ``needs ComfyUI >= 0.33 (...)``.

The module imports only the standard library at import time: ComfyUI and torch are imported lazily,
because the test-only node pack (``test_nodes_pack``) loads this file inside the server process too.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import importlib
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

# The test pack (loaded by path inside the server, or in-process) finds an already-imported harness
# under this name instead of importing a second copy.
HARNESS_MODULE_ALIAS = "_lua_comfy_test_harness"
sys.modules.setdefault(HARNESS_MODULE_ALIAS, sys.modules[__name__])

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
TEST_PACK_DIR = HERE / "test_nodes_pack"
ARTIFACTS_DIR = REPO_ROOT / "tests" / "_artifacts"

PACK_INSTALL_NAME = "ComfyUI-LUA"  # directory name of this pack under custom_nodes/
TEST_PACK_INSTALL_NAME = "lua_test_nodes"

LATENT_FORMATS = ("SD15", "SDXL", "SD3", "Flux", "Wan21")
# the ``comfy.supported_models`` config a tiny model of each latent format copies (its latent format, sampling
# settings and isinstance checks): the class of that name, except Wan21, whose image model is Qwen-Image
# (ComfyUI's Wan 2.1 configs are video models)
CONFIG_OF_FORMAT = {"Wan21": "QwenImage"}
MODEL_TYPES = ("EPS", "V_PREDICTION", "FLOW")

IMPORT_FAILED_MARK = "IMPORT FAILED"


class HarnessError(RuntimeError):
    """The harness could not set ComfyUI up (missing install, failed pack import, dead server...)."""


# ---------------------------------------------------------------------------------------------------
# Locating ComfyUI
# ---------------------------------------------------------------------------------------------------


def comfyui_dir() -> Path:
    """The ComfyUI source dir: ``$COMFYUI_DIR`` or ``<repo>/.comfyui/ComfyUI`` (scripts/setup_env.sh)."""
    env = os.environ.get("COMFYUI_DIR")
    path = Path(env).expanduser().resolve() if env else REPO_ROOT / ".comfyui" / "ComfyUI"
    if not (path / "main.py").is_file() or not (path / "nodes.py").is_file():
        raise HarnessError(
            f"no ComfyUI at {path} (main.py/nodes.py missing). Run scripts/setup_env.sh (0.3.75) or "
            "scripts/setup_comfyui.sh 0.33, or set COMFYUI_DIR to a ComfyUI source directory."
        )
    return path


# ---------------------------------------------------------------------------------------------------
# Which ComfyUI
# ---------------------------------------------------------------------------------------------------

#: how every version skip's reason starts; on CI (LUA_CI=1) the only kind of skip that is not a failure
VERSION_SKIP_PREFIX = "needs ComfyUI >= "


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.3.75"`` -> ``(0, 3, 75)``; ``"0.33"`` -> ``(0, 33)`` (compares as ComfyUI's releases do: 0.33 > 0.3.75)."""
    try:
        return tuple(int(part) for part in version.strip().split("."))
    except ValueError:
        raise ValueError(f"not a ComfyUI version: {version!r}") from None


def comfyui_version(comfy_dir: Path | None = None) -> str:
    """The version of the ComfyUI under test (``__version__`` of its ``comfyui_version.py``, read as text).

    Inside a process that has imported ComfyUI it is that ComfyUI's; otherwise ``comfy_dir`` or
    :func:`comfyui_dir`. Never imports ComfyUI.
    """
    if comfy_dir is None:
        imported = sys.modules.get("comfy.model_management")
        comfy_dir = Path(imported.__file__).resolve().parents[1] if imported is not None else comfyui_dir()
    path = Path(comfy_dir) / "comfyui_version.py"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise HarnessError(f"cannot read the ComfyUI version: {err}") from None
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise HarnessError(f"no __version__ in {path}")


def comfyui_at_least(minimum: str, comfy_dir: Path | None = None) -> bool:
    """Whether the ComfyUI under test is ``minimum`` or newer (``"0.33"`` means 0.33.0)."""
    return version_tuple(comfyui_version(comfy_dir)) >= version_tuple(minimum)


def version_skip_reason(minimum: str, why: str) -> str:
    """The skip reason for a test that needs ComfyUI ``minimum``: ``needs ComfyUI >= 0.33 (why)``."""
    return f"{VERSION_SKIP_PREFIX}{minimum} ({why})"


def skip_unless_comfyui(minimum: str, why: str) -> None:
    """Skip the calling test (or fixture) unless the ComfyUI under test is ``minimum`` or newer.

    ``why`` names what the test needs, e.g. ``"the Flux2 latent format"``. Tests can also use the marker
    ``@pytest.mark.requires_comfyui("0.33", "the Flux2 latent format")`` (tests/comfyui/conftest.py).
    """
    if not comfyui_at_least(minimum):
        import pytest

        pytest.skip(version_skip_reason(minimum, why))


def ensure_comfy_importable(comfy_dir: Path | None = None) -> Path:
    """Put ComfyUI on ``sys.path`` and force the CPU before ``comfy.model_management`` is imported.

    Safe to call repeatedly. Inside a running ComfyUI (the server process) it changes nothing but the
    path check. Returns the ComfyUI directory in use.
    """
    if "comfy.model_management" in sys.modules:
        mod = sys.modules["comfy.model_management"]
        return Path(mod.__file__).resolve().parents[1]
    comfy_dir = Path(comfy_dir) if comfy_dir is not None else comfyui_dir()
    # First on sys.path: the repository root (also on sys.path in tests) has its own nodes/ package,
    # which must not shadow ComfyUI's nodes.py.
    while str(comfy_dir) in sys.path:
        sys.path.remove(str(comfy_dir))
    sys.path.insert(0, str(comfy_dir))
    # comfy.cli_args parses sys.argv only after comfy.options.enable_args_parsing() (main.py does that);
    # imported from here it parses [] and gives the defaults, so pytest's argv is never seen.
    from comfy.cli_args import args

    args.cpu = True  # model_management probes CUDA at import otherwise
    return comfy_dir


# ---------------------------------------------------------------------------------------------------
# In-process ComfyUI
# ---------------------------------------------------------------------------------------------------

BASE_SUBDIRS = ("models", "input", "output", "temp", "user", "custom_nodes")
MODEL_SUBDIRS = ("models/vae", "models/latent_upscale_models")  # created in every base directory


def _point_folder_paths(folder_paths: ModuleType, base: Path) -> None:
    """Re-point an already-imported ``folder_paths`` from its old base directory to ``base``."""
    old_base = os.path.abspath(folder_paths.base_path)
    new_base = str(base)
    if old_base == new_base:
        return
    for name, (paths, exts) in list(folder_paths.folder_names_and_paths.items()):
        moved = [new_base + p[len(old_base):] if p == old_base or p.startswith(old_base + os.sep) else p
                 for p in paths]
        folder_paths.folder_names_and_paths[name] = (moved, exts)
    folder_paths.base_path = new_base
    folder_paths.models_dir = os.path.join(new_base, "models")
    folder_paths.set_output_directory(os.path.join(new_base, "output"))
    folder_paths.set_input_directory(os.path.join(new_base, "input"))
    folder_paths.set_temp_directory(os.path.join(new_base, "temp"))
    folder_paths.set_user_directory(os.path.join(new_base, "user"))
    folder_paths.filename_list_cache.clear()


@dataclass
class NodeRun:
    """What one in-process node execution produced: the output tuple and the ``ui`` dict (output nodes)."""

    outputs: tuple
    ui: dict


class PackImportError(HarnessError):
    """ComfyUI's loader returned False for a pack (what the server logs as ``IMPORT FAILED``)."""

    def __init__(self, path: Path, log: str):
        super().__init__(f"ComfyUI could not load custom node pack {path}:\n{log}")
        self.path = path
        self.log = log


@dataclass
class InProcComfy:
    """ComfyUI imported into this process. Create with :func:`init_inprocess` (once per process)."""

    comfyui_dir: Path
    base_dir: Path
    nodes: ModuleType
    folder_paths: ModuleType
    execution: ModuleType
    builtin_node_ids: frozenset[str]
    loaded_packs: dict[str, ModuleType] = field(default_factory=dict)

    def load_pack(self, path: str | os.PathLike, install_name: str | None = None) -> ModuleType:
        """Load a custom node pack through ComfyUI's own loader and return its module.

        Like the server: the pack directory is symlinked to ``<base>/custom_nodes/<install_name>`` and
        ``nodes.load_custom_node(link, ignore=<built-in node ids>, module_parent="custom_nodes")`` runs
        on the link (V1 ``NODE_CLASS_MAPPINGS`` or V3 ``comfy_entrypoint``). ComfyUI names the module in
        ``sys.modules`` after the *full path* of that link (``.`` replaced by ``_x_``). ``install_name``
        defaults to ``ComfyUI-LUA`` for this repository and the directory's name otherwise. Loading the
        same name again re-executes the pack. Raises :class:`PackImportError` with ComfyUI's log output
        when the loader reports failure.
        """
        src = Path(path).resolve()
        if install_name is None:
            install_name = PACK_INSTALL_NAME if src == REPO_ROOT else src.name
        link = self.base_dir / "custom_nodes" / install_name
        if link.is_symlink() or link.exists():
            if link.resolve() != src:
                raise HarnessError(f"{link} already points at {link.resolve()}, not {src}")
        else:
            link.symlink_to(src, target_is_directory=src.is_dir())
        module_path = str(link)
        records: list[str] = []

        class _Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(self.format(record))

        handler = _Collect(level=logging.WARNING)
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            ok = _run_coro(self.nodes.load_custom_node(module_path, ignore=set(self.builtin_node_ids),
                                                       module_parent="custom_nodes"))
        finally:
            root.removeHandler(handler)
        sys_name = module_path.replace(".", "_x_") if link.is_dir() else os.path.splitext(module_path)[0]
        if not ok:
            log = "\n".join(records) or "(no log output)"
            module = sys.modules.get(sys_name)
            if module is not None and callable(getattr(module, "comfy_entrypoint", None)):
                log += "\n" + _entrypoint_traceback(module)  # ComfyUI logs only str(exception) for V3 packs
            raise PackImportError(src, log)
        module = sys.modules[sys_name]
        self.loaded_packs[install_name] = module
        return module

    def node_class(self, node_id: str) -> type:
        """The class registered under ``node_id`` in ``nodes.NODE_CLASS_MAPPINGS`` (KeyError if none)."""
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]

    def run_node(self, node_id: str, /, **inputs: Any) -> NodeRun:
        """Execute one node with literal input values the way ComfyUI's executor does.

        Uses ``execution.get_input_data`` (declared inputs only, V3 hidden inputs) and the functions
        behind ``execution.get_output_data`` (V1 ``FUNCTION``, or V3 ``execute`` on a locked class
        clone; async nodes awaited; ``{"ui", "result"}`` dicts and V3 ``NodeOutput`` unpacked). Inputs
        the node does not declare are dropped, as in the server; lazy inputs are all passed eagerly.
        Each input is one value (no list expansion); ``OUTPUT_IS_LIST`` outputs come back as lists.
        Runs under ``torch.inference_mode()`` like the server's executor, so output tensors are inference
        tensors (read them freely; in-place changes outside inference mode raise).
        """
        import torch

        ex = self.execution
        class_def = self.node_class(node_id)
        unique_id = "1"
        # the third value is the V3 hidden inputs (0.3.75: ``hidden_inputs``) or all of the V3 data, hidden
        # inputs and dynamic-input layout (0.33: ``v3_data``); _async_map_node_over_list takes it by that name
        input_data_all, missing, v3 = ex.get_input_data(inputs, class_def, unique_id)
        if missing:
            raise HarnessError(f"{node_id}: link-shaped input values are not supported: {sorted(missing)}")
        obj = class_def()
        prompt_id = f"inproc-{uuid.uuid4()}"
        v3_kwarg = _v3_data_parameter(ex)

        async def _go() -> tuple[list, dict]:
            results = await ex._async_map_node_over_list(prompt_id, unique_id, obj, input_data_all,
                                                          obj.FUNCTION, allow_interrupt=True, **{v3_kwarg: v3})
            results = await ex.resolve_map_node_over_list_results(results)
            output, ui, has_subgraph = ex.get_output_from_returns(results, obj)
            if has_subgraph:
                raise HarnessError(f"{node_id} expanded into a subgraph; run it through a prompt instead")
            return output, ui

        with torch.inference_mode():
            output, ui = _run_coro(_go())
        is_list = list(getattr(obj, "OUTPUT_IS_LIST", None) or [False] * len(output))
        values = tuple(o if lst else o[0] for o, lst in zip(output, is_list))
        return NodeRun(values, ui)

    def validate_prompt(self, prompt: Mapping[str, Any]) -> tuple[bool, Any, list, dict]:
        """``execution.validate_prompt`` on an API-format graph: ``(ok, error, outputs, node_errors)``."""
        return _run_coro(self.execution.validate_prompt(f"inproc-{uuid.uuid4()}", dict(prompt), None))


_INPROC: InProcComfy | None = None


def _v3_data_parameter(execution: ModuleType) -> str:
    """The name under which ``execution._async_map_node_over_list`` takes get_input_data's third value."""
    import inspect

    params = inspect.signature(execution._async_map_node_over_list).parameters
    for name in ("v3_data", "hidden_inputs"):  # 0.33 ... 0.3.75
        if name in params:
            return name
    raise HarnessError(f"execution._async_map_node_over_list{inspect.signature(execution._async_map_node_over_list)} "
                       "takes neither v3_data nor hidden_inputs: a ComfyUI this harness does not know")


def _entrypoint_traceback(module: ModuleType) -> str:
    """Re-run a V3 pack's entrypoint, node list and schemas to get the traceback ComfyUI does not log."""
    import traceback

    async def _probe() -> None:
        ext = module.comfy_entrypoint()
        ext = await ext if asyncio.iscoroutine(ext) else ext
        for node_cls in await ext.get_node_list():
            node_cls.GET_SCHEMA()

    try:
        _run_coro(_probe())
    except Exception:
        return "traceback of comfy_entrypoint():\n" + traceback.format_exc()
    return "(comfy_entrypoint() succeeded when re-run)"


def _run_coro(coro: Any) -> Any:
    """Run a coroutine to completion from synchronous test code."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    raise HarnessError("called from inside a running event loop; await the coroutine instead")


def init_inprocess(base_dir: str | os.PathLike, comfy_dir: Path | None = None,
                   builtin_extras: bool = True) -> InProcComfy:
    """Import ComfyUI into this process (CPU), rooted at ``base_dir``; idempotent per process.

    Mirrors main.py's import order (``utils.extra_config`` before ``nodes``: nodes.py puts ``comfy/`` at
    ``sys.path[0]``, after which a bare ``import utils`` would find ``comfy/utils.py``). ``base_dir`` gets
    models/ input/ output/ temp/ user/ custom_nodes/; ``folder_paths`` points there, so nothing is
    written into the ComfyUI source tree. ``server.PromptServer.instance`` exists, as in the server, but
    never listens (:func:`_ensure_prompt_server`); every progress update reaches the progress hook
    (:func:`_unthrottle_progress`). With ``builtin_extras`` the comfy_extras nodes (V1 and
    V3, e.g. ``EmptySD3LatentImage``, ``ModelSamplingFlux``) are registered like in the server (API nodes
    and custom_nodes/ are not). A second call with another ``base_dir`` re-points ``folder_paths``.
    """
    global _INPROC
    base = Path(base_dir).resolve()
    for sub in BASE_SUBDIRS + MODEL_SUBDIRS:
        (base / sub).mkdir(parents=True, exist_ok=True)
    if _INPROC is not None:
        _point_folder_paths(_INPROC.folder_paths, base)
        _INPROC.base_dir = base
        return _INPROC

    comfy_dir = ensure_comfy_importable(comfy_dir)
    from comfy.cli_args import args

    if "folder_paths" not in sys.modules:
        args.base_directory = str(base)
    folder_paths = importlib.import_module("folder_paths")
    _point_folder_paths(folder_paths, base)
    importlib.import_module("utils.extra_config")  # before nodes: see docstring
    _unthrottle_progress(importlib.import_module("comfy.utils"))
    execution = importlib.import_module("execution")
    server = importlib.import_module("server")  # comfy_extras import PromptServer from it
    nodes = importlib.import_module("nodes")
    if Path(nodes.__file__).resolve() != comfy_dir.resolve() / "nodes.py":
        raise HarnessError(f"'import nodes' gave {nodes.__file__}, not ComfyUI's nodes.py: another "
                           "'nodes' module was imported first")
    _ensure_prompt_server(server)
    if builtin_extras:
        failed = _run_coro(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        if failed:
            raise HarnessError(f"comfy_extras modules failed to import: {failed}")
    _INPROC = InProcComfy(comfyui_dir=comfy_dir, base_dir=base, nodes=nodes, folder_paths=folder_paths,
                          execution=execution, builtin_node_ids=frozenset(nodes.NODE_CLASS_MAPPINGS))
    return _INPROC


def _unthrottle_progress(comfy_utils: ModuleType) -> None:
    """Let every ``ProgressBar`` update reach the progress hook, as ComfyUI 0.3.75 does.

    ComfyUI 0.33's ``ProgressBar.update_absolute`` passes the first and the last update (and any with a
    preview) to the hook, and others only 100 ms and 0.5 % after the last one passed, to spare the web
    UI. In-process tests put their own hook there to see what a node reports, step by step, which must
    not depend on how fast the CPU is; so the in-process ComfyUI has both limits at 0. The servers
    keep ComfyUI's settings.
    """
    for name in ("PROGRESS_THROTTLE_MIN_INTERVAL", "PROGRESS_THROTTLE_MIN_PERCENT"):
        if hasattr(comfy_utils, name):
            setattr(comfy_utils, name, 0.0)


def _ensure_prompt_server(server: ModuleType) -> None:
    """Create ``server.PromptServer.instance`` as main.py does before it loads any node module.

    Node modules may use the instance while they load: ComfyUI 0.33's ``comfy_extras/nodes_replacements.py``
    registers its node replacements through ``PromptServer.instance.node_replace_manager`` in its
    extension's ``on_load``. The real class is constructed (its managers, routes and frontend lookup, as in
    the server) on an event loop of its own that nothing runs: the instance never listens, and what nodes
    send to clients (``send_sync``) is queued there unread. Nothing is done if an instance exists.
    """
    if getattr(server.PromptServer, "instance", None) is not None:
        return
    loop = asyncio.new_event_loop()
    try:
        server.PromptServer(loop)
    except Exception as err:
        loop.close()
        raise HarnessError(f"could not create ComfyUI's PromptServer in-process: {err!r}") from err


def load_pack(path: str | os.PathLike, install_name: str | None = None) -> ModuleType:
    """:meth:`InProcComfy.load_pack` on this process's ComfyUI (:func:`init_inprocess` must run first)."""
    if _INPROC is None:
        raise HarnessError("init_inprocess(base_dir) must run before load_pack()")
    return _INPROC.load_pack(path, install_name)


# ---------------------------------------------------------------------------------------------------
# Checkpoint-free models
# ---------------------------------------------------------------------------------------------------


@functools.cache
def _tiny_diffusion_model_class() -> type:
    import torch

    class TinyDiffusionModel(torch.nn.Module):
        """Stands in for UNetModel / MMDiT / Flux: same call signature, one 3x3 conv (deterministic)."""

        def __init__(self, in_channels: int = 4, out_channels: int | None = None, seed: int = 0,
                     device: Any = None, operations: Any = None, dtype: Any = None, **kwargs: Any):
            super().__init__()
            self.dtype = dtype if dtype is not None else torch.float32  # BaseModel.get_dtype() reads it
            out_channels = out_channels or in_channels
            ops = operations if operations is not None else torch.nn
            self.conv = ops.Conv2d(in_channels, out_channels, 3, padding=1, device=device, dtype=dtype)
            gen = torch.Generator().manual_seed(seed)  # comfy ops skip weight init: do it ourselves
            with torch.no_grad():
                self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * 0.02)
                self.conv.bias.zero_()

        def forward(self, x: Any, timesteps: Any = None, context: Any = None, y: Any = None,
                    control: Any = None, transformer_options: Any = None, **kwargs: Any) -> Any:
            if x.ndim == 5:  # [B, C, T, H, W] (Wan 2.1 / Qwen-Image latents): the conv runs frame by frame
                b, c, t, h, w = x.shape
                out = self.conv(x.movedim(2, 1).reshape(b * t, c, h, w))
                return out.reshape(b, t, -1, h, w).movedim(1, 2)
            return self.conv(x)

    return TinyDiffusionModel


def make_tiny_model_patcher(latent_format: str = "SD15", model_type: str = "EPS", seed: int = 0,
                            shift: float | None = None) -> Any:
    """A real ``comfy.model_patcher.ModelPatcher`` around a tiny deterministic conv "diffusion model".

    The model config is a subclass of ComfyUI's own ``comfy.supported_models.<family>`` (so
    ``latent_format``, ``sampling_settings`` and ``isinstance`` checks are the family's; for Wan21 the
    family is ``QwenImage``, see ``CONFIG_OF_FORMAT``), with the UNet config replaced by the tiny conv
    (in = out = the format's latent channels; weights from ``seed``):

    ==========  ===============  ===========================================================================
    format      model_type       what sampling gets
    ==========  ===============  ===========================================================================
    any         EPS/V_PREDICTION ``BaseModel``, ``ModelSamplingDiscrete`` (1000 scaled-linear betas) + EPS/V
    SD3         FLOW             ``BaseModel``, ``ModelSamplingDiscreteFlow`` shift 3.0 (SD3's setting),
                                 multiplier 1000, CONST
    Flux        FLOW             ``comfy.model_base.Flux`` with ``ModelType.FLUX``: ``ModelSamplingFlux``
                                 (shift 1.15 unless given; the ``ModelSamplingFlux`` node sets the
                                 resolution-dependent shift exactly as for a real Flux checkpoint), CONST,
                                 Flux's extra conds (guidance)
    Wan21       FLOW             ``BaseModel`` with ``ModelType.FLUX``, as ``comfy.model_base.QwenImage``
                                 builds Qwen-Image: ``ModelSamplingFlux`` (Qwen-Image's shift 1.15 unless
                                 given; ``ModelSamplingAuraFlow`` replaces it as for the real model),
                                 CONST; its LATENTs are 5-D [B, 16, T, H, W] (KSampler
                                 adds the T axis to an empty 4-D latent) and the conv runs frame by frame
    SD15/SDXL   FLOW             ``BaseModel``, ``ModelSamplingDiscreteFlow`` shift ``shift`` or 1.0
    ==========  ===============  ===========================================================================

    ``latent_format.latent_channels`` is 4 (SD15, SDXL) or 16 (SD3, Flux, Wan21). The diffusion model
    ignores conditioning and timestep, so any CONDITIONING works (see :func:`zero_conditioning`).
    """
    if latent_format not in LATENT_FORMATS:
        raise ValueError(f"latent_format must be one of {LATENT_FORMATS}, not {latent_format!r}")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, not {model_type!r}")
    ensure_comfy_importable()
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    family = getattr(comfy.supported_models, CONFIG_OF_FORMAT.get(latent_format, latent_format))
    channels = family.latent_format.latent_channels
    sampling = dict(family.sampling_settings)
    if shift is not None:
        sampling["shift"] = float(shift)
    tiny_config = type(f"Tiny{latent_format}Config", (family,), {
        "unet_config": {},
        "unet_extra_config": {},
        "sampling_settings": sampling,
        "memory_usage_factor": 1.0,
        "manual_cast_dtype": None,
    })
    cfg = tiny_config({"in_channels": channels, "out_channels": channels, "seed": seed})
    device = comfy.model_management.unet_offload_device()
    unet = _tiny_diffusion_model_class()
    if latent_format == "Flux" and model_type == "FLOW":
        model = comfy.model_base.Flux(cfg, model_type=comfy.model_base.ModelType.FLUX, device=device,
                                      unet_model=unet)
    elif latent_format == "Wan21" and model_type == "FLOW":
        model = comfy.model_base.BaseModel(cfg, model_type=comfy.model_base.ModelType.FLUX, device=device,
                                           unet_model=unet)
    else:
        model = comfy.model_base.BaseModel(cfg, model_type=comfy.model_base.ModelType[model_type],
                                           device=device, unet_model=unet)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=device)


def zero_conditioning(tokens: int = 1, dim: int = 8) -> list:
    """A CONDITIONING of zeros: ``[[zeros(1, tokens, dim), {"pooled_output": zeros(1, dim)}]]``."""
    import torch

    return [[torch.zeros(1, tokens, dim), {"pooled_output": torch.zeros(1, dim)}]]


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; raises ValueError if ``png`` is not a PNG."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", png[16:24])
    return width, height


# ---------------------------------------------------------------------------------------------------
# ComfyUI server in a subprocess
# ---------------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerError(HarnessError):
    """The server process died, did not start, or logged IMPORT FAILED; message carries the log."""


class _PortInUse(ServerError):
    """The server could not bind its port."""


class PromptValidationError(HarnessError):
    """``POST /prompt`` answered 400: ``body`` is the parsed JSON (``error``, ``node_errors``)."""

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        self.error = body.get("error") if isinstance(body, dict) else None
        self.node_errors = body.get("node_errors", {}) if isinstance(body, dict) else {}
        super().__init__(f"POST /prompt -> HTTP {status}: {json.dumps(body)[:3000]}")


class PromptExecutionError(HarnessError):
    """A queued prompt finished with ``status_str == "error"``: ``entry`` is its history entry."""

    def __init__(self, prompt_id: str, entry: dict):
        self.prompt_id = prompt_id
        self.entry = entry
        err = [m[1] for m in entry.get("status", {}).get("messages", []) if m[0] == "execution_error"]
        self.error = err[0] if err else None
        detail = (f"{self.error.get('node_type')} (node {self.error.get('node_id')}): "
                  f"{self.error.get('exception_type')}: {self.error.get('exception_message')}\n"
                  + "".join(self.error.get("traceback", [])[-8:])) if self.error else json.dumps(entry)[:2000]
        super().__init__(f"prompt {prompt_id} failed: {detail}")


_LIVE_SERVERS: set[ComfyServer] = set()


@atexit.register
def _stop_live_servers() -> None:
    for srv in list(_LIVE_SERVERS):
        with contextlib.suppress(Exception):
            srv.stop()


def _die_with_parent_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies (Linux ``PR_SET_PDEATHSIG``).

    Only from the main thread: the "parent" of PDEATHSIG is the spawning *thread*, so a server started
    from a short-lived thread would die with that thread.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not between fork and exec
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return preexec


class ComfyServer:
    """A ComfyUI server process (``main.py --cpu``) with its own base directory.

    ``custom_nodes`` maps install names to pack directories (symlinked into ``BASE/custom_nodes``);
    ``model_files`` maps a models/ folder name (``"vae"``...) to files symlinked there (a mapping
    ``{name: path}`` or a list of paths). ``models/latent_upscale_models`` always exists. The process
    gets ``PR_SET_PDEATHSIG`` (dies with the test process; when started from the main thread) and is
    also stopped at interpreter exit. Its environment is this process's minus ``PYTHONPATH``, plus
    ``env``. stdout and stderr go to ``BASE/server.log`` (:meth:`log_text`).
    """

    def __init__(self, base_dir: str | os.PathLike, *,
                 custom_nodes: Mapping[str, str | os.PathLike] | None = None,
                 model_files: Mapping[str, Mapping[str, os.PathLike] | Iterable[os.PathLike]] | None = None,
                 port: int | None = None, host: str = "127.0.0.1", comfy_dir: Path | None = None,
                 python: str | None = None, extra_args: Iterable[str] = (),
                 env: Mapping[str, str] | None = None, startup_timeout: float = 180.0,
                 fail_on_import_failure: bool = True):
        self.base_dir = Path(base_dir).resolve()
        self.comfy_dir = Path(comfy_dir) if comfy_dir is not None else comfyui_dir()
        self.python = python or sys.executable
        self.host = host
        self._auto_port = port is None
        self.port = port or free_port(host)
        self.custom_nodes = {k: Path(v).resolve() for k, v in (custom_nodes or {}).items()}
        self.model_files = dict(model_files or {})
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.fail_on_import_failure = fail_on_import_failure
        self.log_path = self.base_dir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None
        self.starts = 0
        self._log_offset = 0  # where the current process's output starts in server.log
        self._prepare()

    # -- setup -----------------------------------------------------------------------------------

    def _prepare(self) -> None:
        for sub in BASE_SUBDIRS + MODEL_SUBDIRS:
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        for name, src in self.custom_nodes.items():
            _symlink(self.base_dir / "custom_nodes" / name, src)
        for folder, files in self.model_files.items():
            link_files(self.base_dir / "models" / folder, files)

    def command(self) -> list[str]:
        """The argv the server is started with."""
        return [self.python, "main.py", "--cpu", "--listen", self.host, "--port", str(self.port),
                "--disable-auto-launch", "--disable-api-nodes", "--base-directory", str(self.base_dir),
                "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}", *self.extra_args]

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ComfyServer:
        """Start the process and wait until ``GET /system_stats`` answers (or fail with the log tail).

        Then checks the log for ``IMPORT FAILED`` (see :meth:`check_imports`). On a first start with an
        automatically chosen port that another process grabbed meanwhile, retries on a new port.
        """
        for attempt in range(3):
            try:
                return self._start_once()
            except _PortInUse:
                if not (self._auto_port and self.starts == 1) or attempt == 2:
                    raise
                self.port = free_port(self.host)
                self.starts = 0
        raise AssertionError("unreachable")

    def _start_once(self) -> ComfyServer:
        if self.is_running():
            raise HarnessError(f"server already running (pid {self.pid})")
        # like a real install: no PYTHONPATH (it could make the pack's absolute imports work only here)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1", **self.env})
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            header = f"===== start #{self.starts + 1}: {' '.join(self.command())}\n"
            log.write(header.encode())
            self._log_offset += len(header)
            log.flush()
            t0 = time.monotonic()
            preexec = _die_with_parent_preexec()
            self.proc = subprocess.Popen(self.command(), cwd=self.comfy_dir, env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=preexec)
        self.starts += 1
        _LIVE_SERVERS.add(self)
        try:
            self._wait_ready(t0)
            if self.fail_on_import_failure:
                self.check_imports()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, t0: float) -> None:
        deadline = t0 + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                if "address already in use" in self.log_text().lower():
                    raise _PortInUse(f"port {self.port} in use. Log tail:\n{self.log_tail()}")
                raise ServerError(f"ComfyUI exited with code {self.proc.returncode} during startup "
                                  f"(pid {self.proc.pid}). Log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"ComfyUI not ready after {self.startup_timeout:.0f}s at {self.url}. "
                                  f"Log tail:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server by PID: SIGTERM, then SIGKILL after ``timeout``. No-op if not running."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        _LIVE_SERVERS.discard(self)

    def kill(self) -> None:
        """SIGKILL the server by PID (simulates a crash) and reap it."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(30)
        _LIVE_SERVERS.discard(self)

    def restart(self, timeout: float = 15.0) -> ComfyServer:
        """Stop (if running) and start again on the same port and base directory."""
        self.stop(timeout)
        deadline = time.monotonic() + 30
        while not _port_free(self.host, self.port):
            if time.monotonic() > deadline:
                raise ServerError(f"port {self.port} still busy after the old server stopped")
            time.sleep(0.2)
        return self.start()

    def __enter__(self) -> ComfyServer:
        return self.start() if not self.is_running() else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- log -------------------------------------------------------------------------------------

    def log_text(self, all_starts: bool = False) -> str:
        """The server's stdout+stderr since its last start (or of every start with ``all_starts``)."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[0 if all_starts else self._log_offset:].decode("utf-8", "replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def import_failures(self) -> list[str]:
        """The ``IMPORT FAILED`` lines of the current start's log."""
        return [ln.strip() for ln in self.log_text().splitlines() if IMPORT_FAILED_MARK in ln]

    def check_imports(self) -> None:
        """Raise :class:`ServerError` with the relevant log excerpt if any module logged IMPORT FAILED."""
        failures = self.import_failures()
        if failures:
            raise ServerError("ComfyUI failed to import node modules:\n" + "\n".join(failures)
                              + "\n--- log excerpt ---\n" + _import_failure_excerpt(self.log_text()))

    # -- HTTP ------------------------------------------------------------------------------------

    def request(self, method: str, path: str, data: Any = None, timeout: float = 60.0) -> tuple[int, bytes]:
        """One HTTP request; returns ``(status, body)`` for any status (no exception on 4xx/5xx)."""
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get_json(self, path: str, timeout: float = 60.0) -> Any:
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise HarnessError(f"GET {path} -> HTTP {status}: {body[:2000]!r}")
        return json.loads(body)

    def post_json(self, path: str, data: Any, timeout: float = 60.0) -> tuple[int, Any]:
        status, body = self.request("POST", path, data, timeout=timeout)
        try:
            return status, json.loads(body) if body else None
        except json.JSONDecodeError:
            return status, body.decode("utf-8", "replace")

    def object_info(self, node_id: str | None = None) -> dict:
        """``GET /object_info`` or, for one node, ``GET /object_info/<node_id>`` (``{}`` if unknown)."""
        path = "/object_info" if node_id is None else "/object_info/" + urllib.parse.quote(node_id)
        return self.get_json(path)

    def post_prompt(self, prompt: Mapping[str, Any], client_id: str | None = None,
                    prompt_id: str | None = None, extra_data: Mapping[str, Any] | None = None) -> dict:
        """``POST /prompt``; returns ``{"prompt_id", "number", "node_errors"}``.

        Raises :class:`PromptValidationError` (``.node_errors``, ``.error``, ``.body``) on HTTP 400.
        """
        payload: dict[str, Any] = {"prompt": dict(prompt), "client_id": client_id or str(uuid.uuid4())}
        if prompt_id is not None:
            payload["prompt_id"] = prompt_id
        if extra_data is not None:
            payload["extra_data"] = dict(extra_data)
        status, body = self.post_json("/prompt", payload)
        if status == 400:
            raise PromptValidationError(status, body)
        if status != 200:
            raise HarnessError(f"POST /prompt -> HTTP {status}: {str(body)[:2000]}")
        return body

    def history(self, prompt_id: str | None = None) -> dict:
        return self.get_json("/history" if prompt_id is None else f"/history/{prompt_id}")

    def queue(self) -> dict:
        """``GET /queue``: ``{"queue_running": [...], "queue_pending": [...]}``."""
        return self.get_json("/queue")

    def interrupt(self, prompt_id: str | None = None) -> None:
        self.post_json("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        self.post_json("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.1) -> dict:
        """Poll ``/history/<prompt_id>`` until the prompt finished (success or error); its history entry.

        Fails fast with the log tail if the server process dies while waiting.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                entry = self.history(prompt_id).get(prompt_id)
            except OSError:  # connection refused/reset: URLError is an OSError
                if self.is_running():
                    raise
                entry = None
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("completed") or status.get("status_str") == "error":
                    return entry
            if not self.is_running():
                raise ServerError(f"server died while waiting for prompt {prompt_id}. Log tail:\n"
                                  f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout}s; queue={self.queue()}")
            time.sleep(poll)

    def run_prompt(self, prompt: Mapping[str, Any], timeout: float = 120.0, check: bool = True,
                   client_id: str | None = None) -> dict:
        """Queue ``prompt``, wait for it, return its history entry (``outputs``, ``status``...).

        With ``check`` a prompt that ends in error raises :class:`PromptExecutionError`.
        """
        prompt_id = self.post_prompt(prompt, client_id=client_id)["prompt_id"]
        entry = self.wait(prompt_id, timeout)
        if check and entry.get("status", {}).get("status_str") != "success":
            raise PromptExecutionError(prompt_id, entry)
        return entry

    @staticmethod
    def output_images(entry: Mapping[str, Any]) -> list[dict]:
        """Every ``{"filename", "subfolder", "type"}`` image record in a history entry's outputs."""
        return [im for out in entry.get("outputs", {}).values() for im in out.get("images", [])]

    def view(self, image_entry: Mapping[str, Any]) -> bytes:
        """Fetch a file through ``GET /view`` from an image record of a history entry."""
        query = urllib.parse.urlencode({"filename": image_entry["filename"],
                                        "subfolder": image_entry.get("subfolder", ""),
                                        "type": image_entry.get("type", "output")})
        status, body = self.request("GET", "/view?" + query)
        if status != 200:
            raise HarnessError(f"GET /view?{query} -> HTTP {status}")
        return body


def link_files(dest_dir: str | os.PathLike,
               files: Mapping[str, str | os.PathLike] | Iterable[str | os.PathLike]) -> list[Path]:
    """Symlink files into ``dest_dir`` (created): ``{link name: file}`` or a list of files (same names)."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    items = files.items() if isinstance(files, Mapping) else ((Path(f).name, f) for f in files)
    links = []
    for name, src in items:
        _symlink(dest / name, Path(src).resolve())
        links.append(dest / name)
    return links


def _symlink(link: Path, target: Path) -> None:
    if link.is_symlink():
        if link.resolve() == target.resolve():
            return
        link.unlink()
    elif link.exists():
        raise HarnessError(f"{link} exists and is not a symlink")
    link.symlink_to(target, target_is_directory=target.is_dir())


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _import_failure_excerpt(log: str, context: int = 40) -> str:
    """The log lines around ComfyUI's custom-node import errors (traceback + 'Cannot import' lines)."""
    lines = log.splitlines()
    marks = ("Cannot import", "Error while calling comfy_entrypoint", "did not return a ComfyExtension",
             "did not return a list of nodes", "is not callable, skipping", "due to the lack of",
             IMPORT_FAILED_MARK)
    keep: set[int] = set()
    for i, ln in enumerate(lines):
        if any(m in ln for m in marks):
            start = i
            for j in range(i, max(-1, i - context), -1):  # back to the traceback that led here
                if lines[j].startswith("Traceback"):
                    start = j
                    break
            keep.update(range(start, i + 1))
    return "\n".join(lines[i] for i in sorted(keep)) if keep else "\n".join(lines[-context:])
