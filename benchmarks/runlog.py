"""``--log PATH`` for the hand-run benchmarks: everything the script prints also goes to a file, with
a header saying on what it was measured (issue #18: every published number points at a committed log).

Usage in a script: ``add_log_argument(parser)`` then ``with logged(args.log): main body``. Logs belong in
``docs/measurements/<machine>-<date>-<what>.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


def add_log_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", type=Path, default=None,
                        help="also write the output to this file (docs/measurements/<machine>-<date>-<what>.log)")


def machine() -> str:
    """CPU model (lscpu's model name), logical CPUs, load average, torch version and threads."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    try:
        import torch
        tv = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        tv = "no torch"
    return f"{model}; {os.cpu_count()} logical CPUs; load average {load}; {tv}; Python {platform.python_version()}"


class _Tee:
    def __init__(self, *streams: TextIO):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


@contextlib.contextmanager
def logged(path: Path | None) -> Iterator[None]:
    """Copy stdout to ``path`` (with a header: command, date, machine) for the duration."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"# {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}\n")
        fh.write(f"# {datetime.datetime.now().isoformat(timespec='seconds')}; {machine()}\n")
        saved = sys.stdout
        sys.stdout = _Tee(saved, fh)  # type: ignore[assignment]
        try:
            yield
        finally:
            sys.stdout = saved


def log_path(argv: list[str]) -> Path | None:
    """The ``--log`` value in ``argv`` (for scripts that tee around their whole ``main``)."""
    for i, arg in enumerate(argv):
        if arg == "--log" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--log="):
            return Path(arg.split("=", 1)[1])
    return None
