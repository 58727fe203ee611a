"""Pure-Python tests of the batch client (``lua_core.batch``): no server, no torch.

Why: the parts that decide *what* is sent (sweep parsing and target resolution, UI -> API conversion,
job identity) and *what is recorded* (manifest, journal) must be exact; they are tested here on
fixtures, with the node definitions in ``tests/data/batch/object_info.json`` (captured from the test
server). The server-side behaviour (crashes, Ctrl-C, validation errors) is in
``tests/comfyui/test_batch_client.py``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import http.server
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from lua_core.batch import convert, nodedefs
from lua_core.batch.client import ComfyClient, parse_header
from lua_core.batch.convert import ui_to_api
from lua_core.batch.errors import BatchError, PromptRejected, SweepError, WorkflowError
from lua_core.batch.jobs import Job, folder_name, prompt_key
from lua_core.batch.manifest import Manifest
from lua_core.batch.outcome import describe_error, execution_error, output_files, rejection_error
from lua_core.batch.sweep import build_jobs, coerce, find_node, load_sweep_file, parse_values, resolve_target
from lua_core.batch.websocket import WebSocket, WebSocketClosed
from lua_core.batch.workflow import check_api_prompt, detect_format, load_workflow

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "batch"
INFO = json.loads((DATA / "object_info.json").read_text())


def api_prompt() -> dict:
    return {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1},
              "_meta": {"title": "Empty Latent Image"}},
        "2": {"class_type": "LUATest_Sleep", "inputs": {"samples": ["1", 0], "seconds": 0.5},
              "_meta": {"title": "Sleep"}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                                                   "scheduler": "simple", "denoise": 1.0, "latent_image": ["2", 0]},
              "_meta": {"title": "KSampler"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat"}, "_meta": {"title": "Positive"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": ""}, "_meta": {"title": "Negative"}},
    }


# --------------------------------------------------------------------------------------------------
# Sweep values
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("1,2,3", ["1", "2", "3"]),
    (" a , b ", ["a", "b"]),
    (r"a cat\, photo,dog", ["a cat, photo", "dog"]),
    ("1..4", [1, 2, 3, 4]),
    ("4..1", [4, 3, 2, 1]),
    ("0..1:0.25", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("1..10:3", [1, 4, 7, 10]),
    ("-2..2:2", [-2, 0, 2]),
    ('["a, b", 2, true]', ["a, b", 2, True]),
    ("single", ["single"]),
])
def test_parse_values(text: str, expected: list) -> None:
    assert parse_values(text) == expected


def test_parse_values_files(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("a cat, photo\n\n  a dog  \n")
    (tmp_path / "seeds.json").write_text("[1, 2, 3]")
    assert parse_values("@prompts.txt", tmp_path) == ["a cat, photo", "a dog"]
    assert parse_values("@seeds.json", tmp_path) == [1, 2, 3]
    with pytest.raises(SweepError, match="cannot read value file"):
        parse_values("@missing.txt", tmp_path)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(SweepError, match="has no values"):
        parse_values("@empty.txt", tmp_path)


@pytest.mark.parametrize(("text", "message"), [
    ("1,,2", "empty value"),
    ("[1, 2", "not valid JSON"),
    ("[]", "non-empty list"),
    ("1..5:0", "step must be positive"),
    ("0..1000000", "limit"),
])
def test_parse_values_errors(text: str, message: str) -> None:
    with pytest.raises(SweepError, match=message):
        parse_values(text)


def test_find_node_by_id_title_class_and_errors() -> None:
    prompt = api_prompt()
    assert find_node(prompt, "2") == "2"
    assert find_node(prompt, "#2") == "2"
    assert find_node(prompt, "Sleep") == "2"
    assert find_node(prompt, "LUATest_Sleep") == "2"
    assert find_node(prompt, "sleep") == "2"  # case-insensitive as a last resort
    assert find_node(prompt, "Positive") == "4"
    with pytest.raises(SweepError) as err:
        find_node(prompt, "CLIPTextEncode")
    assert "matches 2 nodes: #4 'Positive' (CLIPTextEncode), #5 'Negative' (CLIPTextEncode)" in str(err.value)
    assert "--set '4.INPUT=...'" in str(err.value)
    with pytest.raises(SweepError) as err:
        find_node(prompt, "KSamplr")
    assert "Did you mean 'KSampler'" in str(err.value)
    assert "#1 'Empty Latent Image' (EmptyLatentImage)" in str(err.value)


def test_resolve_target_types_and_errors() -> None:
    prompt = api_prompt()
    assert resolve_target(prompt, "KSampler.seed", INFO).type == "INT"
    assert resolve_target(prompt, "KSampler.sampler_name", INFO).type == "COMBO"
    assert resolve_target(prompt, "Sleep.seconds", INFO).type == "FLOAT"
    assert resolve_target(prompt, "Sleep.seconds", None).type == "FLOAT"  # from the current value
    assert resolve_target(prompt, "KSampler.model", INFO).input == "model"  # declared but unset: allowed
    with pytest.raises(SweepError) as err:
        resolve_target(prompt, "KSampler.sed", INFO)
    assert "has no input 'sed'. Did you mean 'seed'?" in str(err.value) and "steps, cfg" in str(err.value)
    with pytest.raises(SweepError, match="is connected to node #2 'Sleep' \\(LUATest_Sleep\\)"):
        resolve_target(prompt, "KSampler.latent_image", INFO)
    with pytest.raises(SweepError, match="expected NODE.INPUT"):
        resolve_target(prompt, "KSampler", INFO)


def test_coerce() -> None:
    prompt = api_prompt()
    seed = resolve_target(prompt, "KSampler.seed", INFO)
    assert coerce("3", seed) == 3 and coerce("3.0", seed) == 3 and coerce(7, seed) == 7
    with pytest.raises(SweepError, match="not a valid INT"):
        coerce("3.5", seed)
    with pytest.raises(SweepError):
        coerce(True, seed)
    assert coerce("0.25", resolve_target(prompt, "Sleep.seconds", INFO)) == 0.25
    text = resolve_target(prompt, "Positive.text", INFO)
    assert coerce(12, text) == "12" and coerce("a, b", text) == "a, b"
    boolean = type(seed)(label="x.y", node_id="1", input="y", type="BOOLEAN")
    assert coerce("yes", boolean) is True and coerce("0", boolean) is False
    with pytest.raises(SweepError):
        coerce("maybe", boolean)


# --------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------


def test_build_jobs_is_a_cartesian_product_first_option_slowest() -> None:
    jobs = build_jobs(api_prompt(), ["KSampler.seed=1..3", "Sleep.seconds=0,0.5"], object_info=INFO)
    assert [tuple(j.params.values()) for j in jobs] == [(1, 0.0), (1, 0.5), (2, 0.0), (2, 0.5), (3, 0.0), (3, 0.5)]
    assert [j.index for j in jobs] == [1, 2, 3, 4, 5, 6]
    assert jobs[3].prompt["3"]["inputs"]["seed"] == 2 and jobs[3].prompt["2"]["inputs"]["seconds"] == 0.5
    assert jobs[3].targets == {"KSampler.seed": ("3", "seed"), "Sleep.seconds": ("2", "seconds")}
    assert len({j.key for j in jobs}) == 6 and len({j.folder for j in jobs}) == 6


def test_build_jobs_with_sweep_files(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("Positive.text,KSampler.steps\n\"a cat, photo\",4\na dog,\n")
    rows = load_sweep_file(tmp_path / "rows.csv")
    assert rows == [{"Positive.text": "a cat, photo", "KSampler.steps": "4"}, {"Positive.text": "a dog"}]
    jobs = build_jobs(api_prompt(), ["KSampler.seed=1,2"], rows, INFO)
    assert len(jobs) == 4
    assert jobs[0].params == {"Positive.text": "a cat, photo", "KSampler.steps": 4, "KSampler.seed": 1}
    assert jobs[2].prompt["3"]["inputs"]["steps"] == 2  # empty CSV cell: the workflow's value
    (tmp_path / "rows.jsonl").write_text('{"KSampler.seed": 5}\n\n{"KSampler.seed": 6, "Sleep.seconds": null}\n')
    assert load_sweep_file(tmp_path / "rows.jsonl") == [{"KSampler.seed": 5}, {"KSampler.seed": 6}]
    (tmp_path / "rows.json").write_text('[{"4.text": "x"}]')
    assert build_jobs(api_prompt(), [], load_sweep_file(tmp_path / "rows.json"), INFO)[0].prompt["4"]["inputs"] == \
        {"text": "x"}
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(SweepError, match="use .csv, .jsonl or .json"):
        load_sweep_file(tmp_path / "rows.txt")
    with pytest.raises(SweepError, match="both in the sweep file and in --set"):
        build_jobs(api_prompt(), ["KSampler.seed=1"], [{"KSampler.seed": 2}], INFO)


def test_build_jobs_rejects_duplicates_and_drops_identical_prompts() -> None:
    with pytest.raises(SweepError, match="set twice"):
        build_jobs(api_prompt(), ["KSampler.seed=1", "KSampler.seed=2"], object_info=INFO)
    with pytest.raises(SweepError, match="name the same input"):
        build_jobs(api_prompt(), ["KSampler.seed=1", "3.seed=2"], object_info=INFO)
    warnings: list[str] = []
    jobs = build_jobs(api_prompt(), ["KSampler.seed=1,2,1"], object_info=INFO, warnings=warnings)
    assert [j.params["KSampler.seed"] for j in jobs] == [1, 2]
    assert warnings and "running it once" in warnings[0]
    assert len(build_jobs(api_prompt(), [], object_info=INFO)) == 1  # no sweep: one job


def test_prompt_key_ignores_titles_and_order_but_not_values() -> None:
    prompt = api_prompt()
    renamed = copy.deepcopy(prompt)
    renamed["3"]["_meta"]["title"] = "Another title"
    reordered = dict(reversed(list(prompt.items())))
    assert prompt_key(prompt) == prompt_key(renamed) == prompt_key(reordered)
    changed = copy.deepcopy(prompt)
    changed["3"]["inputs"]["seed"] = 2
    assert prompt_key(changed) != prompt_key(prompt)
    assert len(prompt_key(prompt)) == 20


def test_folder_names() -> None:
    assert folder_name({"KSampler.seed": 3, "Upscale (LUA).scale": 2.0}, "abcdef0123") == "seed=3_scale=2.0__abcdef01"
    assert folder_name({}, "abcdef0123") == "job__abcdef01"
    # same input name on two nodes: the full label tells them apart; unsafe characters are replaced
    name = folder_name({"Positive.text": "a cat/dog: *photo*", "Negative.text": "blurry"}, "0" * 20)
    assert name == "Positive.text=a_cat_dog_photo_Negative.text=blurry__00000000"
    long = folder_name({"Positive.text": "x" * 500}, "1" * 20)
    assert len(long) < 60 and long.endswith("__11111111")
    job = Job(index=1, params={"KSampler.seed": 3}, prompt=api_prompt())
    assert job.label == "seed=3" and job.key == prompt_key(api_prompt()) and job.folder.endswith(job.key[:8])


# --------------------------------------------------------------------------------------------------
# Manifest and journal
# --------------------------------------------------------------------------------------------------


def test_manifest_append_latest_and_torn_lines(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "out" / "manifest.jsonl")
    manifest.append({"key": "a", "status": "error"})
    manifest.append({"key": "b", "status": "success"})
    with open(manifest.path, "a") as f:  # a crash in the middle of a write
        f.write('{"key": "c", "stat')
    manifest.append({"key": "a", "status": "success"})
    lines = manifest.path.read_text().splitlines()
    assert lines[-1] == '{"key": "a", "status": "success"}', "a row must never be glued to a torn line"
    assert manifest.latest() == {"a": {"key": "a", "status": "success"}, "b": {"key": "b", "status": "success"}}
    journal = manifest.journal
    assert journal.path == tmp_path / "out" / "manifest.pending.jsonl"
    journal.append({"key": "a", "prompt_id": "p1"})
    journal.append({"key": "a", "prompt_id": "p2"})
    assert journal.latest() == {"a": {"key": "a", "prompt_id": "p2"}}
    journal.append({"key": "b", "prompt_id": "p3"})
    journal.retain([{"key": "b", "prompt_id": "p3"}])
    assert journal.latest() == {"b": {"key": "b", "prompt_id": "p3"}}
    journal.retain([])
    assert not journal.path.exists() and journal.latest() == {}
    assert not list(journal.path.parent.glob("*.tmp"))


@pytest.mark.skipif(sys.platform.startswith("win"), reason="flock")
def test_manifest_lock_refuses_a_second_client(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "manifest.jsonl")
    with manifest.lock():
        with pytest.raises(BatchError, match="another batch client is running"):
            with Manifest(tmp_path / "manifest.jsonl").lock():
                pass
    with manifest.lock():  # released
        pass


# --------------------------------------------------------------------------------------------------
# Node definitions and UI -> API conversion
# --------------------------------------------------------------------------------------------------


def layout(node: str) -> list[tuple[str, str]]:
    return [(s.name, s.kind) for s in nodedefs.widget_layout(INFO[node])]


def test_widget_layouts_follow_the_frontend() -> None:
    assert layout("KSampler") == [("seed", "value"), ("control_after_generate", "control"), ("steps", "value"),
                                  ("cfg", "value"), ("sampler_name", "value"), ("scheduler", "value"),
                                  ("denoise", "value")]
    # an INT named seed without control_after_generate still gets the control (legacy rule)
    assert layout("LUATest_TinyModel") == [("latent_format", "value"), ("model_type", "value"), ("seed", "value"),
                                           ("control_after_generate", "control")]
    assert layout("LoadImage") == [("image", "value"), ("upload", "helper")]
    assert layout("LoadImageOutput") == [("image", "value"), ("Auto-refresh after generation", "helper"),
                                         ("refresh", "helper"), ("upload", "helper")]
    assert layout("LatentBatchSeedBehavior") == [("seed_behavior", "value")]  # V3 ["COMBO", {"options"}]
    assert layout("PrimitiveInt") == [("value", "value"), ("control_after_generate", "control")]
    assert layout("VAEDecode") == []
    assert layout("LoraLoader") == [("lora_name", "value"), ("strength_model", "value"), ("strength_clip", "value")]


@pytest.mark.parametrize("name", ["features", "subgraph"])
def test_ui_fixtures_convert_to_their_api_twins(name: str) -> None:
    ui = json.loads((DATA / f"ui_{name}.json").read_text())
    api = json.loads((DATA / f"api_{name}.json").read_text())
    result = ui_to_api(ui, INFO)
    assert result.prompt == api
    assert result.warnings == []
    assert load_workflow(DATA / f"ui_{name}.json", INFO).prompt == load_workflow(DATA / f"api_{name}.json").prompt
    if name == "features":
        assert result.controls == {("4", "seed"): "randomize"}


def features() -> dict:
    return json.loads((DATA / "ui_features.json").read_text())


def node(wf: dict, node_id: int) -> dict:
    return next(n for n in wf["nodes"] if n["id"] == node_id)


def test_bypass_passes_the_matching_input_and_warns_when_none_matches() -> None:
    wf = features()
    node(wf, 5)["mode"] = 0  # un-bypass the upscale: it is back in the prompt, between sampler and sleep
    prompt = ui_to_api(wf, INFO).prompt
    assert prompt["5"]["inputs"] == {"upscale_method": "nearest-exact", "scale_by": 1.5, "samples": ["4", 0]}
    assert prompt["6"]["inputs"]["samples"] == ["5", 0]
    wf = features()
    node(wf, 8)["mode"] = 4  # bypass the decoder: IMAGE output, inputs LATENT and VAE -> nothing to pass
    result = ui_to_api(wf, INFO)
    assert "images" not in result.prompt["9"]["inputs"] and "8" not in result.prompt
    assert any("bypassed node #8" in w for w in result.warnings)
    # the frontend's slot rules: same slot first when compatible, else the first input of the exact type
    model_in = [{"name": "model", "type": "MODEL", "link": 1}, {"name": "clip", "type": "CLIP", "link": 2}]
    lora = {"outputs": [{"type": "MODEL"}, {"type": "CLIP"}]}
    assert convert._Converter._bypass_slot(lora, model_in, 1, "CLIP") == 1
    assert convert._Converter._bypass_slot(lora, model_in, 0, "MODEL") == 0
    assert convert._Converter._bypass_slot(lora, list(reversed(model_in)), 0, "MODEL") == 1
    assert convert._Converter._bypass_slot(lora, model_in, 0, "*") == 0
    assert convert._Converter._bypass_slot(lora, model_in, 0, "LATENT") == -1
    wildcard_first = [{"name": "any", "type": "*", "link": 3}, *model_in]  # exact type beats a wildcard
    assert convert._Converter._bypass_slot({"outputs": [{"type": "MODEL"}]}, wildcard_first, 5, "MODEL") == 1
    assert convert._valid_connection("IMAGE,MASK", "mask") and not convert._valid_connection("IMAGE", "MASK")


def test_mute_drops_the_node_and_the_inputs_linked_to_it() -> None:
    wf = features()
    node(wf, 6)["mode"] = 2  # mute the sleep node: the decoder loses its samples input
    prompt = ui_to_api(wf, INFO).prompt
    assert "6" not in prompt and "samples" not in prompt["8"]["inputs"]


def test_unknown_group_and_broken_nodes_fail_clearly() -> None:
    wf = features()
    node(wf, 3)["type"] = "SomeCustomNode"
    with pytest.raises(WorkflowError) as err:
        ui_to_api(wf, INFO)
    assert "#3 (SomeCustomNode)" in str(err.value) and "Export (API)" in str(err.value)
    wf = features()  # a frontend-only helper nothing depends on is dropped with a warning
    wf["nodes"].append({"id": 50, "type": "Label (rgthree)", "mode": 0, "inputs": [], "outputs": []})
    result = ui_to_api(wf, INFO)
    assert "50" not in result.prompt and any("Label (rgthree)" in w for w in result.warnings)
    wf = features()
    node(wf, 3)["type"] = "workflow>My group"
    with pytest.raises(WorkflowError, match="legacy group node"):
        ui_to_api(wf, INFO)
    wf = features()
    wf["links"] = [link for link in wf["links"] if link[0] != 7]
    with pytest.raises(WorkflowError, match="refers to link 7"):
        ui_to_api(wf, INFO)
    with pytest.raises(WorkflowError, match="no 'nodes' list"):
        ui_to_api({"1": {}}, INFO)


def test_widget_values_dict_mismatch_and_legacy_force_input() -> None:
    wf = features()
    node(wf, 7)["widgets_values"] = {"vae_name": "lua_test_taesd_16ch.safetensors"}
    assert ui_to_api(wf, INFO).prompt["7"]["inputs"]["vae_name"] == "lua_test_taesd_16ch.safetensors"
    wf = features()
    node(wf, 3)["widgets_values"] = [64, 64]
    result = ui_to_api(wf, INFO)
    assert any("2 widget values for 3 widgets" in w for w in result.warnings)
    # before frontend 1.16 a forceInput input also stored a (dummy) widget value: skipped by count
    info = copy.deepcopy(INFO)
    info["VAELoader"]["input"]["required"] = {"vae_name": info["VAELoader"]["input"]["required"]["vae_name"],
                                              "strength": ["FLOAT", {"forceInput": True}]}
    info["VAELoader"]["input_order"]["required"] = ["strength", "vae_name"]
    wf = features()
    node(wf, 7)["widgets_values"] = [0.5, "lua_test_taesd_4ch.safetensors"]
    assert ui_to_api(wf, info).prompt["7"]["inputs"] == {"vae_name": "lua_test_taesd_4ch.safetensors"}


def test_frontend_text_processing() -> None:
    warnings: list[str] = []
    assert nodedefs.process_dynamic_prompt("a cat // comment\n/* block */photo \\{x\\}") == "a cat \nphoto {x}"
    picked = nodedefs.process_dynamic_prompt("a {red|green|blue} car", warnings, "#4")
    assert picked in ("a red car", "a green car", "a blue car") and "fixed seed" in warnings[0]
    assert nodedefs.process_dynamic_prompt("a {red|green|blue} car") == picked, "the choice must be reproducible"
    wf = features()
    node(wf, 9)["widgets_values"] = ["%date:yyyy-MM-dd%/x_%Nope.value%_%KSampler.steps%"]
    result = ui_to_api(wf, INFO)
    assert result.prompt["9"]["inputs"]["filename_prefix"] == "%date:yyyy-MM-dd%/x_%Nope.value%_20"
    assert any("date" in w for w in result.warnings)


def test_detect_format_and_api_checks(tmp_path: Path) -> None:
    assert detect_format(features()) == "ui"
    assert detect_format(api_prompt()) == "api"
    assert detect_format({"prompt": api_prompt(), "client_id": "x"}) == "api-wrapped"
    with pytest.raises(WorkflowError, match="not a ComfyUI workflow"):
        detect_format({"foo": 1})
    broken = api_prompt()
    broken["3"]["inputs"]["latent_image"] = ["99", 0]
    with pytest.raises(WorkflowError, match="links to node '99'"):
        check_api_prompt(broken)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(WorkflowError, match="not valid JSON"):
        load_workflow(tmp_path / "bad.json")
    with pytest.raises(WorkflowError, match="needs the server's /object_info"):
        load_workflow(DATA / "ui_features.json")


# --------------------------------------------------------------------------------------------------
# Server answers
# --------------------------------------------------------------------------------------------------


def test_outcome_formatting() -> None:
    prompt = api_prompt()
    err = PromptRejected({"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
                         {"3": {"class_type": "KSampler", "errors": [
                             {"type": "value_not_in_list", "message": "Value not in list",
                              "details": "sampler_name: 'x' not in [...]",
                              "extra_info": {"input_name": "sampler_name", "received_value": "x"}}]}})
    error = rejection_error(err, prompt)
    assert error["nodes"] == [{"node_id": "3", "title": "KSampler", "class_type": "KSampler",
                               "input": "sampler_name", "type": "value_not_in_list", "message": "Value not in list",
                               "details": "sampler_name: 'x' not in [...]", "received": "x"}]
    assert "#3 (KSampler) input 'sampler_name': Value not in list" in describe_error(error)
    entry = {"status": {"status_str": "error", "messages": [
        ["execution_start", {"timestamp": 1000}],
        ["execution_error", {"node_id": "2", "node_type": "LUATest_Sleep", "exception_type": "RuntimeError",
                             "exception_message": "boom\n", "traceback": ["a\n", "b\n"]}]]},
        "outputs": {"10": {"images": [{"filename": "b.png", "subfolder": "", "type": "output"}]},
                    "9": {"images": [{"filename": "a.png", "subfolder": "s", "type": "output"},
                                     {"filename": "p.png", "type": "temp"}], "text": ["not a file"]}}}
    assert describe_error(execution_error(entry, prompt)) == "#2 'Sleep' (LUATest_Sleep) failed: RuntimeError: boom"
    assert [(n, f["filename"]) for n, f in output_files(entry)] == [("9", "a.png"), ("10", "b.png")]
    assert len(output_files(entry, include_temp=True)) == 3


def test_client_configuration() -> None:
    assert parse_header("Authorization: Bearer x:y") == ("Authorization", "Bearer x:y")
    with pytest.raises(ValueError):
        parse_header("no colon")
    client = ComfyClient("https://example.org/comfy/", headers={"Authorization": "Bearer secret"})
    assert client.base_url == "https://example.org/comfy"
    assert client.ws_url("abc") == "wss://example.org/comfy/ws?clientId=abc"
    assert "secret" not in repr(client)
    with pytest.raises(ValueError, match="server URL"):
        ComfyClient("ftp://example.org")


class _FakeComfy(http.server.BaseHTTPRequestHandler):
    """Answers like ComfyUI would, recording the headers of every request."""

    seen: list[dict] = []

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization")})
        if self.path == "/comfy/queue":
            self._json(200, {"queue_running": [[0, "p1", {}, {}, []]], "queue_pending": [[1, "p2", {}, {}, []]]})
        elif self.path.startswith("/comfy/history/"):
            self._json(503, {})
        elif self.path.startswith("/comfy/view"):
            self._json(404, {})
        else:
            self._json(500, {"error": "boom"})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        self._json(400, {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed"},
                         "node_errors": {"3": {"class_type": "KSampler", "errors": []}}})


def test_client_sends_headers_and_classifies_failures(tmp_path: Path) -> None:
    from lua_core.batch.errors import RequestError, ServerUnreachable

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeComfy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = ComfyClient(f"http://127.0.0.1:{server.server_port}/comfy", headers={"Authorization": "Bearer t"},
                             timeout=5)
        assert client.queue_ids() == (["p1"], ["p2"])
        with pytest.raises(ServerUnreachable, match="503"):  # a proxy in front of a restarting server
            client.history("p1")
        with pytest.raises(RequestError, match="HTTP 404"):
            client.download({"filename": "a.png"}, tmp_path / "a.png")
        assert not list(tmp_path.iterdir()), "a failed download leaves nothing behind"
        with pytest.raises(RequestError, match="HTTP 500"):
            client.object_info()
        with pytest.raises(PromptRejected) as err:
            client.submit({"3": {}}, prompt_id="mine", client_id="me")
        assert err.value.node_errors == {"3": {"class_type": "KSampler", "errors": []}}
        posted = _FakeComfy.seen[-1]
        assert posted["body"] == {"prompt": {"3": {}}, "client_id": "me", "prompt_id": "mine"}
        assert {s["auth"] for s in _FakeComfy.seen} == {"Bearer t"}, "every request carries the header"
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ServerUnreachable, match="refused|failed"):  # nobody listens there any more
        ComfyClient(f"http://127.0.0.1:{server.server_port}", timeout=2).queue()


def test_make_client_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from lua_core.batch import make_client

    monkeypatch.setenv("LUA_TEST_TOKEN", "s3cret")
    client = make_client("http://h:1", headers=["X-Extra: 1"], token_env="LUA_TEST_TOKEN")
    assert client.headers == {"X-Extra": "1", "Authorization": "Bearer s3cret"}
    monkeypatch.delenv("LUA_TEST_TOKEN")
    with pytest.raises(BatchError, match="LUA_TEST_TOKEN"):
        make_client("http://h:1", token_env="LUA_TEST_TOKEN")


# --------------------------------------------------------------------------------------------------
# The websocket client, against a minimal server
# --------------------------------------------------------------------------------------------------


def _frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        return head + bytes([n]) + payload
    if n < 65536:
        return head + bytes([126]) + struct.pack(">H", n) + payload
    return head + bytes([127]) + struct.pack(">Q", n) + payload


def _read_client_frame(conn: socket.socket) -> tuple[int, bytes]:
    b0, b1 = conn.recv(2, socket.MSG_WAITALL)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack(">H", conn.recv(2, socket.MSG_WAITALL))
    mask = conn.recv(4, socket.MSG_WAITALL)
    data = conn.recv(n, socket.MSG_WAITALL) if n else b""
    assert b1 & 0x80, "client frames must be masked"
    return b0 & 0x0F, bytes(c ^ mask[i % 4] for i, c in enumerate(data))


def test_websocket_client_protocol() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            lines = request.decode().split("\r\n")
            seen["request_line"] = lines[0]
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            seen["auth"] = headers.get("Authorization")
            accept = base64.b64encode(hashlib.sha1((headers["Sec-WebSocket-Key"]
                                                    + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            conn.sendall(_frame(0x1, b'{"type": "status"}'))
            conn.sendall(_frame(0x9, b"hi"))  # ping: the client must answer with a pong
            seen["pong"] = _read_client_frame(conn)
            conn.sendall(_frame(0x1, b"frag", fin=False) + _frame(0x0, b"mented"))
            conn.sendall(_frame(0x2, b"\x00" * 70000))
            seen["text"] = _read_client_frame(conn)
            conn.sendall(_frame(0x8, struct.pack(">H", 1000)))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ws = WebSocket.connect(f"ws://127.0.0.1:{port}/ws?clientId=abc", {"Authorization": "Bearer t"})
    assert ws.recv() == '{"type": "status"}'
    assert ws.recv() == "fragmented"
    assert ws.recv() == b"\x00" * 70000
    ws.send_text("hello")
    with pytest.raises(WebSocketClosed):
        ws.recv()
    ws.close()
    thread.join(5)
    listener.close()
    assert seen["request_line"] == "GET /ws?clientId=abc HTTP/1.1"
    assert seen["auth"] == "Bearer t"
    assert seen["pong"] == (0xA, b"hi") and seen["text"] == (0x1, b"hello")


# --------------------------------------------------------------------------------------------------
# No torch
# --------------------------------------------------------------------------------------------------

NO_TORCH_PROBE = textwrap.dedent("""
    import sys, types
    # load lua_core/batch without running lua_core/__init__.py (which imports torch for the model code)
    pkg = types.ModuleType("lua_core")
    pkg.__path__ = [sys.argv[1]]
    sys.modules["lua_core"] = pkg
    import lua_core.batch, lua_core.commands.batch
    from lua_core.batch import api, client, convert, jobs, manifest, nodedefs, outcome, progress, runner, sweep
    from lua_core.batch import capability, events, farm, servers, websocket, worker, workflow
    heavy = sorted(m for m in ("torch", "numpy", "PIL", "safetensors", "aiohttp", "comfy") if m in sys.modules)
    print(",".join(heavy))
""")


def test_batch_package_imports_no_torch() -> None:
    probe = subprocess.run([sys.executable, "-c", NO_TORCH_PROBE, str(ROOT / "lua_core")], capture_output=True,
                           text=True, cwd=ROOT, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "", f"lua_core.batch imported {probe.stdout.strip()}"


def test_lua_core_imports_no_torch() -> None:
    """``import lua_core`` (the package the batch CLI runs under) must not load torch: its model names are lazy."""
    probe = subprocess.run([sys.executable, "-c", "import sys, lua_core; print(sorted(m for m in ('torch', 'numpy', "
                            "'safetensors') if m in sys.modules))"],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]", f"import lua_core loaded {probe.stdout.strip()}"


def test_cli_entry_imports_no_torch() -> None:
    """``python -m lua_core batch`` runs on machines without torch: the whole entry path stays torch-free."""
    code = ("import runpy, sys; sys.argv = ['lua_core', 'batch', '--help']\n"
            "try:\n    runpy.run_module('lua_core', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'CLEAN')")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "--set" in probe.stdout and probe.stdout.strip().endswith("CLEAN"), probe.stdout + probe.stderr
