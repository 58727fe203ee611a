"""Reading prepared shards, in a batch order that is a pure function of (seed, batch number).

Resuming exactly needs the data order to be reproducible from the step alone: batch ``b`` of a
run is rows ``perm_e[p*B:(p+1)*B]`` with ``e = b // batches_per_epoch``, ``p = b % batches_per_epoch``
and ``perm_e`` a permutation seeded by (seed, e). Nothing depends on how many batches were
prefetched by loader workers or on where an earlier run stopped.

Several ranks (torchrun): batch ``b`` is the *global* batch, and rank ``r`` of ``N`` reads its
``r``-th ``B/N`` rows and only those. The rows a step trains on are then the same whatever the
number of ranks (and the same as one process with batch ``B``), which is what makes N ranks
equal one process and lets a run resume on another number of ranks with the same data order.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .data import read_manifest

LATENT_FIELDS = ("hr",)
PIXEL_FIELD = "hr_pixels"


class LatentPairs:
    """Random access to the rows of a prepared folder (``lua_core.train.data.prepare``)."""

    def __init__(self, data_dir: str | os.PathLike):
        self.root = Path(data_dir)
        self.manifest = read_manifest(self.root)
        self.files = [self.root / s["file"] for s in self.manifest["shards"]]
        self.starts = [s["first"] for s in self.manifest["shards"]]
        self.total = self.manifest["num_items"]
        self.scales = tuple(int(s) for s in self.manifest["config"]["scales"])
        self.has_pixels = bool(self.manifest["config"]["store_pixels"])
        self.latent_channels = int(self.manifest["latent_channels"])
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()
        missing = [f.name for f in self.files if not f.is_file()]
        if missing:
            raise ValueError(f"{self.root} lacks {len(missing)} shard(s) its manifest lists (e.g. {missing[0]}): "
                             "run the prepare command again")

    def __len__(self) -> int:
        return self.total

    def fingerprint(self) -> str:
        """Identifies the data a run was trained on (checked when resuming)."""
        blob = json.dumps([self.manifest["plan"], self.manifest["shards"]], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def fields(self, *, pixels: bool) -> tuple[str, ...]:
        f = ("hr", *(f"lr_x{s}" for s in self.scales))
        if pixels:
            if not self.has_pixels:
                raise ValueError(f"{self.root} was prepared without pixels (--no-pixels), which stages II and III "
                                 "and evaluation need: prepare it again with pixels")
            f += (PIXEL_FIELD,)
        return f

    def _open(self, shard: int) -> Any:
        from safetensors import safe_open
        if os.getpid() != self._pid:  # a forked loader worker: never share mmaps with the parent
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.files[shard]), framework="pt")
        return self._handles[shard]

    def read(self, indices: Sequence[int], fields: Sequence[str]) -> dict[str, torch.Tensor]:
        """Rows ``indices`` (in that order) of each field; latents as float32, pixels as uint8."""
        rows: dict[str, list[torch.Tensor | None]] = {k: [None] * len(indices) for k in fields}
        order = sorted(range(len(indices)), key=lambda j: indices[j])
        for j in order:
            i = int(indices[j])
            if not 0 <= i < self.total:
                raise IndexError(f"row {i} out of range (0..{self.total - 1})")
            shard = bisect.bisect_right(self.starts, i) - 1
            f = self._open(shard)
            r = i - self.starts[shard]
            for k in fields:
                rows[k][j] = f.get_slice(k)[r:r + 1]
        out = {k: torch.cat(v) for k, v in rows.items()}  # type: ignore[arg-type]
        return {k: (v if k == PIXEL_FIELD else v.float()) for k, v in out.items()}


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The row order of one epoch, a function of (seed, epoch) only."""
    s = int(hashlib.sha256(f"{seed}:{epoch}".encode()).hexdigest()[:15], 16)
    return torch.randperm(n, generator=torch.Generator().manual_seed(s))


class BatchOrder(Sampler[list[int]]):
    """Endless batches of row indices, starting at global batch number ``start``; last partial
    batch of each epoch dropped so every step sees ``batch_size`` rows.

    ``batch_size`` is the global batch; with ``rank``/``world`` each batch is this rank's slice of
    it (a rank-sharded ``DistributedSampler`` that keeps the global batch's order).
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int = 0, *, rank: int = 0, world: int = 1):
        if batch_size > n:
            raise ValueError(f"batch size {batch_size} is larger than the data ({n} pairs): prepare more images "
                             "or use a smaller --batch-size")
        if batch_size % world or not 0 <= rank < world:
            raise ValueError(f"the global batch size {batch_size} must be a multiple of the number of ranks "
                             f"({world}): each rank trains on batch/ranks rows")
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.per_epoch = n // batch_size
        self.part = slice(rank * batch_size // world, (rank + 1) * batch_size // world)

    def batch(self, b: int) -> list[int]:
        e, p = divmod(b, self.per_epoch)
        perm = epoch_permutation(self.n, self.seed, e)
        return perm[p * self.batch_size:(p + 1) * self.batch_size][self.part].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        b = self.start
        e, _ = divmod(b, self.per_epoch)
        perm = epoch_permutation(self.n, self.seed, e)
        while True:
            e_b, p = divmod(b, self.per_epoch)
            if e_b != e:
                e, perm = e_b, epoch_permutation(self.n, self.seed, e_b)
            yield perm[p * self.batch_size:(p + 1) * self.batch_size][self.part].tolist()
            b += 1


class _Batches(Dataset):
    def __init__(self, data: LatentPairs, fields: Sequence[str]):
        self.data, self.fields = data, tuple(fields)

    def __getitem__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return self.data.read(indices, self.fields)

    def __len__(self) -> int:
        return len(self.data)


def batches(data: LatentPairs, batch_size: int, *, seed: int, start: int = 0, pixels: bool = False,
            num_workers: int = 0, pin_memory: bool = False, rank: int = 0,
            world: int = 1) -> Iterator[dict[str, torch.Tensor]]:
    """Endless iterator of batch dicts (``hr``, ``lr_x2``, ``lr_x4``[, ``hr_pixels``]) from batch ``start``
    (this rank's ``batch_size / world`` rows of each global batch)."""
    order = BatchOrder(len(data), batch_size, seed, start, rank=rank, world=world)
    loader = DataLoader(_Batches(data, data.fields(pixels=pixels)), sampler=order, batch_size=None,
                        num_workers=num_workers, pin_memory=pin_memory,
                        persistent_workers=False, prefetch_factor=4 if num_workers else None)
    return iter(loader)
