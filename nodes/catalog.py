"""The loader's dropdown: which upscalers exist (local files, known downloads), what each option
value means, and which one ``auto`` picks.

Why a module of its own: the option values are a contract with saved workflows, so their format,
their parsing and the ``auto`` order live in one place, apart from the node that loads.

Option values (stable; a workflow stores the value it was saved with):

* ``auto``
* a local file: ``<path relative to latent_upscale_models> [<label>]``, e.g.
  ``lua_flux.safetensors [LUA · 16ch FLUX/SD3 · x2 x4]``
* a local LSSGen folder: ``<folder>/ [<label>]``
* a known download: ``download/<key> [<label>]``, e.g.
  ``download/city96-sdxl-x2 [city96 · 4ch SDXL · x2 · Apache-2.0]``

The label is for people and is never needed: only the part before `` [`` identifies the entry,
so a value saved with another label (or none, e.g. written by hand into an API prompt) keeps
working as long as the file is there. A label depends only on the file's header (local) or the
registry (downloads), never on whether a download already happened, so values do not change under
a saved workflow. Labels are read from safetensors headers and ``config.json`` without reading any
tensor, and cached by path, size and mtime; pickles (``.pth``/``.pt``) get a label only when
their name is one the registry knows.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..lua_core import (
    DIFFUSERS_WEIGHTS,
    FAMILIES,
    KNOWN,
    LATENT_SPACES,
    KnownCheckpoint,
    LuaError,
    Scales,
    conversion_source,
    describe,
    families_with_channels,
    find_known,
)

log = logging.getLogger("ComfyUI-LUA")

FOLDER = "latent_upscale_models"
AUTO = "auto"
DOWNLOAD_PREFIX = "download/"

#: the family's rank for ``auto`` and its label come from its registry entry (``lua_core.FAMILIES``)
_FAMILIES = {f.name: f for f in FAMILIES}
RESEARCH_USE = "no licence stated: research use"
#: the upscale node's default scale: ``auto`` prefers upscalers that can do it
DEFAULT_SCALE = 2.0


@dataclass(frozen=True)
class Choice:
    """One dropdown entry and what is known about it without loading it."""

    name: str  # "lua_flux.safetensors", "LSSGen-SDXL-VAE-scaler/", "download/lua-flux"
    family: str | None = None  # lua_core's family name; None: unknown until loaded
    channels: int | None = None
    fits: tuple[str, ...] = ()  # latent formats it was made for; () = not known
    scales: Scales | None = None  # None: not known until loaded
    license: str | None = None
    path: Path | None = None  # local file or folder; None for a download
    known: KnownCheckpoint | None = field(default=None, compare=False)

    @property
    def is_download(self) -> bool:
        return self.path is None

    @property
    def research_only(self) -> bool:
        fam = _FAMILIES.get(self.family or "")
        return fam is not None and fam.research_only

    @property
    def label(self) -> str:
        if self.family is None:
            return ""
        fam = _FAMILIES.get(self.family)
        parts = [fam.label if fam else self.family]
        if self.channels:
            could = [f for f, space in LATENT_SPACES.items()
                     if fam and f in fam.formats and space.channels == self.channels]
            made_for = "/".join(LATENT_SPACES[f].label for f in (self.fits or could)) or \
                families_with_channels(self.channels)
            parts.append(f"{self.channels}ch {made_for}".strip())
        if self.scales is not None:
            parts.append(self.scales.short)
        if self.research_only:
            parts.append("research use")
        elif self.license:
            parts.append(self.license)
        return " · ".join(parts)

    @property
    def value(self) -> str:
        label = self.label
        return f"{self.name} [{label}]" if label else self.name

    def can_do(self, scale: float) -> bool:
        """Whether one load serves ``scale`` natively (None scales: unknown, assumed yes)."""
        return self.scales is None or scale in self.scales

    def describe(self) -> str:
        """``name (LUA · 16ch FLUX/SD3 · x2 x4)`` for messages."""
        label = self.label
        return f"{self.name} ({label})" if label else self.name


# ------------------------------------------------------------------------------------------------
# Local files
# ------------------------------------------------------------------------------------------------
def _registry_by_local_name() -> dict[str, KnownCheckpoint]:
    """Registry entries by the names their files have on disk (raw and converted)."""
    names: dict[str, KnownCheckpoint] = {}
    for e in KNOWN:
        names[e.local_name.lower()] = e
        stem, ext = os.path.splitext(e.local_name)
        if ext.lower() in (".pth", ".pt", ".ckpt", ".bin"):
            names[(stem + ".safetensors").lower()] = e
    return names


def local_choice(path: Path, name: str) -> Choice | None:
    """The entry for a local file or LSSGen folder; None for a file that is no upscaler we know."""
    pr = describe(path)
    if pr.foreign:
        return None
    known = _registry_by_local_name().get(Path(name.rstrip("/")).name.lower())
    family = pr.family or (known.family if known else None)
    if known is not None and family != known.family:
        known = None  # a file named like a registry entry but holding something else
    channels = pr.channels or (known.channels if known else None)
    fits = made_for(family, channels, pr.made_for, known)
    scales = pr.scales if pr.scales is not None else (known.scales if known else None)
    return Choice(name, family, channels, fits, scales, known.license if known else None, path, known)


def made_for(family: str | None, channels: int | None, own: tuple[str, ...],
             known: KnownCheckpoint | None = None) -> tuple[str, ...]:
    """The latent formats a file was made for: what it says itself (a header, a released name), else
    its registry entry's, else for a 16-channel LUA the released one's (FLUX, whose LUA also runs on
    SD3 latents); () when nothing says."""
    if own:
        return own
    if known is not None:
        return known.fits
    if family == "lua" and channels == 16:
        return ("flux", "sd3")
    return ()


def loaded_choice(choice: Choice, upscaler: Any) -> Choice:
    """``choice`` as the loaded module says it is (for a file whose header told nothing)."""
    return Choice(choice.name, upscaler.family, upscaler.latent_channels,
                  made_for(upscaler.family, upscaler.latent_channels, upscaler.made_for, choice.known),
                  upscaler.native_scales, choice.license, choice.path, choice.known)


def local_choices() -> list[Choice]:
    """Every usable file and LSSGen folder in ``latent_upscale_models`` (all its paths), sorted."""
    import folder_paths

    out: dict[str, Choice] = {}
    try:
        files = folder_paths.get_filename_list(FOLDER)
    except Exception as e:  # an unreadable folder must not take the node list down
        log.warning("ComfyUI-LUA: cannot list %s: %s", FOLDER, e)
        return []
    for rel in files:
        rel = rel.replace(os.sep, "/")
        parent, base = rel.rpartition("/")[0], rel.rpartition("/")[2]
        full = folder_paths.get_full_path(FOLDER, rel)
        if full is None:
            continue
        if base == DIFFUSERS_WEIGHTS and parent and (Path(full).parent / "config.json").is_file():
            name, path = parent + "/", Path(full).parent  # an LSSGen folder: one entry for it
        else:
            name, path = rel, Path(full)
        if name in out:
            continue
        choice = local_choice(path, name)
        if choice is not None:
            out[name] = choice
    # a pickle and its conversion are one model: the list shows the pickle's name (what was downloaded or put
    # there) and does not grow after the first load converts it; a value naming the conversion still loads.
    # Only a .safetensors beside another entry of the same stem can be one: no header is read for the others
    stems = collections.Counter(PurePosixPath(name).with_suffix("") for name in out)
    for name, choice in list(out.items()):
        p = PurePosixPath(name)
        if p.suffix.lower() != ".safetensors" or stems[p.with_suffix("")] < 2 or choice.path is None:
            continue
        src = conversion_source(choice.path)
        if src is not None and str(p.with_name(src.name)) in out:
            del out[name]
    return [out[k] for k in sorted(out, key=str.lower)]


def download_choices() -> list[Choice]:
    """The registry's checkpoints, in registry order."""
    return [download_choice(e) for e in KNOWN]


