"""Shared pytest setup: the repo root on sys.path and the conformance data.

Conformance folders are stored as shipped by the official code, except that the large pickles
are gzipped (``weights.pth.gz``, byte-identical once unpacked: the manifest's sha256 checks it).
Tests get a private unpacked copy, so nothing can write into tests/data.
"""

from __future__ import annotations

import gzip
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
for _path in (ROOT, ROOT / "benchmarks"):  # the package, and the baseline forward the tests compare with
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def unpack_folder(src: Path, dst: Path) -> Path:
    """Copy a data folder, gunzipping ``*.gz`` files."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_dir():
            unpack_folder(f, dst / f.name)
        elif f.suffix == ".gz":
            with gzip.open(f, "rb") as zin, open(dst / f.stem, "wb") as out:
                shutil.copyfileobj(zin, out)
        else:
            shutil.copy2(f, dst / f.name)
    return dst


@pytest.fixture(scope="session")
def conformance(tmp_path_factory) -> Callable[[str], Path]:
    """``conformance("public16")`` -> a private, unpacked copy of tests/data/public16."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = unpack_folder(DATA / name, tmp_path_factory.mktemp("conf") / Path(name).name)
        return cache[name]

    return get
