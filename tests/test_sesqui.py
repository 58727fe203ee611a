"""SesquiLSR (lua_core.archs.sesqui) against the outputs of SesquiLSR's own ComfyUI node.

tests/data/peers/sesqui_{sdxl,flux,flux2,wan21}/ hold small models in the released on-disk format (width 32,
2 + 2 blocks, random weights), LATENTs in and out of the node, and the model's own VAE-space inputs and outputs
(see tests/data/PEERS.md and each manifest.json). Tolerance 1e-4, fp32, CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from sesqui_reference import ReferenceSesqui

from lua_core import Scales
from lua_core.archs import sesqui

DATA = Path(__file__).resolve().parent / "data"
TOL = 1e-4
FOLDERS = {"sesqui_sdxl": "sdxl", "sesqui_flux": "flux", "sesqui_flux2": "flux2", "sesqui_wan21": "wan21"}
FILES = {"sesqui_sdxl": "upscaler_SDXL.safetensors", "sesqui_flux": "upscaler_Flux.safetensors",
         "sesqui_flux2": "upscaler_Flux2.safetensors", "sesqui_wan21": "upscaler_Wan21.safetensors"}


def _manifest(name: str) -> dict:
    return json.loads((DATA / "peers" / name / "manifest.json").read_text())


_VECTORS: dict[str, dict[str, torch.Tensor]] = {}


def _vectors(name: str) -> dict[str, torch.Tensor]:
    if name not in _VECTORS:
        _VECTORS[name] = load_file(DATA / "peers" / name / "vectors.safetensors")
    return _VECTORS[name]


def _path(name: str) -> Path:
    return DATA / "peers" / name / FILES[name]


def _load(name: str, path: Path | None = None, dtype: torch.dtype | None = None) -> sesqui.SesquiUpscaler:
    path = path or _path(name)
    sd = load_file(path)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    return sesqui.build(sd, None, {"path": str(path), "scale": None})


def _cases(key: str = "cases"):
    for name in FOLDERS:
        for case in _manifest(name).get(key, []):
            yield pytest.param(name, case, id=f"{name}-{case['input_key']}-x{case['scale']:g}-{case['layout']}")


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _frames(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A 5-D LATENT as B*T images, as the node runs it."""
    assert layout == "bcthw", layout
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def _unframes(y: torch.Tensor, like: torch.Tensor, layout: str) -> torch.Tensor:
    assert layout == "bcthw", layout
    b, c, t = like.shape[:3]
    return y.reshape(b, t, c, *y.shape[-2:]).permute(0, 2, 1, 3, 4)


def _upscale_latent(model: sesqui.SesquiUpscaler, x: torch.Tensor, case: dict, **kw) -> torch.Tensor:
    """LATENT in, LATENT out through the 4-D API; 5-D latents frame by frame."""
    with torch.inference_mode():
        if case["layout"] == "4d":
            return model.upscale(x, case["scale"], **kw)
        return _unframes(model.upscale(_frames(x, case["layout"]), case["scale"], **kw), x, case["layout"])


# --------------------------------------------------------------------------------------------
# Conformance
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FOLDERS)
def test_files_are_intact(name):
    for fname, digest in _manifest(name)["files"].items():
        data = (DATA / "peers" / name / fname).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"{name}/{fname} changed"


@pytest.mark.parametrize("name,case", list(_cases()))
def test_latent_cases(name, case):
    """The node's LATENT in -> LATENT out, through ``upscale`` with the file's own latent format."""
    vec = _vectors(name)
    model = _load(name)
    out = _upscale_latent(model, vec[case["input_key"]], case)
    assert list(out.shape) == case["output_shape"] and out.dtype == torch.float32
    diff = _max_diff(out, vec[case["output_key"]])
    assert diff <= TOL, f"max abs diff {diff:.3g}"
    if "noise_mask_key" in case:
        mask = sesqui.resize_noise_mask(vec[case["noise_mask_key"]], tuple(case["target_size"]))
        assert torch.equal(mask, vec[case["noise_mask_output_key"]])


