"""The pack's nodes inside a real ComfyUI 0.3.75, in this process (no mocks of comfy).

Why: registration, the loader's dropdown and ``auto``, channel checks, LATENT handling, the model
cache, downloads and cancel all talk to ComfyUI's own objects (``folder_paths``, ModelPatcher,
``model_management``, ProgressBar, the executor's validation). Each test gets a private
``latent_upscale_models`` folder holding exactly the files it places, so ``auto`` is decided by
what the test put there; downloads are refused (``HF_HUB_OFFLINE=1``) except against the local
fake hub of ``tests/hubserver.py``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from factories import make_lua, save_official_pth, tiny_config
from hubserver import HubServer

from . import harness

LOADER, UPSCALE = "LUA_LoadModel", "LUA_LatentUpscale"
SDXL_X2 = "latent-upscaler-v2.1_SDxl-x2.0.safetensors"
SD15_X2 = "latent-upscaler-v2.1_SDv1-x2.0.safetensors"
FORMATS = {"SD15": ("sd15", 4), "SDXL": ("sdxl", 4), "SD3": ("sd3", 16), "Flux": ("flux", 16)}


# --------------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here may reach the internet: downloads are refused unless a test opts in."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _fp32_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """``dtype=auto`` as on a CPU without bf16 matrix units (fp32), whatever this host has: the tests here
    compare the node's outputs with lua_core's fp32 forward. The AMX rule is tested with the detection
    mocked both ways (``test_auto_dtype_on_cpu_follows_bf16_matrix_units``)."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


@pytest.fixture
def upscale_dir(comfy_inproc: harness.InProcComfy, lua_pack: ModuleType, tmp_path: Path) -> Iterator[Path]:
    """A private, empty ``latent_upscale_models`` (ComfyUI's folder entry pointed at it, then restored)."""
    fp = comfy_inproc.folder_paths
    saved = fp.folder_names_and_paths["latent_upscale_models"]
    folder = tmp_path / "latent_upscale_models"
    folder.mkdir()
    fp.folder_names_and_paths["latent_upscale_models"] = ([str(folder)], set(saved[1]))
    try:
        yield folder
    finally:
        fp.folder_names_and_paths["latent_upscale_models"] = saved
        fp.filename_list_cache.pop("latent_upscale_models", None)


@pytest.fixture
def progress_calls() -> Iterator[list[tuple[int, int]]]:
    """ComfyUI's global progress-bar hook, recording ``(value, total)`` for this test."""
    import comfy.utils

    calls: list[tuple[int, int]] = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total)))
    try:
        yield calls
    finally:
        comfy.utils.set_progress_bar_global_hook(old)


def pack_module(lua_pack: ModuleType, name: str) -> ModuleType:
    """A submodule of the pack as ComfyUI imported it (``<pack>.nodes.catalog``...), imported now if
    nothing has yet (the nodes import some lazily: a test run alone must not depend on others)."""
    return importlib.import_module(f"{lua_pack.__name__}.{name}")


def place_lua(folder: Path, name: str = "lua_flux.pth", **config: Any) -> Path:
    """A generated official-format LUA checkpoint (random seeded weights)."""
    return save_official_pth(make_lua(tiny_config(**config)), folder / name)


def place_city96(folder: Path, conformance: Callable[[str], Path], name: str = SDXL_X2) -> Path:
    """A city96 v2.1 file (the scale comes from the name: the peers file is re-named to it)."""
    src = conformance("peers/city96") / "latent-upscaler-v2.1_SDxl-x1.5.safetensors"
    return Path(shutil.copy(src, folder / name))


def place_lssgen(folder: Path, conformance: Callable[[str], Path], name: str = "LSSGen-SDXL-VAE-scaler") -> Path:
    return Path(shutil.copytree(conformance("peers/lssgen4"), folder / name))


def load(comfy: harness.InProcComfy, model_name: str = "auto", dtype: str = "auto", model: Any = None) -> Any:
    inputs: dict[str, Any] = {"model_name": model_name, "dtype": dtype}
    if model is not None:
        inputs["model"] = model
    return comfy.run_node(LOADER, **inputs).outputs[0]


def upscale(comfy: harness.InProcComfy, samples: dict, handle: Any, scale: float = 2.0,
            latent_format: str = "auto", tile: int = 0) -> dict:
    return comfy.run_node(UPSCALE, samples=samples, upscale_model=handle, scale=scale, latent_format=latent_format,
                          tile=tile).outputs[0]


def options(comfy: harness.InProcComfy) -> list[str]:
    return comfy.node_class(LOADER).INPUT_TYPES()["required"]["model_name"][1]["options"]


def value_for(comfy: harness.InProcComfy, name: str) -> str:
    """The dropdown value (with its label) of the entry called ``name``."""
    found = [o for o in options(comfy) if o == name or o.startswith(name + " [")]
    assert len(found) == 1, (name, options(comfy))
    return found[0]


# --------------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------------
@pytest.mark.comfyui
def test_registered_through_v3_entrypoint(comfy_inproc: harness.InProcComfy, lua_pack: ModuleType) -> None:
    assert callable(lua_pack.comfy_entrypoint)
    assert not hasattr(lua_pack, "NODE_CLASS_MAPPINGS"), "a V1 mapping would make ComfyUI ignore comfy_entrypoint"
    names = comfy_inproc.nodes.NODE_DISPLAY_NAME_MAPPINGS
    assert names[LOADER] == "Load LUA Model"
    assert names[UPSCALE] == "Latent Upscale (LUA)"
    for node_id, category in ((LOADER, "loaders"), (UPSCALE, "latent/upscaling")):
        cls = comfy_inproc.node_class(node_id)
        assert cls.RELATIVE_PYTHON_MODULE == "custom_nodes.ComfyUI-LUA"
        schema = cls.GET_SCHEMA()
        assert schema.category == category
        text = f"{schema.display_name} {schema.description}".lower()
        for word in ("upscale", "latent", "lua", "hires"):  # what users type into the node search
            assert word in text, (node_id, word)
        assert all(i.tooltip for i in schema.inputs), f"{node_id}: every input needs a tooltip"
    node_classes = pack_module(lua_pack, "nodes").node_classes()
    ids = [c.GET_SCHEMA().node_id for c in node_classes]
    assert ids[:2] == [LOADER, UPSCALE]
    progressive = harness.REPO_ROOT / "nodes" / "progressive.py"
    assert len(ids) > 2 if progressive.is_file() else len(ids) == 2


