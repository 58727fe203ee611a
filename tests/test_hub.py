"""lua_core.hub against a real local HTTP server (tests/hubserver.py), never the internet.

The hub server answers like huggingface.co (HEAD/302/X-Linked-*, resolve URLs, error codes) and
like GitHub raw URLs (redirect, Range). ``HF_ENDPOINT`` points at it, in-process through the
environment (lua_core.hub reads it at each call) and once through a fresh subprocess, where
huggingface_hub itself reads it at import.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

import lua_core
from conftest import DATA, ROOT
from hubserver import HubServer
from lua_core import DownloadError, LuaError, Scales
from lua_core.archs.lua import LUA, LUAConfig
from lua_core.checkpoints import read_checkpoint
from lua_core.hub import (
    KNOWN,
    RemoteFile,
    download,
    fetch,
    fetch_known,
    find_known,
    known_checkpoints,
)

LUA_REPO, LUA_FILE = "vaskers5/LUA-FLUX", "lua_flux.pth"
NN_REPO = "Ttl/ComfyUi_NNLatentUpscale"
LSS_REPO = "inventec-ai-center/LSSGen"
SESQUI_REPO, SESQUI_COMMIT = "LoganBooker/SesquiLSR", "befae004248c403f38b76b9f65fd43b901ea3eaa"


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    """No offline flag, endpoint or timeouts leaking in; a private, empty HF cache; no proxy."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "LUA_MODELS_DIR", "HF_HOME",
                "HUGGINGFACE_HUB_CACHE", "HF_HUB_DOWNLOAD_TIMEOUT", "HF_HUB_ETAG_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture
def hub(monkeypatch):
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture(scope="module")
def lua_ckpt(tmp_path_factory) -> tuple[bytes, dict[str, torch.Tensor]]:
    """A tiny LUA model in the official file format ({"params_ema": state_dict}), seeded weights."""
    torch.manual_seed(1234)
    cfg = LUAConfig(embed_dim=12, depths=(1,), num_heads=(2,), window_size=4, img_size=8, head_num_feat=8)
    sd = {k: (torch.randn_like(v) * 0.05 if v.is_floating_point() else v) for k, v in LUA(cfg).state_dict().items()}
    path = tmp_path_factory.mktemp("lua") / LUA_FILE
    torch.save({"params_ema": sd}, path)
    return path.read_bytes(), sd


@pytest.fixture
def lua_blob(hub, lua_ckpt) -> str:
    return hub.add_hf_file(LUA_REPO, LUA_FILE, lua_ckpt[0])


@pytest.fixture
def nn_entry(hub):
    """The nnlatent-sd15 entry, its URL moved to the local server (same local name, bytes of a real file)."""
    data = (DATA / "peers" / "nnlatentupscale" / "resizer.pt").read_bytes()
    url = hub.add_github_file(NN_REPO, "master", "sd15_resizer.pt", data)
    entry = find_known("nnlatent-sd15")
    return replace(entry, files=(replace(entry.files[0], source=url),)), data


@pytest.fixture
def lss_entry(hub):
    """lssgen-flux with both files (config.json + weights) served from the local server."""
    entry = find_known("lssgen-flux")
    src = DATA / "peers" / "lssgen16"
    files, blobs = [], {}
    for f in entry.files:
        name = f.local.rsplit("/", 1)[1]
        blobs[name] = (src / name).read_bytes()
        url = hub.add_github_file(LSS_REPO, "8355a17", f"weights/FLUX-VAE-scaler/{name}", blobs[name])
        files.append(replace(f, source=url))
    return replace(entry, files=tuple(files)), blobs


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recorder():
    calls: list[tuple[int, int]] = []
    return calls, lambda done, total: calls.append((done, total))


def _assert_progress(calls, total):
    assert calls, "progress was never called"
    done = [d for d, _ in calls]
    assert done == sorted(done), f"byte counts went backwards: {done}"
    assert all(d <= t for d, t in calls), calls
    assert calls[-1] == (total, total)