def download_choice(e: KnownCheckpoint) -> Choice:
    return Choice(DOWNLOAD_PREFIX + e.key, e.family, e.channels, tuple(e.fits), e.scales, e.license, None, e)


def all_choices() -> list[Choice]:
    return local_choices() + download_choices()


def option_values(choices: Iterable[Choice] | None = None) -> list[str]:
    """The dropdown: ``auto``, local entries, downloads."""
    return [AUTO] + [c.value for c in (all_choices() if choices is None else choices)]


# ------------------------------------------------------------------------------------------------
# From an option value back to an entry
# ------------------------------------------------------------------------------------------------
def name_of(value: str) -> str:
    """The identifying part of an option value (the label dropped)."""
    v = value.strip()
    if v.endswith("]") and " [" in v:
        return v[: v.rindex(" [")].strip()
    return v


def find(value: str, choices: list[Choice] | None = None) -> Choice:
    """The entry an option value names, even one not in today's list (another label, a file that
    is hidden, a value typed into an API prompt). Raises ``LuaError`` saying where it looked."""
    name = name_of(value)
    if name.startswith(DOWNLOAD_PREFIX):
        key = name[len(DOWNLOAD_PREFIX):]
        try:
            return download_choice(find_known(key))
        except LuaError as e:
            raise LuaError(f"{value!r} is not a download this version of the pack knows: {e} Pick another "
                           "entry.") from None
    for c in choices if choices is not None else local_choices():
        if c.name == name or c.name == name + "/":
            return c
    path = _find_path(name)
    if path is not None:
        choice = local_choice(path, name)
        if choice is not None:
            return choice
        return Choice(name, path=path)  # loading will say what the file is not
    raise LuaError(f"{name!r} is not in {FOLDER} (looked in {', '.join(model_dirs()) or 'no folder'}). Put the "
                   "file there and refresh (R), or pick another entry.")


