"""Smoke tests proving the ComfyUI test harness works against a real ComfyUI, 0.3.75 or 0.33.0 (no mocks).

Why it exists: every node/workflow/server test of the pack relies on harness.py and conftest.py. These
tests show each piece does what it claims, and that its failure checks can fail: in-process import
with tiny models of every latent format through KSampler, pack loading through ComfyUI's loader (V1
and V3), random VAEs, the shared server (prompt -> PNG, validation errors), import-failure detection,
and kill/restart of a private server.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from . import harness, make_test_models
from .workflow_swap import TEST_VAE

# --------------------------------------------------------------------------------------------------
# In-process
# --------------------------------------------------------------------------------------------------

EXPECTED_CHANNELS = {"SD15": 4, "SDXL": 4, "SD3": 16, "Flux": 16, "Wan21": 16}
FORMAT_MODEL_TYPES = [("SD15", "EPS"), ("SDXL", "V_PREDICTION"), ("SD3", "FLOW"), ("Flux", "FLOW"), ("Wan21", "FLOW")]


@pytest.mark.comfyui
def test_inproc_uses_cpu_and_temp_base(comfy_inproc: harness.InProcComfy) -> None:
    import comfy.model_management

    assert comfy.model_management.get_torch_device().type == "cpu"
    fp = comfy_inproc.folder_paths
    for path in (fp.get_output_directory(), fp.get_input_directory(), fp.get_temp_directory(),
                 *fp.get_folder_paths("vae")):
        assert Path(path).resolve().is_relative_to(comfy_inproc.base_dir), path
        assert not Path(path).resolve().is_relative_to(comfy_inproc.comfyui_dir), path


@pytest.mark.comfyui
@pytest.mark.parametrize(("latent_format", "model_type"), FORMAT_MODEL_TYPES)
def test_tiny_model_samples(comfy_inproc: harness.InProcComfy, latent_format: str, model_type: str) -> None:
    import comfy.model_patcher
    import torch

    model = harness.make_tiny_model_patcher(latent_format, model_type, seed=0)
    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    channels = model.get_model_object("latent_format").latent_channels
    assert channels == EXPECTED_CHANNELS[latent_format]
    cond = harness.zero_conditioning()
    latent = {"samples": torch.zeros(1, channels, 8, 8)}
    out = comfy_inproc.nodes.KSampler().sample(model, 7, 2, 1.0, "euler", "simple", cond, cond, latent,
                                               denoise=1.0)[0]["samples"]
    # Wan 2.1 (Qwen-Image) latents are 5-D: KSampler adds the frame axis to the empty 4-D latent
    assert out.shape == ((1, channels, 1, 8, 8) if latent_format == "Wan21" else (1, channels, 8, 8))
    assert torch.isfinite(out).all() and out.std() > 0
    again = harness.make_tiny_model_patcher(latent_format, model_type, seed=0)
    out2 = comfy_inproc.nodes.KSampler().sample(again, 7, 2, 1.0, "euler", "simple", cond, cond, latent,
                                                denoise=1.0)[0]["samples"]
    assert torch.equal(out, out2), "tiny model + KSampler must be deterministic"


@pytest.mark.comfyui
def test_tiny_model_sampling_families(comfy_inproc: harness.InProcComfy) -> None:
    import comfy.model_base
    import comfy.model_sampling
    import comfy.supported_models

    flux = harness.make_tiny_model_patcher("Flux", "FLOW")
    assert isinstance(flux.model, comfy.model_base.Flux)
    assert isinstance(flux.model.model_config, comfy.supported_models.Flux)
    assert isinstance(flux.get_model_object("model_sampling"), comfy.model_sampling.ModelSamplingFlux)
    # ComfyUI's ModelSamplingFlux node patches the resolution-dependent shift onto the tiny model too
    patched = comfy_inproc.run_node("ModelSamplingFlux", model=flux, max_shift=1.15, base_shift=0.5,
                                    width=1024, height=1024).outputs[0]
    assert patched.get_model_object("model_sampling").shift == pytest.approx(1.15)
    sd3 = harness.make_tiny_model_patcher("SD3", "FLOW")
    sampling = sd3.get_model_object("model_sampling")
    assert isinstance(sampling, comfy.model_sampling.ModelSamplingDiscreteFlow)
    assert sampling.shift == 3.0
    shifted = harness.make_tiny_model_patcher("SD3", "FLOW", shift=5.0)
    assert shifted.get_model_object("model_sampling").shift == 5.0
    # Qwen-Image: its config, Wan 2.1 latents, flow matching as model_base.QwenImage sets it (FLUX type,
    # shift 1.15); ComfyUI's ModelSamplingAuraFlow node (its template's) patches it as for the real one
    qwen = harness.make_tiny_model_patcher("Wan21", "FLOW")
    assert isinstance(qwen.model.model_config, comfy.supported_models.QwenImage)
    assert type(qwen.get_model_object("latent_format")).__name__ == "Wan21"
    sampling = qwen.get_model_object("model_sampling")
    assert isinstance(sampling, comfy.model_sampling.ModelSamplingFlux)
    assert sampling.shift == pytest.approx(1.15)
    aura = comfy_inproc.run_node("ModelSamplingAuraFlow", model=qwen, shift=3.1).outputs[0]
    assert aura.get_model_object("model_sampling").shift == pytest.approx(3.1)
    with pytest.raises(ValueError):
        harness.make_tiny_model_patcher("SD2", "EPS")


@pytest.mark.comfyui
def test_test_pack_nodes_registered_and_run(comfy_inproc: harness.InProcComfy) -> None:
    mappings = comfy_inproc.nodes.NODE_CLASS_MAPPINGS
    for node_id in ("LUATest_TinyModel", "LUATest_ZeroConditioning", "LUATest_EmptyLatentForModel",
                    "LUATest_LatentInfo", "LUATest_Sleep"):
        assert node_id in mappings
        assert mappings[node_id].RELATIVE_PYTHON_MODULE == f"custom_nodes.{harness.TEST_PACK_INSTALL_NAME}"
    model = comfy_inproc.run_node("LUATest_TinyModel", latent_format="SD3", model_type="FLOW",
                                  seed=1).outputs[0]
    latent = comfy_inproc.run_node("LUATest_EmptyLatentForModel", model=model, width=64, height=32,
                                   batch=2).outputs[0]
    assert tuple(latent["samples"].shape) == (2, 16, 4, 8)
    info = comfy_inproc.run_node("LUATest_LatentInfo", samples=latent)
    assert info.ui["latent_info"][0]["shape"] == [2, 16, 4, 8]


V3_PACK_INIT = '''
from comfy_api.latest import ComfyExtension, io
from .impl import FACTOR


class V3Scale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="LUATest_V3Scale", display_name="LUA Test V3 Scale", category="LUA/testing",
                         inputs=[io.Latent.Input("samples")], outputs=[io.Latent.Output()])

    @classmethod
    def execute(cls, samples):
        return io.NodeOutput({**samples, "samples": samples["samples"] * FACTOR})


class Extension(ComfyExtension):
    async def get_node_list(self):
        return [V3Scale]


async def comfy_entrypoint():
    return Extension()
'''


BROKEN_PACK_INIT = '''
from comfy_api.latest import ComfyExtension


async def comfy_entrypoint():
    raise RuntimeError("lua probe: entrypoint broken on purpose")
'''


@pytest.mark.comfyui
def test_load_pack_v3_entrypoint(comfy_inproc: harness.InProcComfy, tmp_path: Path) -> None:
    import torch

    pack = tmp_path / "lua_v3_probe"
    pack.mkdir()
    (pack / "__init__.py").write_text(textwrap.dedent(V3_PACK_INIT))
    (pack / "impl.py").write_text("FACTOR = 3\n")  # relative import inside the pack must work
    module = comfy_inproc.load_pack(pack)
    assert hasattr(module, "comfy_entrypoint")
    assert module.__file__ == str(comfy_inproc.base_dir / "custom_nodes" / "lua_v3_probe" / "__init__.py")
    node_cls = comfy_inproc.nodes.NODE_CLASS_MAPPINGS["LUATest_V3Scale"]
    assert comfy_inproc.nodes.NODE_DISPLAY_NAME_MAPPINGS["LUATest_V3Scale"] == "LUA Test V3 Scale"
    assert node_cls.RELATIVE_PYTHON_MODULE == "custom_nodes.lua_v3_probe"
    out = comfy_inproc.run_node("LUATest_V3Scale", samples={"samples": torch.ones(1, 4, 2, 2)}).outputs[0]
    assert torch.equal(out["samples"], torch.full((1, 4, 2, 2), 3.0))


@pytest.mark.comfyui
def test_load_pack_failure_raises_with_log(comfy_inproc: harness.InProcComfy, tmp_path: Path) -> None:
    pack = tmp_path / "lua_broken_probe"
    pack.mkdir()
    (pack / "__init__.py").write_text("raise ImportError('lua probe: broken on purpose')\n")
    with pytest.raises(harness.PackImportError, match="broken on purpose"):
        comfy_inproc.load_pack(pack)
    v3 = tmp_path / "lua_broken_v3_probe"
    v3.mkdir()
    (v3 / "__init__.py").write_text(textwrap.dedent(BROKEN_PACK_INIT))
    with pytest.raises(harness.PackImportError, match="entrypoint broken on purpose") as err:
        comfy_inproc.load_pack(v3)
    assert "Traceback" in err.value.log and "comfy_entrypoint" in err.value.log


@pytest.mark.comfyui
def test_random_vaes_load_and_decode(comfy_inproc: harness.InProcComfy, test_vaes: dict[str, Path]) -> None:
    import safetensors
    import safetensors.torch
    import torch

    assert set(test_vaes) <= set(comfy_inproc.folder_paths.get_filename_list("vae"))
    for name, channels in ((make_test_models.TAESD_4CH, 4), (make_test_models.TAESD_16CH, 16)):
        vae = comfy_inproc.run_node("VAELoader", vae_name=name).outputs[0]
        assert vae.latent_channels == channels
        image = comfy_inproc.run_node("VAEDecode", vae=vae,
                                      samples={"samples": torch.zeros(1, channels, 8, 8)}).outputs[0]
        assert tuple(image.shape) == (1, 64, 64, 3)
    # the tiny Wan 2.1 VAE (Qwen-Image's architecture): ComfyUI detects it as one and decodes a 5-D latent
    wan = comfy_inproc.run_node("VAELoader", vae_name=make_test_models.WAN21_16CH).outputs[0]
    assert (wan.latent_channels, wan.latent_dim, type(wan.first_stage_model).__name__) == (16, 3, "WanVAE")
    image = comfy_inproc.run_node("VAEDecode", vae=wan, samples={"samples": torch.randn(1, 16, 1, 6, 5)}).outputs[0]
    assert tuple(image.shape) == (1, 48, 40, 3) and image.std() > 0
    assert set(TEST_VAE.values()) <= set(test_vaes), "workflow_swap decodes with the standard test VAEs"
    with safetensors.safe_open(test_vaes[make_test_models.LDM_16CH], "pt") as full:  # FLUX/SD3 ldm layout
        keys = set(full.keys())
        assert full.get_slice("decoder.conv_in.weight").get_shape()[1] == 16
        assert full.get_slice("encoder.conv_out.weight").get_shape()[0] == 32  # mean + logvar
    assert "decoder.mid.attn_1.q.weight" in keys and not any(k.startswith("quant_conv") for k in keys)
    # the generator is deterministic (the cached file is what it builds now) and seeded
    fresh = make_test_models.build_vae_state_dict("taesd", 4, seed=0)
    cached = safetensors.torch.load_file(test_vaes[make_test_models.TAESD_4CH])
    assert fresh.keys() == cached.keys() and all(torch.equal(fresh[k], cached[k]) for k in fresh)
    other = make_test_models.build_vae_state_dict("taesd", 4, seed=1)
    assert not torch.equal(fresh["taesd_decoder.1.weight"], other["taesd_decoder.1.weight"])


# --------------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------------


def flux_prompt(vae_name: str = make_test_models.TAESD_16CH, prefix: str = "lua_smoke") -> dict:
    """TinyModel(Flux, FLOW) -> EmptyLatentForModel 64x64 -> KSampler 2 steps -> VAEDecode -> SaveImage."""
    return {
        "1": {"class_type": "LUATest_TinyModel",
              "inputs": {"latent_format": "Flux", "model_type": "FLOW", "seed": 0}},
        "2": {"class_type": "LUATest_ZeroConditioning", "inputs": {"tokens": 1, "dim": 8}},
        "3": {"class_type": "LUATest_EmptyLatentForModel",
              "inputs": {"model": ["1", 0], "width": 64, "height": 64, "batch": 1}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 0, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0],
            "denoise": 1.0}},
        "5": {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["5", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


@pytest.mark.comfyui_server
def test_server_lists_test_nodes_and_vaes(comfy_server: harness.ComfyServer) -> None:
    assert comfy_server.is_running()
    info = comfy_server.object_info("LUATest_TinyModel")
    assert info["LUATest_TinyModel"]["output"] == ["MODEL"]
    assert comfy_server.object_info("LUATest_NoSuchNode") == {}
    all_info = comfy_server.object_info()
    assert {"LUATest_EmptyLatentForModel", "KSampler", "VAEDecode"} <= set(all_info)
    vae_names = all_info["VAELoader"]["input"]["required"]["vae_name"][0]
    expected = {make_test_models.TAESD_4CH, make_test_models.TAESD_16CH, make_test_models.LDM_16CH,
                make_test_models.WAN21_16CH}
    assert expected <= set(vae_names)
    assert comfy_server.import_failures() == []
    assert (comfy_server.base_dir / "models" / "latent_upscale_models").is_dir()
    # this pack is installed (and must import) as soon as it has a top-level __init__.py
    link = comfy_server.base_dir / "custom_nodes" / harness.PACK_INSTALL_NAME
    assert link.is_symlink() == (harness.REPO_ROOT / "__init__.py").is_file()


@pytest.mark.comfyui_server
def test_server_runs_flux_prompt_to_png(comfy_server: harness.ComfyServer) -> None:
    entry = comfy_server.run_prompt(flux_prompt(), timeout=120)
    assert entry["status"]["status_str"] == "success"
    images = comfy_server.output_images(entry)
    assert len(images) == 1
    assert harness.png_size(comfy_server.view(images[0])) == (64, 64)
    saved = comfy_server.base_dir / "output" / images[0]["subfolder"] / images[0]["filename"]
    assert saved.is_file()


@pytest.mark.comfyui_server
def test_server_rejects_invalid_value_with_node_errors(comfy_server: harness.ComfyServer) -> None:
    prompt = flux_prompt()
    prompt["4"]["inputs"]["sampler_name"] = "no_such_sampler"
    with pytest.raises(harness.PromptValidationError) as err:
        comfy_server.post_prompt(prompt)
    assert err.value.status == 400
    errors = err.value.node_errors["4"]["errors"]
    assert errors[0]["type"] == "value_not_in_list"
    assert errors[0]["extra_info"]["input_name"] == "sampler_name"


@pytest.mark.comfyui_server
def test_server_execution_error_is_reported(comfy_server: harness.ComfyServer) -> None:
    prompt = flux_prompt()
    prompt["5"]["inputs"]["vae_name"] = make_test_models.TAESD_4CH  # 16-ch latent into a 4-ch decoder
    with pytest.raises(harness.PromptExecutionError) as err:
        comfy_server.run_prompt(prompt, timeout=120)
    assert err.value.error["node_type"] == "VAEDecode"


@pytest.mark.comfyui_server
def test_server_start_fails_on_import_failure(comfy_server_factory, tmp_path: Path) -> None:
    pack = tmp_path / "lua_broken_server_probe"
    pack.mkdir()
    (pack / "__init__.py").write_text(textwrap.dedent(BROKEN_PACK_INIT))
    server = comfy_server_factory(start=False, custom_nodes={"lua_broken_server_probe": pack})
    with pytest.raises(harness.ServerError, match="lua_broken_server_probe") as err:
        server.start()
    assert "entrypoint broken on purpose" in str(err.value)
    assert not server.is_running(), "a failed start must stop the process"


@pytest.mark.comfyui_server
def test_server_kill_and_restart(comfy_server_factory) -> None:
    server = comfy_server_factory()
    port, first_pid = server.port, server.pid
    slow = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {"class_type": "LUATest_Sleep", "inputs": {"samples": ["1", 0], "seconds": 30.0}},
        "3": {"class_type": "LUATest_LatentInfo", "inputs": {"samples": ["2", 0]}},
    }
    prompt_id = server.post_prompt(slow)["prompt_id"]
    deadline = time.monotonic() + 30
    while not server.queue()["queue_running"]:
        assert time.monotonic() < deadline, "prompt never started"
        time.sleep(0.1)
    server.kill()
    assert not server.is_running()
    with pytest.raises(harness.ServerError, match="died"):
        server.wait(prompt_id, timeout=5)
    server.restart()
    assert server.port == port and server.pid != first_pid
    assert server.history(prompt_id) == {}, "history does not survive a crash"
    slow["2"]["inputs"]["seconds"] = 0.0
    entry = server.run_prompt(slow, timeout=60)
    assert entry["outputs"]["3"]["latent_info"][0]["shape"] == [1, 4, 8, 8]
    assert server.starts == 2
