"""Checkpoint files: the official container, safetensors with config, inference of the config from
shapes, convert-once, and clear errors for every kind of bad file (issue: lua_core foundation)."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import lua_core
from factories import make_lua, official_state_dict, save_official_pth, tiny_config
from lua_core.archs.lua import LUAConfig
from lua_core.checkpoints import read_metadata


def _same_outputs(a, b, x=None):
    x = torch.randn(1, a.latent_channels, 11, 13, generator=torch.Generator().manual_seed(3)) if x is None else x
    for s in (2, 4):
        assert torch.equal(lua_core.upscale_latent(a, x, s), lua_core.upscale_latent(b, x, s))


def test_official_container_params_ema_and_fallback(tmp_path):
    model = make_lua()
    ema = save_official_pth(model, tmp_path / "ema.pth")
    plain = save_official_pth(model, tmp_path / "plain.pth", key="params")
    _same_outputs(model, lua_core.load_model(ema))
    _same_outputs(model, lua_core.load_model(plain))


def test_params_ema_wins_over_params(tmp_path):
    a, b = make_lua(seed=1), make_lua(seed=2)
    torch.save({"params": official_state_dict(a), "params_ema": official_state_dict(b)}, tmp_path / "both.pth")
    _same_outputs(b, lua_core.load_model(tmp_path / "both.pth"))


def test_stored_buffers_of_another_training_size_are_ignored(tmp_path):
    """attn_mask / relative_position_index are rebuilt, so a file saved for img_size 48 loads and runs."""
    model = make_lua(tiny_config(img_size=48))
    path = save_official_pth(model, tmp_path / "big.pth")
    loaded = lua_core.load_model(path)
    assert loaded.config.img_size == 48  # read from the stored mask's shape
    _same_outputs(model, loaded)


@pytest.mark.parametrize("overrides", [
    {},
    {"in_chans": 4},
    {"resi_connection": "3conv", "embed_dim": 16, "num_heads": (2, 4), "depths": (2, 1)},
    {"heads": ({"name": "x3", "scale": 3, "out_chans": 16},
               {"name": "x8", "scale": 8, "out_chans": 16, "num_feat": 4, "primary": True}), "mlp_ratio": 3.0},
    {"window_size": 4, "img_size": 8, "patch_norm": False},
])
def test_config_inferred_from_shapes(tmp_path, overrides):
    cfg = tiny_config(**overrides)
    model = make_lua(cfg)
    path = tmp_path / "noconfig.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))  # no metadata at all
    loaded = lua_core.load_model(path)
    inferred = loaded.config
    assert inferred.to_dict() | {"img_size": cfg.img_size} == cfg.to_dict() | {"img_size": cfg.img_size}
    x = torch.randn(2, cfg.in_chans, 9, 20)
    for h in cfg.heads:
        assert torch.allclose(lua_core.upscale_latent(model, x, h.scale), lua_core.upscale_latent(loaded, x, h.scale))


def test_shrunk_window_checkpoint_warns_that_its_padding_is_a_guess(tmp_path, caplog):
    """img_size <= window_size: the official model runs windows of img_size but pads to window_size,
    which the weights do not hold. The load says so (outputs then differ near the edges of sides that
    are not multiples of the real window_size); the same model saved with its config is exact."""
    model = make_lua(tiny_config(window_size=8, img_size=4))
    with caplog.at_level("WARNING", logger="lua_core.archs.lua"):
        guessed = lua_core.load_model(save_official_pth(model, tmp_path / "shrunk.pth"))
    assert guessed.config.window_size == 4
    assert any("img_size <= window_size" in r.getMessage() and "conversion keeps this guess" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="lua_core.archs.lua"):
        exact = lua_core.load_model(lua_core.save_model(model, tmp_path / "shrunk.safetensors"))
        lua_core.load_model(save_official_pth(make_lua(), tmp_path / "normal.pth"))
    assert not caplog.records
    _same_outputs(model, exact, torch.randn(1, 16, 9, 9))


def test_save_writes_config_json_in_metadata(tmp_path):
    model = make_lua()
    path = lua_core.save_model(model, tmp_path / "m.safetensors")
    meta = read_metadata(path)
    assert meta["family"] == "lua"
    assert LUAConfig.from_dict(json.loads(meta["config"])) == model.config
    _same_outputs(model, lua_core.load_model(path))


def test_load_from_state_dict_and_device_dtype():
    model = make_lua()
    loaded = lua_core.load_model({"params_ema": official_state_dict(model)}, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and not loaded.training
    assert loaded.latent_channels == 16 and loaded.native_scales == lua_core.Scales.of(2, 4) and loaded.family == "lua"


def test_convert_once_then_reuse(tmp_path):
    src = save_official_pth(make_lua(), tmp_path / "lua_flux.pth")
    out = lua_core.ensure_safetensors(src)
    assert out == tmp_path / "lua_flux.safetensors" and out.is_file()
    assert read_metadata(out)["converted_from"] == "lua_flux.pth"
    stamp = out.stat().st_mtime_ns
    assert lua_core.ensure_safetensors(src) == out
    assert out.stat().st_mtime_ns == stamp, "the conversion was redone instead of reused"
    # a changed source is converted again
    save_official_pth(make_lua(seed=5), src)
    os.utime(src, ns=(stamp + 10**9, stamp + 10**9))
    again = lua_core.ensure_safetensors(src)
    assert again.stat().st_mtime_ns != stamp
    _same_outputs(make_lua(seed=5), lua_core.load_model(again))


def test_convert_does_not_clobber_a_foreign_safetensors(tmp_path):
    src = save_official_pth(make_lua(), tmp_path / "m.pth")
    foreign = tmp_path / "m.safetensors"
    save_file({"x": torch.zeros(1)}, str(foreign))
    assert lua_core.ensure_safetensors(src) == src
    assert list(read_metadata(foreign)) == []  # untouched


def test_convert_leaves_a_conversion_of_another_file_alone(tmp_path):
    """A user's own conversion under the same stem, and the conversion of a same-stem .pt beside a
    .pth, are not overwritten: the pickle is loaded directly instead."""
    mine = lua_core.convert_checkpoint(save_official_pth(make_lua(seed=1), tmp_path / "finetuned.pth"),
                                       tmp_path / "lua_flux.safetensors")
    before = mine.read_bytes()
    src = save_official_pth(make_lua(seed=2), tmp_path / "lua_flux.pth")
    assert lua_core.ensure_safetensors(src) == src
    assert mine.read_bytes() == before
    _same_outputs(make_lua(seed=2), lua_core.load_model(src))
    a_pth = save_official_pth(make_lua(seed=3), tmp_path / "A.pth")
    a_pt = save_official_pth(make_lua(seed=4), tmp_path / "A.pt")
    converted = lua_core.ensure_safetensors(a_pth)
    stamp = converted.read_bytes()
    assert lua_core.ensure_safetensors(a_pt) == a_pt and converted.read_bytes() == stamp
    assert lua_core.ensure_safetensors(a_pth) == converted and converted.read_bytes() == stamp
    _same_outputs(make_lua(seed=4), lua_core.load_model(a_pt))


def test_a_leftover_tmp_of_a_killed_save_does_not_set_the_mode(tmp_path):
    current = os.umask(0o022)
    os.umask(current)
    stale = tmp_path / "m.safetensors.tmp"
    stale.write_bytes(b"half")
    stale.chmod(0o600)
    out = lua_core.save_model(make_lua(), tmp_path / "m.safetensors")
    assert out.stat().st_mode & 0o777 == 0o666 & ~current and not stale.exists()


def test_unwritable_folder_keeps_the_pickle(tmp_path, monkeypatch, caplog):
    """safetensors reports a failed write (read-only folder, full disk) as its own SafetensorError;
    the conversion is skipped with a warning and nothing half-written is left."""
    from safetensors import SafetensorError

    import lua_core.checkpoints as checkpoints

    def refuse(*_a, **_k):
        raise SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)")

    src = save_official_pth(make_lua(), tmp_path / "lua_flux.pth")
    monkeypatch.setattr(checkpoints, "save_file", refuse)
    with caplog.at_level("WARNING"):
        assert lua_core.ensure_safetensors(src) == src
    _same_outputs(make_lua(), lua_core.load_model(src))
    assert any("cannot write" in r.getMessage() and "Permission denied" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lua_flux.pth"]
    with pytest.raises(OSError, match="cannot write .*Permission denied"):
        lua_core.convert_checkpoint(src)


def test_saved_files_follow_the_umask_not_safetensors_0600(tmp_path):
    """A conversion written by one user (an install script, root in a container) must stay readable
    by the ComfyUI user: safetensors itself creates 0600 files."""
    current = os.umask(0o022)
    os.umask(current)
    out = lua_core.convert_checkpoint(save_official_pth(make_lua(), tmp_path / "m.pth"))
    assert out.stat().st_mode & 0o777 == 0o666 & ~current


def test_unreadable_files_name_the_permission_fix(tmp_path, monkeypatch):
    import lua_core.checkpoints as checkpoints

    pth = save_official_pth(make_lua(), tmp_path / "theirs.pth")

    def denied(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(checkpoints, "open", denied, raising=False)  # what a file of another user gives
    with pytest.raises(lua_core.CheckpointError, match="cannot be read .*Permission denied.*permissions") as e:
        lua_core.load_model(pth)
    assert str(pth) in str(e.value)
    monkeypatch.undo()
    folder = tmp_path / "lssgen"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    real = checkpoints.Path.read_bytes
    monkeypatch.setattr(checkpoints.Path, "read_bytes",
                        lambda self: denied(self) if self.name == "config.json" else real(self))
    with pytest.raises(lua_core.CheckpointError, match="config.json.*cannot be read .*permissions"):
        checkpoints._read_json(folder / "config.json")


# -- bad files -------------------------------------------------------------------------------------

def test_truncated_safetensors(tmp_path):
    good = lua_core.save_model(make_lua(), tmp_path / "good.safetensors")
    data = good.read_bytes()
    for name, blob in [("half.safetensors", data[: len(data) // 2]), ("header.safetensors", data[:100]),
                       ("tiny.safetensors", data[:5]), ("empty.safetensors", b"")]:
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(lua_core.CheckpointError) as e:
            lua_core.load_model(p)
        msg = str(e.value)
        assert str(p) in msg and ("truncated" in msg or "empty" in msg), msg
        assert "HeaderTooLarge" not in msg


def test_truncated_pth(tmp_path):
    good = save_official_pth(make_lua(), tmp_path / "good.pth").read_bytes()
    p = tmp_path / "partial.pth"
    p.write_bytes(good[: len(good) // 3])
    with pytest.raises(lua_core.CheckpointError, match="truncated") as e:
        lua_core.load_model(p)
    assert str(p) in str(e.value)


def test_a_pth_cut_anywhere_says_to_download_it_again(tmp_path):
    """Wherever a download stops, the error names the file and the fix (torch raises EOFError,
    BadZipFile, RuntimeError or a bare OSError depending on where the zip is cut)."""
    good = save_official_pth(make_lua(), tmp_path / "good.pth").read_bytes()
    p = tmp_path / "partial.pth"
    for cut in range(64, len(good), max(1, len(good) // 150)):
        p.write_bytes(good[:cut])
        with pytest.raises(lua_core.CheckpointError) as e:
            lua_core.load_model(p)
        msg = str(e.value)
        assert str(p) in msg and "download it again" in msg and "could run code" not in msg, (cut, msg)


def test_a_web_page_saved_as_pth_is_not_called_unsafe(tmp_path):
    p = tmp_path / "lua_flux.pth"
    p.write_bytes(b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>\n")
    with pytest.raises(lua_core.CheckpointError) as e:
        lua_core.load_model(p)
    msg = str(e.value)
    assert "not a PyTorch checkpoint" in msg and "web page" in msg and "download it again" in msg, msg
    assert "could run code" not in msg


def test_not_a_checkpoint(tmp_path):
    for name, blob in [("notes.safetensors", b"hello, this is text and not a model at all\n" * 10),
                       ("random.pth", os.urandom(4096))]:
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(lua_core.CheckpointError) as e:
            lua_core.load_model(p)
        assert str(p) in str(e.value)


def test_other_model_is_not_recognised(tmp_path):
    p = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(p))
    with pytest.raises(lua_core.CheckpointError, match="not a latent upscaler") as e:
        lua_core.load_model(p)
    assert "Supported" in str(e.value)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pth"
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}, "x": _RunsCode(marker)}, p)
    with pytest.raises(lua_core.CheckpointError, match="refused") as e:
        lua_core.load_model(p)
    assert str(p) in str(e.value)
    assert not marker.exists(), "loading executed code from the pickle"
    # the same through plain pickles (not a zip container), old protocols included (they start with
    # '(' or 'c', not the \x80 of protocol 2+)
    for protocol in (0, 1, 2):
        p2 = tmp_path / f"evil_legacy{protocol}.pt"
        with open(p2, "wb") as f:
            pickle.dump(_RunsCode(marker), f, protocol=protocol)
        with pytest.raises(lua_core.CheckpointError, match="could run code"):
            lua_core.load_model(p2)
    assert not marker.exists()


def test_weights_that_do_not_match_their_config(tmp_path):
    model = make_lua()
    p = lua_core.save_model(model, tmp_path / "m.safetensors")
    meta = read_metadata(p)
    cfg = json.loads(meta["config"])
    cfg["embed_dim"] = 24
    cfg["num_heads"] = [4]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(p),
              metadata={**meta, "config": json.dumps(cfg)})
    with pytest.raises(lua_core.CheckpointError, match="do not match") as e:
        lua_core.load_model(p)
    assert str(p) in str(e.value) and "shape" in str(e.value)


def test_missing_tensor_is_named(tmp_path):
    sd = dict(make_lua().state_dict())
    del sd["heads.x2.conv_last.bias"]
    p = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
    with pytest.raises(lua_core.CheckpointError, match="heads.x2.conv_last.bias"):
        lua_core.load_model(p)


def test_invalid_config_metadata(tmp_path):
    model = make_lua()
    p = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(p),
              metadata={"family": "lua", "config": "{not json"})
    with pytest.raises(lua_core.CheckpointError, match="not valid JSON"):
        lua_core.load_model(p)


def test_missing_file():
    with pytest.raises(lua_core.CheckpointError, match="does not exist"):
        lua_core.load_model("/nonexistent/lua.safetensors")


# -- found by mutation testing (docs/testing.md): each broken file gets its own diagnosis ---------------

def _read(path):
    from lua_core.checkpoints import read_checkpoint
    return read_checkpoint(path)


def test_an_empty_file_is_named_an_interrupted_download(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(lua_core.errors.CheckpointError, match=r"is empty \(0 bytes\)"):
        _read(tmp_path / "empty.safetensors")


def test_a_header_longer_than_the_file_is_truncation(tmp_path):
    p = tmp_path / "cut.safetensors"
    save_file({"w": torch.ones(64)}, str(p))
    size = p.stat().st_size
    p.write_bytes((size - 4).to_bytes(8, "little") + p.read_bytes()[8:])  # claims all but the first 4 bytes
    with pytest.raises(lua_core.errors.CheckpointError, match="its header claims"):
        _read(p)


def test_a_file_cut_inside_its_last_tensor_is_truncated(tmp_path):
    p = tmp_path / "cut.safetensors"
    save_file({"w": torch.ones(64)}, str(p))
    p.write_bytes(p.read_bytes()[:-4])
    with pytest.raises(lua_core.errors.CheckpointError, match="is truncated: the tensors need"):
        _read(p)


def test_a_dict_of_tensors_and_other_entries_is_not_a_state_dict(tmp_path):
    p = tmp_path / "mixed.pth"
    torch.save({"conv_first.weight": torch.ones(2), "step": 5}, p)
    with pytest.raises(lua_core.errors.CheckpointError, match="mix of tensors and other entries"):
        _read(p)


def test_a_diffusers_weights_file_reads_the_config_beside_it(tmp_path):
    save_file({"w": torch.ones(2)}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"in_channels": 4}))
    assert _read(tmp_path / "diffusion_pytorch_model.safetensors").config == {"in_channels": 4}
    assert _read(tmp_path).config == {"in_channels": 4}


def test_a_safetensors_file_under_another_suffix_is_recognised(tmp_path):
    save_file({"w": torch.ones(3)}, str(tmp_path / "renamed.bin"))
    assert torch.equal(_read(tmp_path / "renamed.bin").state_dict["w"], torch.ones(3))


def test_a_config_json_that_is_not_an_object_is_refused(tmp_path):
    save_file({"w": torch.ones(2)}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(lua_core.errors.CheckpointError, match="does not hold a JSON object"):
        _read(tmp_path)
