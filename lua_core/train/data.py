"""From a folder of images to training pairs: random crops, bicubic low-res versions, VAE latents, shards.

Paper, appendix "Training": 512 px crops of high-resolution photos, low-resolution versions made by
bicubic downsampling, all encoded by the frozen VAE; with an /8 VAE, x2 pairs are 32x32 -> 64x64
latents and x4 pairs 16x16 -> 64x64. Each crop gives one pair per scale (same HR latent).

Output folder::

    OUT/plan.json          the usable images (path, size) and the settings the crops derive from
    OUT/shard_00000.safetensors ...
                           hr (N, C, h, w) latents, lr_x2, lr_x4, ... and, unless --no-pixels,
                           hr_pixels (N, 3, crop, crop) uint8: what stages II/III compare against
                           (their low-res images are recomputed from it with ``make_lr``, the same
                           function that made the encoded ones)
    OUT/manifest.json      settings, VAE, shapes and the list of finished shards

Deterministic: crop positions come from (seed, image path, crop index) alone, so the output does
not depend on the order or the number of runs. Resumable: each shard is written atomically and a
re-run skips the shards already there (checked against the plan's hash).

Several ranks (``torchrun ... -m lua_core prepare``): rank 0 scans the folder and gives the plan
to all; rank ``r`` of ``N`` encodes shards ``r, r+N, r+2N, ...`` and writes them itself; rank 0
writes the manifest once all are done. The shards are the same files as one process makes
(each shard's crops and posterior-sample seed depend on its index only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .losses import downsample

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MANIFEST, PLAN = "manifest.json", "plan.json"
FORMAT = "lua-train-latents"
FORMAT_VERSION = 1
LATENT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class PrepareConfig:
    """How pairs are made. Defaults: the paper's (512 px crops, x2 and x4) where it gives them."""

    crop: int = 512
    scales: tuple[int, ...] = (2, 4)
    crops_per_image: int = 1
    #: skip images whose shorter side is below this (the paper uses OpenImages photos >= 1440 px);
    #: 0 means "at least one crop"
    min_side: int = 0
    seed: int = 0
    shard_size: int = 1024
    store_pixels: bool = True
    #: storage dtype of the latents (fp16 halves the disk against fp32 at ~1e-3 relative error)
    latent_dtype: str = "fp16"
    #: encode with the posterior mean (deterministic) or a sample of it
    sample_posterior: bool = False

    def __post_init__(self) -> None:
        if self.crop < 1 or not self.scales or min(self.scales) < 2:
            raise ValueError(f"crop must be positive and scales at least 2 (e.g. --scales 2,4), got crop {self.crop}, "
                             f"scales {list(self.scales)}")
        for name in ("crops_per_image", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")

    def plan_key(self) -> dict[str, Any]:
        """The settings the list of crops depends on."""
        return {"crop": self.crop, "crops_per_image": self.crops_per_image, "min_side": self.min_side,
                "seed": self.seed, "shard_size": self.shard_size}


@dataclass(frozen=True)
class Crop:
    path: str  # relative to the image folder, posix
    x: int
    y: int


@dataclass
class Plan:
    """The usable images and the settings; the crops follow from it deterministically."""

    config: dict[str, Any]
    images: list[tuple[str, int, int]]  # (relative path, width, height) after EXIF orientation
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def crops(self) -> list[Crop]:
        c, k = self.config["crop"], self.config["crops_per_image"]
        out = []
        for path, w, h in self.images:
            for i in range(k):
                rng = random.Random(f"{self.config['seed']}:{path}:{i}")
                out.append(Crop(path, rng.randrange(w - c + 1), rng.randrange(h - c + 1)))
        return out

    def digest(self) -> str:
        blob = json.dumps({"config": self.config, "images": self.images}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (recursive), as sorted relative posix paths."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of images")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), reading only the header."""
    from PIL import Image
    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
            w, h = h, w
    return w, h


def load_crop(root: str | os.PathLike, crop: Crop, size: int) -> torch.Tensor:
    """(3, size, size) uint8 RGB crop of an image (EXIF orientation applied)."""
    import numpy as np
    from PIL import Image, ImageOps
    with Image.open(Path(root) / crop.path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I;16"):  # 16-bit grayscale: Pillow's convert("RGB") clips it at 255 (near white)
            wide = np.asarray(im).astype(np.float32)
            im = Image.fromarray(np.round(wide / 257.0).astype(np.uint8), mode="L")
        elif im.mode in ("I", "F"):  # 32-bit integer or float data: no agreed 8-bit range to map it to
            raise ValueError(f"{crop.path} holds {im.mode} ({'32-bit integer' if im.mode == 'I' else 'float'}) "
                             "pixels; save it as an 8- or 16-bit image")
        im = im.convert("RGB")
        im = im.crop((crop.x, crop.y, crop.x + size, crop.y + size))
        arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (the VAE's input range)."""
    return pixels.float() / 127.5 - 1.0


