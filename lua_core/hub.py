"""The checkpoints this pack knows how to download, and fetching them ready for ``load_model``.

Why a registry: the node's download list, the CLI, the docs and error messages must agree on
where each upscaler comes from, what it fits and under which licence, so that lives in one
place (``KNOWN``), as data.

Why fetching is more than ``urlopen``: checkpoints are tens to hundreds of MB and users are
often on flaky or no network. So a file is never left half-written under its final name (a
truncated file is where ``HeaderTooLarge`` reports come from), a broken transfer resumes with a
``Range`` request instead of starting over, offline mode (``HF_HUB_OFFLINE=1`` or
``offline=True``) sends no request at all, and every failure is a ``DownloadError`` that names
the checkpoint, the URL and what to do.

* Hugging Face files go through ``huggingface_hub.hf_hub_download(local_dir=...)``, which brings
  resume (``.cache/huggingface/download/*.incomplete`` in the destination), ``HF_ENDPOINT``
  mirrors, tokens for gated repos, Xet storage and reuse of the user's HF cache. The library reads
  ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` once, at import (checked on 0.36.2), so this module reads
  them again at each call and passes ``endpoint=`` itself, and decides offline mode itself.
  Before a download it sends one HEAD without the library's backoff, so an unreachable hub fails
  in seconds, not after ~25 s of retries, and so the total size is known for progress.
* Files hosted on GitHub (NNLatentUpscale, LSSGen) go through a small urllib downloader with the
  same guarantees: ``FILE.part`` + ``Range`` resume, atomic rename, sha256 check when known.

A file that is already in the destination folder is used as it is, with no request: a released
checkpoint does not change, and a ComfyUI user without network must not wait on timeouts. Delete
it to download it again.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import logging
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from .archs import FAMILY_NAMES
from .errors import DownloadError, first_line
from .latent_formats import LATENT_FORMATS, LATENT_SPACES
from .scales import Scales

log = logging.getLogger(__name__)

#: ``progress(downloaded_bytes, total_bytes)``; called from the calling thread, so a callback that
#: raises (ComfyUI's cancel) stops the wait. ``total`` grows when a size becomes known.
ProgressCallback = Callable[[int, int], None]

LIBRARY_NAME = "ComfyUI-LUA"
USER_AGENT = f"{LIBRARY_NAME} (lua_core.hub; python-urllib)"
DEFAULT_RETRIES = 2  # resumed attempts after an interrupted transfer
_CHUNK = 1 << 20
_POLL_S = 0.1
_HEARTBEAT_S = 0.5  # callback at least this often while a download runs, grown or not (cancel checks)
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteFile:
    """One file of a checkpoint.

    ``source`` is the path inside the Hugging Face repo for hub-hosted checkpoints, otherwise a
    full ``https://`` URL. ``local`` is where it lands, relative to the destination folder
    (default: the last part of ``source``); ``sha256`` is checked after a download when known.
    """

    source: str
    local: str = ""
    sha256: str | None = None

    def __post_init__(self) -> None:
        if not self.local:
            object.__setattr__(self, "local", urlsplit(self.source).path.rsplit("/", 1)[-1])


@dataclass(frozen=True)
class KnownCheckpoint:
    """A downloadable upscaler: where it comes from, where it goes, what it fits, its licence."""

    key: str  # stable id used by UIs and the CLI
    family: str  # a family name of lua_core.archs (FAMILY_NAMES)
    title: str
    channels: int  # latent channels it takes
    scales: Scales  # factors it was trained for
    fits: tuple[str, ...]  # latent formats it is meant for (LATENT_FORMATS)
    license: str
    note: str  # one line for users (limits, licence caveats)
    homepage: str
    files: tuple[RemoteFile, ...]
    local_name: str  # a file, or a folder holding the files, under the destination
    hf_repo: str | None = None  # Hugging Face repo id; None: files[].source are URLs
    revision: str | None = None  # pinned commit of hf_repo; None follows "main"

    def __post_init__(self) -> None:
        problems = []
        if self.family not in FAMILY_NAMES:
            problems.append(f"family {self.family!r} is not one of {FAMILY_NAMES}")
        if not isinstance(self.scales, Scales):
            problems.append(f"scales {self.scales!r} must be a lua_core.scales.Scales")
        if not set(self.fits) <= set(LATENT_FORMATS):
            problems.append(f"fits {self.fits} must be among {LATENT_FORMATS}")
        if not self.files:
            problems.append("no files")
        for f in self.files:
            if f.local != self.local_name and not f.local.startswith(self.local_name + "/"):
                problems.append(f"{f.local} is not {self.local_name} or inside it")
            if self.hf_repo and f.local != f.source:
                problems.append(f"{f.source}: huggingface_hub puts a file at its repo path, not {f.local}")
            if not self.hf_repo and not f.source.startswith(("https://", "http://")):
                problems.append(f"{f.source} is not a URL")
        if problems:
            raise ValueError(f"KnownCheckpoint {self.key!r}: " + "; ".join(problems))

    @property
    def is_folder(self) -> bool:
        """True when the checkpoint is a folder of files (LSSGen), not one file."""
        return any(f.local != self.local_name for f in self.files)

    @property
    def source_text(self) -> str:
        """Where it comes from, for tables: ``HF owner/name`` or the homepage."""
        return f"HF {self.hf_repo}" if self.hf_repo else self.homepage.replace("https://", "")

    def url_of(self, f: RemoteFile, endpoint: str | None = None) -> str:
        """The URL a file is downloaded from (Hugging Face: the ``resolve`` URL on the endpoint)."""
        if not self.hf_repo:
            return f.source
        base = (endpoint or hf_endpoint()).rstrip("/")
        return f"{base}/{self.hf_repo}/resolve/{self.revision or 'main'}/{f.source}"

    def urls(self, endpoint: str | None = None) -> list[str]:
        return [self.url_of(f, endpoint) for f in self.files]

    def local_path(self, dest_dir: str | os.PathLike) -> Path:
        """Where the raw download lives (before any conversion to safetensors)."""
        return Path(dest_dir).expanduser() / self.local_name

    def is_present(self, dest_dir: str | os.PathLike) -> bool:
        """All files are in ``dest_dir`` (nothing to download)."""
        dest = Path(dest_dir).expanduser()
        return all((dest / f.local).is_file() for f in self.files)


def _github_raw(owner_repo: str, ref: str, path: str) -> str:
    # github.com/.../raw/... redirects to raw.githubusercontent.com, or to media.githubusercontent.com
    # when the file is stored with Git LFS (raw.githubusercontent.com would serve the LFS pointer).
    return f"https://github.com/{owner_repo}/raw/{ref}/{path}"


def _registry() -> tuple[KnownCheckpoint, ...]:
    entries = [KnownCheckpoint(
        key="lua-flux", family="lua", title="LUA for FLUX (official release)",
        channels=16, scales=Scales.of(2, 4), fits=("flux", "sd3"), license="Apache-2.0",
        note="the official LUA weights, trained on FLUX.1 VAE latents; converted to safetensors once",
        homepage="https://huggingface.co/vaskers5/LUA-FLUX",
        files=(RemoteFile("lua_flux.pth"),), local_name="lua_flux.pth",
        hf_repo="vaskers5/LUA-FLUX",
        # No commit of vaskers5/LUA-FLUX is quoted by any public source we could read (the
        # official code and other packs download from main), so this follows main; pin it once
        # a commit is checked against a real download.
        revision=None,
    )]
    # city96 v2.1: the commit below is the one city96's own ComfyUI node and other packs pin.
    city96_commit = "99c65021fa947dfe3d71ec4e24793fe7533a3322"
    for ver, fmt in (("v1", "sd15"), ("xl", "sdxl")):
        for s in ("1.25", "1.5", "2.0"):
            name = f"latent-upscaler-v2.1_SD{ver}-x{s}.safetensors"
            entries.append(KnownCheckpoint(
                key=f"city96-{fmt}-x{float(s):g}", family="city96",
                title=f"city96 SD-Latent-Upscaler v2.1, SD{ver} x{s}",
                channels=4, scales=Scales.of(float(s)), fits=(fmt,), license="Apache-2.0",
                note="one fixed factor per file; raw latents",
                homepage="https://huggingface.co/city96/SD-Latent-Upscaler",
                files=(RemoteFile(name),), local_name=name,
                hf_repo="city96/SD-Latent-Upscaler", revision=city96_commit,
            ))
    # NNLatentUpscale ships its weights in the root of its GitHub repo (default branch master).
    for fmt, name, label in (("sd15", "sd15_resizer.pt", "SD1.x"), ("sdxl", "sdxl_resizer.pt", "SDXL")):
        entries.append(KnownCheckpoint(
            key=f"nnlatent-{fmt}", family="nnlatentupscale", title=f"NNLatentUpscale (Ttl) for {label}",
            channels=4, scales=Scales.between(1, 2), fits=(fmt,), license="GPL-3.0",
            note="GPL-3.0 weights; any factor from 1 to 2; converted to safetensors once",
            homepage="https://github.com/Ttl/ComfyUi_NNLatentUpscale",
            files=(RemoteFile(_github_raw("Ttl/ComfyUi_NNLatentUpscale", "master", name)),), local_name=name,
        ))
    # LSSGen: pinned to the commit that added weights/ (as recorded by a public code index).
    lssgen_commit = "8355a1792e9b123ae81be50f5c34fe68165269ad"
    for folder, fmt, ch in (("FLUX", "flux", 16), ("SD3", "sd3", 16), ("SDXL", "sdxl", 4), ("SD", "sd15", 4),
                            ("CogView4", "cogview4", 16)):
        local = f"LSSGen-{folder}-VAE-scaler"
        files = tuple(
            RemoteFile(_github_raw("inventec-ai-center/LSSGen", lssgen_commit, f"weights/{folder}-VAE-scaler/{n}"),
                       f"{local}/{n}")
            for n in ("config.json", "diffusion_pytorch_model.safetensors"))
        entries.append(KnownCheckpoint(
            key=f"lssgen-{fmt}", family="lssgen", title=f"LSSGen latent upsampler for {folder}",
            channels=ch, scales=Scales.of(2), fits=(fmt,), license="none stated",
            note="no licence stated: research use only; works in the model's scaled latent space",
            homepage="https://github.com/inventec-ai-center/LSSGen",
            files=files, local_name=local,
        ))
    # SesquiLSR ships its weights in models/ of its GitHub repo. The commit and the sha256 of each file are the
    # ones another public ComfyUI pack pins for these files (not checked here against a download: no network).
    sesqui_commit = "befae004248c403f38b76b9f65fd43b901ea3eaa"
    for fmt, stem, ch, digest in (
            ("sdxl", "SDXL", 4, "392c0e36fc0389a170cf6c1682556972d91d750c31aa392cdad1b13cad4e18e4"),
            ("flux", "Flux", 16, "dbc6362c910a179a22eca26f656fdacde17eded876ee8f05b8f5b73630e4ddbe"),
            ("flux2", "Flux2", 128, "f385ff2250b3f2c72ad422768558414d617b9a006cc0b1ce37a296cc99d17177"),
            ("wan21", "Wan21", 16, "d1b4c2c1d80b2af81e6bbfd38501ffb5adffb9f7c0ed2599555b837d0d2d015a")):
        name = f"upscaler_{stem}.safetensors"
        entries.append(KnownCheckpoint(
            key=f"sesqui-{fmt}", family="sesqui", title=f"SesquiLSR for {LATENT_SPACES[fmt].label} latents",
            channels=ch, scales=Scales.between(1, 2), fits=(fmt,), license="MIT",
            note=f"any factor from 1 to 2; for {LATENT_SPACES[fmt].models}; keep the file name (it says the format)",
            homepage="https://github.com/LoganBooker/SesquiLSR",
            files=(RemoteFile(_github_raw("LoganBooker/SesquiLSR", sesqui_commit, f"models/{name}"), sha256=digest),),
            local_name=name,
        ))
    keys = [e.key for e in entries]
    assert len(set(keys)) == len(keys), "duplicate keys in the registry"
    return tuple(entries)


#: Every checkpoint this pack can download, in display order.
KNOWN: tuple[KnownCheckpoint, ...] = _registry()


def known_checkpoints(channels: int | None = None, latent_format: Any = None) -> list[KnownCheckpoint]:
    """The known checkpoints, optionally only those for ``channels`` and/or a latent format.

    ``latent_format`` is a name (``"flux"``, ``"SDXL"``, ``"sd1.5"``...) or a ComfyUI latent format
    object, so a node can ask "what fits the model I am connected to".
    """
    fmt = None
    if latent_format is not None:
        from .latent_formats import format_name
        fmt = format_name(latent_format)
    return [e for e in KNOWN if (channels is None or e.channels == channels) and (fmt is None or fmt in e.fits)]


def find_known(key_or_repo: str) -> KnownCheckpoint:
    """A known checkpoint by key (``lua-flux``), repo id (``vaskers5/LUA-FLUX``) or ``repo/filename``.

    A repo that holds several checkpoints (city96, LSSGen) needs the key; the error lists them.
    """
    q = str(key_or_repo).strip().strip("/")
    ql = q.lower()
    for e in KNOWN:
        if e.key == ql:
            return e
    matches = [e for e in KNOWN if ql in _aliases(e)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise DownloadError(f"{q!r} holds several known checkpoints; name one of: "
                            f"{', '.join(e.key for e in matches)}.")
    raise DownloadError(f"unknown checkpoint {q!r}. Known keys: {', '.join(e.key for e in KNOWN)} "
                        "(python -m lua_core download --list describes them).")


def _aliases(e: KnownCheckpoint) -> set[str]:
    repo = e.hf_repo or "/".join(urlsplit(e.homepage).path.strip("/").split("/")[:2])
    names = {repo.lower()}
    names.update(f"{repo}/{f.source if e.hf_repo else f.local}".lower() for f in e.files)
    return names


# --------------------------------------------------------------------------------------------
# Environment, read at call time (huggingface_hub reads its variables once, at import)
# --------------------------------------------------------------------------------------------
def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_offline() -> bool:
    """Offline mode as set now: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``), or as the hub
    library saw it at import (then it refuses every request anyway)."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    return _hub_imported_offline()