@pytest.mark.comfyui
def test_pack_import_is_light(comfyui_path: Path) -> None:
    """Importing the pack (what ComfyUI does at start-up) loads neither lua_core nor the hub library."""
    code = textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.insert(0, {str(comfyui_path)!r})
        from comfy.cli_args import args
        args.cpu = True
        spec = importlib.util.spec_from_file_location("lua_pack_probe", {str(harness.REPO_ROOT / '__init__.py')!r},
                                                      submodule_search_locations=[{str(harness.REPO_ROOT)!r}])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["lua_pack_probe"] = mod
        spec.loader.exec_module(mod)
        assert callable(mod.comfy_entrypoint)
        heavy = sorted(m for m in sys.modules if m.startswith("lua_pack_probe.") or m.startswith("huggingface_hub"))
        print("HEAVY", heavy)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=comfyui_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HEAVY []" in done.stdout, done.stdout


@pytest.mark.comfyui
def test_missing_requirement_is_one_log_line(comfy_inproc: harness.InProcComfy, tmp_path: Path) -> None:
    pack = tmp_path / "lua_missing_dep_probe"
    pack.mkdir()
    shutil.copy(harness.REPO_ROOT / "__init__.py", pack / "__init__.py")
    reqs = (harness.REPO_ROOT / "requirements.txt").read_text()
    (pack / "requirements.txt").write_text(reqs + "lua-test-no-such-package>=1.0\nsafetensors>=999\n")
    with pytest.raises(harness.PackImportError) as err:
        comfy_inproc.load_pack(pack)
    comfy_log = err.value.log.split("traceback of comfy_entrypoint():")[0]  # what ComfyUI itself logged
    lines = [ln for ln in comfy_log.splitlines() if ln.strip()]
    assert len(lines) == 1, comfy_log
    assert "lua-test-no-such-package>=1.0 (not installed)" in lines[0]
    assert "safetensors>=999 (installed: " in lines[0]
    assert "pip install -r" in lines[0] and "requirements.txt" in lines[0]
    assert "Traceback" not in comfy_log


@pytest.mark.comfyui
def test_models_folder_registered_only_when_missing(comfy_inproc: harness.InProcComfy, lua_pack: ModuleType,
                                                     tmp_path: Path) -> None:
    fp = comfy_inproc.folder_paths
    name = "latent_upscale_models"
    saved = fp.folder_names_and_paths.pop(name)
    default = os.path.join(fp.models_dir, name)
    try:
        lua_pack.register_models_folder()  # a host without the folder (ComfyUI < 0.3.75)
        paths, exts = fp.folder_names_and_paths[name]
        assert paths == [default] and ".safetensors" in exts and ".pth" in exts
        del fp.folder_names_and_paths[name]
        fp.add_model_folder_path(name, str(tmp_path))  # what extra_model_paths.yaml does before packs load
        lua_pack.register_models_folder()
        paths, exts = fp.folder_names_and_paths[name]
        assert paths == [str(tmp_path), default], "the yaml path stays first (downloads go there)"
        assert ".safetensors" in exts
        fp.folder_names_and_paths[name] = (list(saved[0]), set(saved[1]))
        lua_pack.register_models_folder()  # 0.3.75 has it: nothing changes
        assert fp.folder_names_and_paths[name] == (list(saved[0]), set(saved[1]))
    finally:
        fp.folder_names_and_paths[name] = saved


# --------------------------------------------------------------------------------------------------
# the loader's dropdown
# --------------------------------------------------------------------------------------------------
@pytest.mark.comfyui
def test_dropdown_lists_auto_local_files_and_downloads(comfy_inproc: harness.InProcComfy, upscale_dir: Path,
                                                       conformance: Callable[[str], Path]) -> None:
    place_lua(upscale_dir)
    place_city96(upscale_dir, conformance)
    place_lssgen(upscale_dir, conformance)
    (upscale_dir / "not_an_upscaler.safetensors").write_bytes(
        (upscale_dir / SDXL_X2).read_bytes().replace(b"sequential", b"seqXential"))
    opts = options(comfy_inproc)
    assert opts[0] == "auto"
    assert opts[1:4] == [
        "latent-upscaler-v2.1_SDxl-x2.0.safetensors [city96 · 4ch SDXL · x2 · Apache-2.0]",
        "LSSGen-SDXL-VAE-scaler/ [LSSGen · 4ch SDXL · x2 x4 · research use]",
        "lua_flux.pth [LUA · 16ch FLUX/SD3 · x2 x4 · Apache-2.0]",
    ]
    assert "download/lua-flux [LUA · 16ch FLUX/SD3 · x2 x4 · Apache-2.0]" in opts
    assert "download/nnlatent-sdxl [NNLatentUpscale · 4ch SDXL · x1-2 · GPL-3.0]" in opts
    assert "download/lssgen-sd15 [LSSGen · 4ch SD1.5 · x2 · research use]" in opts
    assert not any("not_an_upscaler" in o for o in opts), "files no family recognises are not offered"
    assert not any(o.startswith("LSSGen-SDXL-VAE-scaler/diffusion") for o in opts), "one entry per folder"
    # a file without a config in its header: the label is read from its tensors' shapes alone
    raw = upscale_dir / "sub" / "mine.safetensors"
    raw.parent.mkdir()
    from safetensors.torch import save_file

    from factories import official_state_dict
    save_file({k: v.contiguous() for k, v in official_state_dict(make_lua(tiny_config(in_chans=4))).items()}, raw)
    assert "sub/mine.safetensors [LUA · 4ch SDXL/SD1.5 · x2 x4]" in options(comfy_inproc)


@pytest.mark.comfyui
def test_a_pickle_and_its_conversion_are_one_entry(comfy_inproc: harness.InProcComfy, upscale_dir: Path) -> None:
    """Loading a pickle converts it once to safetensors beside it: the dropdown keeps one entry (the pickle's
    name) instead of growing after the first run, and a value naming the conversion still loads. A same-stem
    safetensors that is not its conversion, or a conversion whose pickle is gone, is listed."""
    place_lua(upscale_dir)
    place_lua(upscale_dir / "sub", name="other.pth")
    before = options(comfy_inproc)
    load(comfy_inproc, "lua_flux.pth")
    load(comfy_inproc, "sub/other.pth")
    assert (upscale_dir / "lua_flux.safetensors").is_file() and (upscale_dir / "sub" / "other.safetensors").is_file()
    assert options(comfy_inproc) == before
    assert load(comfy_inproc, "lua_flux.safetensors").name == "lua_flux.safetensors"
    (upscale_dir / "sub" / "other.pth").unlink()  # the pickle deleted to save space: the conversion is the entry
    assert any(o.startswith("sub/other.safetensors [LUA") for o in options(comfy_inproc))
    os.utime(upscale_dir / "lua_flux.pth", ns=(1, 1))  # the pickle changed since: not its conversion any more
    assert any(o.startswith("lua_flux.safetensors [LUA") for o in options(comfy_inproc))