def make_lr(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The low-resolution image of a pair: antialiased bicubic downsampling by ``scale`` (paper:
    "bicubic downsampling"), clamped to [-1, 1]. Used both to make the encoded pairs and to
    recompute the target of stage II's consistency loss, so the two are the same image."""
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"image {h}x{w} is not divisible by scale {scale}")
    return downsample(hr.float(), (h // scale, w // scale)).clamp(-1.0, 1.0)


# --------------------------------------------------------------------------------------------
# Planning and shards
# --------------------------------------------------------------------------------------------

def make_plan(images_dir: str | os.PathLike, cfg: PrepareConfig, progress: bool = True) -> Plan:
    """Scan the image folder: keep images large enough for a crop (and ``min_side``)."""
    from tqdm import tqdm
    need = max(cfg.crop, cfg.min_side)
    images, small, bad = [], [], []
    for rel in tqdm(list_images(images_dir), desc="scan", unit="img", disable=not progress):
        try:
            w, h = image_size(Path(images_dir) / rel)
        except Exception as e:  # PIL raises many types for broken files
            log.warning("skipping unreadable image %s: %s", rel, e)
            bad.append(rel)
            continue
        if min(w, h) < need:
            small.append(rel)
        else:
            images.append((rel, w, h))
    return Plan(cfg.plan_key(), images, {"too_small": small, "unreadable": bad})


def load_or_make_plan(images_dir: str | os.PathLike, out: Path, cfg: PrepareConfig, progress: bool = True) -> Plan:
    """The plan of an earlier run in ``out`` when its settings match (resume), else a new scan."""
    path = out / PLAN
    if path.is_file():
        d = json.loads(path.read_text(encoding="utf-8"))
        if d["config"] != cfg.plan_key():
            raise ValueError(f"{out} was prepared with other settings ({d['config']}, now {cfg.plan_key()}): "
                             "use another output folder, or the same settings to resume")
        return Plan(d["config"], [tuple(x) for x in d["images"]], d.get("skipped", {}))
    plan = make_plan(images_dir, cfg, progress)
    if not plan.images:
        raise ValueError(f"no usable image in {images_dir}: need files ({', '.join(IMAGE_SUFFIXES)}) whose "
                         f"shorter side is at least {max(cfg.crop, cfg.min_side)} px")
    _write_json(path, {"config": plan.config, "images": plan.images, "skipped": plan.skipped})
    return plan


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def shard_is_done(path: Path, index: int, digest: str) -> int | None:
    """The row count of a finished shard written for this plan, or None."""
    from safetensors import safe_open
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return None
    if meta.get("plan") != digest or meta.get("shard") != str(index):
        log.warning("%s was made with other settings or another VAE: making it again", path.name)
        return None
    return int(meta["count"])


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _chunks(items: list[Crop], n: int) -> Iterator[tuple[int, list[Crop]]]:
    for i in range(0, len(items), n):
        yield i // n, items[i:i + n]


def _shard_list(counts: dict[int, int]) -> list[dict[str, Any]]:
    """The manifest's shard entries (file, count, first row) for non-empty shards, in index order."""
    out, first = [], 0
    for index in sorted(counts):
        if counts[index]:
            out.append({"file": shard_name(index), "count": counts[index], "first": first})
            first += counts[index]
    return out


def encode_pairs(vae: Any, pixels: torch.Tensor, scales: tuple[int, ...], *, batch: int, device: torch.device,
                 sample: bool = False, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Encode uint8 HR crops (N, 3, S, S) and their x``scale`` low-res versions: {'hr', 'lr_x2', ...} on CPU."""
    out: dict[str, list[torch.Tensor]] = {"hr": [], **{f"lr_x{s}": [] for s in scales}}
    for i in range(0, pixels.shape[0], batch):
        hr = to_unit(pixels[i:i + batch].to(device))
        out["hr"].append(vae.encode(hr, sample=sample, generator=generator).cpu())
        for s in scales:
            out[f"lr_x{s}"].append(vae.encode(make_lr(hr, s), sample=sample, generator=generator).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def prepare(images_dir: str | os.PathLike, out_dir: str | os.PathLike, vae: Any, cfg: PrepareConfig | None = None, *,
            device: str | torch.device = "cpu", encode_batch: int = 16, workers: int = 4,
            progress: bool = True) -> dict[str, Any]:
    """Turn a folder of images into latent shards (see the module docstring); returns the manifest.

    ``vae`` is a ``FrozenVAE`` (``lua_core.train.vae.load_vae``) already on ``device``.
    """
    from safetensors.torch import save_file
    from tqdm import tqdm

    cfg = cfg or PrepareConfig()
    if encode_batch < 1:
        raise ValueError(f"encode-batch must be at least 1, got {encode_batch}")
    f = vae.downscale
    unit = f * max(cfg.scales)
    if cfg.crop % unit:
        raise ValueError(f"crop {cfg.crop} must be a multiple of {unit} (VAE downscale {f} x largest scale "
                         f"{max(cfg.scales)}) so every low-res image encodes to whole latent pixels")
    if cfg.latent_dtype not in LATENT_DTYPES:
        raise ValueError(f"latent_dtype must be one of {list(LATENT_DTYPES)}, got {cfg.latent_dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    main, rank, world = distributed.is_main(), distributed.rank(), distributed.world_size()
    plan = distributed.from_main(load_or_make_plan(images_dir, out, cfg, progress) if main else None)
    info = vae.info()
    identity = {k: info.get(k) for k in ("name", "file_size", "latent_channels", "downscale")}
    digest = _seed_of(plan.digest(), json.dumps(asdict(cfg), sort_keys=True), json.dumps(identity, sort_keys=True))
    digest = f"{digest:015x}"
    crops = plan.crops()
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "plan": digest,
        "config": {**asdict(cfg), "scales": list(cfg.scales)},
        "images_dir": str(Path(images_dir).resolve()), "vae": info,
        "latent_channels": vae.latent_channels, "downscale": f,
        "hr_latent_size": cfg.crop // f, "lr_latent_sizes": {str(s): cfg.crop // f // s for s in cfg.scales},
        "num_images": len(plan.images), "skipped": {k: len(v) for k, v in plan.skipped.items()},
        "shards": [], "failed": [], "num_items": 0, "complete": False,
    }
    old = out / MANIFEST
    failed: list[str] = json.loads(old.read_text(encoding="utf-8")).get("failed", []) if old.is_file() else []
    device = torch.device(device)
    gen = torch.Generator(device=device) if cfg.sample_posterior else None
    dtype = LATENT_DTYPES[cfg.latent_dtype]
    mine = [(i, items) for i, items in _chunks(crops, cfg.shard_size) if i % world == rank]
    counts: dict[int, int] = {}
    bar = tqdm(total=sum(len(items) for _, items in mine), unit="crop", disable=not progress or not main,
               desc="prepare" if world == 1 else f"prepare (rank 0 of {world})")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for index, items in mine:
            path = out / shard_name(index)
            count = shard_is_done(path, index, digest)
            if count is None:
                loaded = list(pool.map(lambda c: _try_load(images_dir, c, cfg.crop), items))
                ok = [px for px in loaded if px is not None]
                failed += [c.path for c, px in zip(items, loaded) if px is None]
                count = len(ok)
                if count:
                    pixels = torch.stack(ok)
                    if gen is not None:
                        gen.manual_seed(_seed_of(cfg.seed, index))
                    tensors = {k: v.to(dtype).contiguous() for k, v in encode_pairs(
                        vae, pixels, cfg.scales, batch=encode_batch, device=device,
                        sample=cfg.sample_posterior, generator=gen).items()}
                    if cfg.store_pixels:
                        tensors["hr_pixels"] = pixels
                    tmp = path.with_name(path.name + ".tmp")
                    save_file(tensors, str(tmp), metadata={"plan": digest, "shard": str(index), "count": str(count)})
                    os.replace(tmp, path)
            counts[index] = count
            if world == 1:  # the progress so far (several ranks: rank 0 writes the manifest at the end)
                _fill(manifest, counts, failed)
                _write_json(out / MANIFEST, manifest)
            bar.update(len(items))
    bar.close()
    for c, f in distributed.gather((counts, failed)) if world > 1 else ():
        counts.update(c)
        failed += f
    _fill(manifest, counts, failed)
    manifest["complete"] = True
    if main:
        _write_json(out / MANIFEST, manifest)
    distributed.barrier()  # every rank returns once the manifest is there
    return manifest


def _fill(manifest: dict[str, Any], counts: dict[int, int], failed: list[str]) -> None:
    manifest["shards"] = _shard_list(counts)
    manifest["num_items"] = sum(counts.values())
    manifest["failed"] = sorted(set(failed))


def _try_load(root: str | os.PathLike, crop: Crop, size: int) -> torch.Tensor | None:
    try:
        return load_crop(root, crop, size)
    except Exception as e:  # a file that broke after the scan: skip it, keep the shard
        log.warning("skipping %s: %s", crop.path, e)
        return None


def _seed_of(*parts: Any) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def read_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a prepared folder, checked to be complete."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{data_dir} has no {MANIFEST}: prepare it first "
                         f"(python -m lua_core prepare IMAGES/ {data_dir} --vae VAE)")
    m = json.loads(path.read_text(encoding="utf-8"))
    if m.get("format") != FORMAT:
        raise ValueError(f"{path} is not a LUA training manifest")
    if not m.get("complete"):
        raise ValueError(f"{data_dir} is only partly prepared: run the same prepare command again to finish it")
    return m


__all__ = ["Crop", "Plan", "PrepareConfig", "encode_pairs", "image_size", "list_images", "load_crop",
           "make_lr", "make_plan", "prepare", "read_manifest", "shard_name", "to_unit"]