def _hub_imported_offline() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def hf_endpoint() -> str:
    """``HF_ENDPOINT`` as set now (default ``https://huggingface.co``)."""
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    try:
        from huggingface_hub import constants
        return constants.ENDPOINT.rstrip("/")
    except ImportError:
        return "https://huggingface.co"


def _hf_cache_dir() -> Path:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def _timeout(var: str, default: float = 10.0) -> float:
    try:
        return float(os.environ.get(var) or default)
    except ValueError:
        return default


def default_models_dir() -> Path:
    """Where downloads go when no folder is given: ``$LUA_MODELS_DIR``, else ``~/.cache/lua_core``
    (under ``$XDG_CACHE_HOME`` when set). The ComfyUI nodes pass their own models folder."""
    if os.environ.get("LUA_MODELS_DIR"):
        return Path(os.environ["LUA_MODELS_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "lua_core"


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------
def fetch(entry: KnownCheckpoint, dest_dir: str | os.PathLike, *, progress: ProgressCallback | None = None,
          offline: bool | None = None, retries: int = DEFAULT_RETRIES) -> Path:
    """Download ``entry`` into ``dest_dir`` if needed and return the path to give ``load_model``.

    A pickle (``.pth``/``.pt``) is converted to safetensors once (``ensure_safetensors``) and the
    ``.safetensors`` is returned; a folder checkpoint (LSSGen) returns the folder. ``offline``
    None follows ``HF_HUB_OFFLINE``. Raises ``DownloadError``.
    """
    kept = kept_conversion(entry, dest_dir)
    if kept is not None:
        return kept
    path = download(entry, dest_dir, progress=progress, offline=offline, retries=retries)
    from .checkpoints import PICKLE_SUFFIXES
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        from .errors import CheckpointError
        from .loading import ensure_safetensors
        try:
            return Path(ensure_safetensors(path))
        except CheckpointError as e:
            raise DownloadError(
                f"{entry.key}: the checkpoint on disk cannot be loaded: {e} To download it again, delete "
                f"{path} and run: python -m lua_core download {entry.key}") from e
    return path


def kept_conversion(entry: KnownCheckpoint, dest_dir: str | os.PathLike) -> Path | None:
    """The safetensors conversion of a downloaded pickle whose original was deleted to save space.

    Converting keeps the pickle, but users delete it; the conversion records the pickle's name
    (``converted_from``), so it is recognised and nothing is downloaded again.
    """
    from .checkpoints import META_SOURCE, PICKLE_SUFFIXES, converted_path, read_metadata
    dest = Path(dest_dir).expanduser()
    if len(entry.files) != 1 or not entry.local_name.lower().endswith(PICKLE_SUFFIXES):
        return None
    if (dest / entry.local_name).is_file():
        return None  # fetch checks that the conversion is current
    conv = converted_path(dest / entry.local_name)
    if conv.is_file() and read_metadata(conv).get(META_SOURCE) == entry.local_name:
        return conv
    return None


def fetch_known(key_or_repo: str, dest_dir: str | os.PathLike | None = None, *,
                progress: ProgressCallback | None = None, offline: bool | None = None) -> Path:
    """``fetch(find_known(key_or_repo), dest_dir or default_models_dir())``."""
    return fetch(find_known(key_or_repo), default_models_dir() if dest_dir is None else dest_dir,
                 progress=progress, offline=offline)


def download(entry: KnownCheckpoint, dest_dir: str | os.PathLike, *, progress: ProgressCallback | None = None,
             offline: bool | None = None, retries: int = DEFAULT_RETRIES) -> Path:
    """Make the raw files of ``entry`` present in ``dest_dir`` (no conversion); return their path.

    Files already there are used without any request. Missing ones are downloaded, or in offline
    mode copied from the Hugging Face cache when it has them; otherwise ``DownloadError``.
    ``progress`` (or a console bar when None) follows the bytes; ``retries`` is how many times an
    interrupted transfer is resumed before giving up (the partial file is kept for next time).
    """
    dest = Path(dest_dir).expanduser()
    missing = [f for f in entry.files if not (dest / f.local).is_file()]
    off = bool(offline) if offline is not None else is_offline()
    if missing and off:
        if entry.hf_repo:
            missing = [f for f in missing if not _copy_from_hf_cache(entry, f, dest)]
        if missing:
            raise DownloadError(_offline_message(entry, missing, dest, explicit=offline is not None))
    if not missing:
        if progress is not None:
            size = sum((dest / f.local).stat().st_size for f in entry.files)
            progress(size, size)
        return entry.local_path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"{entry.key}: cannot create the destination folder {dest}: {e}") from e
    # huggingface_hub shows its own console bar; ours is for the URL downloads only
    reporter = _Progress(progress, entry.key, console=not entry.hf_repo)
    try:
        for f in missing:
            if entry.hf_repo:
                _download_hf(entry, f, dest, reporter, retries)
            else:
                _download_url(entry, f, dest, reporter, retries)
        reporter.finish()
    finally:
        reporter.close()
    return entry.local_path(dest)


def _offline_message(entry: KnownCheckpoint, missing: list[RemoteFile], dest: Path, explicit: bool) -> str:
    if explicit:
        why = "offline=True / --offline"
    elif _truthy(os.environ.get("HF_HUB_OFFLINE")):
        why = "HF_HUB_OFFLINE=1"
    elif _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        why = "TRANSFORMERS_OFFLINE=1"
    else:
        why = "huggingface_hub was imported with HF_HUB_OFFLINE=1; restart after changing it"
    names = ", ".join(f.local for f in missing)
    where = ", ".join(entry.url_of(f) for f in missing)
    fix = "Drop offline=True / --offline to download it" if explicit else "Set HF_HUB_OFFLINE=0 to download it"
    return (f"{entry.key}: offline mode is on ({why}) and {names} is not in {dest}. {fix}, or put {names} "
            f"into {dest} (from {where}).")


def _copy_from_hf_cache(entry: KnownCheckpoint, f: RemoteFile, dest: Path) -> bool:
    """Offline: reuse a copy in the user's HF cache (e.g. left there by another pack). No request."""
    try:
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(entry.hf_repo, f.source, cache_dir=str(_hf_cache_dir()),
                                        revision=entry.revision)
    except Exception as e:  # a broken cache is not worth failing for: report the file as missing
        log.debug("HF cache lookup failed for %s/%s: %s", entry.hf_repo, f.source, e)
        return False
    if not isinstance(cached, str) or not os.path.isfile(cached):
        return False
    final = dest / f.local
    part = final.with_name(final.name + ".part")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached, part)
        _check_payload(entry, f, part, cached)
        os.replace(part, final)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{entry.key}: cannot copy {cached} into {dest}: {e}") from e
    log.info("%s: copied %s from the Hugging Face cache", entry.key, f.local)
    return True