# --------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------
def test_registry_entries_match_their_sources():
    by_family: dict[str, list] = {}
    for e in KNOWN:
        by_family.setdefault(e.family, []).append(e)
    assert {k: len(v) for k, v in by_family.items()} == {"lua": 1, "city96": 6, "nnlatentupscale": 2, "lssgen": 5,
                                                         "sesqui": 4}
    assert len({e.key for e in KNOWN}) == len(KNOWN)

    lua = find_known("lua-flux")
    assert (lua.hf_repo, [f.source for f in lua.files], lua.channels) == (LUA_REPO, [LUA_FILE], 16)
    assert (lua.scales, set(lua.fits), lua.license) == (Scales.of(2, 4), {"flux", "sd3"}, "Apache-2.0")

    city = by_family["city96"]
    assert {e.files[0].source for e in city} == {f"latent-upscaler-v2.1_SD{v}-x{s}.safetensors"
                                                  for v in ("v1", "xl") for s in ("1.25", "1.5", "2.0")}
    for e in city:
        assert e.hf_repo == "city96/SD-Latent-Upscaler" and e.channels == 4 and e.license == "Apache-2.0"
        assert e.fits == (("sd15",) if "_SDv1-" in e.local_name else ("sdxl",))
        assert e.scales == Scales.of(float(e.local_name.rsplit("-x", 1)[1].removesuffix(".safetensors")))
        assert e.revision and len(e.revision) == 40 and int(e.revision, 16) >= 0

    for e in by_family["nnlatentupscale"]:
        url = e.files[0].source
        assert url.startswith(f"https://github.com/{NN_REPO}/raw/") and url.endswith(e.local_name)
        assert e.local_name == f"{e.fits[0]}_resizer.pt" and e.channels == 4 and e.license == "GPL-3.0"

    want = {"FLUX": ("flux", 16), "SD3": ("sd3", 16), "SDXL": ("sdxl", 4), "SD": ("sd15", 4),
            "CogView4": ("cogview4", 16)}
    for e in by_family["lssgen"]:
        folder = e.local_name.removeprefix("LSSGen-").removesuffix("-VAE-scaler")
        assert (e.fits[0], e.channels) == want[folder] and e.scales == Scales.of(2) and e.is_folder
        assert [f.source.rsplit(f"/weights/{folder}-VAE-scaler/", 1)[1] for f in e.files] == [
            "config.json", "diffusion_pytorch_model.safetensors"]
        assert all(f.source.startswith(f"https://github.com/{LSS_REPO}/raw/") for f in e.files)
        assert "research use" in e.note and "no licence" in e.note

    want = {"sdxl": ("SDXL", 4), "flux": ("Flux", 16), "flux2": ("Flux2", 128), "wan21": ("Wan21", 16)}
    for e in by_family["sesqui"]:
        stem, channels = want[e.fits[0]]
        url = e.files[0].source
        assert e.key == f"sesqui-{e.fits[0]}" and e.local_name == f"upscaler_{stem}.safetensors"
        assert url == f"https://github.com/{SESQUI_REPO}/raw/{SESQUI_COMMIT}/models/{e.local_name}"
        assert (e.channels, e.scales, e.license) == (channels, Scales.between(1, 2), "MIT")
        assert len(e.files[0].sha256) == 64 and int(e.files[0].sha256, 16) >= 0


