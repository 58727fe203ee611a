"""pytest fixtures for testing the pack against a real ComfyUI (0.3.75 or 0.33.0) on CPU (see harness.py).

Why it exists: every node, workflow and server test of the pack shares one way to get ComfyUI:

* ``comfy_inproc`` (session): ComfyUI imported into the pytest process, rooted in a temporary base
  directory, with the test pack (``LUATest_*`` nodes) loaded through ComfyUI's loader.
* ``lua_pack`` (session): this repository loaded as the ``ComfyUI-LUA`` pack into ``comfy_inproc``.
* ``comfy_server`` (session): one ComfyUI server with this pack (once it has an ``__init__.py``), the
  test pack and the random test VAEs; shared, so do not stop or kill it in a test.
* ``comfy_server_factory`` (function): start private servers (to kill/restart them); all stopped after
  the test.

Tests that use the server fixtures get the ``comfyui_server`` marker, tests that use the in-process
ones the ``comfyui`` marker, automatically (``-m "not comfyui_server"`` skips every server start).
``@pytest.mark.requires_comfyui("0.33", "the Flux2 latent format")`` skips a test on an older ComfyUI
with the reason ``needs ComfyUI >= 0.33 (the Flux2 latent format)``.
Environment: ``COMFYUI_DIR`` (ComfyUI source, default ``.comfyui/ComfyUI``; run pytest with that
ComfyUI's Python, e.g. ``.comfyui/0.33/venv/bin/python`` for 0.33.0), ``LUA_TEST_ARTIFACTS`` (model
cache, default ``tests/_artifacts``), ``LUA_SKIP_WITHOUT_COMFYUI=1`` (skip instead of error when ComfyUI
is not installed; on CI, LUA_CI=1, such a skip is a failure, see tests/conftest.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from . import harness, make_test_models

INPROC_FIXTURES = frozenset({"comfy_inproc", "lua_pack"})
SERVER_FIXTURES = frozenset({"comfy_server", "comfy_server_factory"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "comfyui: imports ComfyUI into the test process (in-process tests)")
    config.addinivalue_line("markers", "comfyui_server: starts or uses a ComfyUI server subprocess")
    config.addinivalue_line("markers", "requires_comfyui(version, why): skip on a ComfyUI older than version, "
                            "with the reason 'needs ComfyUI >= version (why)'")


def pytest_report_header(config: pytest.Config) -> str:
    import sys

    try:
        path = harness.comfyui_dir()
        return f"ComfyUI {harness.comfyui_version(path)} at {path} (Python {sys.executable})"
    except harness.HarnessError as err:
        return f"ComfyUI: none ({err})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & SERVER_FIXTURES:
            item.add_marker(pytest.mark.comfyui_server)
        if used & INPROC_FIXTURES:
            item.add_marker(pytest.mark.comfyui)
        for mark in item.iter_markers("requires_comfyui"):  # skipped where the test is, not in the harness
            try:
                harness.comfyui_dir()
            except harness.HarnessError:
                break  # no ComfyUI at all: the comfyui_path fixture says so
            minimum, why = _requires_args(*mark.args, **mark.kwargs)
            if not harness.comfyui_at_least(minimum):
                item.add_marker(pytest.mark.skip(reason=harness.version_skip_reason(minimum, why)))
                break


def _requires_args(minimum: str, why: str) -> tuple[str, str]:
    return minimum, why


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """On a failed test that used the shared server, attach the server log's tail to the report."""
    outcome = yield
    report = outcome.get_result()
    server = getattr(item, "funcargs", {}).get("comfy_server")
    if report.failed and isinstance(server, harness.ComfyServer):
        report.sections.append(("ComfyUI server log (tail)", server.log_tail(80)))


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    """The ComfyUI source directory (errors, or skips with LUA_SKIP_WITHOUT_COMFYUI=1, if missing)."""
    try:
        return harness.comfyui_dir()
    except harness.HarnessError as err:
        if os.environ.get("LUA_SKIP_WITHOUT_COMFYUI") == "1":
            pytest.skip(str(err))
        raise


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Cache directory for generated test models (git-ignored; reused across runs)."""
    path = Path(os.environ.get("LUA_TEST_ARTIFACTS", harness.ARTIFACTS_DIR))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def comfy_inproc(comfyui_path: Path, test_vaes: dict[str, Path],
                 tmp_path_factory: pytest.TempPathFactory) -> harness.InProcComfy:
    """ComfyUI imported in-process (CPU) with the ``LUATest_*`` test pack and the test VAEs."""
    comfy = harness.init_inprocess(tmp_path_factory.mktemp("comfy_inproc"), comfyui_path)
    harness.link_files(comfy.base_dir / "models" / "vae", test_vaes)
    comfy.folder_paths.filename_list_cache.clear()
    if harness.TEST_PACK_INSTALL_NAME not in comfy.loaded_packs:
        comfy.load_pack(harness.TEST_PACK_DIR, harness.TEST_PACK_INSTALL_NAME)
    return comfy


@pytest.fixture(scope="session")
def lua_pack(comfy_inproc: harness.InProcComfy) -> ModuleType:
    """This repository loaded in-process as the ``ComfyUI-LUA`` pack (through ``nodes.load_custom_node``)."""
    if not (harness.REPO_ROOT / "__init__.py").is_file():
        pytest.fail("the pack has no top-level __init__.py yet")
    return comfy_inproc.load_pack(harness.REPO_ROOT, harness.PACK_INSTALL_NAME)


@pytest.fixture(scope="session")
def test_vaes(comfyui_path: Path, artifacts_dir: Path) -> dict[str, Path]:
    """Random test VAEs ``{vae_name: cached file}`` (TAESD 4/16 ch and the full 16-ch ldm VAE)."""
    return make_test_models.standard_test_vaes(artifacts_dir / "models", full=True)


def server_custom_nodes() -> dict[str, Path]:
    """Packs linked into a test server: the test pack, and this pack once it has an ``__init__.py``."""
    packs = {harness.TEST_PACK_INSTALL_NAME: harness.TEST_PACK_DIR}
    if (harness.REPO_ROOT / "__init__.py").is_file():
        packs[harness.PACK_INSTALL_NAME] = harness.REPO_ROOT
    return packs


def _make_server(base: Path, comfyui_path: Path, test_vaes: dict[str, Path],
                 **kwargs: Any) -> harness.ComfyServer:
    kwargs.setdefault("custom_nodes", server_custom_nodes())
    kwargs.setdefault("model_files", {"vae": test_vaes})
    return harness.ComfyServer(base, comfy_dir=comfyui_path, **kwargs)


@pytest.fixture(scope="session")
def comfy_server(comfyui_path: Path, test_vaes: dict[str, Path],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.ComfyServer]:
    """The shared ComfyUI server (started once per session, stopped by PID at the end)."""
    server = _make_server(tmp_path_factory.mktemp("comfy_server"), comfyui_path, test_vaes)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def comfy_server_factory(
    comfyui_path: Path, test_vaes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., harness.ComfyServer]]:
    """``make(start=True, **ComfyServer kwargs) -> ComfyServer``: private servers, stopped after the test."""
    servers: list[harness.ComfyServer] = []

    def make(start: bool = True, **kwargs: Any) -> harness.ComfyServer:
        base = tmp_path_factory.mktemp("comfy_server_private")
        server = _make_server(base, comfyui_path, test_vaes, **kwargs)
        servers.append(server)
        return server.start() if start else server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
