"""Can this server run this prompt? Checked against its ``/object_info`` before anything is sent.

Why: the servers of a farm are rarely identical (a node pack installed on two of four, a model copied to
some). Sending a job to a server that lacks a node or a model only earns an HTTP 400, so each job goes
only where it validates, and a job no server can run becomes one error row that says, per server, what
is missing.

What is checked, as ComfyUI 0.3.75's ``execution.validate_inputs`` does it: every node's class must be
installed, and every literal value of an input whose definition is an option list (the V1 combo form
``[["a.safetensors", ...], {...}]``) should be in that list. Model loaders list their folder's files
there, so ``/object_info`` answers for models too: ``/models/<folder>`` would give the same lists, but
cannot say which input reads which folder. Ranges and types are the same on every server and are left
to the server, which reports them per job.

Only a missing node class is *proven* (:data:`PROVEN`): ComfyUI cannot run a node it does not have. A
value outside an option list is not: a node whose ``VALIDATE_INPUTS`` names that input skips the list
check (``LoadImage`` accepts ``"x.png [output]"`` or a file uploaded after its list was read), and
``/object_info`` does not say which nodes do that. So such a value only makes a server *doubtful* for
the job: it goes to a server where everything checks first, and to a doubtful one only when none is
clean; that server's own validation then decides, and its refusal means "not here" (another server is
tried), not a failed job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .nodedefs import input_options, ordered_inputs

PROVEN = frozenset({"missing_node"})  # problem types /object_info can prove; the others the server decides


def _title(node: Mapping[str, Any]) -> str | None:
    meta = node.get("_meta")
    return meta.get("title") if isinstance(meta, dict) else None


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def combo_options(spec: Any) -> list | None:
    """The option list of a V1 combo input spec (``[[...], {...}]``), or None for any other input."""
    if not isinstance(spec, (list, tuple)) or not spec or not isinstance(spec[0], (list, tuple)):
        return None
    if input_options(spec).get("remote"):
        return None  # filled by the frontend from a route, not by the server's definition
    return list(spec[0])


def prompt_problems(prompt: Mapping[str, Any], object_info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What stops ``prompt`` from validating on a server with this ``object_info`` (``[]``: nothing).

    Items have the manifest's validation-error shape: ``node_id``, ``title``, ``class_type``, ``input``,
    ``type`` (``missing_node`` or ``value_not_in_list``), ``message``, ``details``, ``received``.
    """
    problems: list[dict[str, Any]] = []
    for node_id, node in prompt.items():
        class_type = node.get("class_type")
        definition = object_info.get(class_type) if isinstance(class_type, str) else None
        base = {"node_id": str(node_id), "title": _title(node), "class_type": class_type}
        if not isinstance(definition, Mapping):
            problems.append({**base, "input": None, "type": "missing_node",
                             "message": f"node class {class_type!r} is not installed on this server",
                             "details": None})
            continue
        specs = {name: spec for name, spec, _ in ordered_inputs(definition)}
        for name, value in (node.get("inputs") or {}).items():
            options = combo_options(specs.get(name))
            if options is None or _is_link(value) or value in options:
                continue
            shown = ", ".join(map(str, options[:8])) + (f" ... ({len(options)} in all)" if len(options) > 8 else "")
            problems.append({**base, "input": name, "type": "value_not_in_list",
                             "message": f"{value!r} is not among this server's options",
                             "details": f"it has: {shown or '(none)'}", "received": value})
    return problems


def fit(problems: list[dict[str, Any]] | None) -> str | None:
    """``"yes"`` (nothing found), ``"doubtful"`` (only values a node may still accept), ``"no"`` (a proven
    problem), or None while the server's node list is unknown."""
    if problems is None:
        return None
    if any(p.get("type") in PROVEN for p in problems):
        return "no"
    return "doubtful" if problems else "yes"


def nowhere_error(problems_by_server: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The manifest ``error`` of a job that validates on no server: each server's problems, tagged with it."""
    items = [{**item, "server": server} for server, problems in problems_by_server.items() for item in problems]
    return {"kind": "validation", "type": "validates_nowhere",
            "message": f"no server can run this job ({len(problems_by_server)} servers checked, by their "
                       "/object_info or by sending it): install the missing nodes or models on one of them",
            "details": None, "nodes": items}