# -- Hugging Face ----------------------------------------------------------------------------
def _download_hf(entry: KnownCheckpoint, f: RemoteFile, dest: Path, reporter: _Progress, retries: int) -> None:
    from huggingface_hub import hf_hub_download

    endpoint = hf_endpoint()
    url = entry.url_of(f, endpoint)
    size, etag = _hf_probe(entry, f, url, dest, endpoint)
    reporter.begin_file(size)
    partial_dir = dest / ".cache" / "huggingface" / "download"

    def partial_bytes() -> int:  # the library's resumable .incomplete file for this etag
        if not etag:
            return 0
        found = glob.glob(os.path.join(glob.escape(str(partial_dir)), "**", f"*.{glob.escape(etag)}.incomplete"),
                          recursive=True)
        return max((os.path.getsize(p) for p in found if os.path.isfile(p)), default=0)

    def run() -> str:
        return hf_hub_download(entry.hf_repo, f.source, revision=entry.revision, local_dir=str(dest),
                               cache_dir=str(_hf_cache_dir()), endpoint=endpoint, library_name=LIBRARY_NAME,
                               etag_timeout=_timeout("HF_HUB_ETAG_TIMEOUT"))

    for attempt in range(retries + 1):
        try:
            if reporter.wants_polling:
                _run_polling(run, lambda: reporter.file_progress(partial_bytes()))
            else:
                _run_here(run)
            break
        except _WorkFailed as failed:  # errors of the callback itself (a cancel) pass through untouched
            e = failed.error
            if _hf_interrupted(e) and attempt < retries:
                log.warning("%s: download of %s interrupted (%s); resuming", entry.key, url, first_line(e))
                continue
            raise _hf_error(entry, f, e, url, dest, endpoint, partial=partial_bytes(), size=size,
                            attempts=attempt + 1) from e
    final = dest / f.local
    reporter.file_done(final.stat().st_size if final.is_file() else size or 0)
    if f.sha256:
        _check_payload(entry, f, final, url)


