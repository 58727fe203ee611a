"""The example workflows in ``workflows/`` against a real ComfyUI server (0.3.75 or 0.33.0) and its real web frontend.

Why it exists: a workflow a user drags into ComfyUI must load without a missing node or widget, say
where its checkpoints come from, queue without a validation error other than the checkpoints the user
has yet to download, and run. Each of those is checked against ComfyUI itself, never against a copy of
its rules:

* **Files** (no server): every ``workflows/<name>.json`` has its API twin and a 512x384 JPEG thumbnail,
  a note, and ``models`` metadata for every model file it selects.
* **Server** (``/object_info``, ``POST /prompt``): every node type exists with the pack loaded; every
  widget value is in its input's options or range, or is a model file listed in the metadata; the
  server's own validation of the unmodified API twin fails *only* on those model files; the UI file
  converts (``workflow_swap.ui_to_api``) to exactly the API twin; ``/workflow_templates`` lists the
  workflows and serves their thumbnails.
* **Run**: each API twin runs on CPU with the heavy loaders swapped for generated models
  (``workflow_swap.swap_heavy_loaders``), in a private server whose ``latent_upscale_models`` holds a
  generated ``lua_flux.pth``, a city96-format ``latent-upscaler-v2.1_SDxl-x2.0.safetensors`` and a small
  SesquiLSR ``upscaler_Wan21.safetensors`` (the conformance model) under the names the download entries
  fetch, so ``download/lua-flux`` and ``auto`` resolve offline to them exactly as after a real first run;
  the saved images and upscaled latents have the expected sizes, and ``auto`` picked the expected file.
* **Browser** (``tests/browser/check_workflows.mjs``: headless Debian Chromium, Playwright): the real
  frontend served by the test server loads each file as a person does; no node type is missing, no
  node is flagged, no missing-nodes dialog, the missing-models dialog lists the metadata models with
  a working Download button, every link is whole and every required input connected, no page error,
  ``app.graphToPrompt()`` gives the API twin, the pack's tooltips show on hover, the node search finds
  the nodes, the template browser shows the thumbnails. Screenshots land in
  ``tests/_artifacts/screenshots/comfyui-<version>/`` for a person to look at. The frontend is the
  one the ComfyUI under test pins (0.3.75: 1.32.9; 0.33.0: 1.49.6).

The browser part skips, saying why, only where ``/usr/bin/chromium`` or ``tests/browser/node_modules``
is missing (``.ci/run`` installs both; on CI such a skip is a failure).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import harness
from .workflow_swap import (
    FRONTEND_ONLY,
    MODEL_FILE_INPUTS,
    TINY_ESRGAN_NAME,
    WIDGET_TYPES,
    strip_meta,
    swap_heavy_loaders,
    ui_to_api,
    write_tiny_esrgan,
)

WORKFLOWS = harness.REPO_ROOT / "workflows"
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
BROWSER_DIR = harness.REPO_ROOT / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
THUMB_SIZE = (512, 384)
SDXL_X2 = "latent-upscaler-v2.1_SDxl-x2.0.safetensors"
SESQUI_WAN21 = "upscaler_Wan21.safetensors"  # what download/sesqui-wan21 saves

# What each workflow must produce after the swap (every pixel size / 8): SaveImage node -> (width, height),
# and upscaler node -> latent shape. A new workflow must be added here.
EXPECTED: dict[str, dict[str, Any]] = {
    "flux_lua_x2": {"images": {"12": (256, 256)}, "latents": {"10": [1, 16, 32, 32]}},
    "flux_lua_x4_tiled": {"images": {"12": (512, 512)}, "latents": {"10": [1, 16, 64, 64]}},
    "sd3_lua_x2": {"images": {"9": (256, 256)}, "latents": {"7": [1, 16, 32, 32]}},
    "compare_upscalers": {"images": {"15": (256, 256), "17": (256, 256), "21": (256, 256),
                                     "24": (3 * 256 + 2 * 16, 256)},
                          "latents": {"9": [1, 16, 32, 32], "11": [1, 16, 32, 32]}},
    "sdxl_latent_upscale_x2": {"images": {"10": (256, 256)}, "latents": {"7": [1, 4, 32, 32]}},
    "progressive_sampler": {"images": {"9": (128, 128)}, "latents": {}},
    "progressive_building_blocks": {"images": {"14": (128, 128)}, "latents": {"9": [1, 16, 16, 16]}},
    # 1328 / 8 = 166 px -> a 20x20 latent, 5-D [B, C, T, H, W] as ComfyUI gives Qwen-Image (Wan 2.1) latents
    "qwen_image_sesqui_x2": {"images": {"12": (320, 320)},
                             "latents": {"8": [1, 16, 1, 20, 20], "10": [1, 16, 1, 40, 40]}},
}

# Frontend rules for the Missing Models dialog's Download button (frontend 1.32.9, MissingModelsWarning;
# frontend 1.49.6 shows the models in its Errors tab instead, a row without a Download button is an error):
# a URL from these sources and a file name with these suffixes, else the entry shows an error instead.
DIALOG_ERRORS = ("Only allowed suffixes", "Download not allowed", "Invalid directory")
# Known dialog errors per workflow (none today: Load LUA Model downloads the LUA weights itself, so no
# workflow lists that .pth, which the frontend would refuse to download).
KNOWN_DIALOG_ERRORS: dict[str, set[str]] = {}
# The pack's node types the workflows use, whose every input and widget must carry a tooltip.
# The first ComfyUI tested here that validates V3 COMBO values at queue time (0.3.75 does not).
V3_COMBO_VALIDATION = "0.33"
FULLY_DOCUMENTED = ("LUA_LoadModel", "LUA_LatentUpscale", "LUA_ProgressiveSampler", "LUA_ReNoiseLatent")


def load(name: str) -> tuple[dict, dict]:
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text(encoding="utf-8"))
    return ui, api


def all_models(ui: dict) -> list[dict]:
    """The workflow's top-level ``models`` plus every node's ``properties.models`` (what the frontend reads)."""
    found = list(ui.get("models", []))
    for node in ui["nodes"]:
        found += [m for m in node.get("properties", {}).get("models", []) if m not in found]
    return found


def model_file_values(api: dict) -> dict[tuple[str, str], tuple[str, str]]:
    """``{(node id, input): (value, models folder)}`` for every model-file combo of an API prompt."""
    return {(node_id, name): (node["inputs"][name], folder) for node_id, node in api.items()
            for (kind, name), folder in MODEL_FILE_INPUTS.items()
            if node["class_type"] == kind and isinstance(node["inputs"].get(name), str)}


def input_specs(info: dict) -> dict[str, tuple[Any, dict]]:
    """``{input: (type or options, options dict)}`` of one /object_info entry (required and optional)."""
    out = {}
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            out[name] = (spec[0], spec[1] if len(spec) > 1 else {})
    return out


def validated_at_queue_time(kind: Any) -> bool:
    """Whether the server checks a combo input's value when a prompt is queued (``POST /prompt``).

    ComfyUI 0.3.75 checks it only for V1 nodes (options given as a list); 0.33 also for a V3 ``COMBO``
    (options in the input's ``options``), e.g. UpscaleModelLoader's ``model_name``. Neither checks an
    input of a node whose ``validate_inputs`` takes it (Load LUA Model's ``model_name``)."""
    return isinstance(kind, list) or (kind == "COMBO" and harness.comfyui_at_least(V3_COMBO_VALIDATION))


def combo_options(kind: Any, opts: dict) -> list | None:
    """The allowed values of a COMBO input in either /object_info form (a list, or ``"COMBO"`` + options)."""
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return opts.get("options", [])
    return None


# --------------------------------------------------------------------------------------------------
# The files themselves
# --------------------------------------------------------------------------------------------------


def test_workflow_files_are_complete() -> None:
    """Every workflow has its API twin and thumbnail, and nothing in api/ or *.jpg is left without one."""
    assert len(NAMES) >= 7, NAMES
    assert set(EXPECTED) == set(NAMES), "every workflow needs its expected outputs in EXPECTED"
    assert sorted(p.stem for p in (WORKFLOWS / "api").glob("*.json")) == NAMES
    assert sorted(p.stem for p in WORKFLOWS.glob("*.jpg")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_workflow_file(name: str) -> None:
    from PIL import Image

    ui, api = load(name)
    assert ui["version"] == 0.4
    ids = [node["id"] for node in ui["nodes"]]
    assert len(ids) == len(set(ids)) and ui["last_node_id"] >= max(ids)
    assert ui["last_link_id"] >= max(link[0] for link in ui["links"])
    notes = [node for node in ui["nodes"] if node["type"] in FRONTEND_ONLY]
    assert notes and all(node["widgets_values"][0].strip() for node in notes), "a note explains the workflow"
    assert set(api) == {str(node["id"]) for node in ui["nodes"] if node["type"] not in FRONTEND_ONLY}

    # models metadata: every model file the workflow selects is listed, on its node, with its folder
    models = all_models(ui)
    nodes = {str(node["id"]): node for node in ui["nodes"]}
    for (node_id, input_name), (value, folder) in model_file_values(api).items():
        listed = nodes[node_id].get("properties", {}).get("models", [])
        assert {"name": value, "directory": folder} in [{"name": m["name"], "directory": m["directory"]}
                                                        for m in listed], f"{node_id}.{input_name}={value}"
    for model in models:
        assert set(model) >= {"name", "url", "directory"}
        assert re.fullmatch(r"https://huggingface\.co/[\w.-]+/[\w.-]+/resolve/[\w.-]+/\S+", model["url"]), model
        assert model["url"].split("?")[0].endswith("/" + model["name"]), model
        assert model in ui["models"], f"{model['name']}: node metadata missing from the top-level models"

    jpg = WORKFLOWS / f"{name}.jpg"
    assert jpg.stat().st_size < 100_000
    with Image.open(jpg) as im:
        assert (im.format, im.size, im.mode) == ("JPEG", THUMB_SIZE, "RGB")
        assert len(set(im.convert("L").resize((32, 24)).tobytes())) > 20, "a thumbnail with a picture in it"


# --------------------------------------------------------------------------------------------------
# Against the server: node types, widget values, ComfyUI's own validation, UI == API
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def object_info(comfy_server: harness.ComfyServer) -> dict:
    return comfy_server.object_info()


@pytest.mark.parametrize("name", NAMES)
def test_nodes_exist_and_values_are_valid(name: str, object_info: dict) -> None:
    ui, api = load(name)
    documented = {(m["name"], m["directory"]) for m in all_models(ui)}
    model_files = model_file_values(api)
    for node_id, node in api.items():
        kind = node["class_type"]
        assert kind in object_info, f"{name}: node type {kind} is not registered"
        specs = input_specs(object_info[kind])
        required = object_info[kind]["input"]["required"]
        assert set(required) <= set(node["inputs"]), f"{name} {node_id} {kind}: missing inputs"
        for input_name, value in node["inputs"].items():
            assert input_name in specs, f"{name} {node_id}: {kind} has no input {input_name}"
            kind_or_options, opts = specs[input_name]
            where = f"{name} {node_id} {kind}.{input_name}={value!r}"
            if isinstance(value, list):  # a link: the source's output type must be what the input takes
                src = api[value[0]]["class_type"]
                out_type = object_info[src]["output"][value[1]]
                assert out_type == kind_or_options or kind_or_options == "*", f"{where}: gets {out_type}"
                continue
            options = combo_options(kind_or_options, opts)
            if options is not None:
                if (node_id, input_name) in model_files:
                    assert value in options or (value, model_files[node_id, input_name][1]) in documented, where
                else:
                    assert value in options, where
            elif kind_or_options in ("INT", "FLOAT"):
                assert isinstance(value, (int, float)) and not isinstance(value, bool), where
                assert opts.get("min", -float("inf")) <= value <= opts.get("max", float("inf")), where
                if kind_or_options == "INT":
                    assert isinstance(value, int), where
            elif kind_or_options == "BOOLEAN":
                assert isinstance(value, bool), where
            else:
                assert kind_or_options == "STRING" and isinstance(value, str), where


@pytest.mark.parametrize("name", NAMES)
def test_server_validation_fails_only_on_model_files(name: str, comfy_server: harness.ComfyServer,
                                                     object_info: dict) -> None:
    """POST the unmodified API twin: ComfyUI validates every node and input; the only errors must be
    the model files the user downloads (none is on the test server), each listed in the metadata.

    Which model files ComfyUI checks at queue time depends on its version (:func:`validated_at_queue_time`);
    the others are left to the test above."""
    ui, api = load(name)
    with pytest.raises(harness.PromptValidationError) as err:
        comfy_server.post_prompt(api)
    errors = {(node_id, e["extra_info"].get("input_name")): e for node_id, entry in err.value.node_errors.items()
              for e in entry["errors"]}
    model_files = model_file_values(api)
    checked = {key for key in model_files
               if validated_at_queue_time(input_specs(object_info[api[key[0]]["class_type"]])[key[1]][0])}
    assert set(errors) == checked, json.dumps(err.value.body)[:3000]
    documented = {(m["name"], m["directory"]) for m in all_models(ui)}
    for key, error in errors.items():
        assert error["type"] == "value_not_in_list", error
        assert (error["extra_info"]["received_value"], model_files[key][1]) in documented


@pytest.mark.parametrize("name", NAMES)
def test_ui_converts_to_api_twin(name: str, object_info: dict) -> None:
    ui, api = load(name)
    assert ui_to_api(ui, object_info) == strip_meta(api)


def test_template_listing_and_thumbnails(comfy_server: harness.ComfyServer) -> None:
    listed = comfy_server.get_json("/workflow_templates").get(harness.PACK_INSTALL_NAME)
    assert sorted(listed) == NAMES  # the api/ twins are not templates
    for name in NAMES:
        status, body = comfy_server.request("GET", f"/api/workflow_templates/{harness.PACK_INSTALL_NAME}/{name}.jpg")
        assert status == 200 and body == (WORKFLOWS / f"{name}.jpg").read_bytes(), name


# --------------------------------------------------------------------------------------------------
# Running every workflow on CPU
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_server(comfyui_path: Path, test_vaes: dict[str, Path],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.ComfyServer]:
    """A private server whose model folders hold small stand-ins under the real names: the LUA
    download (``lua_flux.pth``, official layout, tiny), city96 SDXL x2 (a random city96 v2.1 file; the
    factor is in the name), SesquiLSR for Wan 2.1 (the conformance model, released layout, width 32)
    and a tiny RealESRGAN-compact. Private: ``auto`` on the shared server must keep seeing an empty
    latent_upscale_models."""
    from factories import make_lua, save_official_pth, tiny_config

    files = tmp_path_factory.mktemp("workflow_models")
    lua = save_official_pth(make_lua(tiny_config()), files / "lua_flux.pth")
    city96 = harness.REPO_ROOT / "tests" / "data" / "peers" / "city96" / "latent-upscaler-v2.1_SDxl-x1.5.safetensors"
    sesqui = harness.REPO_ROOT / "tests" / "data" / "peers" / "sesqui_wan21" / SESQUI_WAN21
    esrgan = write_tiny_esrgan(files / TINY_ESRGAN_NAME)
    srv = harness.ComfyServer(tmp_path_factory.mktemp("workflows_server"), comfy_dir=comfyui_path,
                              custom_nodes={harness.TEST_PACK_INSTALL_NAME: harness.TEST_PACK_DIR,
                                            harness.PACK_INSTALL_NAME: harness.REPO_ROOT},
                              model_files={"vae": test_vaes, "upscale_models": [esrgan],
                                           "latent_upscale_models": {"lua_flux.pth": lua, SDXL_X2: city96,
                                                                     SESQUI_WAN21: sesqui}})
    try:
        yield srv.start()
    finally:
        srv.stop()


@pytest.mark.comfyui_server
@pytest.mark.parametrize("name", NAMES)
def test_workflow_runs(name: str, run_server: harness.ComfyServer, record_property: Any) -> None:
    _, api = load(name)
    prompt = swap_heavy_loaders(api)
    expected = EXPECTED[name]
    saves = {k for k, v in prompt.items() if v["class_type"] == "SaveImage"}
    assert saves == set(expected["images"]), f"{name}: SaveImage nodes {saves}"
    for node_id in expected["latents"]:
        prompt[f"probe_{node_id}"] = {"class_type": "LUATest_LatentInfo", "inputs": {"samples": [node_id, 0]}}
    log_start = len(run_server.log_text())
    t0 = time.monotonic()
    entry = run_server.run_prompt(prompt, timeout=240)
    record_property("run_seconds", round(time.monotonic() - t0, 2))
    for node_id, size in expected["images"].items():
        images = entry["outputs"][node_id]["images"]
        assert len(images) == 1 and harness.png_size(run_server.view(images[0])) == size, f"{name} {node_id}"
    infos = {node_id: entry["outputs"][f"probe_{node_id}"]["latent_info"][0] for node_id in expected["latents"]}
    for node_id, shape in expected["latents"].items():
        assert infos[node_id]["shape"] == shape and infos[node_id]["finite"], infos[node_id]
        assert infos[node_id]["std"] > 1e-3, f"{name} {node_id}: a flat latent"
    log = run_server.log_text()[log_start:]
    if name == "compare_upscalers":  # A (bicubic) and B (LUA) really are two different upscales
        a, b = infos["9"], infos["11"]
        assert abs(a["mean"] - b["mean"]) + abs(a["std"] - b["std"]) > 1e-3, (a, b)
    if name == "sdxl_latent_upscale_x2":  # auto + SDXL MODEL picked the 4-channel city96 file
        assert f"auto picked {SDXL_X2} for sdxl latents" in log, log[-3000:]
    if name == "qwen_image_sesqui_x2":  # auto + Qwen-Image MODEL picked SesquiLSR's Wan 2.1 file (not lua_flux.pth)
        assert f"auto picked {SESQUI_WAN21} for wan21 latents" in log, log[-3000:]
        sampled, upscaled = infos["8"]["shape"], infos["10"]["shape"]
        assert upscaled[:3] == sampled[:3] and upscaled[3:] == [2 * sampled[3], 2 * sampled[4]], (sampled, upscaled)


@pytest.mark.comfyui_server
def test_sdxl_explicit_city96_download_entry(run_server: harness.ComfyServer) -> None:
    """The SDXL workflow with the explicit ``download/city96-sdxl-x2`` entry instead of ``auto`` runs too
    (the file is already in the folder: no request, as after the first download)."""
    _, api = load("sdxl_latent_upscale_x2")
    options = combo_options(*input_specs(run_server.object_info("LUA_LoadModel")["LUA_LoadModel"])["model_name"])
    entry = next(o for o in options if o.startswith("download/city96-sdxl-x2 "))
    prompt = swap_heavy_loaders(api)
    prompt["6"]["inputs"]["model_name"] = entry
    result = run_server.run_prompt(prompt, timeout=240)
    assert harness.png_size(run_server.view(result["outputs"]["10"]["images"][0])) == (256, 256)


# --------------------------------------------------------------------------------------------------
# In the real frontend (headless Chromium)
# --------------------------------------------------------------------------------------------------

SEARCHES = {"LUA": ("Load LUA Model", "Latent Upscale (LUA)", "LUA Progressive Sampler", "LUA Re-Noise Latent"),
            "latent upscale": ("Latent Upscale (LUA)",)}


@pytest.fixture(scope="module")
def browser_report(comfy_server: harness.ComfyServer, artifacts_dir: Path) -> dict:
    """Run tests/browser/check_workflows.mjs once over every workflow against the shared server (whose
    model folders hold none of the workflows' models: every metadata model is 'missing' there)."""
    if not CHROMIUM.exists():
        pytest.skip(f"Debian chromium is not installed ({CHROMIUM} missing): apt-get install -y chromium "
                    "(.ci/run does)")
    if shutil.which("node") is None or not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.skip("the browser test's npm dependencies are missing: run `npm ci` in tests/browser (.ci/run does)")
    out = artifacts_dir / "screenshots" / f"comfyui-{harness.comfyui_version()}"  # one folder per ComfyUI tested
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    report = out / "report.json"
    cmd = ["node", str(BROWSER_DIR / "check_workflows.mjs"), "--url", comfy_server.url, "--out", str(out),
           "--report", str(report), "--templates", harness.PACK_INSTALL_NAME]
    for query in (*SEARCHES, "hires"):
        cmd += ["--search", query]
    cmd += [str(WORKFLOWS / f"{name}.json") for name in NAMES]
    proc = subprocess.run(cmd, cwd=BROWSER_DIR, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, f"check_workflows.mjs failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    data = json.loads(report.read_text(encoding="utf-8"))
    data["by_name"] = {w["name"]: w for w in data["workflows"]}
    return data


def missing_models_shown(w: dict) -> tuple[list[str], dict[str, str]]:
    """(model labels ``"folder / file"``, {label: why it has no Download button}) of what the frontend
    shows for one loaded workflow: the Errors tab's Missing Models group (frontend 1.49) or the Missing
    Models dialog (frontend 1.32, which has no Errors tab: ``errors_panel`` is None)."""
    panel = w.get("errors_panel")
    if panel is None:
        return missing_models_dialog(w["dialogs"])
    rows = panel["missing_models"]
    return [m["label"] for m in rows], {m["label"]: m["text"] for m in rows if not m["download"]}


def missing_models_dialog(dialogs: list[str]) -> tuple[list[str], dict[str, str]]:
    """(model labels ``"folder / file"`` in order, {label: error text}) of the Missing Models dialog."""
    text = next((d for d in dialogs if d.startswith("Missing Models")), "")
    labels, errors, current = [], {}, None
    for line in (ln.strip() for ln in text.splitlines()):
        if re.fullmatch(r"[\w.-]+ / \S+", line):
            current = line
            labels.append(line)
        elif current and line.startswith(DIALOG_ERRORS):
            errors[current] = line
    return labels, errors


@pytest.mark.comfyui_server
def test_browser_starts(browser_report: dict, record_property: Any) -> None:
    record_property("browser_timings", browser_report["timings"])
    assert browser_report["timings"]["ready_ms"] < 90_000
    pageerrors = [e for e in browser_report["startup_errors"] if e.startswith("pageerror")]
    assert pageerrors == [], pageerrors


@pytest.mark.comfyui_server
@pytest.mark.parametrize("name", NAMES)
def test_browser_loads_workflow(name: str, browser_report: dict, object_info: dict,
                                comfy_server: harness.ComfyServer, record_property: Any) -> None:
    from PIL import Image

    w = browser_report["by_name"][name]
    record_property("load_ms", w["load_ms"])
    ui, api = load(name)
    assert w["errors"] == [], w["errors"]
    assert not [d for d in w["dialogs"] if "missing nodes" in d.lower()], w["dialogs"]
    if w["errors_panel"] is not None:  # frontend 1.49: the only errors are missing models (no missing nodes...)
        assert set(w["errors_panel"]["groups"]) <= {"error-group-missing-model"}, w["errors_panel"]
    nodes = {str(n["id"]): n for n in w["nodes"]}
    assert sorted(nodes, key=int) == sorted((str(n["id"]) for n in ui["nodes"]), key=int)
    for node in w["nodes"]:
        assert node["registered"] and node["mode"] == 0, node["type"]

    # every link whole and typed, every required link input connected, all widgets there
    assert w["problems"] == [] and len(w["links"]) == len(ui["links"]), w["problems"]
    for node_id, node in nodes.items():
        if node["type"] in FRONTEND_ONLY:
            continue
        info = object_info[node["type"]]
        assert node["display_name"] == (info["display_name"] or node["type"]), node  # as in the node menu
        assert node["category"] == info["category"], node
        slots = {s["name"]: s for s in node["inputs"]}
        widgets = {wd["name"] for wd in node["widgets"]}
        for input_name, (kind, _opts) in input_specs(info).items():
            if combo_options(kind, _opts) is not None or kind in WIDGET_TYPES:
                assert input_name in widgets, f"{name} {node_id}: no widget for {input_name}"
            elif input_name in info["input"]["required"]:
                assert slots[input_name]["link"] is not None, f"{name} {node_id}: {input_name} not connected"
    if not name.startswith("progressive_"):  # hand-made layouts are theirs; ours must not overlap
        assert w["overlaps"] == [], w["overlaps"]

    # what the frontend would queue is the API twin
    assert strip_meta(w["prompt"]) == strip_meta(api)

    # Missing Models: every metadata model not on the server, each with a working Download button
    present = {}
    expected = []
    for model in all_models(ui):
        if model["directory"] not in present:
            status, body = comfy_server.request("GET", f"/models/{model['directory']}")
            present[model["directory"]] = set(json.loads(body)) if status == 200 else set()
        if model["name"] not in present[model["directory"]]:
            expected.append(f"{model['directory']} / {model['name']}")
    labels, errors = missing_models_shown(w)
    assert sorted(labels) == sorted(expected), (w["dialogs"], w["errors_panel"])
    assert set(errors) == KNOWN_DIALOG_ERRORS.get(name, set()), errors
    # the nodes flagged with an error (frontend 1.49 outlines a loader whose file is missing; 1.32 flags none)
    # are those loaders, and only those
    missing_loaders = {node_id for (node_id, _), (value, folder) in model_file_values(api).items()
                       if value not in present.get(folder, set())}
    flagged = {node_id for node_id, node in nodes.items() if node["has_errors"]}
    assert flagged == (missing_loaders if w["errors_panel"] is not None else set()), (flagged, missing_loaders)

    with Image.open(w["screenshot"]) as shot:
        assert shot.width >= 1000 and shot.height >= 500
        assert len(set(shot.convert("L").resize((64, 32)).tobytes())) > 30, "an empty screenshot"


@pytest.mark.comfyui_server
def test_browser_tooltips_and_search(browser_report: dict, object_info: dict) -> None:
    """The pack's node descriptions and tooltips show on hover in the frontend; its nodes are found by the
    node search under their display names."""
    shown: dict[str, dict] = {}
    for w in browser_report["workflows"]:
        shown.update(w["tooltips"])
    pack_types = {n["type"] for w in browser_report["workflows"] for n in w["nodes"]
                  if (n["python_module"] or "").endswith(harness.PACK_INSTALL_NAME)}
    assert set(FULLY_DOCUMENTED) <= pack_types == set(shown)
    for kind, tips in shown.items():
        info = object_info[kind]
        assert tips["title"] == {"title": info["description"]}
        for input_name, (_, opts) in input_specs(info).items():
            where = tips["widgets"] if input_name in tips["widgets"] else tips["inputs"]
            if opts.get("tooltip"):
                assert where.get(input_name) == opts["tooltip"], f"{kind}.{input_name}"
            else:
                assert kind not in FULLY_DOCUMENTED, f"{kind}.{input_name} has no tooltip"
        for i, text in enumerate(info.get("output_tooltips") or []):
            if text:
                assert tips["outputs"][str(i)] == text
    for query, names in SEARCHES.items():
        assert set(names) <= set(browser_report["search"][query]), (query, browser_report["search"][query])


@pytest.mark.comfyui_server
def test_browser_template_browser(browser_report: dict) -> None:
    tpl = browser_report["templates"]
    assert tpl["errors"] == []
    assert sorted(c["name"] for c in tpl["cards"]) == NAMES
    for card in tpl["cards"]:
        assert card["loaded"] and (card["width"], card["height"]) == THUMB_SIZE, card
