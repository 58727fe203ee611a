"""Shared pytest setup: the repo root on sys.path, the conformance data, skips on CI, the skip summary.

Conformance folders are stored as shipped by the official code, except that the large pickles
are gzipped (``weights.pth.gz``, byte-identical once unpacked: the manifest's sha256 checks it).
Tests get a private unpacked copy, so nothing can write into tests/data.

On CI (``LUA_CI=1``, set by .ci/run) a test that cannot run is a failure, not a skip: every skip
becomes a failure that gives the skip's reason, except a version skip (``needs ComfyUI >= 0.33 (...)``,
see tests/comfyui/harness.py) on a ComfyUI older than the newest CI tests (``LUA_NEWEST_COMFYUI``, set
by scripts/test.sh), the expected outcome on the oldest supported ComfyUI. Locally a skip stays a skip.
The end of every run lists the skips by reason; with ``LUA_TEST_SUMMARY=FILE`` the counts also go to
FILE as JSON (scripts/test.sh prints them for each of its runs).
"""

from __future__ import annotations

import collections
import gzip
import json
import os
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


# --------------------------------------------------------------------------------------------------
# Skips: failures on CI, summed up by reason at the end
# --------------------------------------------------------------------------------------------------

ON_CI = os.environ.get("LUA_CI") == "1"


def _version_skip_allowed(reason: str) -> bool:
    """A version skip (``needs ComfyUI >= X (...)``), on a ComfyUI older than the newest CI tests
    (``LUA_NEWEST_COMFYUI``, set by scripts/test.sh): there nothing may skip, so that a test gated on a
    version CI does not have fails instead of never running."""
    from comfyui import harness  # stdlib only: no ComfyUI import

    if not reason.startswith(harness.VERSION_SKIP_PREFIX):
        return False
    newest = os.environ.get("LUA_NEWEST_COMFYUI")
    if not newest:
        return True
    try:
        running = harness.comfyui_version(harness.comfyui_dir())
    except harness.HarnessError:
        return False
    return harness.version_tuple(running) < harness.version_tuple(newest)


def skip_reason(report: pytest.BaseReport) -> str:
    """The reason of a skipped report, without pytest's ``Skipped: `` prefix."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text[len("Skipped: "):] if text.startswith("Skipped: ") else text


def _fail_skip_on_ci(report: pytest.BaseReport) -> None:
    if not (ON_CI and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report)
    if _version_skip_allowed(reason):
        return
    report.outcome = "failed"
    report.longrepr = (f"on CI (LUA_CI=1) a test that cannot run is a failure, not a skip. "
                       f"It would have skipped because: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    _fail_skip_on_ci(outcome.get_result())


@pytest.hookimpl(tryfirst=True)
def pytest_collectreport(report: pytest.CollectReport) -> None:
    _fail_skip_on_ci(report)  # a module-level skip (importorskip) before anyone reads the report


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    stats = terminalreporter.stats
    reasons = collections.Counter(skip_reason(r) for r in stats.get("skipped", []))
    counts = {key: len(stats.get(key, []))
              for key in ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "deselected")}
    try:
        from comfyui import harness

        comfy = harness.comfyui_version(harness.comfyui_dir())
    except Exception:  # no ComfyUI: the suite still reports
        comfy = None
    where = f"ComfyUI {comfy}, Python {sys.executable}" if comfy else f"no ComfyUI, Python {sys.executable}"
    terminalreporter.write_sep("-", f"skipped: {counts['skipped']} ({where})")
    for reason, n in reasons.most_common():
        terminalreporter.write_line(f"{n:4d} x {reason}")
    out = os.environ.get("LUA_TEST_SUMMARY")
    if out:
        Path(out).write_text(json.dumps({"comfyui": comfy, "python": sys.executable, "exitstatus": int(exitstatus),
                                         "counts": counts, "skipped": dict(reasons.most_common())}, indent=1))