def _find_path(name: str) -> Path | None:
    import folder_paths

    clean = os.path.relpath(os.path.join("/", name.rstrip("/")), "/")  # cannot leave the folder
    full = folder_paths.get_full_path(FOLDER, clean)
    if full is not None:
        p = Path(full)
        if p.name == DIFFUSERS_WEIGHTS and (p.parent / "config.json").is_file():
            return p.parent
        return p
    for base in model_dirs():
        p = Path(base) / clean
        if p.is_dir() and (p / DIFFUSERS_WEIGHTS).is_file():
            return p
    return None


def model_dirs() -> list[str]:
    import folder_paths

    try:
        return list(folder_paths.get_folder_paths(FOLDER))
    except KeyError:
        return []


def download_dir() -> Path:
    """Where downloads go: the first ``latent_upscale_models`` path (ComfyUI's default one)."""
    dirs = model_dirs()
    if not dirs:
        raise LuaError(f"ComfyUI has no {FOLDER} folder configured; add one in extra_model_paths.yaml.")
    return Path(dirs[0])


# ------------------------------------------------------------------------------------------------
# auto
# ------------------------------------------------------------------------------------------------
def _family_rank(c: Choice) -> int:
    fam = _FAMILIES.get(c.family or "")
    return fam.auto_rank if fam else len(_FAMILIES)


#: latent formats close enough that an upscaler made for one is a last resort for the other (the same
#: VAE architecture and channel count); any other pair is never mixed (FLUX and Wan 2.1 latents, say)
_NEIGHBOURS = {"sd15": "sdxl", "sdxl": "sd15"}


def fits_format(fits: tuple[str, ...], fmt: str) -> bool:
    """Whether latents of ``fmt`` may go to a model made for ``fits`` (a neighbour is a last resort); any
    when ``fits`` is not known (())."""
    return not fits or fmt in fits or _NEIGHBOURS.get(fmt) in fits


def takes(c: Choice, fmt: str) -> bool:
    """False for an entry made for other latents than ``fmt`` (its own formats, or its family's, say
    so), which must never get them; a neighbouring format (``_NEIGHBOURS``) is a last resort, not other."""
    if c.fits:
        return fits_format(c.fits, fmt)
    fam = _FAMILIES.get(c.family or "")
    return fam is None or not fam.formats or fmt in fam.formats


def family_formats(c: Choice) -> tuple[str, ...]:
    """The formats the entry's family has models for (() when any, or unknown)."""
    fam = _FAMILIES.get(c.family or "")
    return fam.formats if fam else ()


