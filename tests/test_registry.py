"""The shape the families live in: one registry, one scales type, a public API the nodes keep to.

These guard the reshaping of issue #17 part 1: a family's label, ``auto`` rank and licence caveat
live in its registry entry (``lua_core.archs.FAMILIES``) and nowhere else; the scales a file can do
are one type (``lua_core.Scales``); the ComfyUI nodes import only what ``lua_core`` exports; the
registry, the download list and the latent formats load without torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lua_core
from lua_core import FAMILIES, KNOWN, LuaError, Scales, family_by_name

ROOT = Path(__file__).resolve().parents[1]


# -- Scales ---------------------------------------------------------------------------------------

def test_exact_scales_run_natively_within_tolerance_only():
    s = Scales.of(4, 2, 2.0)
    assert s.exact == (2.0, 4.0) and not s.is_range and s.largest == 4.0
    assert s.native(2.0000001) == 2.0 and s.native(3.0) is None and s.native(2.01) is None
    assert 2 in s and 4.0 in s and 3 not in s and "2" not in s and True not in s
    assert s.above(2.0) == 4.0 and s.above(2.5) == 4.0 and s.above(4.0) is None
    assert (str(s), s.short) == ("x2, x4", "x2 x4")


def test_a_range_runs_every_scale_inside_it():
    s = Scales.between(1, 2)
    assert s.is_range and s.largest == 2.0 and s.above(1.5) is None
    assert s.native(1.37) == 1.37 and s.native(2.0000001) == 2.0000001 and s.native(2.1) is None
    assert 1 in s and 1.5 in s and 2 in s and 0.9 not in s and 2.5 not in s
    assert (str(s), s.short) == ("any scale from 1 to 2", "x1-2")


@pytest.mark.parametrize("kwargs", [{}, {"exact": (2.0,), "low": 1.0, "high": 2.0}, {"low": 1.0},
                                    {"low": 2.0, "high": 1.0}, {"exact": (0.0,)}, {"exact": (float("nan"),)}])
def test_scales_refuse_what_is_not_one_or_the_other(kwargs):
    with pytest.raises(ValueError):
        Scales(**kwargs)


def test_every_model_and_download_says_its_scales_with_the_one_type(conformance):
    for entry in KNOWN:
        assert isinstance(entry.scales, Scales), entry.key
    model = lua_core.load_model(conformance("peers/nnlatentupscale") / "resizer.pt")
    assert model.native_scales == Scales.between(1, 2)


# -- the registry -----------------------------------------------------------------------------------

def test_each_family_has_one_entry_with_its_label_and_rank():
    names = [f.name for f in FAMILIES]
    assert len(set(names)) == len(names)
    assert sorted(f.auto_rank for f in FAMILIES) == list(range(len(FAMILIES)))
    assert {f.name: f.label for f in FAMILIES}["nnlatentupscale"] == "NNLatentUpscale"
    assert [f.name for f in FAMILIES if f.research_only] == ["lssgen"]
    with pytest.raises(KeyError):
        family_by_name("nope")


def test_downloads_name_registered_families_only():
    registered = {f.name for f in FAMILIES}
    assert {e.family for e in KNOWN} <= registered
    from lua_core.hub import KnownCheckpoint, RemoteFile

    with pytest.raises(ValueError, match="family 'nnlatent' is not one of"):
        KnownCheckpoint(key="x", family="nnlatent", title="t", channels=4, scales=Scales.of(2), fits=("sdxl",),
                        license="MIT", note="", homepage="https://example.com",
                        files=(RemoteFile("https://example.com/a.pt"),), local_name="a.pt")
    with pytest.raises(ValueError, match="must be a lua_core.scales.Scales"):
        KnownCheckpoint(key="x", family="city96", title="t", channels=4, scales=(2.0,), fits=("sdxl",),
                        license="MIT", note="", homepage="https://example.com",
                        files=(RemoteFile("https://example.com/a.pt"),), local_name="a.pt")


def test_built_models_belong_to_the_family_that_detected_them(conformance):
    for folder, file in (("peers/city96", "latent-upscaler-v2.1_SDxl-x1.5.safetensors"),
                         ("peers/nnlatentupscale", "resizer.pt"), ("peers/lssgen4", ""), ("public16", "weights.pth")):
        model = lua_core.load_model(conformance(folder) / file if file else conformance(folder))
        assert family_by_name(model.family).name == model.family
        assert isinstance(model, lua_core.LatentUpscaler)


def test_describe_reads_a_header_without_the_weights(conformance, tmp_path):
    src = conformance("peers/city96") / "latent-upscaler-v2.1_SDxl-x1.5.safetensors"
    info = lua_core.describe(src)
    assert (info.family, info.channels, info.scales, info.foreign) == ("city96", 4, Scales.of(1.5), False)
    folder = lua_core.describe(conformance("peers/lssgen16"))
    assert (folder.family, folder.channels, folder.scales) == ("lssgen", 16, Scales.of(2, 4))
    other = tmp_path / "other.safetensors"
    import torch
    from safetensors.torch import save_file

    save_file({"some.weight": torch.zeros(2)}, str(other))
    assert lua_core.describe(other).foreign
    assert lua_core.describe(tmp_path / "missing.safetensors") == lua_core.FileDescription()


def test_plan_scale_is_the_models_own(conformance):
    city = lua_core.load_model(conformance("peers/city96") / "latent-upscaler-v2.1_SDxl-x1.5.safetensors")
    assert city.plan_scale(1.5) == (1.5, False)
    with pytest.raises(LuaError, match=r"this city96 upscaler does x1\.5, not x2$"):
        city.plan_scale(2.0)


# -- what the nodes may import ---------------------------------------------------------------------

def test_nodes_import_only_what_lua_core_exports():
    exported = set(lua_core.__all__)
    for path in sorted((ROOT / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 2 and (node.module or "").startswith("lua_core"):
                where = f"{path.name}:{node.lineno}"
                assert node.module == "lua_core", f"{where} imports from lua_core.{node.module[9:]}, not lua_core"
                missing = {a.name for a in node.names} - exported
                assert not missing, f"{where} imports {missing}, which lua_core/__init__.py does not export"


def test_every_exported_name_resolves():
    for name in lua_core.__all__:
        assert getattr(lua_core, name) is not None, name


def test_registry_downloads_and_formats_load_without_torch():
    code = ("import sys, lua_core\n"
            "lua_core.KNOWN, lua_core.FAMILIES, lua_core.find_known('lua-flux'), lua_core.format_name('flux')\n"
            "print('torch' in sys.modules)")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "False", "the registry or the download list imported torch"
