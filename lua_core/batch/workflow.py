"""Reading a workflow file in either format and producing the API prompt the batch starts from.

Why: users hand over whatever they saved: the UI format ("Save", ``nodes`` + ``links``), the API format
("Export (API)", ``{id: {class_type, inputs}}``), or an API prompt wrapped in ``{"prompt": {...}}``
(the ``POST /prompt`` body). This module recognises the format, checks the structure enough to give a
clear error instead of a server stack trace, and converts UI workflows with :func:`convert.ui_to_api`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .convert import ui_to_api
from .errors import WorkflowError


@dataclass
class Workflow:
    """An API prompt ready for sweeping. ``format`` is ``"api"`` or ``"ui"``; ``controls`` see :class:`Conversion`."""

    prompt: dict[str, dict]
    format: str
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    controls: dict[tuple[str, str], str] = field(default_factory=dict)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file, with errors that name the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as err:
        raise WorkflowError(f"cannot read workflow {path}: {err.strerror or err}") from err
    except json.JSONDecodeError as err:
        raise WorkflowError(f"{path} is not valid JSON: {err}") from err


def detect_format(data: Any) -> str:
    """``"ui"``, ``"api"`` or ``"api-wrapped"`` (``{"prompt": {...}}``); WorkflowError otherwise."""
    if isinstance(data, Mapping):
        if isinstance(data.get("nodes"), list):
            return "ui"
        if isinstance(data.get("prompt"), Mapping) and _looks_api(data["prompt"]):
            return "api-wrapped"
        if _looks_api(data):
            return "api"
    raise WorkflowError("not a ComfyUI workflow: expected the UI format (a 'nodes' list) or the API format "
                        "({\"<id>\": {\"class_type\": ..., \"inputs\": {...}}})")


def _looks_api(data: Mapping[str, Any]) -> bool:
    return bool(data) and all(isinstance(v, Mapping) and "class_type" in v for v in data.values())


def check_api_prompt(prompt: Mapping[str, Any]) -> dict[str, dict]:
    """A copy of ``prompt`` with string ids, checked: every node has ``class_type`` and an ``inputs`` dict,
    and every link points at a node that exists."""
    out: dict[str, dict] = {}
    for nid, node in prompt.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str):
            raise WorkflowError(f"API prompt node {nid!r} has no class_type")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            raise WorkflowError(f"API prompt node {nid!r} ({node['class_type']}): 'inputs' must be an object")
        out[str(nid)] = {**node, "inputs": dict(inputs)}
    for nid, node in out.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and str(value[0]) not in out:
                if isinstance(value[0], (str, int)):
                    raise WorkflowError(f"node {nid} ({node['class_type']}) input {name!r} links to node "
                                        f"{value[0]!r}, which is not in the prompt")
    return out


def load_workflow(source: str | Path | Mapping[str, Any],
                  object_info: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None) -> Workflow:
    """Load a workflow (path or parsed JSON) as an API prompt.

    ``object_info`` (the dict, or a function fetching it) is needed only for UI-format workflows; it is
    called only then, so API-format batches can be planned without a server.
    """
    name = str(source) if isinstance(source, (str, Path)) else "<workflow>"
    data = read_json(source) if isinstance(source, (str, Path)) else source
    kind = detect_format(data)
    if kind == "api":
        return Workflow(check_api_prompt(data), "api", name)
    if kind == "api-wrapped":
        return Workflow(check_api_prompt(data["prompt"]), "api", name)
    if object_info is None:
        raise WorkflowError(f"{name} is in the UI format; converting it needs the server's /object_info")
    info = object_info() if callable(object_info) else object_info
    conversion = ui_to_api(data, info)
    return Workflow(conversion.prompt, "ui", name, conversion.warnings, conversion.controls)