@pytest.mark.comfyui
def test_saved_values_keep_working(comfy_inproc: harness.InProcComfy, upscale_dir: Path,
                                   conformance: Callable[[str], Path]) -> None:
    """The label is decoration: old labels, no label, or the folder's inner file all name the entry;
    ComfyUI's own prompt validation accepts them and names the folder for a missing file."""
    place_city96(upscale_dir, conformance)
    place_lssgen(upscale_dir, conformance)
    for value in (SDXL_X2, SDXL_X2 + " [an old label]", "LSSGen-SDXL-VAE-scaler", "LSSGen-SDXL-VAE-scaler/",
                  "LSSGen-SDXL-VAE-scaler/diffusion_pytorch_model.safetensors", "download/city96-sdxl-x2 [x]"):
        assert comfy_inproc.node_class(LOADER).validate_inputs(model_name=value) is True, value

    def prompt(name: str) -> dict:
        return {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                "2": {"class_type": LOADER, "inputs": {"model_name": name, "dtype": "auto"}},
                "3": {"class_type": UPSCALE, "inputs": {"samples": ["1", 0], "upscale_model": ["2", 0], "scale": 2.0,
                                                        "latent_format": "auto"}},
                "4": {"class_type": "LUATest_LatentInfo", "inputs": {"samples": ["3", 0]}}}

    ok, error, _, node_errors = comfy_inproc.validate_prompt(prompt(SDXL_X2 + " [label of an older version]"))
    assert ok is True, (error, node_errors)
    ok, _, _, node_errors = comfy_inproc.validate_prompt(prompt("gone.safetensors [city96 · 4ch SDXL · x2]"))
    assert ok is not True
    err = node_errors["2"]["errors"][0]
    assert err["type"] == "custom_validation_failed"
    assert "Load LUA Model" in err["details"] and "'gone.safetensors' is not in latent_upscale_models" in err["details"]
    assert str(upscale_dir) in err["details"]


# --------------------------------------------------------------------------------------------------
# channels, latent formats and auto
# --------------------------------------------------------------------------------------------------
@pytest.mark.comfyui
@pytest.mark.parametrize("comfy_format", list(FORMATS))
def test_latent_format_read_from_model(comfy_inproc: harness.InProcComfy, upscale_dir: Path, lua_pack: ModuleType,
                                       conformance: Callable[[str], Path], comfy_format: str) -> None:
    name, channels = FORMATS[comfy_format]
    model = harness.make_tiny_model_patcher(comfy_format, "FLOW" if channels == 16 else "EPS")
    assert pack_module(lua_pack, "nodes.loader").model_latent(model) == (name, channels)
    place_lua(upscale_dir)
    place_city96(upscale_dir, conformance, SD15_X2 if name == "sd15" else SDXL_X2)
    handle = load(comfy_inproc, "auto", model=model)
    assert handle.latent_format == name
    assert handle.latent_channels == channels
    assert handle.upscaler.family == ("lua" if channels == 16 else "city96")
    latent = {"samples": torch.randn(1, channels, 6, 5)}
    out = upscale(comfy_inproc, latent, handle)["samples"]
    assert tuple(out.shape) == (1, channels, 12, 10)


@pytest.mark.comfyui
@pytest.mark.parametrize(("comfy_class", "name", "channels", "file", "shape"), [
    ("Flux2", "flux2", 128, "sesqui_flux2/upscaler_Flux2.safetensors", (1, 128, 6, 5)),
    ("Wan21", "wan21", 16, "sesqui_wan21/upscaler_Wan21.safetensors", (1, 16, 1, 6, 5)),  # Qwen-Image: 5-D
    ("Flux", "flux", 16, "sesqui_flux/upscaler_Flux.safetensors", (1, 16, 6, 5)),
    ("SDXL", "sdxl", 4, "sesqui_sdxl/upscaler_SDXL.safetensors", (1, 4, 6, 5)),
])
def test_today_formats_read_from_model_and_auto_takes_sesquilsr(
        comfy_inproc: harness.InProcComfy, upscale_dir: Path, lua_pack: ModuleType, conformance: Callable[[str], Path],
        comfy_class: str, name: str, channels: int, file: str, shape: tuple[int, ...]) -> None:
    """Every SesquiLSR format: the MODEL's latent format class is read, auto takes the SesquiLSR file on disk
    for it (the only fitting file there), and the node's output equals lua_core.upscale_latent's."""
    core = pack_module(lua_pack, "lua_core")
    folder, fname = file.split("/")
    shutil.copy(conformance(f"peers/{folder}") / fname, upscale_dir / fname)
    model = with_latent_format(comfy_class)
    assert pack_module(lua_pack, "nodes.loader").model_latent(model) == (name, channels)
    handle = load(comfy_inproc, "auto", model=model)
    assert (handle.name, handle.latent_format, handle.upscaler.family) == (fname, name, "sesqui")
    latent = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    out = upscale(comfy_inproc, {"samples": latent}, handle, scale=1.5)["samples"]
    ref = core.upscale_latent(core.load_model(upscale_dir / fname), latent, 1.5, latent_format=name)
    assert tuple(out.shape) == (*shape[:-2], 9, 8) and (out - ref).abs().max().item() <= 1e-5


#: every family, as a file on disk (name in latent_upscale_models, how to place it), its latent and scale
FAMILY_CASES = {
    "lua": ("lua_flux.pth", lambda d, c: place_lua(d), "flux", 16, 2.0),
    "city96": (SDXL_X2, lambda d, c: place_city96(d, c), "sdxl", 4, 2.0),
    "nnlatentupscale": ("sdxl_resizer.pt",
                        lambda d, c: shutil.copy(c("peers/nnlatentupscale") / "resizer.pt", d / "sdxl_resizer.pt"),
                        "sdxl", 4, 1.5),
    "lssgen": ("LSSGen-SDXL-VAE-scaler/", lambda d, c: place_lssgen(d, c), "sdxl", 4, 2.0),
    "sesqui": ("upscaler_Flux2.safetensors",
               lambda d, c: shutil.copy(c("peers/sesqui_flux2") / "upscaler_Flux2.safetensors", d), "flux2", 128, 1.5),
}