def test_filters_and_lookup():
    assert {e.key for e in known_checkpoints(channels=16)} == {"lua-flux", "lssgen-flux", "lssgen-sd3",
                                                               "lssgen-cogview4", "sesqui-flux", "sesqui-wan21"}
    sdxl = known_checkpoints(latent_format="SDXL")
    assert sdxl and all("sdxl" in e.fits and e.channels == 4 for e in sdxl)
    assert {e.family for e in sdxl} == {"city96", "nnlatentupscale", "lssgen", "sesqui"}
    assert [e.key for e in known_checkpoints(latent_format="qwen-image")] == ["sesqui-wan21"]
    assert [e.key for e in known_checkpoints(latent_format="klein")] == ["sesqui-flux2"]
    assert known_checkpoints(latent_format="hunyuanimage21") == []
    assert {e.key for e in known_checkpoints(latent_format="sd1.5", channels=4)} == {
        e.key for e in KNOWN if e.fits == ("sd15",)}
    assert known_checkpoints(channels=4, latent_format="flux") == []
    with pytest.raises(LuaError, match="flux"):
        known_checkpoints(latent_format="sd9")

    assert find_known(LUA_REPO).key == "lua-flux"
    assert find_known("LUA-Flux").key == "lua-flux"
    assert find_known("city96/SD-Latent-Upscaler/latent-upscaler-v2.1_SDxl-x2.0.safetensors").key == "city96-sdxl-x2"
    with pytest.raises(DownloadError) as err:
        find_known("city96/SD-Latent-Upscaler")
    assert all(e.key in str(err.value) for e in KNOWN if e.family == "city96")
    with pytest.raises(DownloadError) as err:
        find_known("someone/else")
    assert "someone/else" in str(err.value) and "lua-flux" in str(err.value) and "nnlatent-sdxl" in str(err.value)


# --------------------------------------------------------------------------------------------
# Hugging Face: LUA
# --------------------------------------------------------------------------------------------
def test_fresh_fetch_downloads_converts_loads_and_upscales(hub, lua_blob, lua_ckpt, tmp_path):
    data, sd = lua_ckpt
    dest = tmp_path / "models"
    calls, progress = _recorder()
    path = fetch(find_known("lua-flux"), dest, progress=progress)

    assert path == dest / "lua_flux.safetensors"
    assert (dest / LUA_FILE).read_bytes() == data
    assert len(hub.gets(lua_blob)) == 1
    _assert_progress(calls, len(data))
    assert not list(dest.rglob("*.incomplete")) and not list(dest.rglob("*.part"))

    model = lua_core.load_model(path)
    assert model.latent_channels == 16
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(7))
    out = lua_core.upscale_latent(model, x, 2)
    ref = lua_core.upscale_latent(lua_core.load_model({"params_ema": sd}), x, 2)
    assert out.shape == (1, 16, 16, 16)
    assert torch.equal(out, ref), "the converted file does not hold the served weights"


def test_second_fetch_makes_no_request_and_reuses_the_conversion(hub, lua_blob, tmp_path):
    entry = find_known("lua-flux")
    first = fetch(entry, tmp_path)
    stamp = first.stat().st_mtime_ns
    hub.clear()
    calls, progress = _recorder()
    assert fetch(entry, tmp_path, progress=progress) == first
    assert hub.requests == []
    assert first.stat().st_mtime_ns == stamp, "converted again"
    size = (tmp_path / LUA_FILE).stat().st_size
    assert calls == [(size, size)]


def test_a_kept_conversion_is_used_after_the_pickle_was_deleted(hub, lua_blob, tmp_path):
    entry = find_known("lua-flux")
    converted = fetch(entry, tmp_path)
    (tmp_path / LUA_FILE).unlink()
    hub.clear()
    assert fetch(entry, tmp_path) == converted
    assert hub.requests == []
    # a safetensors of that name that was not converted from the pickle is not taken for it
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(converted))
    assert fetch(entry, tmp_path) == tmp_path / LUA_FILE
    assert hub.requests != []


def test_fetch_known_uses_the_default_folder(hub, lua_blob, tmp_path, monkeypatch):
    monkeypatch.setenv("LUA_MODELS_DIR", str(tmp_path / "default"))
    assert fetch_known(LUA_REPO) == tmp_path / "default" / "lua_flux.safetensors"


def test_pinned_revision_is_what_is_asked_for(hub, lua_blob, tmp_path):
    entry = replace(find_known("lua-flux"), revision=hub.commit(LUA_REPO))
    fetch(entry, tmp_path)
    assert hub.heads(f"/resolve/{hub.commit(LUA_REPO)}/{LUA_FILE}")
    assert not hub.heads("/resolve/main/")
    with pytest.raises(DownloadError, match=f"{LUA_REPO} has no revision {'0' * 40}"):
        fetch(replace(entry, revision="0" * 40), tmp_path / "other")