@pytest.mark.parametrize("name,case", list(_cases()))
@pytest.mark.parametrize("how", ["file name", "latent_format"])
def test_the_public_api_gives_the_node_outputs(name, case, how, tmp_path):
    """``lua_core.load_model`` detects the family from the keys and ``lua_core.upscale_latent`` gives the node's
    LATENT output: 4-D and 5-D [B, C, T, H, W] (frame by frame), batches, x1 (the model runs), FLUX.2's
    128-channel packed LATENTs. The latent format comes from the released file name, or, for a copy under a
    neutral name, from ``latent_format`` (the name the issue gives: sdxl, flux, flux2, wan21)."""
    import lua_core

    path = _path(name)
    if how == "latent_format":
        path = tmp_path / "renamed.safetensors"
        shutil.copy(_path(name), path)
    model = lua_core.load_model(path)
    assert model.family == "sesqui" and model.latent_channels == case["input_shape"][1]
    vec = _vectors(name)
    out = lua_core.upscale_latent(model, vec[case["input_key"]], case["scale"],
                                  latent_format=FOLDERS[name] if how == "latent_format" else None)
    assert list(out.shape) == case["output_shape"]
    diff = _max_diff(out, vec[case["output_key"]])
    assert diff <= TOL, f"max abs diff {diff:.3g}"


def test_the_public_api_refuses_what_the_node_cannot_do(tmp_path):
    import lua_core

    flux = lua_core.load_model(_path("sesqui_flux"))
    x = _vectors("sesqui_flux")["input_0"]
    with pytest.raises(lua_core.LuaError, match=r"any scale from 1 to 2; x2\.5 is outside that range"):
        lua_core.upscale_latent(flux, x, 2.5)
    with pytest.raises(lua_core.LuaError, match="is for FLUX latents, not Wan 2.1"):
        lua_core.upscale_latent(flux, x, 1.5, latent_format="qwen-image")
    neutral = tmp_path / "mine.safetensors"
    shutil.copy(_path("sesqui_wan21"), neutral)
    unknown = lua_core.load_model(neutral)
    with pytest.raises(lua_core.LuaError, match=r"cannot tell FLUX from Wan 2\.1 latents"):
        lua_core.upscale_latent(unknown, x, 1.5)
    saved = lua_core.save_model(lua_core.load_model(_path("sesqui_wan21")), tmp_path / "saved.safetensors")
    assert lua_core.load_model(saved).made_for == ("wan21",), "a converted file's header keeps the format"


@pytest.mark.parametrize("name,case", list(_cases()) + list(_cases("api_cases")))
def test_vae_space_cases(name, case):
    """``forward`` is the model itself: VAE-space input and target (doubled for Flux2)."""
    vec = _vectors(name)
    model = _load(name)
    with torch.inference_mode():
        out = model(vec[case["vae_input_key"]], tuple(case["vae_target_size"]))
    assert list(out.shape) == case["vae_output_shape"]
    diff = _max_diff(out, vec[case["vae_output_key"]])
    assert diff <= TOL, f"max abs diff {diff:.3g}"


@pytest.mark.parametrize("name,case", list(_cases()))
def test_adaptors_give_the_model_input(name, case):
    """to_vae of each LATENT is what the node fed the model (checks the adaptor apart from the network)."""
    vec = _vectors(name)
    x = vec[case["input_key"]]
    if case["layout"] != "4d":
        x = _frames(x, case["layout"])
    ad = sesqui.ADAPTORS[FOLDERS[name]]
    assert ad.vae_size(tuple(case["target_size"])) == tuple(case["vae_target_size"])
    assert _max_diff(ad.to_vae(x), vec[case["vae_input_key"]]) <= 1e-5
    back = ad.from_vae(vec[case["vae_input_key"]])
    assert _max_diff(back, x) <= 1e-5


@pytest.mark.parametrize("name,case", list(_cases("api_cases")))
def test_wan21_api_cases(name, case):
    """SesquiLSR's Python-API adaptor for diffusers-style (z-scored) Wan latents, not the node's."""
    vec = _vectors(name)
    model = _load(name)
    out = _upscale_latent(model, vec[case["input_key"]], case, adaptor=sesqui.WAN21_DIFFUSERS)
    assert list(out.shape) == case["output_shape"]
    assert _max_diff(out, vec[case["output_key"]]) <= TOL
    assert _max_diff(sesqui.WAN21_DIFFUSERS.to_vae(vec[case["input_key"]]), vec[case["vae_input_key"]]) <= 1e-5
    # the node's own (identity) adaptor gives something else for the same latent
    plain = _upscale_latent(model, vec[case["input_key"]], case)
    assert _max_diff(plain, vec[case["output_key"]]) > 1e-2