@pytest.mark.comfyui
@pytest.mark.parametrize("family", list(FAMILY_CASES))
@pytest.mark.parametrize("frames", [None, 2], ids=["4d", "5d"])
def test_node_values_equal_lua_core(comfy_inproc: harness.InProcComfy, upscale_dir: Path, lua_pack: ModuleType,
                                    conformance: Callable[[str], Path], family: str, frames: int | None) -> None:
    """The node's output values, not only shapes: for every family, a batch of 2 (and 5-D with 2 frames), with a
    noise_mask and batch_index, equal ``lua_core.upscale_latent`` on the same input; the mask is resized by the
    latent's own factor and the other keys pass through."""
    core = pack_module(lua_pack, "lua_core")
    name, place, fmt, channels, scale = FAMILY_CASES[family]
    place(upscale_dir, conformance)
    handle = load(comfy_inproc, name)
    assert handle.upscaler.family == family
    shape = (2, channels, 7, 9) if frames is None else (2, channels, frames, 7, 9)
    latent = torch.randn(*shape, generator=torch.Generator().manual_seed(11))
    mask = torch.rand(2, 1, 56, 72, generator=torch.Generator().manual_seed(12))  # pixel-size mask, 8x the latent
    out = upscale(comfy_inproc, {"samples": latent, "noise_mask": mask, "batch_index": [3, 4]}, handle, scale=scale,
                  latent_format=fmt)
    ref = core.upscale_latent(core.load_model(handle.info["path"]), latent, scale, latent_format=fmt)
    assert out["samples"].shape == ref.shape and (out["samples"] - ref).abs().max().item() <= 1e-5
    assert out["batch_index"] == [3, 4]
    h, w = ref.shape[-2:]
    assert tuple(out["noise_mask"].shape) == (2, 1, round(56 * h / 7), round(72 * w / 9))


@pytest.mark.comfyui
def test_auto_order(comfy_inproc: harness.InProcComfy, upscale_dir: Path, lua_pack: ModuleType,
                    conformance: Callable[[str], Path]) -> None:
    sdxl = harness.make_tiny_model_patcher("SDXL", "EPS")
    place_lua(upscale_dir)
    with pytest.raises(ValueError, match="offline mode is on"):  # nothing on disk for SDXL: auto downloads city96
        load(comfy_inproc, "auto", model=sdxl)
    assert load(comfy_inproc).name == "lua_flux.pth", "no MODEL: the LUA FLUX checkpoint"
    place_city96(upscale_dir, conformance, "latent-upscaler-v2.1_SDxl-x1.5.safetensors")
    place_lssgen(upscale_dir, conformance)
    assert load(comfy_inproc, "auto", model=sdxl).name == "LSSGen-SDXL-VAE-scaler/", \
        "a local file that does x2 before a download; city96 x1.5 cannot do the default x2"
    place_city96(upscale_dir, conformance, SDXL_X2)
    handle = load(comfy_inproc, "auto", model=sdxl)
    assert handle.name == SDXL_X2 and handle.upscaler.family == "city96"
    catalog = pack_module(lua_pack, "nodes.catalog")
    order = [c.name for c in catalog.ranked(catalog.all_choices(), "sdxl", 4)]
    # downloads: city96 (Apache-2.0, exact x2), SesquiLSR (MIT), NNLatentUpscale (GPL-3.0); LSSGen's (no licence)
    # fits but comes last and is never what auto fetches
    assert order == [SDXL_X2, "LSSGen-SDXL-VAE-scaler/", "download/city96-sdxl-x2", "download/sesqui-sdxl",
                     "download/nnlatent-sdxl", "download/city96-sdxl-x1.25", "download/city96-sdxl-x1.5",
                     "latent-upscaler-v2.1_SDxl-x1.5.safetensors", "download/lssgen-sdxl"]
    flux = harness.make_tiny_model_patcher("Flux", "FLOW")
    assert load(comfy_inproc, "auto", model=flux).upscaler.family == "lua"


@pytest.mark.comfyui
def test_loader_refuses_wrong_channels_and_lists_fitting(comfy_inproc: harness.InProcComfy, upscale_dir: Path,
                                                         conformance: Callable[[str], Path]) -> None:
    place_lua(upscale_dir)
    place_city96(upscale_dir, conformance)
    sdxl = harness.make_tiny_model_patcher("SDXL", "EPS")
    with pytest.raises(ValueError) as err:
        load(comfy_inproc, value_for(comfy_inproc, "lua_flux.pth"), model=sdxl)
    msg = str(err.value)
    assert msg.startswith("Load LUA Model: lua_flux.pth")
    assert "16-channel" in msg and "4-channel SDXL" in msg
    fits = msg.split("Upscalers that fit: ")[1]
    assert fits.startswith(f"{SDXL_X2}, download/city96-sdxl-x2, download/sesqui-sdxl, download/nnlatent-sdxl")
    assert "lua" not in fits.lower()
    # a download that cannot fit is refused before any download (offline would say so otherwise)
    flux = harness.make_tiny_model_patcher("Flux", "FLOW")
    with pytest.raises(ValueError, match=r"download/city96-sd15-x2 .* takes 4-channel latents.*16-channel FLUX") as e2:
        load(comfy_inproc, "download/city96-sd15-x2", model=flux)
    assert "lua_flux.pth" in str(e2.value) and "offline" not in str(e2.value)
    assert not (upscale_dir / SD15_X2).exists()


def with_latent_format(name: str) -> Any:
    """A tiny MODEL whose latent format is ComfyUI's class ``name`` (an instance, as real models hold)."""
    import comfy.latent_formats

    model = harness.make_tiny_model_patcher("SD3", "FLOW").clone()
    model.add_object_patch("latent_format", getattr(comfy.latent_formats, name)())
    return model


@pytest.mark.comfyui
def test_model_with_a_latent_format_no_upscaler_knows(comfy_inproc: harness.InProcComfy, upscale_dir: Path) -> None:
    """Refused before anything loads, naming the format, its channel count and how to make an upscaler."""
    place_lua(upscale_dir)
    with pytest.raises(ValueError, match=r"^Load LUA Model: the connected MODEL uses ComfyUI's Wan22 latent format: "
                                         r"no upscaler .* fits its Wan22 latents \(48-channel latents\)\. Make one "
                                         r"for it with `python -m lua_core finetune`"):
        load(comfy_inproc, "auto", model=with_latent_format("Wan22"))  # a Wan21 subclass with 48 channels
    with pytest.raises(ValueError, match=r"^Load LUA Model: no upscaler on disk or in the download list fits "
                                         r"HunyuanImage 2\.1 \(64-channel latents\)\. Make one for it with "
                                         r"`python -m lua_core finetune`"):
        load(comfy_inproc, "auto", model=with_latent_format("HunyuanImage21"))
    with pytest.raises(ValueError, match=r"lua_flux.pth .* takes 16-channel latents, but the connected MODEL makes "
                                         r"64-channel HunyuanImage 2\.1 latents: no upscaler .* finetune"):
        load(comfy_inproc, value_for(comfy_inproc, "lua_flux.pth"), model=with_latent_format("HunyuanImage21"))