def test_interrupted_download_resumes_with_a_range_request(hub, lua_blob, lua_ckpt, tmp_path, monkeypatch):
    import huggingface_hub.constants
    # huggingface_hub keeps only whole chunks of a broken transfer (10 MB by default), so with a
    # small file a cut inside the first chunk would restart from zero; small chunks show the Range.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    data = lua_ckpt[0]
    cut = 8 * 4096
    hub.interrupt(lua_blob, cut)
    calls, progress = _recorder()
    path = fetch(find_known("lua-flux"), tmp_path, progress=progress, retries=1)

    first, second = hub.gets(lua_blob)
    assert first.range is None and first.body_bytes == cut
    assert second.range == f"bytes={cut}-" and second.status == 206 and second.body_bytes == len(data) - cut
    assert (tmp_path / LUA_FILE).read_bytes() == data
    assert hashlib.sha256((tmp_path / LUA_FILE).read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    _assert_progress(calls, len(data))
    lua_core.load_model(path)


def test_interrupted_without_retries_keeps_the_partial_for_next_time(hub, lua_blob, lua_ckpt, tmp_path, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    data, cut = lua_ckpt[0], 4 * 4096
    hub.interrupt(lua_blob, cut)
    with pytest.raises(DownloadError) as err:
        fetch(find_known("lua-flux"), tmp_path, retries=0)
    msg = str(err.value)
    assert "lua-flux" in msg and "interrupted" in msg and "again to resume" in msg and LUA_FILE in msg
    assert not (tmp_path / LUA_FILE).exists(), "a partial file under the final name"
    assert [p.stat().st_size for p in tmp_path.rglob("*.incomplete")] == [cut]

    fetch(find_known("lua-flux"), tmp_path)
    assert hub.gets(lua_blob)[-1].range == f"bytes={cut}-"
    assert (tmp_path / LUA_FILE).read_bytes() == data


def test_missing_file_or_repo_is_a_clear_error(hub, lua_blob, tmp_path):
    lua = find_known("lua-flux")
    missing = replace(lua, files=(RemoteFile("lua_flux_v2.pth"),), local_name="lua_flux_v2.pth")
    with pytest.raises(DownloadError) as err:
        fetch(missing, tmp_path)
    msg = str(err.value)
    assert LUA_REPO in msg and "lua_flux_v2.pth" in msg and "404" in msg and str(tmp_path) in msg
    assert not list(tmp_path.glob("lua_flux_v2*"))

    with pytest.raises(DownloadError, match="nobody/nothing") as err:
        fetch(replace(lua, hf_repo="nobody/nothing"), tmp_path)
    assert "401" in str(err.value) and "HF_TOKEN" in str(err.value)


def test_unreachable_hub_fails_fast_with_the_url(monkeypatch, tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    t0 = time.perf_counter()
    with pytest.raises(DownloadError) as err:
        fetch(find_known("lua-flux"), tmp_path)
    assert time.perf_counter() - t0 < 5, "waited on the hub library's retry backoff"
    msg = str(err.value)
    assert f"{endpoint}/{LUA_REPO}/resolve/main/{LUA_FILE}" in msg and "could not connect" in msg
    assert "HF_ENDPOINT" in msg and "by hand" in msg


def test_hf_endpoint_without_scheme_is_named_not_called_a_disk_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "hf-mirror.invalid")  # a common slip: no https://
    with pytest.raises(DownloadError) as err:
        fetch(find_known("lua-flux"), tmp_path)
    msg = str(err.value)
    assert "HF_ENDPOINT" in msg and "https://" in msg and "cannot write" not in msg, msg
    assert not list(tmp_path.glob("lua_flux*"))


def test_server_errors_on_the_file_read_as_server_errors(tmp_path):
    """A 5xx on the file's GET (after a good HEAD) surfaces as requests' HTTPError, an OSError:
    the message names the HTTP status, not a write failure (the library's own retries take ~23 s,
    so the translation is checked directly)."""
    import requests

    from lua_core.hub import _hf_error

    lua = find_known("lua-flux")
    resp = requests.Response()
    resp.status_code = 503
    e = requests.exceptions.HTTPError("503 Server Error: Service Unavailable", response=resp)
    msg = str(_hf_error(lua, lua.files[0], e, "https://hub/x", tmp_path, "https://hub"))
    assert "HTTP 503" in msg and "Try again later" in msg and "cannot write" not in msg, msg
    disk = str(_hf_error(lua, lua.files[0], OSError(28, "No space left on device"), "https://hub/x", tmp_path,
                         "https://hub"))
    assert "cannot write" in disk and "No space left" in disk


def test_offline_with_a_local_copy_sends_no_request(hub, lua_blob, lua_ckpt, tmp_path, monkeypatch):
    (tmp_path / LUA_FILE).write_bytes(lua_ckpt[0])  # e.g. copied by hand; never converted yet
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = fetch(find_known("lua-flux"), tmp_path)
    assert path == tmp_path / "lua_flux.safetensors" and path.is_file()
    assert hub.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert fetch(find_known("lua-flux"), tmp_path, offline=True) == path
    assert hub.requests == []


def test_offline_without_a_copy_says_what_to_do(hub, lua_blob, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dest = tmp_path / "models"
    with pytest.raises(DownloadError) as err:
        fetch(find_known("lua-flux"), dest)
    msg = str(err.value)
    assert "HF_HUB_OFFLINE=0" in msg and LUA_FILE in msg and str(dest) in msg and "lua-flux" in msg
    assert hub.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(DownloadError, match="offline=True"):
        fetch(find_known("lua-flux"), dest, offline=True)
    assert hub.requests == []


def test_offline_reuses_a_copy_from_the_hf_cache(hub, lua_blob, lua_ckpt, tmp_path, monkeypatch):
    from huggingface_hub import hf_hub_download
    # another pack (or city96's own node) left the file in the user's HF cache
    hf_hub_download(LUA_REPO, LUA_FILE, cache_dir=os.environ["HF_HUB_CACHE"], endpoint=hub.url)
    hub.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = fetch(find_known("lua-flux"), tmp_path / "models")
    assert (tmp_path / "models" / LUA_FILE).read_bytes() == lua_ckpt[0]
    assert path.suffix == ".safetensors" and hub.requests == []


def test_sha256_is_checked_after_a_download(hub, lua_blob, lua_ckpt, tmp_path):
    lua = find_known("lua-flux")
    good = replace(lua, files=(RemoteFile(LUA_FILE, sha256=hashlib.sha256(lua_ckpt[0]).hexdigest()),))
    assert fetch(good, tmp_path / "a").is_file()
    bad = replace(lua, files=(RemoteFile(LUA_FILE, sha256="ab" * 32),))
    with pytest.raises(DownloadError, match="sha256") as err:
        fetch(bad, tmp_path / "b")
    assert "lua-flux" in str(err.value) and LUA_FILE in str(err.value)
    assert not (tmp_path / "b" / LUA_FILE).exists()


def test_a_truncated_file_in_place_gets_delete_and_retry_advice(lua_ckpt, tmp_path):
    (tmp_path / LUA_FILE).write_bytes(lua_ckpt[0][:3000])
    with pytest.raises(DownloadError) as err:
        fetch(find_known("lua-flux"), tmp_path, offline=True)
    msg = str(err.value)
    assert str(tmp_path / LUA_FILE) in msg and "truncated" in msg
    assert f"delete {tmp_path / LUA_FILE} and run: python -m lua_core download lua-flux" in msg
    assert isinstance(err.value.__cause__, lua_core.CheckpointError)


def test_a_cancel_from_the_progress_callback_is_not_turned_into_a_download_error(hub, lua_blob, tmp_path):
    class Cancelled(Exception):
        pass

    def progress(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        fetch(find_known("lua-flux"), tmp_path, progress=progress)


def test_a_cancel_is_seen_while_no_bytes_arrive(hub, lua_blob, tmp_path):
    """The hub library writes in 10 MB chunks and retries silently, so the progress callback (where
    ComfyUI raises a cancel) is also called when nothing grew: a cancel during a stalled transfer
    ends the wait within about a second, not when the transfer resumes."""
    class Cancelled(Exception):
        pass

    calls: list[tuple[int, int]] = []

    def progress(done, total):
        calls.append((done, total))
        if len(calls) > 1:  # the user cancels after the first report
            raise Cancelled

    hub.hang(lua_blob, 4.0)  # the file's GET answers after 4 s
    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        fetch(find_known("lua-flux"), tmp_path, progress=progress)
    assert time.perf_counter() - t0 < 2.5, "the cancel waited for the stalled transfer"
    assert calls[0] == calls[1]  # the same progress, reported again


# --------------------------------------------------------------------------------------------
# plain URLs (GitHub): NNLatentUpscale-style file, LSSGen-style folder
# --------------------------------------------------------------------------------------------
def test_url_download_follows_the_redirect_and_is_reused(hub, nn_entry, tmp_path):
    entry, data = nn_entry
    calls, progress = _recorder()
    path = download(entry, tmp_path, progress=progress)
    assert path == tmp_path / "sd15_resizer.pt" and path.read_bytes() == data
    assert len(hub.gets("/github.com/")) == 1 and len(hub.gets("/raw.githubusercontent.com/")) == 1
    _assert_progress(calls, len(data))
    hub.clear()
    assert download(entry, tmp_path) == path and hub.requests == []


def test_url_interrupted_download_resumes_with_a_range_request(hub, nn_entry, tmp_path):
    entry, data = nn_entry
    hub.interrupt(entry.files[0].source, 100_000)
    calls, progress = _recorder()
    path = download(entry, tmp_path, progress=progress, retries=1)
    first, second = hub.gets("/raw.githubusercontent.com/")
    assert first.range is None and first.body_bytes == 100_000
    assert second.range == "bytes=100000-" and second.status == 206
    assert hub.gets("/github.com/")[1].range == "bytes=100000-", "Range lost across the redirect"
    assert path.read_bytes() == data and not path.with_name(path.name + ".part").exists()
    _assert_progress(calls, len(data))


def test_url_interrupted_without_retries_keeps_the_part_file(hub, nn_entry, tmp_path):
    entry, data = nn_entry
    hub.interrupt(entry.files[0].source, 50_000)
    with pytest.raises(DownloadError) as err:
        download(entry, tmp_path, retries=0)
    part = tmp_path / "sd15_resizer.pt.part"
    assert str(part) in str(err.value) and "again to resume" in str(err.value)
    assert part.stat().st_size == 50_000 and not (tmp_path / "sd15_resizer.pt").exists()
    download(entry, tmp_path)
    assert hub.gets("/raw.githubusercontent.com/")[-1].range == "bytes=50000-"
    assert (tmp_path / "sd15_resizer.pt").read_bytes() == data


def test_url_part_file_already_complete_is_finished_without_downloading_again(hub, nn_entry, tmp_path):
    entry, data = nn_entry  # a previous run got every byte but died before the rename
    (tmp_path / "sd15_resizer.pt.part").write_bytes(data)
    path = download(entry, tmp_path)
    assert path.read_bytes() == data
    (only,) = hub.gets("/raw.githubusercontent.com/")
    assert only.status == 416 and only.range == f"bytes={len(data)}-"


def test_url_cancel_keeps_the_part_file_and_resumes(hub, nn_entry, tmp_path):
    entry, data = nn_entry

    class Cancelled(Exception):
        pass

    def progress(done, total):
        if done > 0:
            raise Cancelled

    with pytest.raises(Cancelled):
        download(entry, tmp_path, progress=progress)
    assert not (tmp_path / "sd15_resizer.pt").exists()
    kept = (tmp_path / "sd15_resizer.pt.part").stat().st_size
    assert 0 < kept <= len(data)
    download(entry, tmp_path)
    assert hub.gets("/raw.githubusercontent.com/")[-1].range == f"bytes={kept}-"
    assert (tmp_path / "sd15_resizer.pt").read_bytes() == data


def test_url_errors_name_the_url_and_leave_nothing_behind(hub, nn_entry, tmp_path, monkeypatch):
    entry, data = nn_entry
    gone_url = hub.url + "/github.com/Ttl/x/raw/master/sd15_resizer.pt"
    gone = replace(entry, files=(replace(entry.files[0], source=gone_url),))
    with pytest.raises(DownloadError) as err:
        download(gone, tmp_path)
    assert gone.files[0].source in str(err.value) and "404" in str(err.value)
    assert list(tmp_path.iterdir()) == []

    refused = replace(entry, files=(replace(entry.files[0], source=f"http://127.0.0.1:{_closed_port()}/f.pt"),))
    with pytest.raises(DownloadError, match="could not reach 127.0.0.1"):
        download(refused, tmp_path)

    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "0.3")
    hub.hang(entry.files[0].source, 3)
    t0 = time.perf_counter()
    with pytest.raises(DownloadError, match="did not answer within 0.3 s"):
        download(entry, tmp_path)
    assert time.perf_counter() - t0 < 2.5
    assert not (tmp_path / "sd15_resizer.pt").exists()


def test_url_offline(hub, nn_entry, tmp_path, monkeypatch):
    entry, data = nn_entry
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as err:
        download(entry, tmp_path)
    assert "HF_HUB_OFFLINE=0" in str(err.value) and "sd15_resizer.pt" in str(err.value)
    assert entry.files[0].source in str(err.value)
    (tmp_path / "sd15_resizer.pt").write_bytes(data)
    assert download(entry, tmp_path) == tmp_path / "sd15_resizer.pt"
    assert hub.requests == []


def test_url_sha256_and_lfs_pointer_are_refused(hub, nn_entry, tmp_path):
    entry, data = nn_entry
    bad = replace(entry, files=(replace(entry.files[0], sha256="0" * 64),))
    with pytest.raises(DownloadError, match="expected sha256"):
        download(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []
    good = replace(entry, files=(replace(entry.files[0], sha256=hashlib.sha256(data).hexdigest()),))
    assert download(good, tmp_path).read_bytes() == data

    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"1" * 64 + b"\nsize 12\n"
    url = hub.add_github_file(NN_REPO, "master", "sdxl_resizer.pt", pointer)
    lfs = replace(find_known("nnlatent-sdxl"), files=(RemoteFile(url),))
    with pytest.raises(DownloadError, match="Git LFS pointer"):
        download(lfs, tmp_path)
    assert not (tmp_path / "sdxl_resizer.pt").exists()


@pytest.fixture
def sesqui_entry(hub):
    """sesqui-flux2 served from the local server at its pinned commit (the conformance file's bytes, so the
    registry's sha256 is that file's here)."""
    data = (DATA / "peers" / "sesqui_flux2" / "upscaler_Flux2.safetensors").read_bytes()
    url = hub.add_github_file(SESQUI_REPO, SESQUI_COMMIT, "models/upscaler_Flux2.safetensors", data)
    entry = find_known("sesqui-flux2")
    assert entry.files[0].source.endswith(url.split("/github.com/", 1)[1]), "the pinned URL moved"
    return replace(entry, files=(replace(entry.files[0], source=url, sha256=hashlib.sha256(data).hexdigest()),)), data


def test_sesqui_download_checks_resumes_and_loads(hub, sesqui_entry, tmp_path):
    """SesquiLSR's files come from GitHub at a pinned commit: resumed with Range after a cut, checked
    against the pinned sha256, and the file keeps its released name, which tells the loader FLUX.2."""
    entry, data = sesqui_entry
    hub.interrupt(entry.files[0].source, 200_000)
    calls, progress = _recorder()
    path = fetch(entry, tmp_path, progress=progress, retries=1)
    assert path == tmp_path / "upscaler_Flux2.safetensors" and path.read_bytes() == data
    assert hub.gets("/raw.githubusercontent.com/")[-1].range == "bytes=200000-"
    _assert_progress(calls, len(data))
    model = lua_core.load_model(path)
    assert (model.family, model.latent_channels, model.made_for) == ("sesqui", 128, ("flux2",))
    hub.clear()
    assert fetch(entry, tmp_path) == path and hub.requests == [], "a file in place is used without a request"

    wrong = replace(entry, files=(replace(entry.files[0], sha256="0" * 64),))
    with pytest.raises(DownloadError, match="expected sha256"):
        fetch(wrong, tmp_path / "other")
    assert not (tmp_path / "other" / "upscaler_Flux2.safetensors").exists()


def test_sesqui_download_offline_and_cancel(hub, sesqui_entry, tmp_path, monkeypatch):
    entry, data = sesqui_entry

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        if done > 0:
            raise Cancelled

    with pytest.raises(Cancelled):
        fetch(entry, tmp_path, progress=cancel)
    part = tmp_path / "upscaler_Flux2.safetensors.part"
    assert part.exists() and not (tmp_path / "upscaler_Flux2.safetensors").exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.clear()
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE=0") as err:
        fetch(entry, tmp_path)
    assert "upscaler_Flux2.safetensors" in str(err.value) and hub.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    kept = part.stat().st_size
    assert fetch(entry, tmp_path).read_bytes() == data
    assert hub.gets("/raw.githubusercontent.com/")[-1].range == f"bytes={kept}-"


def test_folder_checkpoint_downloads_both_files(hub, lss_entry, tmp_path):
    entry, blobs = lss_entry
    hub.interrupt(entry.files[1].source, 3000)
    calls, progress = _recorder()
    path = fetch(entry, tmp_path, progress=progress, retries=1)
    assert path == tmp_path / "LSSGen-FLUX-VAE-scaler" and path.is_dir()
    assert {p.name: p.read_bytes() for p in path.iterdir()} == blobs
    assert hub.gets("/raw.githubusercontent.com/")[-1].range == "bytes=3000-"
    _assert_progress(calls, sum(len(b) for b in blobs.values()))
    ckpt = read_checkpoint(path)  # what load_model reads: config.json + the weights
    assert ckpt.config["in_channels"] == 16 and any(k.startswith("upsampler.") for k in ckpt.state_dict)
    hub.clear()
    assert fetch(entry, tmp_path) == path and hub.requests == []


# --------------------------------------------------------------------------------------------
# the CLI
# --------------------------------------------------------------------------------------------
def test_cli_list_and_usage_errors(tmp_path, capsys):
    from lua_core.__main__ import main
    (tmp_path / "sdxl_resizer.pt").write_bytes(b"x")
    assert main(["download", "--list", "--dest", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line.strip() and " " in line}
    assert set(e.key for e in KNOWN) <= set(rows)
    assert rows["nnlatent-sdxl"][-1] == "yes" and rows["nnlatent-sd15"][-1] == "-"
    assert main(["download"]) == 2
    assert main(["download", "no-such-key"]) == 1
    assert "no-such-key" in capsys.readouterr().err


def test_cli_in_a_fresh_process_reads_hf_endpoint_and_hf_hub_offline(hub, lua_blob, tmp_path):
    """The environment path for real: huggingface_hub reads both variables at import here."""
    env = {**os.environ, "HF_ENDPOINT": hub.url, "PYTHONPATH": str(ROOT)}
    dest = tmp_path / "models"
    cmd = [sys.executable, "-m", "lua_core", "download", "--dest", str(dest), "lua-flux"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"lua-flux: {dest / 'lua_flux.safetensors'}" in r.stdout
    assert len(hub.gets(lua_blob)) == 1

    hub.clear()
    env["HF_HUB_OFFLINE"] = "1"
    r = subprocess.run(cmd + ["city96-sdxl-x2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "lua-flux:" in r.stdout
    assert "city96-sdxl-x2" in r.stderr and "HF_HUB_OFFLINE=0" in r.stderr
    assert hub.requests == []
