"""UI workflow JSON (what "Save" writes: ``nodes``, ``links``) -> API prompt (``{id: {class_type, inputs}}``).

Why: users keep workflows in the UI format, but ``POST /prompt`` only takes the API format. The
ComfyUI frontend converts in JavaScript (``graphToPrompt`` in ``src/utils/executionUtil.ts`` and
``ExecutableNodeDTO`` in litegraph, frontend 1.32); this module re-implements the same rules in Python,
driven by the server's ``/object_info``, so a batch can start from a file saved in the UI:

* **widget values**: ``widgets_values`` is positional, one entry per widget the frontend creates. The
  widget list comes from the node definition in ``input_order`` (required, optional, then any extra
  input), skipping link-only types and ``forceInput``. Some widgets store a value that is not an
  input: the ``control_after_generate`` combo after a seed (INT with ``control_after_generate``, or
  named ``seed``/``noise_seed``), the control + filter pair after a COMBO with
  ``control_after_generate``, the auto-refresh toggle and refresh button of remote combos, and the
  upload button (``image_upload`` & co., placed after all inputs). Those are read and skipped.
* **converted widgets** (a widget input with a link) take the linked value instead of the widget's.
* **primitive nodes** (``PrimitiveNode``, frontend-only) copy their value into every widget they
  feed; **reroutes** (``Reroute`` nodes) pass their input through; native link reroutes are only link
  waypoints and need nothing.
* **bypassed** nodes (mode 4) are dropped and each output is wired to the first input of a matching
  type (same rules as the frontend: same slot first, then exact type, then compatible type); **muted**
  nodes (mode 2) are dropped and inputs linked to them are removed.
* **notes** (``Note``, ``MarkdownNote``) and groups are dropped.
* **subgraphs** (frontend >= 1.24, ``definitions.subgraphs``) are flattened: inner nodes get ids
  ``"<instance id>:<inner id>"`` as the frontend sends them. Legacy *group nodes* (``workflow>...``)
  are refused with a clear message.
* ``filename_prefix`` of save nodes gets the frontend's ``%Node title.widget%`` substitution; text
  widgets with ``dynamicPrompts`` get comments stripped and escapes resolved (``{a|b}`` choices, which
  the frontend picks at random, are picked with a fixed seed and reported as a warning).

What a frontend *would* do after queueing (``control_after_generate`` = randomize/increment) is not
applied: a batch sets values explicitly (``--set``). The control values are returned in
:attr:`Conversion.controls` so the caller can point that out.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import WorkflowError
from .nodedefs import (
    WidgetSlot,
    input_options,
    input_type,
    is_widget_input,
    ordered_inputs,
    process_dynamic_prompt,
    widget_layout,
)

MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4
SUBGRAPH_INPUT_ID, SUBGRAPH_OUTPUT_ID = -10, -20

NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
REROUTE_TYPES = frozenset({"Reroute"})
PRIMITIVE_TYPES = frozenset({"PrimitiveNode"})
VIRTUAL_TYPES = NOTE_TYPES | REROUTE_TYPES | PRIMITIVE_TYPES

# extensions/core/saveImageExtraOutput.ts: these nodes' filename_prefix gets %Node.widget% substitution
SAVE_NODE_TYPES = frozenset({"SaveImage", "SaveVideo", "SaveAnimatedWEBP", "SaveWEBM", "SaveAudio", "SaveGLB",
                             "SaveAnimatedPNG", "CLIPSave", "VAESave", "ModelSave", "LoraSave", "SaveLatent"})


@dataclass
class Conversion:
    """The result of :func:`ui_to_api`.

    ``prompt``: the API prompt (with ``_meta.title``). ``warnings``: things that converted but deserve a
    look. ``controls``: ``{(node id, input): control value}`` for seed/combo widgets whose UI control
    was not ``fixed`` (the batch sends the stored value; the UI would change it after each run).
    """

    prompt: dict[str, dict]
    warnings: list[str] = field(default_factory=list)
    controls: dict[tuple[str, str], str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# The converter
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Link:
    id: str
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int
    type: Any


@dataclass
class _Scope:
    """One graph being walked: the root workflow or one *instance* of a subgraph definition."""

    nodes: dict[str, dict]
    links: dict[str, _Link]
    path: tuple[str, ...] = ()
    definition: dict | None = None  # subgraph definition (None at the root)
    instance: dict | None = None  # the subgraph node in the parent scope
    parent: _Scope | None = None

    def exec_id(self, node: Mapping[str, Any]) -> str:
        return ":".join((*self.path, str(node["id"])))


@dataclass
class _Resolved:
    link: tuple[str, int] | None = None
    value: Any = None


_MISSING = object()


def _parse_links(raw: Any) -> dict[str, _Link]:
    links: dict[str, _Link] = {}
    for item in raw or []:
        if isinstance(item, dict):
            link = _Link(str(item["id"]), str(item["origin_id"]), int(item["origin_slot"]),
                         str(item["target_id"]), int(item["target_slot"]), item.get("type"))
        elif isinstance(item, (list, tuple)) and len(item) >= 5:
            link = _Link(str(item[0]), str(item[1]), int(item[2]), str(item[3]), int(item[4]),
                         item[5] if len(item) > 5 else None)
        else:
            continue
        links[link.id] = link
    return links


def _valid_connection(a: Any, b: Any) -> bool:
    """litegraph's ``LiteGraph.isValidConnection`` (``*``/empty match all; comma lists; case-insensitive)."""
    a = 0 if a in ("", "*") else a
    b = 0 if b in ("", "*") else b
    if not a or not b or a == b:
        return True
    a, b = str(a).lower(), str(b).lower()
    if "," not in a and "," not in b:
        return a == b
    return any(_valid_connection(x, y) for x in a.split(",") for y in b.split(","))