def tier(c: Choice, fmt: str) -> int | None:
    """Rank group for ``auto`` (lower is better); None: not a candidate. See ``auto_choice``."""
    if not takes(c, fmt):
        return None
    fam = _FAMILIES.get(c.family or "")
    if c.is_download:
        if fmt not in c.fits:
            return None  # a neighbour's download: never what auto fetches
        return RESEARCH_TIER if fam is not None and fam.research_only else 2
    if c.fits and fmt not in c.fits:
        return 4  # made for the neighbouring format
    if not c.fits and fam is not None and fam.formats:
        same = {f for f in fam.formats if LATENT_SPACES[f].channels == LATENT_SPACES[fmt].channels}
        if same - {fmt, _NEIGHBOURS.get(fmt)}:
            return 4  # unknown make, and its channel count fits several latent spaces (FLUX or Wan 2.1?)
    if not c.can_do(DEFAULT_SCALE):
        return 3
    return 0 if c.fits else 1


#: research-only downloads (LSSGen: no licence stated) fit but are never what ``auto`` downloads
RESEARCH_TIER = 5


def ranked(choices: Iterable[Choice], fmt: str, channels: int,
           families: tuple[str, ...] | None = None) -> list[Choice]:
    """Candidates for a ``fmt`` latent with ``channels`` channels, best first (see ``auto_choice``)."""
    keyed = []
    for c in choices:
        if c.channels != channels or (families is not None and c.family not in families):
            continue
        group = tier(c, fmt)
        if group is None:
            continue
        keyed.append(((group, 0 if c.can_do(DEFAULT_SCALE) else 1, _family_rank(c), c.name.lower()), c))
    return [c for _, c in sorted(keyed, key=lambda kc: kc[0])]


def auto_choice(choices: list[Choice], fmt: str | None, channels: int | None) -> Choice:
    """What ``auto`` loads.

    With a MODEL (``fmt``, ``channels``): the upscalers with the latent's channel count, in tiers:

    0. local files made for this latent format that do x2 (the upscale node's default scale);
    1. local files of unknown make (no registry name, no metadata) that do x2;
    2. downloads made for this format;
    3. local files made for it that cannot do x2 (e.g. city96 x1.5: it would fail at the default);
    4. local files made for a neighbouring format (SD1.5 for SDXL and back), and local files of
       unknown make whose channel count fits several latent spaces (a 16-channel file could be for
       FLUX, SD3, Wan 2.1 or CogView4): a last resort.

    Files made for another format are never candidates otherwise (FLUX and Wan 2.1 latents both
    have 16 channels and must not be confused), nor are families with no model for the format.
    Research-only downloads (LSSGen, no licence stated) are listed as fitting but never picked.

    Within a tier: those that do x2 first; then by the family's ``auto_rank`` (LUA, city96 v2.1,
    SesquiLSR, NNLatentUpscale, LSSGen); then by name. So ``auto`` does not download while a fitting
    x2-capable file is on disk (what you put there is what you chose), prefers the small,
    exact-factor, Apache-2.0 city96 x2 for SDXL/SD1.5, then the MIT SesquiLSR, over the GPL-3.0
    NNLatentUpscale, and never downloads LSSGen.

    Without a MODEL: the LUA FLUX checkpoint, a local 16-channel LUA file first.
    """
    if fmt is None:
        found = ranked(choices, "flux", 16, families=("lua",))
        if found:
            return found[0]
        return download_choice(find_known("lua-flux"))
    channels = channels or LATENT_SPACES[fmt].channels
    found = [c for c in ranked(choices, fmt, channels) if tier(c, fmt) != RESEARCH_TIER]
    if not found:
        research = [c.name for c in ranked(choices, fmt, channels)]
        raise LuaError(no_upscaler_message(LATENT_SPACES[fmt].label, channels) + (
            f" Research-use downloads fit ({', '.join(research)}): pick one yourself if its terms suit you."
            if research else ""))
    return found[0]


def no_upscaler_message(what: str, channels: int | None) -> str:
    """Why nothing fits a format, and what to do about it."""
    ch = f"{channels}-channel " if channels else ""
    return (f"no upscaler on disk or in the download list fits {what} ({ch}latents). Make one for it with "
            f"`python -m lua_core finetune` (a LUA adapted to that VAE; see docs/training.md), or disconnect the "
            f"model input to load a checkpoint anyway.")


def fitting_names(choices: Iterable[Choice], fmt: str | None, channels: int) -> list[str]:
    """Names of the entries that would fit (for mismatch messages), best first."""
    if fmt is not None:
        return [c.name for c in ranked(choices, fmt, channels)]
    return [c.name for c in choices if c.channels == channels]
