"""Reading what the server says about a prompt: rejections, history entries, output files, timings.

Why a module: ComfyUI reports results in three shapes (the 400 body of ``POST /prompt``, the
``/history`` entry, websocket events), and users need one answer per job: *which node, which input,
what went wrong*, plus the files to download. These functions turn the server's shapes into the
manifest's ``error`` objects and file lists, naming nodes the way the rest of the client does
(``#id 'title' (class)``), with titles taken from the prompt's ``_meta``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

from .convert import node_label
from .errors import PromptRejected


def _title(prompt: Mapping[str, Any], node_id: Any) -> str | None:
    node = prompt.get(str(node_id)) or {}
    meta = node.get("_meta")
    return meta.get("title") if isinstance(meta, dict) else None


def rejection_error(err: PromptRejected, prompt: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest ``error`` of a prompt the server refused: top-level error + one item per node problem.

    Each item: ``node_id``, ``title``, ``class_type``, ``input`` (when the server names one), ``type``,
    ``message``, ``details``, ``received`` (the rejected value, when given).
    """
    items = []
    for node_id, info in (err.node_errors or {}).items():
        class_type = (info or {}).get("class_type") or (prompt.get(str(node_id)) or {}).get("class_type")
        for e in (info or {}).get("errors") or []:
            extra = e.get("extra_info") or {}
            item = {"node_id": str(node_id), "title": _title(prompt, node_id), "class_type": class_type,
                    "input": extra.get("input_name"), "type": e.get("type"), "message": e.get("message"),
                    "details": e.get("details")}
            if "received_value" in extra:
                item["received"] = extra["received_value"]
            items.append(item)
    top = err.error or {}
    return {"kind": "validation", "type": top.get("type"), "message": top.get("message"),
            "details": top.get("details"), "nodes": items}


def execution_error(entry: Mapping[str, Any], prompt: Mapping[str, Any]) -> dict[str, Any] | None:
    """The manifest ``error`` of a prompt that failed while running (None if the entry has none)."""
    for name, data in _messages(entry):
        if name == "execution_error":
            node_id = str(data.get("node_id"))
            return {"kind": "execution", "node_id": node_id, "title": _title(prompt, node_id),
                    "class_type": data.get("node_type"), "exception_type": data.get("exception_type"),
                    # ComfyUI's message ends with the exception's newline, which printed a blank line
                    "message": str(data.get("exception_message") or "").rstrip(),
                    "traceback": "".join((data.get("traceback") or [])[-6:])}
    return None


def interrupted_at(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"node_id", "class_type"}`` where the prompt was interrupted, or None if it was not."""
    for name, data in _messages(entry):
        if name == "execution_interrupted":
            return {"node_id": str(data.get("node_id")), "class_type": data.get("node_type")}
    return None


def succeeded(entry: Mapping[str, Any]) -> bool:
    status = entry.get("status") or {}
    return status.get("status_str") == "success" or (status.get("completed") is True
                                                   and status.get("status_str") != "error")


def _messages(entry: Mapping[str, Any]) -> list[tuple[str, dict]]:
    out = []
    for item in (entry.get("status") or {}).get("messages") or []:
        if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], dict):
            out.append((str(item[0]), item[1]))
    return out


def output_files(entry: Mapping[str, Any], include_temp: bool = False) -> list[tuple[str, dict]]:
    """``[(node id, {"filename", "subfolder", "type"})]`` of every file a prompt's outputs name.

    Every list of file records in the node outputs counts (``images``, ``gifs``, ``audio``, ``latents``,
    ``3d``...). ``type == "output"`` only, unless ``include_temp`` (previews are ``temp``).
    """
    files = []
    for node_id, outputs in sorted((entry.get("outputs") or {}).items(), key=lambda kv: _order(kv[0])):
        if not isinstance(outputs, dict):
            continue
        for value in outputs.values():
            if not isinstance(value, list):
                continue
            for rec in value:
                if isinstance(rec, dict) and isinstance(rec.get("filename"), str):
                    kind = rec.get("type", "output")
                    if kind == "output" or (include_temp and kind == "temp"):
                        files.append((str(node_id), rec))
    return files


def _order(node_id: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in str(node_id).split(":"))


def server_times(entry: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(start, end) of the execution in epoch seconds, from the server's own message timestamps."""
    start = end = None
    for name, data in _messages(entry):
        ts = data.get("timestamp")
        if not isinstance(ts, (int, float)):
            continue
        if name == "execution_start":
            start = ts / 1000.0
        elif name in ("execution_success", "execution_error", "execution_interrupted"):
            end = ts / 1000.0
    return start, end


def iso(epoch: float | None) -> str | None:
    """Epoch seconds -> ISO 8601 UTC with milliseconds (None stays None)."""
    if epoch is None:
        return None
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).isoformat(timespec="milliseconds")


def describe_error(error: Mapping[str, Any] | None) -> str:
    """A human-readable version of a manifest ``error`` (several lines for several node problems)."""
    if not error:
        return "unknown error"
    if error.get("kind") == "validation":
        lines = [f"{error.get('message') or 'prompt rejected'}"]
        for item in error.get("nodes") or []:
            where = (node_label(item["node_id"], item.get("title"), item.get("class_type")) if item.get("node_id")
                     else "the prompt")
            if item.get("server"):  # a farm's "validates nowhere": what each server lacks
                where = f"on {item['server']}: {where}"
            if item.get("input"):
                where += f" input {item['input']!r}"
            detail = f": {item['details']}" if item.get("details") else ""
            lines.append(f"  {where}: {item.get('message')}{detail}")
        if not error.get("nodes") and error.get("details"):
            lines.append(f"  {error['details']}")
        return "\n".join(lines)
    if error.get("kind") == "execution":
        where = node_label(error.get("node_id"), error.get("title"), error.get("class_type"))
        return f"{where} failed: {error.get('exception_type')}: {error.get('message')}"
    return str(error.get("message") or error)
