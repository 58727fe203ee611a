"""The peer latent upscalers (city96 v2.1, NNLatentUpscale, LSSGen) through the public API.

The vectors in tests/data/peers/ were produced by each project's own forward on small files in
its on-disk format (see tests/data/PEERS.md). Every test goes through ``lua_core.load_model`` and
``lua_core.upscale_latent`` with raw latents, as the nodes do.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import pickletools
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lua_core
from lua_core import Scales
from lua_core.archs import detect_family
from lua_core.checkpoints import read_checkpoint
from lua_core.latent_formats import latent_space

TOL = 1e-4
CITY_X15 = "latent-upscaler-v2.1_SDxl-x1.5.safetensors"
CITY_X2 = "latent-upscaler-v2.1_SDv1-x2.0.safetensors"
# latent formats whose channel count fits each LSSGen folder (the vectors are in model space,
# so every one of them must give the reference numbers once mapped back)
LSSGEN_FORMATS = {"lssgen16": ("flux", "sd3"), "lssgen4": ("sdxl", "sd15")}
FOLDERS = ["city96", "nnlatentupscale", "lssgen16", "lssgen4"]


def _manifest(name: str) -> dict:
    from conftest import DATA
    return json.loads((DATA / "peers" / name / "manifest.json").read_text())


def _folder(conformance, name: str) -> Path:
    return conformance(f"peers/{name}")


def _vectors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "vectors.safetensors")


def _cases(names: list[str]):
    for name in names:
        for case in _manifest(name)["cases"]:
            yield pytest.param(name, case, id=f"{name}-{case['input_key']}-x{case['scale']:g}")


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# --------------------------------------------------------------------------------------------
# Conformance
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FOLDERS)
def test_files_are_intact(conformance, name):
    folder = _folder(conformance, name)
    for fname, digest in _manifest(name)["files"].items():
        assert hashlib.sha256((folder / fname).read_bytes()).hexdigest() == digest, f"{name}/{fname} changed"


@pytest.mark.parametrize("name,case", list(_cases(["city96", "nnlatentupscale"])))
def test_raw_space_outputs(conformance, name, case):
    """city96 and NNLatentUpscale: the vectors are raw latents in and out."""
    folder = _folder(conformance, name)
    vec = _vectors(folder)
    model = lua_core.load_model(folder / case["weights"])
    out = lua_core.upscale_latent(model, vec[case["input_key"]], case["scale"])
    assert list(out.shape) == case["output_shape"] and out.dtype == torch.float32
    diff = _max_diff(out, vec[case["output_key"]])
    assert diff <= TOL, f"max abs diff {diff:.3g}"


@pytest.mark.parametrize("target", [".", "diffusion_pytorch_model.safetensors"])
@pytest.mark.parametrize("name,case", list(_cases(["lssgen16", "lssgen4"])))
def test_lssgen_outputs(conformance, name, case, target):
    """LSSGen: the vectors are the module on model-space latents; the API takes raw ones."""
    folder = _folder(conformance, name)
    vec = _vectors(folder)
    model = lua_core.load_model(folder / target)
    for fmt in LSSGEN_FORMATS[name]:
        space = latent_space(fmt)
        raw = space.process_out(vec[case["input_key"]])
        out = lua_core.upscale_latent(model, raw, case["scale"], latent_format=fmt)
        assert list(out.shape) == case["output_shape"]
        diff = _max_diff(space.process_in(out), vec[case["output_key"]])
        assert diff <= TOL, f"{fmt}: max abs diff {diff:.3g}"


def test_lssgen_x4_is_two_passes(conformance):
    """x4 is declared and equals the released x2 forward applied twice in model space."""
    folder = _folder(conformance, "lssgen4")
    vec = _vectors(folder)
    model = lua_core.load_model(folder)
    space = latent_space("sdxl")
    out = lua_core.upscale_latent(model, space.process_out(vec["input_1"]), 4, latent_format="sdxl")
    assert out.shape[-2:] == (28, 36)
    with torch.inference_mode():
        expected = model(vec["output_1"])  # one more pass over the reference x2 output
    assert _max_diff(space.process_in(out), expected) <= TOL


def test_model_interface(conformance):
    city = lua_core.load_model(_folder(conformance, "city96") / CITY_X15)
    nn = lua_core.load_model(_folder(conformance, "nnlatentupscale") / "resizer.pt")
    l16 = lua_core.load_model(_folder(conformance, "lssgen16"))
    l4 = lua_core.load_model(_folder(conformance, "lssgen4"))
    assert (city.family, city.latent_channels, city.native_scales) == ("city96", 4, Scales.of(1.5))
    assert (nn.family, nn.latent_channels, nn.native_scales) == ("nnlatentupscale", 4, Scales.between(1, 2))
    assert (l16.family, l16.latent_channels, l16.native_scales) == ("lssgen", 16, Scales.of(2, 4))
    assert (l4.latent_channels, l4.native_scales) == (4, Scales.of(2, 4))
    assert not city.needs_latent_format and not nn.needs_latent_format and l16.needs_latent_format
    assert nn.config_dict() == {"in_blocks": 3, "out_blocks": 2, "channels": 32, "attn": True}


def test_nnlatent_chunked_attention_is_exact(conformance, monkeypatch):
    """max_memory splits the all-positions attention into query chunks without changing the result."""
    model = lua_core.load_model(_folder(conformance, "nnlatentupscale") / "resizer.pt")
    x = torch.randn(2, 4, 20, 16, generator=torch.Generator().manual_seed(0))
    full = lua_core.upscale_latent(model, x, 1.7)
    sdpa, queries = torch.nn.functional.scaled_dot_product_attention, []

    def counting(q, k, v, *args, **kwargs):
        queries.append((q.shape[-2], k.shape[-2]))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    chunked = lua_core.upscale_latent(model, x, 1.7, max_memory=1 << 20)
    assert full.shape == chunked.shape == (2, 4, 34, 27)
    # 1 MiB: 71 of the 918 query rows per step after the resize, 204 of 320 before it
    assert {q for q, k in queries if k == 918} == {71, 918 % 71} and {q for q, k in queries if k == 320} == {204, 116}
    # same arithmetic per query row; only the kernel's summation blocking differs (up to ~1.4e-5
    # on outputs up to ~5, after the / 0.13025), so the conformance bar applies
    assert _max_diff(full, chunked) <= TOL


def test_nnlatent_identity_size_returns_input(conformance):
    """A scale that does not change the rounded size returns the latent, as the original does."""
    model = lua_core.load_model(_folder(conformance, "nnlatentupscale") / "resizer.pt")
    x = torch.randn(1, 4, 8, 8)
    assert torch.equal(lua_core.upscale_latent(model, x, 1.05), x)  # round(8.4) == 8


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("folder,file,family", [
    ("peers/city96", CITY_X15, "city96"),
    ("peers/city96", CITY_X2, "city96"),
    ("peers/nnlatentupscale", "resizer.pt", "nnlatentupscale"),
    ("peers/lssgen16", ".", "lssgen"),
    ("peers/lssgen4", "diffusion_pytorch_model.safetensors", "lssgen"),
    ("public16", "weights.safetensors", "lua"),
    ("public4", "weights.pth", "lua"),
])
def test_detection(conformance, folder, file, family):
    """Exactly one family's detector accepts each file, and it is the right one."""
    from lua_core.archs import FAMILIES
    sd = read_checkpoint(conformance(folder) / file).state_dict
    assert [f.name for f in FAMILIES if f.detect(sd)] == [family]
    assert detect_family(sd).name == family