@pytest.mark.comfyui
def test_flux_and_wan21_latents_are_never_confused(comfy_inproc: harness.InProcComfy, upscale_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Both have 16 channels. With a Qwen-Image (Wan21) MODEL, auto does not take the LUA FLUX file on disk but
    SesquiLSR's Wan 2.1 download; choosing the LUA file is refused before anything loads."""
    place_lua(upscale_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    qwen = with_latent_format("Wan21")
    with pytest.raises(ValueError, match=r"^Load LUA Model: sesqui-wan21: offline mode is on"):
        load(comfy_inproc, "auto", model=qwen)
    with pytest.raises(ValueError, match=r"^Load LUA Model: lua_flux.pth \(LUA .*\) is made for FLUX/SD3 latents, but "
                                         r"the connected MODEL makes Wan 2\.1 latents \(Qwen-Image, Wan 2\.1\): the "
                                         r"same channel count, another latent space\. Upscalers that fit: "
                                         r"download/sesqui-wan21\."):
        load(comfy_inproc, value_for(comfy_inproc, "lua_flux.pth"), model=qwen)
    assert load(comfy_inproc, "auto", model=with_latent_format("Flux")).name == "lua_flux.pth"


@pytest.mark.comfyui
def test_upscale_refuses_wrong_channels(comfy_inproc: harness.InProcComfy, upscale_dir: Path) -> None:
    place_lua(upscale_dir)
    handle = load(comfy_inproc, "lua_flux.pth")
    with pytest.raises(ValueError) as err:
        upscale(comfy_inproc, {"samples": torch.zeros(1, 4, 8, 8)}, handle)
    msg = str(err.value)
    assert msg.startswith("Latent Upscale (LUA): the latent has 4 channels (SDXL/SD1.5)")
    assert "16-channel LUA upscaler (FLUX/SD3)" in msg and "Load LUA Model" in msg and "auto" in msg


@pytest.mark.comfyui
def test_upscale_refuses_latents_the_file_was_not_made_for(comfy_inproc: harness.InProcComfy, upscale_dir: Path,
                                                          lua_pack: ModuleType) -> None:
    """The LUA FLUX file loaded without a MODEL runs on any 16-channel latent: the node refuses the ones it can
    tell are not FLUX/SD3 latents (a 5-D latent, from a video VAE such as Qwen-Image's; latent_format set to
    another 16-channel space), in the upscale node and in the progressive sampler's check, before any work."""
    place_lua(upscale_dir)
    handle = load(comfy_inproc, "lua_flux.pth")
    assert handle.fits == ("flux", "sd3")
    qwen = {"samples": torch.randn(1, 16, 1, 8, 8)}
    with pytest.raises(ValueError, match=r"^Latent Upscale \(LUA\): this 5-D 16-channel latent comes from a video "
                                         r"VAE .* lua_flux\.pth is a LUA upscaler made for FLUX/SD3 latents"):
        upscale(comfy_inproc, qwen, handle)
    with pytest.raises(ValueError, match=r"^Latent Upscale \(LUA\): latent_format=wan21 says Wan 2\.1 latents, but "
                                         r"lua_flux\.pth is a LUA upscaler made for FLUX/SD3 latents"):
        upscale(comfy_inproc, {"samples": torch.randn(1, 16, 8, 8)}, handle, latent_format="wan21")
    # what it was made for still runs, 4-D and, said so, 5-D
    assert upscale(comfy_inproc, {"samples": torch.randn(1, 16, 8, 8)}, handle)["samples"].shape == (1, 16, 16, 16)
    assert upscale(comfy_inproc, qwen, handle, latent_format="flux")["samples"].shape == (1, 16, 1, 16, 16)
    check = pack_module(lua_pack, "nodes.progressive_run").check_upscaler
    with pytest.raises(ValueError, match=r"^this MODEL says Wan 2\.1 latents, but lua_flux\.pth is a LUA upscaler"):
        check(handle, 16, 2.0, 2, with_latent_format("Wan21"))
    check(handle, 16, 2.0, 2, with_latent_format("Flux"))


@pytest.mark.comfyui
def test_lssgen_needs_a_latent_format(comfy_inproc: harness.InProcComfy, upscale_dir: Path,
                                      conformance: Callable[[str], Path]) -> None:
    place_lssgen(upscale_dir, conformance)
    latent = {"samples": torch.randn(1, 4, 6, 6)}
    handle = load(comfy_inproc, "LSSGen-SDXL-VAE-scaler/")
    assert handle.info["license"] == "no licence stated: research use"
    with pytest.raises(ValueError, match=r"^Latent Upscale \(LUA\): LSSGen-SDXL-VAE-scaler/: this lssgen upscaler "
                                         r"works in the model's scaled latent space and needs latent_format, one of "
                                         r"sdxl, sd15\. Set latent_format, or connect the MODEL"):
        upscale(comfy_inproc, latent, handle)
    by_node = upscale(comfy_inproc, latent, handle, latent_format="sdxl")["samples"]
    assert tuple(by_node.shape) == (1, 4, 12, 12)
    with pytest.raises(ValueError, match=r"latent_format=flux says FLUX \(16-channel latents\) but the latent has 4"):
        upscale(comfy_inproc, latent, handle, latent_format="flux")
    with_model = load(comfy_inproc, "LSSGen-SDXL-VAE-scaler/", model=harness.make_tiny_model_patcher("SDXL", "EPS"))
    by_model = upscale(comfy_inproc, latent, with_model)["samples"]
    assert torch.equal(by_model, by_node)
    as_sd15 = upscale(comfy_inproc, latent, handle, latent_format="sd15")["samples"]
    assert not torch.allclose(as_sd15, by_node), "the latent format changes LSSGen's scaled space"


# --------------------------------------------------------------------------------------------------
# LATENT handling
# --------------------------------------------------------------------------------------------------
@pytest.mark.comfyui
def test_batch_keeps_batch_index_and_resizes_noise_mask(comfy_inproc: harness.InProcComfy, upscale_dir: Path,
                                                        progress_calls: list) -> None:
    import comfy.model_management as mm

    place_lua(upscale_dir)
    handle = load(comfy_inproc)
    torch.manual_seed(0)
    samples = torch.randn(3, 16, 10, 12)
    mask = torch.rand(3, 1, 80, 96)
    latent = {"samples": samples, "batch_index": [2, 0, 1], "noise_mask": mask, "extra": "kept"}
    progress_calls.clear()
    out = upscale(comfy_inproc, latent, handle, scale=2.0)
    assert set(out) == {"samples", "batch_index", "noise_mask", "extra"}
    assert out["batch_index"] == [2, 0, 1] and out["extra"] == "kept"
    assert tuple(out["samples"].shape) == (3, 16, 20, 24)
    assert out["samples"].dtype == torch.float32 and out["samples"].device == mm.intermediate_device()
    assert tuple(out["noise_mask"].shape) == (3, 1, 160, 192), "the mask keeps its 8x resolution"
    expected_mask = torch.nn.functional.interpolate(mask, size=(160, 192), mode="bilinear", align_corners=False)
    assert torch.allclose(out["noise_mask"], expected_mask)
    for i in range(3):  # each sample as if upscaled alone: batching changes nothing
        alone = upscale(comfy_inproc, {"samples": samples[i:i + 1]}, handle)["samples"]
        assert torch.allclose(out["samples"][i:i + 1], alone, atol=1e-5)
    assert latent["samples"] is samples and tuple(latent["noise_mask"].shape) == (3, 1, 80, 96), "input untouched"
    # one bar over the whole batch (this LUA reports twice per forward), then one per single-sample run
    assert progress_calls == [(150, 300), (300, 300)] + [(50, 100), (100, 100)] * 3


@pytest.mark.comfyui
def test_non_native_scale_and_errors(comfy_inproc: harness.InProcComfy, upscale_dir: Path,
                                     conformance: Callable[[str], Path]) -> None:
    place_lua(upscale_dir)
    place_city96(upscale_dir, conformance)
    lua = load(comfy_inproc, "lua_flux.pth")
    out = upscale(comfy_inproc, {"samples": torch.randn(1, 16, 8, 8)}, lua, scale=1.5)["samples"]
    assert tuple(out.shape) == (1, 16, 12, 12)
    same = upscale(comfy_inproc, {"samples": torch.randn(1, 16, 8, 8)}, lua, scale=1.0)["samples"]
    assert tuple(same.shape) == (1, 16, 8, 8)
    city = load(comfy_inproc, SDXL_X2)
    with pytest.raises(ValueError, match=r"^Latent Upscale \(LUA\): latent-upscaler-v2\.1_SDxl-x2\.0\.safetensors: "
                                         r"this city96 upscaler does x2, not x1.5\. Set scale to one it does "
                                         r"\(x2\), or in Load LUA Model pick an upscaler that does x1\.5\.$"):
        upscale(comfy_inproc, {"samples": torch.randn(1, 4, 8, 8)}, city, scale=1.5)
    city15 = load(comfy_inproc, value_for(comfy_inproc, place_city96(upscale_dir, conformance,
                                                                     SDXL_X2.replace("2.0", "1.5")).name))
    with pytest.raises(ValueError, match=r"^Latent Upscale \(LUA\): tiling needs an integer scale; this city96 "
                                         r"upscaler runs x1.5\. Set tile to 0 \(off\)"):
        upscale(comfy_inproc, {"samples": torch.randn(1, 4, 40, 40)}, city15, scale=1.5, tile=16)
    with pytest.raises(ValueError, match=r"^Latent Upscale \(LUA\): latent is empty \(shape \(0, 16, 8, 8\)\)"):
        upscale(comfy_inproc, {"samples": torch.randn(0, 16, 8, 8)}, lua)


@pytest.mark.comfyui
def test_five_dim_latents_frame_by_frame(comfy_inproc: harness.InProcComfy, upscale_dir: Path) -> None:
    """[B, C, T, H, W] (Qwen-Image makes T = 1; Wan 2.1 video more): every frame as an image, shape kept. A LUA
    trained on Wan 2.1 latents (the trainer records the VAE's latent format): the released FLUX file is refused
    on these."""
    from lua_core.checkpoints import save_checkpoint

    model = make_lua(tiny_config())
    save_checkpoint(model.state_dict(), upscale_dir / "lua_qwen.safetensors", family="lua", config=model.config_dict(),
                    metadata={"latent_format": "wan21"})
    handle = load(comfy_inproc, "lua_qwen.safetensors")
    assert handle.fits == ("wan21",)
    video = torch.randn(2, 16, 1, 8, 6)
    out = upscale(comfy_inproc, {"samples": video}, handle)["samples"]
    assert tuple(out.shape) == (2, 16, 1, 16, 12)
    flat = upscale(comfy_inproc, {"samples": video[:, :, 0]}, handle)["samples"]
    assert torch.allclose(out[:, :, 0], flat, atol=1e-6)
    frames = torch.randn(1, 16, 3, 8, 8)
    out = upscale(comfy_inproc, {"samples": frames, "noise_mask": torch.ones(1, 1, 3, 8, 8)}, handle)
    assert tuple(out["samples"].shape) == (1, 16, 3, 16, 16) and tuple(out["noise_mask"].shape) == (1, 1, 3, 16, 16)
    for t in range(3):
        one = upscale(comfy_inproc, {"samples": frames[:, :, t]}, handle)["samples"]
        assert (out["samples"][:, :, t] - one).abs().max().item() <= 1e-5, f"frame {t}"


# --------------------------------------------------------------------------------------------------
# dtype, cache, download
# --------------------------------------------------------------------------------------------------
@pytest.mark.comfyui
@pytest.mark.parametrize(("choice", "dtype"), [("auto", torch.float32), ("fp32", torch.float32),
                                               ("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_dtype_choices(comfy_inproc: harness.InProcComfy, upscale_dir: Path, choice: str, dtype: torch.dtype) -> None:
    place_lua(upscale_dir)
    handle = load(comfy_inproc, "lua_flux.pth", dtype=choice)
    assert handle.upscaler.dtype == dtype, "auto is fp32 on the CPU"
    assert handle.info["dtype"] == str(dtype).removeprefix("torch.")
    latent = torch.randn(1, 16, 8, 8)
    out = upscale(comfy_inproc, {"samples": latent}, handle)["samples"]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    ref = upscale(comfy_inproc, {"samples": latent}, load(comfy_inproc, "lua_flux.pth", dtype="fp32"))["samples"]
    assert torch.allclose(out, ref, atol=0.05 if dtype != torch.float32 else 0)


@pytest.mark.comfyui
@pytest.mark.parametrize("units", [False, True], ids=["no-bf16-units", "amx"])
def test_auto_dtype_on_cpu_follows_bf16_matrix_units(comfy_inproc: harness.InProcComfy, upscale_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture, units: bool) -> None:
    """dtype=auto on the CPU: bf16 where torch reports bf16 matrix units (AMX tiles), fp32 elsewhere
    (issue #20, measured in benchmarks/cpu_bf16.py); the upscale node's log line names the dtype it ran in
    and why."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: units)
    place_lua(upscale_dir)
    handle = load(comfy_inproc, "lua_flux.pth", dtype="auto")
    want = torch.bfloat16 if units else torch.float32
    assert handle.upscaler.dtype == want
    assert handle.info["dtype"] == str(want).removeprefix("torch.")
    with caplog.at_level("INFO", logger="ComfyUI-LUA"):
        out = upscale(comfy_inproc, {"samples": torch.randn(1, 16, 8, 8)}, handle)["samples"]
    assert out.dtype == torch.float32
    line = next(r.getMessage() for r in caplog.records if "reserving" in r.getMessage())
    assert f"in {str(want).removeprefix('torch.')} (auto: " in line, line
    assert ("has bf16 matrix units (torch reports AMX tiles)" if units else "no bf16 matrix units") in line, line
    fixed = load(comfy_inproc, "lua_flux.pth", dtype="fp32")
    with caplog.at_level("INFO", logger="ComfyUI-LUA"):
        upscale(comfy_inproc, {"samples": torch.randn(1, 16, 8, 8)}, fixed)
    assert "in float32 (chosen in the loader node)" in [r.getMessage() for r in caplog.records
                                                        if "reserving" in r.getMessage()][-1]


@pytest.mark.comfyui
def test_loader_reuses_its_cached_model(comfy_inproc: harness.InProcComfy, upscale_dir: Path) -> None:
    import comfy.model_management as mm

    path = place_lua(upscale_dir)
    first = load(comfy_inproc, "lua_flux.pth")
    assert (upscale_dir / "lua_flux.safetensors").is_file(), "a pickle is converted to safetensors once"
    converted_mtime = (upscale_dir / "lua_flux.safetensors").stat().st_mtime_ns
    upscale(comfy_inproc, {"samples": torch.randn(1, 16, 8, 8)}, first)
    assert any(m is first.patcher for m in mm.loaded_models()), "model_management manages the upscaler"
    second = load(comfy_inproc, "lua_flux.pth", model=harness.make_tiny_model_patcher("Flux", "FLOW"))
    assert second.patcher is first.patcher and second.upscaler is first.upscaler
    assert second.latent_format == "flux" and first.latent_format is None, "handles differ, the model does not"
    assert (upscale_dir / "lua_flux.safetensors").stat().st_mtime_ns == converted_mtime
    assert load(comfy_inproc, "lua_flux.pth", dtype="bf16").patcher is not first.patcher
    save_official_pth(make_lua(tiny_config(), seed=5), path)  # the file changes: a new model
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    third = load(comfy_inproc, "lua_flux.pth")
    assert third.patcher is not first.patcher
    assert not torch.equal(third.upscaler.conv_first.weight, first.upscaler.conv_first.weight)


@pytest.mark.comfyui
def test_download_on_first_use(comfy_inproc: harness.InProcComfy, upscale_dir: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch, progress_calls: list) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    pth = save_official_pth(make_lua(seed=3), tmp_path / "upstream" / "lua_flux.pth")
    with HubServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.add_hf_file("vaskers5/LUA-FLUX", "lua_flux.pth", pth.read_bytes())
        value = value_for(comfy_inproc, "download/lua-flux")
        handle = load(comfy_inproc, value, model=harness.make_tiny_model_patcher("Flux", "FLOW"))
        assert hub.gets("lua_flux.pth") or hub.gets("/lfs/"), "the checkpoint was downloaded"
        assert (upscale_dir / "lua_flux.pth").is_file() and (upscale_dir / "lua_flux.safetensors").is_file()
        assert handle.info["path"] == str(upscale_dir / "lua_flux.safetensors")
        assert handle.info["source"] == "download" and handle.upscaler.family == "lua"
        size = pth.stat().st_size
        assert progress_calls and progress_calls[-1] == (size, size), progress_calls[-3:]
        out = upscale(comfy_inproc, {"samples": torch.randn(1, 16, 8, 8)}, handle)["samples"]
        assert tuple(out.shape) == (1, 16, 16, 16)
        hub.clear()
        again = load(comfy_inproc, value)
        assert hub.requests == [], "present files are used without any request"
        assert again.patcher is handle.patcher
        (upscale_dir / "lua_flux.pth").unlink()  # keeping only the conversion must not mean downloading again
        assert load(comfy_inproc, value).patcher is handle.patcher and hub.requests == []
        assert value_for(comfy_inproc, "lua_flux.safetensors").startswith("lua_flux.safetensors [LUA · 16ch")


@pytest.mark.comfyui
def test_download_failure_is_explained(comfy_inproc: harness.InProcComfy, upscale_dir: Path) -> None:
    with pytest.raises(ValueError) as err:
        load(comfy_inproc, "download/city96-sdxl-x2", model=harness.make_tiny_model_patcher("SDXL", "EPS"))
    msg = str(err.value)
    assert msg.startswith("Load LUA Model: city96-sdxl-x2: offline mode is on (HF_HUB_OFFLINE=1)")
    assert str(upscale_dir) in msg and SDXL_X2 in msg


# --------------------------------------------------------------------------------------------------
# cancel and out of memory
# --------------------------------------------------------------------------------------------------
@pytest.mark.comfyui
def test_cancel_stops_inside_the_forward(comfy_inproc: harness.InProcComfy, upscale_dir: Path) -> None:
    """A cancel (ComfyUI's interrupt flag) raised from the forward's progress callback stops it."""
    import comfy.model_management as mm
    import comfy.utils

    place_lua(upscale_dir, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2))
    handle = load(comfy_inproc)
    calls: list[tuple[int, int]] = []

    def hook(value: int, total: int, preview: Any, node_id: Any = None) -> None:
        calls.append((value, total))
        mm.interrupt_current_processing(True)  # the user presses cancel after the first step

    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            upscale(comfy_inproc, {"samples": torch.randn(2, 16, 16, 16)}, handle)
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
        mm.interrupt_current_processing(False)
    assert calls == [(40, 200)], "stopped at the next check inside the forward (5 steps for the batch of 2)"


@pytest.mark.comfyui
def test_out_of_memory_falls_back_to_smaller_batches_then_tiles(comfy_inproc: harness.InProcComfy,
                                                                 lua_pack: ModuleType) -> None:
    base = pack_module(lua_pack, "lua_core.archs.base")
    handle_mod = pack_module(lua_pack, "nodes.handle")

    class RunsOutOfMemory(base.LatentUpscaler):
        """Nearest x2 that raises the CUDA out-of-memory error above ``limit`` latent pixels at once."""

        family = "test"

        def __init__(self, limit: int):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4, 4, 1, 1))
            self.limit, self.shapes = limit, []

        @property
        def latent_channels(self) -> int:
            return 4

        @property
        def native_scales(self) -> Any:
            return pack_module(lua_pack, "lua_core").Scales.of(2)

        def upscale(self, latent: torch.Tensor, scale: float, **_: Any) -> torch.Tensor:
            self.shapes.append(tuple(latent.shape))
            if latent.shape[0] * latent.shape[-2] * latent.shape[-1] > self.limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return torch.nn.functional.interpolate(latent, scale_factor=2.0, mode="nearest")

    latent = torch.randn(3, 4, 32, 32)
    model = RunsOutOfMemory(limit=32 * 32)
    out = handle_mod.run_upscale(handle_mod.make_handle(model, "flaky"), latent, 2.0)
    assert torch.equal(out, torch.nn.functional.interpolate(latent, scale_factor=2.0, mode="nearest"))
    assert model.shapes[:2] == [(3, 4, 32, 32), (1, 4, 32, 32)], "the batch is split first"
    tiled = RunsOutOfMemory(limit=16 * 16)
    out = handle_mod.run_upscale(handle_mod.make_handle(tiled, "flaky"), latent[:1], 2.0)
    assert tuple(out.shape) == (1, 4, 64, 64)
    assert (1, 4, 16, 16) in tiled.shapes, "then tiles, halved until they fit"
    hopeless = RunsOutOfMemory(limit=0)
    with pytest.raises(ValueError, match=r"^Latent Upscale \(LUA\): out of memory upscaling one 32x32 latent with "
                                         r"hopeless, even in 16-pixel tiles\. Free memory"):
        upscale(comfy_inproc, {"samples": latent[:1]}, handle_mod.make_handle(hopeless, "hopeless"))


@pytest.mark.comfyui
def test_lua_reserves_its_own_exact_estimate_and_says_so(comfy_inproc: harness.InProcComfy, upscale_dir: Path,
                                                         lua_pack: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """ComfyUI is asked to free exactly LUA's own estimate (its one-shot forward plan, per latent, plus the
    input/output copies) times the batch, plus what LUA keeps on the device, and the log says which
    estimate it was: no silent fallback to a generic guess."""
    import comfy.model_management as mm

    lua_mem = pack_module(lua_pack, "lua_core.archs.lua.memory")
    inference = pack_module(lua_pack, "lua_core.inference")
    place_lua(upscale_dir)
    handle = load(comfy_inproc)
    asked: list[int] = []
    real = mm.load_models_gpu
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, memory_required=0, **kw: (
        asked.append(memory_required), real(models, memory_required=memory_required, **kw))[1])
    upscaler = handle.upscaler
    with caplog.at_level("INFO", logger="ComfyUI-LUA"):
        upscale(comfy_inproc, {"samples": torch.randn(3, 16, 12, 20)}, handle, scale=4.0)
    per = inference.io_memory((1, 16, 12, 20), (48, 80)) + lua_mem.estimate_peak(
        upscaler.config, (1, 16, 12, 20), "x4", lua_mem.ForwardPlan(), 4)
    kept = lua_mem.kept_bytes(upscaler.config, 4, handle.patcher.load_device)
    assert asked == [3 * per + kept]
    assert any("LUA's own: the peak of its one-shot forward plan" in r.getMessage() for r in caplog.records)


@pytest.mark.comfyui
def test_upscale_runs_when_comfyui_reports_no_free_memory(comfy_inproc: harness.InProcComfy, upscale_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A device reported full still gets the smallest exact plan (max_memory is at least one byte:
    lua_core refuses zero), not an error."""
    import comfy.model_management as mm

    place_lua(upscale_dir)
    handle = load(comfy_inproc)
    latent = torch.randn(1, 16, 12, 20)
    ref = upscale(comfy_inproc, {"samples": latent}, handle)["samples"]
    monkeypatch.setattr(mm, "get_free_memory", lambda *a, **k: 0)
    out = upscale(comfy_inproc, {"samples": latent}, handle)["samples"]
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.comfyui
def test_memory_estimate_grows_with_the_work(lua_pack: ModuleType, conformance: Callable[[str], Path]) -> None:
    core = pack_module(lua_pack, "lua_core")
    lua = core.load_model(make_lua().state_dict())
    small = lua.working_memory((1, 16, 32, 32), 2.0)
    assert small > 2 * 16 * 64 * 64 * 4
    assert lua.working_memory((2, 16, 32, 32), 2.0) > 1.9 * small
    assert lua.working_memory((1, 16, 32, 32), 4.0) > small
    assert lua.to(torch.float16).working_memory((1, 16, 32, 32), 2.0) < small
    city = core.load_model(conformance("peers/city96") / "latent-upscaler-v2.1_SDxl-x1.5.safetensors")
    assert city.working_memory((1, 4, 32, 32), 1.5) >= 3 * 64 * 48 * 48 * 4  # a plain conv net: the generic estimate


@pytest.mark.comfyui
def test_run_upscale_returns_float32_whatever_the_latents_dtype(comfy_inproc: harness.InProcComfy,
                                                                 upscale_dir: Path, lua_pack: ModuleType) -> None:
    """LATENT consumers expect float32 (found by mutation testing: nodes.output_not_fp32, docs/testing.md)."""
    handle_mod = pack_module(lua_pack, "nodes.handle")
    place_lua(upscale_dir)
    handle = load(comfy_inproc, "lua_flux.pth")
    out = handle_mod.run_upscale(handle, torch.randn(1, 16, 8, 8).to(torch.bfloat16), 2.0)
    assert out.dtype == torch.float32 and tuple(out.shape) == (1, 16, 16, 16)