def _hf_probe(entry: KnownCheckpoint, f: RemoteFile, url: str, dest: Path, endpoint: str) -> tuple[int | None, str]:
    """One HEAD, no backoff: fail fast when the hub is unreachable, and learn size and etag."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    headers = build_hf_headers(library_name=LIBRARY_NAME)
    headers["Accept-Encoding"] = "identity"
    target = url
    try:
        for _ in range(5):  # follow relative redirects only (a renamed repo), as the library does
            r = get_session().head(target, headers=headers, allow_redirects=False,
                                   timeout=_timeout("HF_HUB_ETAG_TIMEOUT"))
            loc = r.headers.get("Location")
            if 300 <= r.status_code < 400 and loc and not urlsplit(loc).netloc:
                target = urljoin(target, loc)
                continue
            break
        hf_raise_for_status(r)
    except Exception as e:
        raise _hf_error(entry, f, e, url, dest, endpoint) from e
    size = r.headers.get("X-Linked-Size") or r.headers.get("Content-Length")
    etag = (r.headers.get("X-Linked-Etag") or r.headers.get("ETag") or "").removeprefix("W/").strip('"')
    return (int(size) if size and size.isdigit() else None), etag


def _hf_interrupted(e: BaseException) -> bool:
    import requests
    from huggingface_hub.utils import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(e, (HfHubHTTPError, OfflineModeIsEnabled)):
        return False
    if isinstance(e, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
                      requests.exceptions.Timeout)):
        return True
    return isinstance(e, OSError) and "Consistency check failed" in str(e)


def _hf_error(entry: KnownCheckpoint, f: RemoteFile, e: BaseException, url: str, dest: Path, endpoint: str, *,
              partial: int = 0, size: int | None = None, attempts: int = 1) -> DownloadError:
    import requests
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, DownloadError):
        return e
    key, repo, rev = entry.key, entry.hf_repo, entry.revision or "main"
    by_hand = f"or put {f.local} into {dest} by hand"
    if isinstance(e, OfflineModeIsEnabled) or isinstance(e.__cause__, OfflineModeIsEnabled):
        return DownloadError(_offline_message(entry, [f], dest, explicit=False))
    if isinstance(e, LocalEntryNotFoundError):  # the library could not reach the hub
        cause = e.__cause__ or e
        return DownloadError(f"{key}: could not reach {endpoint} to download {url} ({first_line(cause)}). "
                             f"Check the network, proxy or HF_ENDPOINT, {by_hand}.")
    if isinstance(e, (RepositoryNotFoundError, GatedRepoError)):
        return DownloadError(f"{key}: {endpoint} does not give access to the repository {repo} (HTTP "
                             f"{_status(e)}). If it is private or gated, log in (huggingface-cli login or HF_TOKEN); "
                             f"otherwise check HF_ENDPOINT, {by_hand}.")
    if isinstance(e, RevisionNotFoundError):
        return DownloadError(f"{key}: {repo} has no revision {rev} on {endpoint} ({url}). The registry is out of "
                             f"date; {by_hand}.")
    if isinstance(e, EntryNotFoundError):
        return DownloadError(f"{key}: {repo} has no file {f.source} at revision {rev} (HTTP 404 from {url}). "
                             f"The registry may be out of date: see {endpoint}/{repo}/tree/{rev}, {by_hand}.")
    if isinstance(e, HfHubHTTPError):
        return DownloadError(f"{key}: the hub answered HTTP {_status(e)} for {url}. Try again later, {by_hand}.")
    if _hf_interrupted(e):
        if partial or attempts > 1 or isinstance(e, requests.exceptions.ChunkedEncodingError):
            got = f"{partial} of {size} bytes" if size else f"{partial} bytes"
            return DownloadError(f"{key}: the download of {url} was interrupted ({first_line(e)}) after "
                                 f"{attempts} attempt(s); {got} are kept in {dest / '.cache' / 'huggingface'}. "
                                 "Run the same command again to resume.")
        what = "timed out" if isinstance(e, requests.exceptions.Timeout) else "could not connect"
        return DownloadError(f"{key}: {what} reaching {endpoint} for {url} ({first_line(e)}). Check the network, "
                             f"proxy or HF_ENDPOINT, {by_hand}.")
    # requests' errors are OSErrors too: they must not read as a disk problem
    if isinstance(e, requests.exceptions.HTTPError):
        return DownloadError(f"{key}: the hub answered HTTP {_status(e)} for {url}. Try again later, {by_hand}.")
    if isinstance(e, requests.exceptions.RequestException):
        return DownloadError(f"{key}: could not download {url} ({type(e).__name__}: {first_line(e)}). Check the "
                             f"network, proxy or HF_ENDPOINT (a full URL such as https://huggingface.co), {by_hand}.")
    if isinstance(e, OSError):
        return DownloadError(f"{key}: cannot write {f.local} into {dest}: {first_line(e)}")
    return DownloadError(f"{key}: downloading {url} failed ({type(e).__name__}: {first_line(e)}).")


def _status(e: BaseException) -> str:
    resp = getattr(e, "response", None)
    return str(getattr(resp, "status_code", "?"))


# -- plain URLs (GitHub) ---------------------------------------------------------------------
class _Interrupted(Exception):
    def __init__(self, have: int, total: int | None, reason: str):
        super().__init__(reason)
        self.have, self.total, self.reason = have, total, reason


def _download_url(entry: KnownCheckpoint, f: RemoteFile, dest: Path, reporter: _Progress, retries: int) -> None:
    final = dest / f.local
    part = final.with_name(final.name + ".part")
    timeout = _timeout("HF_HUB_DOWNLOAD_TIMEOUT")
    host = urlsplit(f.source).netloc
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(retries + 1):
            try:
                _get_resumable(f.source, part, reporter, timeout)
                break
            except _Interrupted as e:
                if attempt >= retries:
                    got = f"{e.have} of {e.total} bytes" if e.total else f"{e.have} bytes"
                    raise DownloadError(
                        f"{entry.key}: the download of {f.source} was interrupted ({e.reason}) after {attempt + 1} "
                        f"attempt(s); {got} are kept in {part}. Run the same command again to resume.") from e
                log.warning("%s: download of %s interrupted (%s); resuming", entry.key, f.source, e.reason)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise DownloadError(f"{entry.key}: {f.source} was not found on the server (HTTP 404). The registry may be "
                                f"out of date: see {entry.homepage}, or put {f.local} into {dest} by hand.") from e
        raise DownloadError(f"{entry.key}: {host} answered HTTP {e.code} for {f.source}. Try again later, or put "
                            f"{f.local} into {dest} by hand.") from e
    except urllib.error.URLError as e:
        what = "timed out" if isinstance(e.reason, TimeoutError) else "could not reach"
        raise DownloadError(f"{entry.key}: {what} {host} for {f.source} ({e.reason}). Check the network or proxy, "
                            f"or put {f.local} into {dest} by hand.") from e
    except TimeoutError as e:
        raise DownloadError(f"{entry.key}: {host} did not answer within {timeout:g} s for {f.source} "
                            "(HF_HUB_DOWNLOAD_TIMEOUT sets the limit). Try again later, or put "
                            f"{f.local} into {dest} by hand.") from e
    except DownloadError:
        raise
    except OSError as e:
        raise DownloadError(f"{entry.key}: cannot write {part}: {e}") from e
    reporter.file_done(part.stat().st_size)
    _check_payload(entry, f, part, f.source)
    os.replace(part, final)


def _get_resumable(url: str, part: Path, reporter: _Progress, timeout: float) -> None:
    """GET ``url`` into ``part``, continuing from its size with ``Range``; raises _Interrupted."""
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        # a fresh opener per call: proxy variables are read now, not when urllib was first used
        resp = urllib.request.build_opener().open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not have:
            raise
        total = _range_total(e.headers.get("Content-Range"))
        e.close()
        if total == have:  # the previous run got everything but stopped before the rename
            reporter.begin_file(total)
            reporter.file_progress(have)
            return
        part.unlink()
        raise _Interrupted(0, total, "the partial file did not match the server's copy; starting over") from None
    except (ConnectionError, http.client.HTTPException) as e:  # connected, then dropped before an answer
        raise _Interrupted(have, None, first_line(e)) from e
    with resp:
        total: int | None
        if have and resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != have:
                part.unlink()
                raise _Interrupted(0, total, f"the server resumed at byte {start}, not {have}; starting over")
            mode = "ab"
        else:  # 200: the server sent the whole file (no resume support, or a fresh start)
            have, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        reporter.begin_file(total)
        reporter.file_progress(have)
        with open(part, mode) as out:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (ConnectionError, TimeoutError, http.client.HTTPException) as e:
                    raise _Interrupted(have, total, first_line(e)) from e
                if not chunk:
                    break
                out.write(chunk)
                have += len(chunk)
                reporter.file_progress(have)
    if total is not None and have < total:
        raise _Interrupted(have, total, "the connection closed early")


def _content_range(value: str | None) -> tuple[int, int | None]:
    # "bytes START-END/TOTAL" (TOTAL may be "*")
    try:
        span, _, total = (value or "").split(" ", 1)[1].partition("/")
        return int(span.split("-")[0]), (int(total) if total.isdigit() else None)
    except (IndexError, ValueError):
        return -1, None


def _range_total(value: str | None) -> int | None:
    # "bytes */TOTAL" on a 416
    tail = (value or "").rpartition("/")[2]
    return int(tail) if tail.isdigit() else None


# -- checks ----------------------------------------------------------------------------------
def _check_payload(entry: KnownCheckpoint, f: RemoteFile, path: Path, origin: str) -> None:
    """Refuse (and delete) a Git LFS pointer or a file whose sha256 differs from the registry's."""
    size = path.stat().st_size
    if size < 1024:
        with open(path, "rb") as fh:
            if fh.read(len(_LFS_POINTER)) == _LFS_POINTER:
                path.unlink()
                raise DownloadError(f"{entry.key}: {origin} returned a Git LFS pointer ({size} bytes), not the file. "
                                    "The URL must go through github.com/.../raw/... (which follows LFS); the "
                                    "registry entry needs fixing.")
    if f.sha256:
        digest = _sha256(path)
        if digest != f.sha256.lower():
            path.unlink()
            raise DownloadError(f"{entry.key}: {f.local} from {origin} does not have the expected sha256 "
                                f"({f.sha256[:12]}..., got {digest[:12]}...), so it was deleted. The download was "
                                "corrupted or the file changed upstream: try again, and report it if it persists.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


# -- progress --------------------------------------------------------------------------------
class _Progress:
    """Byte progress over all files of one checkpoint, to a callback or a console bar."""

    def __init__(self, callback: ProgressCallback | None, desc: str, console: bool):
        self.callback = callback
        self.console = console and callback is None
        self.desc = desc
        self.total = 0  # sizes of the files begun so far
        self.base = 0  # bytes of the files finished
        self.last = -1
        self._file_size: int | None = None
        self._bar: Any = None
        self._called = 0.0  # time.monotonic() of the last callback

    @property
    def wants_polling(self) -> bool:
        return self.callback is not None

    def begin_file(self, size: int | None) -> None:
        if self._file_size is None and size is not None:
            self._file_size = size
            self.total += size

    def file_progress(self, nbytes: int) -> None:
        """Polled while a file downloads (``_run_polling``). The hub library writes in 10 MB chunks
        and waits out its retries silently, so the callback (where a cancel is raised) also runs
        when nothing grew, every ``_HEARTBEAT_S``, with the progress unchanged."""
        self._emit(self.base + nbytes, heartbeat=True)

    def file_done(self, size: int) -> None:
        if self._file_size is None:
            self.total += size
        self.base += size
        self._file_size = None
        self._emit(self.base)

    def finish(self) -> None:
        self._emit(self.base, final=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _emit(self, done: int, final: bool = False, heartbeat: bool = False) -> None:
        if done <= self.last and not final:
            if heartbeat and self.callback is not None and self.last >= 0 \
                    and time.monotonic() - self._called >= _HEARTBEAT_S:
                self._called = time.monotonic()
                self.callback(self.last, max(self.total, self.last))
            return
        done = max(done, self.last)
        self.last = done
        total = done if final else max(self.total, done)
        if self.callback is not None:
            self._called = time.monotonic()
            self.callback(done, total)
        elif self.console:
            if self._bar is None:
                from tqdm import tqdm
                self._bar = tqdm(total=total or None, unit="B", unit_scale=True, unit_divisor=1024, desc=self.desc)
            if total and self._bar.total != total:
                self._bar.total = total
            self._bar.update(done - self._bar.n)


class _WorkFailed(Exception):
    """The download itself failed (as opposed to the progress callback raising)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _run_here(work: Callable[[], Any]) -> Any:
    try:
        return work()
    except Exception as e:
        raise _WorkFailed(e) from e


def _run_polling(work: Callable[[], Any], poll: Callable[[], None]) -> Any:
    """Run ``work`` in a helper thread and call ``poll`` here meanwhile.

    Progress callbacks thus run in the caller's thread: ComfyUI's progress hook raises there when
    the user cancels, which ends the wait (the helper thread finishes the transfer in the
    background, so the next fetch finds it done or resumes it). ``work``'s own errors come back
    as ``_WorkFailed``.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = work()
        except Exception as e:  # handed to the caller below
            box["error"] = e

    t = threading.Thread(target=target, name="lua-core-download", daemon=True)
    t.start()
    while t.is_alive():
        t.join(_POLL_S)
        poll()
    if "error" in box:
        raise _WorkFailed(box["error"]) from box["error"]
    return box.get("value")


def describe(entries: Iterable[KnownCheckpoint] | None = None) -> list[dict[str, str]]:
    """Rows for tables (CLI ``--list``, docs): key, family, channels, scales, fits, licence, source, note."""
    return [{"key": e.key, "family": e.family, "channels": str(e.channels), "scales": str(e.scales),
             "fits": ", ".join(e.fits), "license": e.license, "source": e.source_text, "note": e.note}
            for e in (KNOWN if entries is None else entries)]


__all__ = ["DEFAULT_RETRIES", "KNOWN", "LATENT_FORMATS", "KnownCheckpoint", "ProgressCallback",
           "RemoteFile", "default_models_dir", "describe", "download", "fetch", "fetch_known", "find_known",
           "hf_endpoint", "is_offline", "known_checkpoints"]