# --------------------------------------------------------------------------------------------
# Scales and latent formats
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,file,scale,says", [
    ("city96", CITY_X15, 2.0, "x1.5"),
    ("city96", CITY_X15, 1.25, "x1.5"),
    ("city96", CITY_X2, 4.0, "x2"),
    ("nnlatentupscale", "resizer.pt", 2.5, "from 1 to 2"),
    ("lssgen16", ".", 3.0, "x2, x4"),
    ("lssgen16", ".", 1.5, "x2, x4"),
])
def test_unsupported_scale_is_refused(conformance, name, file, scale, says):
    model = lua_core.load_model(_folder(conformance, name) / file)
    x = torch.zeros(1, model.latent_channels, 6, 6)
    with pytest.raises(ValueError, match=says):
        lua_core.upscale_latent(model, x, scale, latent_format="flux")


def test_lssgen_needs_latent_format(conformance):
    model = lua_core.load_model(_folder(conformance, "lssgen16"))
    x = torch.zeros(1, 16, 6, 6)
    with pytest.raises(ValueError, match="latent_format, one of flux, sd3, cogview4$"):  # LSSGen's 16-channel folders
        lua_core.upscale_latent(model, x, 2)
    with pytest.raises(ValueError, match="LSSGen has no upsampler for Wan 2.1 latents"):  # 16 channels, no folder
        lua_core.upscale_latent(model, x, 2, latent_format="qwen-image")
    with pytest.raises(ValueError, match="'sdxl' is for 4-channel latents"):
        lua_core.upscale_latent(model, x, 2, latent_format="sdxl")
    with pytest.raises(ValueError, match="unknown latent_format"):
        lua_core.upscale_latent(model, x, 2, latent_format="pixart")