def test_manifest_constants_are_the_modules():
    """The Flux2 batch-norm numbers and the Wan 2.1 mean/std copied into the module are the manifests'."""
    flux2 = _manifest("sesqui_flux2")["adaptor_constants"]
    assert list(sesqui.FLUX2_BN_MEAN) == flux2["bn_running_mean"]
    assert list(sesqui.FLUX2_BN_VAR) == flux2["bn_running_var"] and sesqui.FLUX2_BN_EPS == flux2["bn_eps"]
    wan = _manifest("sesqui_wan21")["api_adaptor_constants"]
    assert list(sesqui.WAN21_MEAN) == wan["latents_mean"] and list(sesqui.WAN21_STD) == wan["latents_std"]
    for name, fmt in FOLDERS.items():
        consts = _manifest(name)["adaptor_constants"]
        ad = sesqui.ADAPTORS[fmt]
        if "scale" in consts:
            assert (ad.kind, ad.scale, ad.shift) == ("shift_scale", (consts["scale"],), (consts["shift"],))


# --------------------------------------------------------------------------------------------
# Config and loading
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FOLDERS)
def test_config_read_from_shapes(name):
    """Width 32 and 2 + 2 blocks read from the tensors; the same as the original constructor's sizes."""
    gen = _manifest(name)["config_used_to_generate"]
    model = _load(name)
    assert model.config == sesqui.SesquiConfig.derive(
        gen["in_channels"], width=gen["width"], in_depth=gen["in_depth"], out_depth=gen["out_depth"],
        in_expand=gen["in_expand"], out_expand=gen["out_expand"], latent_format=FOLDERS[name])
    assert model.config_dict() == json.loads(json.dumps(model.config_dict()))
    assert sesqui.SesquiConfig.from_dict(model.config_dict()) == model.config
    assert model.family == "sesqui" and model.native_scales == Scales.between(1, 2)
    assert model.latent_channels == {"sdxl": 4, "flux": 16, "flux2": 128, "wan21": 16}[FOLDERS[name]]
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_released_shapes():
    """The released SDXL file has 3,071,542 parameters (width 128, 8 + 6 blocks): 24 gates and 96 middle
    channels before the resampler, 32 and 128 in its refine block and after it."""
    cfg = sesqui.SesquiConfig.derive(4)
    assert (cfg.in_gates, cfg.in_mid, cfg.refine_gates, cfg.refine_mid, cfg.out_gates, cfg.out_mid, cfg.lift) == (
        24, 96, 32, 128, 32, 128, 64)
    model = sesqui.SesquiUpscaler(cfg)
    assert sum(p.numel() for p in model.parameters()) == 3_071_542
    assert sesqui.infer_config(model.state_dict()) == cfg
    assert torch.allclose(model.upsample.pe.freqs, torch.tensor([1.0, 2 ** (2 / 3), 2 ** (4 / 3), 4.0]))


def test_saved_config_is_checked_and_wins():
    sd = load_file(_path("sesqui_flux"))
    cfg = sesqui.infer_config(sd).to_dict()
    model = sesqui.build(sd, {**cfg, "latent_format": "wan21"}, {"path": str(_path("sesqui_flux"))})
    assert model.config.latent_format == "wan21", "the saved config comes before the file name"
    with pytest.raises(ValueError, match="does not match the weights"):
        sesqui.build(sd, {**cfg, "width": 64}, {"path": None})
    with pytest.raises(ValueError, match="unknown fields"):
        sesqui.build(sd, {**cfg, "depth": 3}, {"path": None})


@pytest.mark.parametrize("corrupt,message", [
    (lambda sd: sd.pop("upsample.rank_gain"), "missing"),
    (lambda sd: sd.pop("head_conv.2.weight"), "head_conv.2.weight is missing"),
    (lambda sd: sd.__setitem__("skip_conv.weight", torch.zeros(16, 16, 3, 3)), "wrong shape"),
    (lambda sd: sd.__setitem__("upsample.extra", torch.zeros(1)), "unexpected"),
    (lambda sd: sd.__setitem__("out_blocks.1.up.weight", torch.zeros(70, 32, 1, 1)), "not 9 per gate"),
    (lambda sd: sd.__setitem__("out_blocks.1.down.weight", torch.zeros(40, 64, 1, 1)), "differ in shape"),
    (lambda sd: sd.__setitem__("in_blocks.3.norm.weight", torch.zeros(32)), "numbered"),
    (lambda sd: sd.__setitem__("upsample.base_taps", torch.zeros(2, 2, 32, 5)), "base_taps"),
])
def test_strict_loading(corrupt, message):
    sd = load_file(_path("sesqui_flux"))
    corrupt(sd)
    with pytest.raises(ValueError, match=message):
        sesqui.build(sd, None, {"path": None})