def node_label(exec_id: str, title: Any, class_type: Any) -> str:
    """``#3 'My sampler' (KSampler)``: how errors name a node."""
    return f"#{exec_id} {title!r} ({class_type})" if title and title != class_type else f"#{exec_id} ({class_type})"


class _Converter:
    """One conversion: walks the root graph and every subgraph instance, mirroring ``ExecutableNodeDTO``.

    Resolution follows the frontend: ``_resolve_input`` follows an input's link (out of a subgraph through
    its instance), ``_resolve_output`` goes through bypassed nodes, subgraph outputs and reroutes until
    it reaches a real node's output (a link) or a value (a promoted subgraph widget), or nothing.
    """

    def __init__(self, workflow: Mapping[str, Any], object_info: Mapping[str, Any]):
        self.workflow = workflow
        self.info = object_info
        self.warnings: list[str] = []
        self.controls: dict[tuple[str, str], str] = {}
        self.subgraphs: dict[str, dict] = {}
        self._collect_definitions(workflow)
        # (exec id, widget name) -> (primitive value, run %..% replacement on it)
        self.overrides: dict[tuple[str, str], tuple[Any, bool]] = {}
        self._sr_names: dict[str, str] = {}  # exec id -> "Node name for S&R" property
        self.widget_values: dict[str, dict[str, Any]] = {}  # exec id -> {widget name: value}
        self.titles: dict[str, str] = {}

    def _collect_definitions(self, graph: Mapping[str, Any]) -> None:
        for sg in ((graph.get("definitions") or {}).get("subgraphs") or []):
            if isinstance(sg, dict) and "id" in sg and sg["id"] not in self.subgraphs:
                self.subgraphs[str(sg["id"])] = sg
                self._collect_definitions(sg)

    # -- entry ---------------------------------------------------------------------------------

    def convert(self) -> Conversion:
        root = _Scope(nodes={str(n["id"]): n for n in self.workflow.get("nodes") or [] if isinstance(n, dict)},
                      links=_parse_links(self.workflow.get("links")))
        self._check_group_nodes()
        scopes = self._walk(root, set())
        self._check_unknown(scopes)
        for scope in scopes:
            self._apply_primitives(scope)
        real: list[tuple[_Scope, dict]] = []
        for scope in scopes:
            for node in scope.nodes.values():
                if self._is_real(node):
                    real.append((scope, node))
                    self._read_widgets(scope, node)
        self._substitute_text(real)
        output: dict[str, dict] = {}
        for scope, node in real:
            if node.get("mode", MODE_ALWAYS) in (MODE_NEVER, MODE_BYPASS):
                continue
            exec_id = scope.exec_id(node)
            output[exec_id] = self._node_entry(scope, node, exec_id)
        for entry in output.values():  # inputs linked to dropped (muted) nodes go, as in graphToPrompt
            for name, value in list(entry["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and value[0] not in output:
                    del entry["inputs"][name]
        if not output:
            raise WorkflowError("the workflow has no executable nodes (all muted, bypassed or frontend-only)")
        return Conversion(output, self.warnings, self.controls)

    # -- structure -------------------------------------------------------------------------------

    def _check_group_nodes(self) -> None:
        group_nodes = (self.workflow.get("extra") or {}).get("groupNodes") or {}
        for node in self.workflow.get("nodes") or []:
            t = str(node.get("type", ""))
            if t.startswith(("workflow>", "workflow/")) or t in group_nodes:
                raise WorkflowError(
                    f"node #{node.get('id')} is a legacy group node ({t!r}); the batch client cannot expand "
                    "group nodes. In ComfyUI, right-click it and convert it to a subgraph (or ungroup it), "
                    "or export the workflow in API format (Workflow > Export (API)).")

    def _walk(self, scope: _Scope, active: set[str]) -> list[_Scope]:
        scopes = [scope]
        for node in scope.nodes.values():
            sid = str(node.get("type"))
            if sid not in self.subgraphs:
                continue
            if node.get("mode", MODE_ALWAYS) in (MODE_NEVER, MODE_BYPASS):
                continue  # a muted/bypassed subgraph drops its inner nodes
            if sid in active:
                raise WorkflowError(f"subgraph {sid} contains itself (node #{scope.exec_id(node)})")
            scopes += self._walk(self._instance_scope(scope, node), active | {sid})
        return scopes

    def _instance_scope(self, parent: _Scope, node: dict) -> _Scope:
        definition = self.subgraphs[str(node["type"])]
        return _Scope(nodes={str(n["id"]): n for n in definition.get("nodes") or []},
                      links=_parse_links(definition.get("links")), path=(*parent.path, str(node["id"])),
                      definition=definition, instance=node, parent=parent)

    def _is_subgraph(self, node: Mapping[str, Any]) -> bool:
        return str(node.get("type")) in self.subgraphs

    def _is_real(self, node: Mapping[str, Any]) -> bool:
        t = node.get("type")
        return t in self.info and not self._is_subgraph(node)

    def _check_unknown(self, scopes: list[_Scope]) -> None:
        unknown: list[str] = []
        for scope in scopes:
            for node in scope.nodes.values():
                t = node.get("type")
                if t in self.info or t in VIRTUAL_TYPES or self._is_subgraph(node):
                    continue
                label = node_label(scope.exec_id(node), node.get("title"), t)
                used = any(out.get("links") for out in node.get("outputs") or [])
                if used and node.get("mode", MODE_ALWAYS) not in (MODE_NEVER, MODE_BYPASS):
                    unknown.append(label)
                elif not used:  # nothing depends on it: a frontend-only helper (label, bookmark, group muter...)
                    self.warnings.append(f"dropped {label}: not a node of this server and nothing uses its outputs")
        if unknown:
            raise WorkflowError(
                "these nodes are not available on the server (a custom node that is not installed there, "
                "or a frontend-only node this converter does not know): " + "; ".join(unknown)
                + ". Install the node pack on the server, or export the workflow in API format from the "
                "ComfyUI menu (Workflow > Export (API)) and use that file.")

    # -- widgets ---------------------------------------------------------------------------------

    def _apply_primitives(self, scope: _Scope) -> None:
        """PrimitiveNode.applyToGraph: copy the primitive's value into every widget it feeds."""
        for node in scope.nodes.values():
            if node.get("type") not in PRIMITIVE_TYPES:
                continue
            values = node.get("widgets_values") or []
            if not values:
                continue
            value = values[0]
            props = node.get("properties") or {}
            replace = bool(props.get("Run widget replace on values")) and isinstance(value, str)
            for out in node.get("outputs") or []:
                for link_id in out.get("links") or []:
                    link = scope.links.get(str(link_id))
                    target = scope.nodes.get(link.target_id) if link else None
                    if target is None:
                        continue
                    inputs = target.get("inputs") or []
                    if link.target_slot >= len(inputs):
                        continue
                    inp = inputs[link.target_slot]
                    name = (inp.get("widget") or {}).get("name") or inp.get("name")
                    if self._is_subgraph(target):
                        self.warnings.append(f"primitive #{scope.exec_id(node)} feeds a subgraph input; its "
                                             "value is used only if the subgraph stored it")
                        continue
                    self.overrides[(scope.exec_id(target), name)] = (value, replace)
                    control = values[1] if len(values) > 1 else None
                    if isinstance(control, str) and control != "fixed":
                        self.controls[(scope.exec_id(target), name)] = control

    def _read_widgets(self, scope: _Scope, node: dict) -> None:
        exec_id = scope.exec_id(node)
        node_def = self.info[node["type"]]
        layout = widget_layout(node_def)
        raw = node.get("widgets_values")
        values: dict[str, Any] = {}
        label = node_label(exec_id, node.get("title"), node.get("type"))
        if isinstance(raw, dict):  # some extensions serialise {name: value}
            values = {s.name: raw[s.name] for s in layout if s.kind == "value" and s.name in raw}
        elif isinstance(raw, list):
            layout = self._match_layout(layout, raw, node_def, label)
            last_value = None
            for slot, value in zip(layout, raw):
                if slot.kind == "value":
                    values[slot.name] = value
                    last_value = slot.name
                elif slot.kind == "control" and last_value and isinstance(value, str) and value != "fixed":
                    self.controls[(exec_id, last_value)] = value
        for (eid, name), (value, _) in self.overrides.items():
            if eid == exec_id:
                values[name] = value
        self.widget_values[exec_id] = values
        self.titles[exec_id] = node.get("title") or node_def.get("display_name") or node["type"]

    def _match_layout(self, layout: list[WidgetSlot], raw: list, node_def: Mapping[str, Any],
                      label: str) -> list[WidgetSlot]:
        if len(raw) == len(layout):
            return layout
        # litegraphUtil.migrateWidgetsValues: workflows from before frontend 1.16 also stored a dummy
        # value for every forceInput input; drop those positions when the count says so.
        legacy: list[WidgetSlot] = []
        for name, spec, _ in ordered_inputs(node_def):
            opts = input_options(spec)
            if not (is_widget_input(spec) or opts.get("forceInput")):
                continue
            legacy.append(WidgetSlot(name, "helper" if opts.get("forceInput") else "value"))
            if opts.get("control_after_generate") or name in ("seed", "noise_seed"):
                legacy.append(WidgetSlot("control_after_generate", "control"))
        if len(raw) == len(legacy) and any(s.kind == "helper" for s in legacy):
            return legacy
        self.warnings.append(f"{label}: {len(raw)} widget values for {len(layout)} widgets "
                             f"({', '.join(s.name for s in layout)}); matched by position, check the result")
        return layout

    # -- text substitution ----------------------------------------------------------------------

    def _replace_text(self, value: str) -> str:
        """searchAndReplace.ts: ``%Title.widget%`` -> that widget's value (``%date:...%`` is left alone)."""

        def sub(match: re.Match) -> str:
            parts = match.group(1).split(".")
            if len(parts) != 2:
                if parts[0].startswith("date:"):
                    self.warnings.append(f"'{match.group(0)}' in a filename prefix is left as is: the date "
                                         "substitution is done by the UI only")
                return match.group(0)
            name, widget = parts
            candidates = [e for e, t in self._sr_names.items() if t == name]
            if not candidates:
                candidates = [e for e, t in self.titles.items() if t == name]
            if not candidates:
                return match.group(0)
            values = self.widget_values.get(candidates[0], {})
            if widget not in values:
                return match.group(0)
            return re.sub(r'[/?<>\\:*|"\x00-\x1F\x7F]', "_", str(values[widget] if values[widget] is not None else ""))

        return re.sub(r"%([^%]+)%", sub, value)

    def _substitute_text(self, real: list[tuple[_Scope, dict]]) -> None:
        for scope, node in real:
            sr = (node.get("properties") or {}).get("Node name for S&R")
            if sr:
                self._sr_names[scope.exec_id(node)] = sr
        for (exec_id, name), (value, replace) in self.overrides.items():
            if replace and exec_id in self.widget_values:
                self.widget_values[exec_id][name] = self._replace_text(value)
        for scope, node in real:
            exec_id = scope.exec_id(node)
            values = self.widget_values[exec_id]
            label = node_label(exec_id, node.get("title"), node.get("type"))
            if node["type"] in SAVE_NODE_TYPES and isinstance(values.get("filename_prefix"), str):
                values["filename_prefix"] = self._replace_text(values["filename_prefix"])
            specs = {name: spec for name, spec, _ in ordered_inputs(self.info[node["type"]])}
            for name, value in list(values.items()):
                opts = input_options(specs.get(name))
                if isinstance(value, str) and opts.get("dynamicPrompts") is True:
                    values[name] = process_dynamic_prompt(value, self.warnings, f"{label} input '{name}'")

    # -- links -----------------------------------------------------------------------------------

    def _live_inputs(self, node: Mapping[str, Any]) -> list[dict]:
        """The node's input slots as the live frontend has them: sockets, then widget inputs (def order).

        The saved ``inputs`` list omits unlinked widget inputs; bypass matching by slot index must see
        the full list, so it is rebuilt from the definition where there is one (saved links by name).
        """
        saved = [i for i in node.get("inputs") or [] if isinstance(i, dict)]
        node_def = self.info.get(node.get("type"))
        if node_def is None:
            return saved
        by_name = {i.get("name"): i for i in saved}
        specs = ordered_inputs(node_def)
        live = []
        for widget_pass in (False, True):
            for name, spec, _ in specs:
                if is_widget_input(spec) != widget_pass:
                    continue
                s = by_name.pop(name, None)
                live.append({"name": name, "type": s.get("type") if s else input_type(spec),
                             "link": s.get("link") if s else None})
        live += [s for s in saved if s.get("name") in by_name]  # dynamic inputs not in the definition
        return live

    def _resolve_input(self, scope: _Scope, node: dict, slot: int, type_: Any, visited: set,
                       inputs: list[dict] | None = None) -> _Resolved | None:
        key = (scope.path, str(node["id"]), "I", slot)
        if key in visited:
            raise WorkflowError(f"circular link through node #{scope.exec_id(node)} input {slot}")
        visited.add(key)
        inputs = inputs if inputs is not None else (node.get("inputs") or [])
        if slot >= len(inputs):
            raise WorkflowError(f"node #{scope.exec_id(node)} has no input slot {slot}")
        inp = inputs[slot]
        if inp.get("link") is None:
            return None
        link = scope.links.get(str(inp["link"]))
        if link is None:
            raise WorkflowError(f"node #{scope.exec_id(node)} input '{inp.get('name')}' refers to link "
                                f"{inp['link']}, which the workflow does not contain (file damaged?)")
        if scope.definition is not None and link.origin_id == str(SUBGRAPH_INPUT_ID):
            return self._resolve_subgraph_input(scope, link.origin_slot, visited)
        origin = scope.nodes.get(link.origin_id)
        if origin is None:
            raise WorkflowError(f"link {link.id} into node #{scope.exec_id(node)} comes from node "
                                f"#{link.origin_id}, which the workflow does not contain")
        return self._resolve_output(scope, origin, link.origin_slot, type_ if type_ is not None else inp.get("type"),
                                    visited)

    def _resolve_subgraph_input(self, scope: _Scope, slot: int, visited: set) -> _Resolved | None:
        """A link from a subgraph's input node: follow the instance's matching input in the parent graph."""
        sg_inputs = scope.definition.get("inputs") or []
        if slot >= len(sg_inputs):
            raise WorkflowError(f"subgraph {scope.definition.get('name')!r} has no input {slot}")
        name = sg_inputs[slot].get("name")
        instance, parent = scope.instance, scope.parent
        outer = instance.get("inputs") or []
        for idx, inp in enumerate(outer):
            if inp.get("name") == name and inp.get("link") is not None:
                return self._resolve_input(parent, instance, idx, None, visited)
        value = self._promoted_value(scope, slot)
        return None if value is _MISSING else _Resolved(value=value)

    def _promoted_value(self, scope: _Scope, slot: int) -> Any:
        """The instance's own widget value for an unlinked subgraph input, when it can be placed.

        The instance has one widget per subgraph input that feeds an inner widget, in input order. When
        its ``widgets_values`` do not match that count, the inner nodes' values (which the frontend syncs
        from the instance on save) are used instead.
        """
        promoted = [i for i, sg_in in enumerate(scope.definition.get("inputs") or [])
                    if self._feeds_widget(scope, sg_in)]
        values = scope.instance.get("widgets_values")
        if isinstance(values, list) and len(values) == len(promoted) and slot in promoted:
            return values[promoted.index(slot)]
        return _MISSING

    def _feeds_widget(self, scope: _Scope, sg_input: Mapping[str, Any]) -> bool:
        for link_id in sg_input.get("linkIds") or []:
            link = scope.links.get(str(link_id))
            target = scope.nodes.get(link.target_id) if link else None
            if target is None:
                continue
            inputs = target.get("inputs") or []
            if link.target_slot < len(inputs) and inputs[link.target_slot].get("widget"):
                return True
        return False

    def _resolve_output(self, scope: _Scope, node: dict, slot: int, type_: Any, visited: set) -> _Resolved | None:
        key = (scope.path, str(node["id"]), "O", slot)
        if key in visited:
            raise WorkflowError(f"circular link through node #{scope.exec_id(node)} output {slot}")
        visited.add(key)
        if node.get("mode", MODE_ALWAYS) == MODE_BYPASS:
            live = self._live_inputs(node)
            idx = self._bypass_slot(node, live, slot, type_)
            if idx < 0:
                self.warnings.append(f"bypassed node #{scope.exec_id(node)} has no input of type {type_!r} to "
                                     f"pass through; the input it fed is left unconnected")
                return None
            return self._resolve_input(scope, node, idx, None, visited, inputs=live)
        if self._is_subgraph(node):
            inner = self._instance_scope(scope, node)
            for link in inner.links.values():
                if link.target_id == str(SUBGRAPH_OUTPUT_ID) and link.target_slot == slot:
                    origin = inner.nodes.get(link.origin_id)
                    if origin is None:
                        break
                    return self._resolve_output(inner, origin, link.origin_slot, type_, visited)
            return None
        if node.get("type") in VIRTUAL_TYPES:  # Reroute: through its input; Primitive/Note: nothing
            inputs = node.get("inputs") or []
            if slot < len(inputs) and inputs[slot].get("link") is not None:
                return self._resolve_input(scope, node, slot, type_, visited)
            return None
        return _Resolved(link=(scope.exec_id(node), slot))

    @staticmethod
    def _bypass_slot(node: Mapping[str, Any], inputs: list[dict], slot: int, type_: Any) -> int:
        """ExecutableNodeDTO#getBypassSlotIndex: which input a bypassed node's output ``slot`` passes on."""
        if not inputs:
            return -1
        if type_ in ("*", "", None):
            return slot if len(inputs) > slot else 0
        outputs = node.get("outputs") or []
        out_type = outputs[slot].get("type") if slot < len(outputs) else None
        if slot < len(inputs):
            opposite = inputs[slot]
            if _valid_connection(opposite.get("type"), out_type) and _valid_connection(opposite.get("type"), type_):
                return slot
        for i, inp in enumerate(inputs):
            if inp.get("type") == type_:
                return i
        for i, inp in enumerate(inputs):
            if _valid_connection(inp.get("type"), out_type) and _valid_connection(inp.get("type"), type_):
                return i
        return -1

    # -- output ----------------------------------------------------------------------------------

    def _node_entry(self, scope: _Scope, node: dict, exec_id: str) -> dict:
        inputs: dict[str, Any] = {}
        for name, value in self.widget_values[exec_id].items():
            inputs[name] = {"__value__": copy.deepcopy(value)} if isinstance(value, list) else copy.deepcopy(value)
        for idx, inp in enumerate(node.get("inputs") or []):
            resolved = self._resolve_input(scope, node, idx, None, set())
            if resolved is None:
                continue
            name = inp.get("name")
            if resolved.link is not None:
                inputs[name] = [resolved.link[0], int(resolved.link[1])]
            else:
                value = resolved.value
                inputs[name] = {"__value__": value} if isinstance(value, list) else value
        return {"inputs": inputs, "class_type": node["type"], "_meta": {"title": self.titles[exec_id]}}


def ui_to_api(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> Conversion:
    """Convert a UI workflow (``nodes`` + ``links``) to an API prompt using the server's ``object_info``.

    Raises :class:`WorkflowError` for what cannot be converted faithfully (nodes missing on the server,
    legacy group nodes, broken links), naming the nodes concerned.
    """
    if not isinstance(workflow, Mapping) or not isinstance(workflow.get("nodes"), list):
        raise WorkflowError("not a UI workflow: no 'nodes' list")
    return _Converter(workflow, object_info).convert()