def test_nnlatent_ignores_latent_format(conformance):
    """The 0.13025 wrapping is the node's own, for SD1.x and SDXL alike."""
    folder = _folder(conformance, "nnlatentupscale")
    vec = _vectors(folder)
    model = lua_core.load_model(folder / "resizer.pt")
    plain = lua_core.upscale_latent(model, vec["input_0"], 1.5)
    assert torch.equal(lua_core.upscale_latent(model, vec["input_0"], 1.5, latent_format="sd15"), plain)


# --------------------------------------------------------------------------------------------
# city96's scale, which lives in the file name
# --------------------------------------------------------------------------------------------

def test_city96_renamed_file(conformance, tmp_path):
    folder = _folder(conformance, "city96")
    vec = _vectors(folder)
    renamed = tmp_path / "upscaler.safetensors"
    shutil.copy(folder / CITY_X15, renamed)
    with pytest.raises(lua_core.CheckpointError) as err:
        lua_core.load_model(renamed)
    msg = str(err.value)
    assert str(renamed) in msg and "-x1.5" in msg and "scale=" in msg
    model = lua_core.load_model(renamed, scale=1.5)
    assert _max_diff(lua_core.upscale_latent(model, vec["input_0"], 1.5), vec["output_0"]) <= TOL


def test_city96_conflicting_scale_is_refused(conformance):
    path = _folder(conformance, "city96") / CITY_X15
    with pytest.raises(lua_core.CheckpointError, match="scale= says x2 but its file name says x1.5"):
        lua_core.load_model(path, scale=2.0)
    assert lua_core.load_model(path, scale=1.5).native_scales == Scales.of(1.5)


# --------------------------------------------------------------------------------------------
# Bad input: a clear CheckpointError naming the file, nothing executed
# --------------------------------------------------------------------------------------------

def _city96_v1_state_dict() -> dict[str, torch.Tensor]:
    """The v1.0 layout (city96's original upscaler.py): 5x5, 7x7, 7x7, 7x7 (to 32), 5x5 (to 4)."""
    g = torch.Generator().manual_seed(1)
    shapes = {0: (64, 4, 5, 5), 4: (64, 64, 7, 7), 6: (64, 64, 7, 7), 8: (32, 64, 7, 7), 10: (4, 32, 5, 5)}
    sd = {}
    for i, s in shapes.items():
        sd[f"sequential.{i}.weight"] = torch.randn(s, generator=g) * 0.01
        sd[f"sequential.{i}.bias"] = torch.zeros(s[0])
    return sd


def test_city96_v1_is_refused(tmp_path):
    path = tmp_path / "latent-upscaler-v1.0_SDxl-x1.5.safetensors"
    save_file(_city96_v1_state_dict(), str(path))
    with pytest.raises(lua_core.CheckpointError) as err:
        lua_core.load_model(path)
    msg = str(err.value)
    assert str(path) in msg and "v1.0" in msg and "v2.1" in msg and "huggingface.co/city96" in msg