@pytest.mark.parametrize("dtype,rel", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("name", FOLDERS)
def test_half_precision_files(tmp_path, name, dtype, rel):
    """A bf16/fp16 copy loads into fp32 parameters exactly; outputs within the precision of its weights."""
    sd = {k: v.to(dtype) for k, v in load_file(_path(name)).items()}
    path = tmp_path / FILES[name]
    save_file(sd, str(path))
    model = _load(name, path)
    loaded = model.state_dict()
    for k, v in sd.items():
        assert loaded[k].dtype == torch.float32 and torch.equal(loaded[k], v.float()), k
    vec = _vectors(name)
    for case in _manifest(name)["cases"]:
        out = _upscale_latent(model, vec[case["input_key"]], case)
        expected = vec[case["output_key"]]
        assert _max_diff(out, expected) <= rel * expected.abs().max().item()


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FOLDERS)
def test_detects_its_files(name):
    assert sesqui.detect(load_file(_path(name)))


@pytest.mark.parametrize("file", [
    "peers/city96/latent-upscaler-v2.1_SDxl-x1.5.safetensors",
    "peers/city96/latent-upscaler-v2.1_SDv1-x2.0.safetensors",
    "peers/nnlatentupscale/resizer.pt",
    "peers/lssgen16/diffusion_pytorch_model.safetensors",
    "peers/lssgen4/diffusion_pytorch_model.safetensors",
    "public16/weights.safetensors",
    "public4/weights.safetensors",
])
def test_other_families_are_not_detected(file):
    path = DATA / file
    sd = torch.load(path, map_location="cpu", weights_only=True) if path.suffix == ".pt" else load_file(path)
    assert sd and not sesqui.detect(sd)


def test_other_families_detectors_refuse_sesqui():
    """No other family's detector takes a SesquiLSR file (the registry can list it anywhere)."""
    from lua_core.archs import FAMILIES
    for name in FOLDERS:
        sd = load_file(_path(name))
        assert [f.name for f in FAMILIES if f.name != "sesqui" and f.detect(sd)] == []


# --------------------------------------------------------------------------------------------
# Latent formats
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("file,fmt", [
    ("upscaler_SDXL.safetensors", "sdxl"),
    ("upscaler_Flux.safetensors", "flux"),
    ("upscaler_Flux2.safetensors", "flux2"),
    ("upscaler_Wan21.safetensors", "wan21"),
    ("UPSCALER_flux.safetensors", "flux"),
    ("upscaler_Flux (1).safetensors", "flux"),
    ("upscaler_Flux2.fp16.safetensors", "flux2"),
    ("upscaler_Wan21_bf16.safetensors", "wan21"),
    ("SesquiLSR-upscaler_Wan21.safetensors", "wan21"),
    ("models/upscaler_Flux/weights.safetensors", None),
    ("upscaler_Fluxy.safetensors", None),
    ("upscaler_Flux21.safetensors", None),
    ("myupscaler_Flux.safetensors", None),
    ("sesqui_flux.safetensors", None),
    (None, None),
])
def test_format_from_file_name(file, fmt):
    assert sesqui.format_from_name(file) == fmt


def test_neutral_name_16_channels_needs_latent_format(tmp_path):
    """Renamed, a 16-channel file cannot say FLUX or Wan 2.1: each call must, and then gives that format."""
    path = tmp_path / "sesqui_16ch.safetensors"
    shutil.copy(_path("sesqui_flux"), path)
    model = _load("sesqui_flux", path)
    assert model.config.latent_format is None and model.latent_channels == 16 and model.needs_latent_format
    assert not _load("sesqui_flux").needs_latent_format
    vec = _vectors("sesqui_flux")
    case = _manifest("sesqui_flux")["cases"][0]
    with pytest.raises(ValueError, match=r"cannot tell FLUX from Wan 2\.1 latents.*latent_format \('flux' or "
                                         r"'wan21'\).*released file name"):
        model.upscale(vec[case["input_key"]], case["scale"])
    out = _upscale_latent(model, vec[case["input_key"]], case, latent_format="flux")
    assert _max_diff(out, vec[case["output_key"]]) <= TOL
    out = _upscale_latent(model, vec[case["input_key"]], case, latent_format="Wan 2.1")
    assert _max_diff(out, vec[case["output_key"]]) > 1e-2, "the Wan adaptor is not the Flux one"


