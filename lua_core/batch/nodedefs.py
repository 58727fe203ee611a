"""What the ComfyUI frontend makes of a node definition (``/object_info``): its widgets, in order.

Why a module of its own: a UI workflow stores widget values by *position* (``widgets_values``), and the
positions depend on frontend rules that are not in the definition itself: which input types are drawn as
widgets, the extra ``control_after_generate`` combo after a seed, the control + filter pair after a
combo with ``control_after_generate``, the auto-refresh toggle and refresh button of remote combos, and
the upload button that ``Comfy.UploadImage`` appends. The UI -> API converter and the sweep's type
coercion both read definitions through these helpers (frontend 1.32: ``litegraphService.ts``,
``scripts/widgets.ts``, ``useIntWidget.ts``, ``useComboWidget.ts``, ``uploadImage.ts``,
``nodeDefOrderingUtil.ts``).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Input types the core frontend draws as widgets (scripts/widgets.ts ComfyWidgets); lists are COMBOs.
WIDGET_TYPES = frozenset({"INT", "FLOAT", "BOOLEAN", "STRING", "MARKDOWN", "COMBO", "COLOR", "IMAGECOMPARE",
                          "CHART", "GALLERIA", "TEXTAREA"})
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")


@dataclass(frozen=True)
class WidgetSlot:
    """One widget of a node as the frontend creates it, in ``widgets_values`` order.

    ``kind``: ``"value"`` (its value is the input ``name``), ``"control"`` (the control_after_generate
    combo of the value widget before it), or ``"helper"`` (filter list, upload/refresh buttons, toggles:
    stored in the file, never sent).
    """

    name: str
    kind: str = "value"


def input_type(spec: Any) -> str:
    """The type name of an ``/object_info`` input spec: ``"COMBO"`` for option lists, else ``spec[0]``."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return "*"
    first = spec[0]
    if isinstance(first, (list, tuple)):
        return "COMBO"
    return str(first)


def input_options(spec: Any) -> dict:
    """The options dict of an input spec (``{}`` when absent)."""
    if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1]
    return {}


def ordered_inputs(node_def: Mapping[str, Any]) -> list[tuple[str, tuple, bool]]:
    """``[(name, spec, optional)]`` in the order the frontend creates inputs (``input_order`` first)."""
    inputs = node_def.get("input") or {}
    order = node_def.get("input_order") or {}
    specs: dict[str, tuple[tuple, bool]] = {}
    for section, optional in (("required", False), ("optional", True)):
        for name, spec in (inputs.get(section) or {}).items():
            specs.setdefault(name, (spec, optional))
    result: list[tuple[str, tuple, bool]] = []
    seen: set[str] = set()
    for section, optional in (("required", False), ("optional", True)):
        for name in order.get(section) or []:
            if name in specs and specs[name][1] == optional and name not in seen:
                result.append((name, specs[name][0], optional))
                seen.add(name)
    for name, (spec, optional) in specs.items():
        if name not in seen:
            result.append((name, spec, optional))
    return result


def is_widget_input(spec: Any) -> bool:
    """Whether the frontend shows this input as a widget (a value typed in the node) rather than a socket."""
    opts = input_options(spec)
    if opts.get("forceInput"):
        return False
    typ = input_type(spec)
    return typ in WIDGET_TYPES or typ == "COMBO"


def widget_layout(node_def: Mapping[str, Any]) -> list[WidgetSlot]:
    """The widgets of a node in ``widgets_values`` order, helper widgets included (see module doc)."""
    slots: list[WidgetSlot] = []
    upload: list[WidgetSlot] = []
    for name, spec, optional in ordered_inputs(node_def):
        if not is_widget_input(spec):
            continue
        typ, opts = input_type(spec), input_options(spec)
        slots.append(WidgetSlot(name))
        if typ == "INT":
            control = opts.get("control_after_generate")
            if control is None:
                control = name in ("seed", "noise_seed")
            if control:
                slots.append(WidgetSlot(_control_name(control, opts), "control"))
        elif typ == "COMBO" and not opts.get("multi_select"):
            if opts.get("remote"):
                slots.append(WidgetSlot("Auto-refresh after generation", "helper"))
                if opts["remote"].get("refresh_button"):
                    slots.append(WidgetSlot("refresh", "helper"))
            if opts.get("control_after_generate"):
                slots.append(WidgetSlot(_control_name(opts["control_after_generate"], opts), "control"))
                filter_name = opts.get("control_filter_list")
                slots.append(WidgetSlot(filter_name if isinstance(filter_name, str) else "control_filter_list",
                                        "helper"))
            if not optional and any(opts.get(flag) is True for flag in UPLOAD_FLAGS) and not upload:
                upload.append(WidgetSlot("upload", "helper"))  # Comfy.UploadImage adds required.upload last
    return slots + upload


def _control_name(control: Any, opts: Mapping[str, Any]) -> str:
    if isinstance(control, str):
        return control
    if opts.get("control_prefix"):
        return f"{opts['control_prefix']} control_after_generate"
    return "control_after_generate"


# ---------------------------------------------------------------------------------------------------
# Frontend string processing
# ---------------------------------------------------------------------------------------------------


def process_dynamic_prompt(text: str, warnings: list[str] | None = None, where: str = "") -> str:
    """The frontend's ``processDynamicPrompt``: strip C comments, pick ``{a|b}`` choices, unescape ``\\{``.

    The frontend picks choices at random on every queue; here the choice is seeded by the text itself
    (reproducible, so a re-run builds the same prompt) and a warning says so.
    """
    text = re.sub(r"/\*[\s\S]*?\*/|//.*", "", text)
    rng = random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))
    picked = False

    def parse(s: str) -> str:
        nonlocal picked
        out: list[str] = []
        i = 0
        while i < len(s):
            ch = s[i]
            i += 1
            if ch == "\\" and i <= len(s):
                out.append("\\" + (s[i] if i < len(s) else ""))
                i += 1
            elif ch == "{":
                options, choice, depth = [], "", 0
                while i < len(s):
                    c = s[i]
                    i += 1
                    if c == "\\":
                        choice += "\\" + (s[i] if i < len(s) else "")
                        i += 1
                        continue
                    if c == "{":
                        depth += 1
                    elif c == "}":
                        if not depth:
                            break
                        depth -= 1
                    elif c == "|" and not depth:
                        options.append(choice)
                        choice = ""
                        continue
                    choice += c
                options.append(choice)
                picked = True
                out.append(parse(rng.choice(options)))
            else:
                out.append(ch)
        return "".join(out)

    result = re.sub(r"\\([{}|])", r"\1", parse(text))
    if picked and warnings is not None:
        warnings.append(f"{where}: dynamic prompt choices {{a|b}} were resolved with a fixed seed "
                        "(the UI picks at random on every run); use --set with @file to sweep prompts")
    return result