@pytest.mark.parametrize("name,file", [
    ("city96", CITY_X15),
    ("nnlatentupscale", "resizer.pt"),
    ("lssgen16", "diffusion_pytorch_model.safetensors"),
])
def test_truncated_file(conformance, tmp_path, name, file):
    src = _folder(conformance, name)
    dst = tmp_path / name
    shutil.copytree(src, dst)
    data = (src / file).read_bytes()
    (dst / file).write_bytes(data[: len(data) // 2])
    with pytest.raises(lua_core.CheckpointError, match="truncated") as err:
        lua_core.load_model(dst / file)
    assert str(dst / file) in str(err.value)


def test_lssgen_config_that_does_not_match(conformance, tmp_path):
    dst = tmp_path / "FLUX-VAE-scaler"
    shutil.copytree(_folder(conformance, "lssgen16"), dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["block_out_channels"] = [64, 32]  # the SDXL/SD size, with the FLUX weights
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(lua_core.CheckpointError) as err:
        lua_core.load_model(dst)
    msg = str(err.value)
    assert str(dst) in msg and "do not match the config.json" in msg and "wrong shape" in msg


def test_lssgen_without_config(conformance, tmp_path):
    dst = tmp_path / "scaler"
    shutil.copytree(_folder(conformance, "lssgen4"), dst)
    (dst / "config.json").unlink()
    with pytest.raises(lua_core.CheckpointError, match="config.json"):
        lua_core.load_model(dst / "diffusion_pytorch_model.safetensors")


class _RunsCode:
    """Pickles as a call to os.system (a GLOBAL of the posix/nt module) when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def _globals_in(pickle_bytes: bytes) -> list[str]:
    found, strings = [], []
    for op, arg, _ in pickletools.genops(pickle_bytes):
        if op.name == "GLOBAL":
            found.append(arg.replace(" ", "."))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            found.append(".".join(strings[-2:]))
    return found


@pytest.mark.parametrize("container", ["torch_zip", "plain_pickle"])
def test_pickle_that_runs_code_is_refused(tmp_path, container):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "sdxl_resizer.pt"
    payload = {"conv_in.weight": torch.zeros(1), "evil": _RunsCode(marker)}
    if container == "torch_zip":
        torch.save(payload, path)
        with zipfile.ZipFile(path) as z:
            pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    else:
        buf = io.BytesIO()
        pickle.dump(_RunsCode(marker), buf, protocol=2)
        pkl = buf.getvalue()
        path.write_bytes(pkl)
    assert any(g.endswith(".system") for g in _globals_in(pkl)), "the test file must really call system()"
    with pytest.raises(lua_core.CheckpointError, match="Nothing in it was executed") as err:
        lua_core.load_model(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# save_model -> load_model, and half precision
# --------------------------------------------------------------------------------------------

def _inputs(conformance, name: str) -> tuple[lua_core.archs.LatentUpscaler, torch.Tensor, float, str | None]:
    """A loaded model, one raw conformance input, its scale and the latent format it needs."""
    folder = _folder(conformance, name)
    vec = _vectors(folder)
    case = _manifest(name)["cases"][0]
    model = lua_core.load_model(folder / case["weights"])
    x, fmt = vec[case["input_key"]], None
    if name in LSSGEN_FORMATS:
        fmt = LSSGEN_FORMATS[name][0]
        x = latent_space(fmt).process_out(x)
    return model, x, float(case["scale"]), fmt


@pytest.mark.parametrize("name", FOLDERS)
def test_save_load_round_trip(conformance, tmp_path, name):
    """A saved file needs neither its original name (city96) nor a config.json (LSSGen)."""
    model, x, scale, fmt = _inputs(conformance, name)
    path = lua_core.save_model(model, tmp_path / "saved.safetensors")
    again = lua_core.load_model(path)
    assert (again.family, again.config_dict(), again.native_scales) == \
        (model.family, model.config_dict(), model.native_scales)
    a = lua_core.upscale_latent(model, x, scale, latent_format=fmt)
    b = lua_core.upscale_latent(again, x, scale, latent_format=fmt)
    assert torch.equal(a, b)


def test_nnlatent_pickle_converts_once(conformance, tmp_path):
    src = tmp_path / "sdxl_resizer.pt"
    shutil.copy(_folder(conformance, "nnlatentupscale") / "resizer.pt", src)
    dst = lua_core.ensure_safetensors(src)
    assert dst.suffix == ".safetensors" and lua_core.ensure_safetensors(src) == dst
    x = torch.randn(1, 4, 9, 7)
    a = lua_core.upscale_latent(lua_core.load_model(src), x, 1.5)
    assert torch.equal(a, lua_core.upscale_latent(lua_core.load_model(dst), x, 1.5))


#: 1.5x the worst |half - fp32| / max|fp32| measured over each folder's conformance cases on CPU
#: (benchmarks/peers_check.py drift; docs/measurements/cpu-2026-12-02-peers.log): bf16 city96 0.0162,
#: NNLatentUpscale 0.0259, LSSGen 0.0119 / 0.0122; fp16 0.0019, 0.0025, 0.0017 / 0.0013. A regression that
#: doubles a folder's drift fails.
HALF_REL_DRIFT = {
    "city96": {torch.bfloat16: 0.024, torch.float16: 0.0029},
    "nnlatentupscale": {torch.bfloat16: 0.039, torch.float16: 0.0038},
    "lssgen16": {torch.bfloat16: 0.018, torch.float16: 0.0026},
    "lssgen4": {torch.bfloat16: 0.018, torch.float16: 0.002},
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", FOLDERS)
def test_half_precision(conformance, name, dtype):
    """Half weights and latents run (GroupNorm, attention, transposed conv), return the latent's dtype
    and stay close to fp32: the worst case of the folder within its pinned bound."""
    folder = _folder(conformance, name)
    vec = _vectors(folder)
    fmt = LSSGEN_FORMATS[name][0] if name in LSSGEN_FORMATS else None
    worst = 0.0
    for case in _manifest(name)["cases"]:
        x = vec[case["input_key"]]
        if fmt:
            x = latent_space(fmt).process_out(x)
        x = x[:1, :, :10, :10]  # half convs are slow on CPU; one 10x10 item says as much
        scale = float(case["scale"])
        ref = lua_core.upscale_latent(lua_core.load_model(folder / case["weights"]), x, scale, latent_format=fmt)
        half = lua_core.load_model(folder / case["weights"], dtype=dtype)
        assert half.dtype == dtype
        out = lua_core.upscale_latent(half, x.to(dtype), scale, latent_format=fmt)
        assert out.dtype == dtype and out.shape == ref.shape and torch.isfinite(out).all()
        worst = max(worst, _max_diff(out, ref) / ref.abs().max().item())
    assert worst <= HALF_REL_DRIFT[name][dtype], f"relative drift {worst:.3g}"


def test_lssgen_cogview4_folder_runs_on_raw_latents(conformance, tmp_path):
    """LSSGen's CogView4 folder has FLUX's config with bf16 tensors. CogView4's VAE has scaling factor 1 and
    shift 0, so with latent_format='cogview4' the wrap is the identity: the output is the network on the raw
    latent, with the bf16 weights upcast exactly."""
    from safetensors.torch import save_file

    src = _folder(conformance, "lssgen16")
    folder = tmp_path / "LSSGen-CogView4-VAE-scaler"
    folder.mkdir()
    shutil.copy(src / "config.json", folder / "config.json")
    bf16 = {k: v.to(torch.bfloat16) for k, v in load_file(src / "diffusion_pytorch_model.safetensors").items()}
    save_file(bf16, str(folder / "diffusion_pytorch_model.safetensors"))
    model = lua_core.load_model(folder)
    assert model.dtype == torch.float32
    for name, param in model.state_dict().items():
        assert torch.equal(param, bf16[name].float()), name
    x = torch.randn(2, 16, 6, 10, generator=torch.Generator().manual_seed(4))
    out = lua_core.upscale_latent(model, x, 2, latent_format="cogview4")
    with torch.no_grad():
        assert (out - model(x)).abs().max().item() <= 1e-6
    flux = lua_core.upscale_latent(model, x, 2, latent_format="flux")
    assert (flux - out).abs().max().item() > 1e-2, "FLUX's wrap is not the identity: the format matters"