@pytest.mark.parametrize("name,fmt", [("sesqui_sdxl", "sdxl"), ("sesqui_flux2", "flux2")])
def test_neutral_name_channel_count_decides(tmp_path, name, fmt):
    path = tmp_path / "renamed.safetensors"
    shutil.copy(_path(name), path)
    model = _load(name, path)
    assert model.config.latent_format == fmt
    vec = _vectors(name)
    case = _manifest(name)["cases"][1]
    assert _max_diff(_upscale_latent(model, vec[case["input_key"]], case), vec[case["output_key"]]) <= TOL


def test_name_that_contradicts_the_weights_is_refused(tmp_path):
    path = tmp_path / "upscaler_SDXL.safetensors"
    shutil.copy(_path("sesqui_flux"), path)
    with pytest.raises(ValueError, match=r"file name \(upscaler_SDXL.safetensors\) says SDXL \(4 channels\), but "
                                         "the weights take 16"):
        _load("sesqui_flux", path)


def test_latent_format_argument():
    model = _load("sesqui_flux")
    x = torch.zeros(1, 16, 6, 6)
    with pytest.raises(ValueError, match="is for FLUX latents, not Wan 2.1"):
        model.upscale(x, 1.5, latent_format="wan21")
    with pytest.raises(ValueError, match="not one of|no model"):
        model.upscale(x, 1.5, latent_format="sd3")
    with pytest.raises(ValueError, match="SD1.x"):
        _load("sesqui_sdxl").upscale(torch.zeros(1, 4, 6, 6), 1.5, latent_format="sd15")
    with pytest.raises(ValueError, match="feeds a Wan 2.1 model"):
        model.upscale(x, 1.5, adaptor=sesqui.WAN21_DIFFUSERS)
    assert model.upscale(x, 1.5, latent_format="FLUX").shape == (1, 16, 9, 9)

    class Flux:  # ComfyUI latent format classes, matched by name through the MRO
        pass

    class Lumina2(Flux):
        pass

    class Wan21:
        pass

    assert sesqui.format_name(Lumina2()) == "flux" and sesqui.format_name(Wan21) == "wan21"
    assert [sesqui.format_name(s) for s in ("SDXL", "flux.1", "Flux2", "wan 2.1", "Wan21")] == [
        "sdxl", "flux", "flux2", "wan21", "wan21"]


# --------------------------------------------------------------------------------------------
# Sizes and scales
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,scale,target", [
    ((7, 9), 1.5, (10, 14)),  # 10.5 -> 10, 13.5 -> 14: halves to even
    ((5, 3), 1.5, (8, 4)),  # 7.5 -> 8, 4.5 -> 4
    ((10, 10), 1.25, (12, 12)),  # 12.5 -> 12
    ((5, 55), 1.1, (6, 61)),  # 5.5 -> 6; 60.50000000000001 -> 61
    ((4, 50), 1.15, (5, 57)),  # 4.6 -> 5; 57.49999999999999 -> 57
    ((16, 16), 2.0, (32, 32)),
])
def test_target_size_rounding(size, scale, target):
    assert sesqui.target_size(size, scale) == target
    assert round(size[1] * scale) == target[1]
    for name, fmt in (("sesqui_sdxl", "sdxl"), ("sesqui_flux2", "flux2")):
        model = _load(name)
        x = torch.randn(1, model.latent_channels, *size)
        with torch.inference_mode():
            assert tuple(model.upscale(x, scale).shape[-2:]) == target, fmt


def test_flux2_vae_target_is_doubled(monkeypatch):
    model = _load("sesqui_flux2")
    seen = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda z, hw: seen.append((tuple(z.shape), hw)) or forward(z, hw))
    with torch.inference_mode():
        model.upscale(torch.randn(1, 128, 7, 9), 1.5)
    assert seen == [((1, 32, 14, 18), (20, 28))]


def test_scale_one_runs_the_model():
    vec = _vectors("sesqui_sdxl")
    model = _load("sesqui_sdxl")
    with torch.inference_mode():
        out = model.upscale(vec["input_4"], 1.0)
    assert out.shape == vec["input_4"].shape and _max_diff(out, vec["input_4"]) > 1e-2
    assert _max_diff(out, vec["output_4"]) <= TOL


@pytest.mark.parametrize("shape,scale,message", [
    ((1, 4, 8, 8), 2.5, "from 1 to 2"),
    ((1, 4, 8, 8), 0.9, "from 1 to 2"),
    ((1, 4, 8, 8), float("nan"), "finite"),
    ((1, 4, 8, 8), "1.5", "finite"),
    ((1, 4, 2, 8, 8), 1.5, "frame by frame"),
    ((1, 16, 8, 8), 1.5, "takes 4-channel"),
    ((1, 4, 1, 8), 1.5, "at least 2 pixels"),
    ((1, 4, 2, 8), 1.2, "targets at least 3"),
])
def test_bad_calls_are_refused(shape, scale, message):
    model = _load("sesqui_sdxl")
    with pytest.raises(ValueError, match=message):
        model.upscale(torch.zeros(shape), scale)


# --------------------------------------------------------------------------------------------
# Against the plain reference; the differentiable path; the resampler's plans
# --------------------------------------------------------------------------------------------

def _released(channels: int = 4, seed: int = 0) -> sesqui.SesquiUpscaler:
    torch.manual_seed(seed)
    return sesqui.SesquiUpscaler(sesqui.SesquiConfig.derive(channels)).eval().requires_grad_(False)


@pytest.mark.parametrize("size,target", [((6, 7), (9, 10)), ((5, 8), (5, 8)), ((4, 6), (8, 12))])
def test_matches_plain_reference_at_released_shapes(size, target):
    """The optimised forward against benchmarks/sesqui_reference.py (taps loop, no caching), fp32."""
    model = _released(16)
    ref = ReferenceSesqui(model.state_dict())
    z = torch.randn(2, 16, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours, theirs = model(z, target), ref(z, target)
    assert ours.shape == theirs.shape == (2, 16, *target)
    assert _max_diff(ours, theirs) <= TOL


def test_banded_tiles_give_the_dense_result(monkeypatch):
    """Large targets are filtered in banded tiles; small tiles forced here must give the same numbers."""
    model = _load("sesqui_wan21")
    ref = ReferenceSesqui(model.state_dict())
    z = torch.randn(2, 16, 21, 17, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        dense = model(z, (33, 29))
        monkeypatch.setattr(sesqui, "TILE", 5)
        monkeypatch.setattr(sesqui, "TILE_MAX", 6)
        model.upsample.clear_cache()
        tiled = model(z, (33, 29))
        plan = model.upsample.cached_plan((42, 34), (33, 29))
    assert len(plan.rows) == 7 and len(plan.cols) == 6
    assert _max_diff(tiled, dense) <= 1e-5 and _max_diff(tiled, ref(z, (33, 29))) <= TOL


def test_differentiable_path():
    """With autograd recording nothing is cached or overwritten: same numbers, gradients for every parameter."""
    model = _load("sesqui_flux")
    z = torch.randn(1, 16, 7, 9, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = model(z, (10, 14))
    model.requires_grad_(True)
    model.upsample.clear_cache()
    zg = z.clone().requires_grad_(True)
    out = model(zg, (10, 14))
    assert _max_diff(out, expected) <= 1e-5 and not model.upsample._plans
    out.square().mean().backward()
    assert zg.grad is not None and zg.grad.abs().sum() > 0
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_plan_cache_follows_the_weights():
    model = _load("sesqui_sdxl")
    z = torch.randn(1, 4, 7, 9, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        first = model(z, (10, 14))
        plan = model.upsample.cached_plan((14, 18), (10, 14))
        assert model.upsample.cached_plan((14, 18), (10, 14)) is plan, "the second call reuses the plan"
        assert torch.equal(model(z, (10, 14)), first)
    with torch.no_grad():
        model.upsample.rank_gain.add_(1.0)
        model.upsample.filter_net[2].bias.mul_(3.0)
    with torch.inference_mode():
        changed = model(z, (10, 14))
    assert _max_diff(changed, first) > 1e-4
    assert _max_diff(changed, ReferenceSesqui(model.state_dict())(z, (10, 14))) <= TOL


def test_module_in_bf16_returns_the_latent_dtype():
    """A bf16 module (ComfyUI's half precision) keeps the adaptor in fp32 and returns the input's dtype."""
    vec = _vectors("sesqui_flux")
    model = _load("sesqui_flux").to(torch.bfloat16)
    with torch.inference_mode():
        out = model.upscale(vec["input_0"], 1.5)
    assert out.dtype == torch.float32
    expected = vec["output_0"]
    assert _max_diff(out, expected) <= 5e-2 * expected.abs().max().item()
    assert math.isfinite(out.abs().max().item())
