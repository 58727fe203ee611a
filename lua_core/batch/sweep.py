"""Sweeps: which node inputs to change, to which values, and the jobs that come out.

Why it is strict: a typo in a 200-job sweep should fail before anything is queued, with the list of what
exists, not after the server rejected 200 prompts. Syntax (``--set SELECTOR.INPUT=VALUES``):

* ``SELECTOR`` is a node id (``3``, or ``5:2`` inside a subgraph), a node title (``_meta.title``, what
  the UI shows), or a class type (``KSampler``), tried in that order. Several nodes with that title or
  class -> error listing them (use the id or give the nodes distinct titles). The input is after the
  *last* dot, so titles may contain dots (``Upscale 1.5x.scale=2``); titles containing ``=`` need the id.
* ``VALUES``: ``a,b,c`` (``\\,`` for a literal comma), ``1..20`` (inclusive; ``0..1:0.25`` with a step;
  ``20..1`` counts down), a JSON list ``["a, b", "c"]``, or ``@file``: one value per non-empty line of a
  text file, or a JSON list in a ``.json`` file (paths relative to the working directory).
* several ``--set`` options make the cartesian product (the first varies slowest);
* a sweep file (``--sweep``) gives explicit rows: CSV with ``SELECTOR.INPUT`` column headers, JSONL
  (one object per line) or JSON (a list of objects); an empty CSV cell or a JSON ``null`` keeps the
  workflow's value. Rows x ``--set`` product.

Values are coerced to the input's type from ``/object_info`` (INT, FLOAT, BOOLEAN, STRING/COMBO), or
from the type of the workflow's current value when the server does not describe the input. Range and
option checks are left to the server, which reports them per job with the node and input named.
"""

from __future__ import annotations

import copy
import csv
import difflib
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from .convert import node_label
from .errors import SweepError
from .jobs import Job
from .nodedefs import input_type, ordered_inputs

MAX_VALUES = 100_000
_RANGE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*\.\.\s*(-?\d+(?:\.\d+)?)\s*(?::\s*(\d+(?:\.\d+)?))?\s*$")


@dataclass(frozen=True)
class Target:
    """Where a sweep label points: ``label`` as the user wrote it, resolved to a node id and input name."""

    label: str
    node_id: str
    input: str
    type: str  # INT, FLOAT, BOOLEAN, STRING, COMBO, or "" when unknown


# ---------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------


def split_assignment(text: str) -> tuple[str, str, str]:
    """``"KSampler.seed=1..4"`` -> ``("KSampler", "seed", "1..4")``."""
    key, sep, values = text.partition("=")
    selector, dot, name = key.strip().rpartition(".")
    if not sep or not dot or not selector.strip() or not name.strip():
        raise SweepError(f"--set {text!r}: expected NODE.INPUT=VALUES, e.g. --set 'KSampler.seed=1..4' "
                         "(NODE is a node title, class type or id)")
    return selector.strip(), name.strip(), values


def split_label(label: str) -> tuple[str, str]:
    """``"KSampler.seed"`` -> ``("KSampler", "seed")`` (sweep-file column headers)."""
    selector, dot, name = label.strip().rpartition(".")
    if not dot or not selector.strip() or not name.strip():
        raise SweepError(f"sweep column {label!r}: expected NODE.INPUT, e.g. 'KSampler.seed'")
    return selector.strip(), name.strip()


def parse_values(text: str, base_dir: Path | None = None) -> list[Any]:
    """The value list of one ``--set`` (see module doc). Strings stay strings until :func:`coerce`."""
    stripped = text.strip()
    if stripped.startswith("@"):
        return _values_from_file(Path(base_dir or ".") / stripped[1:])
    if stripped.startswith("["):
        try:
            values = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise SweepError(f"{stripped[:60]!r} starts like a JSON list but is not valid JSON: {err}") from err
        if not isinstance(values, list) or not values:
            raise SweepError(f"{stripped[:60]!r}: a JSON value list must be a non-empty list")
        return values
    match = _RANGE.match(stripped)
    if match:
        return _range(*match.groups())
    items = [part.replace("\\,", ",").strip() for part in re.split(r"(?<!\\),", text)]
    if any(item == "" for item in items) and len(items) > 1:
        raise SweepError(f"{text!r}: empty value in the list (use \\, for a literal comma)")
    return items


def _range(start: str, stop: str, step: str | None) -> list[Any]:
    try:
        a, b = Decimal(start), Decimal(stop)
        s = Decimal(step) if step else Decimal(1)
    except InvalidOperation as err:  # pragma: no cover - the regex only lets numbers through
        raise SweepError(f"bad range {start}..{stop}") from err
    if s <= 0:
        raise SweepError(f"range step must be positive, got {step}")
    count = int(abs(b - a) / s) + 1
    if count > MAX_VALUES:
        raise SweepError(f"range {start}..{stop} has {count} values (limit {MAX_VALUES})")
    sign = 1 if b >= a else -1
    values = [a + sign * i * s for i in range(count)]
    if all("." not in x for x in (start, stop, step or "1")):
        return [int(v) for v in values]
    return [float(v) for v in values]


def _values_from_file(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SweepError(f"cannot read value file {path}: {err.strerror or err}") from err
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise SweepError(f"{path}: not valid JSON: {err}") from err
        values = values if isinstance(values, list) else [values]
    else:
        values = [line.strip() for line in text.splitlines() if line.strip()]
    if not values:
        raise SweepError(f"value file {path} has no values")
    return values


def load_sweep_file(path: str | Path) -> list[dict[str, Any]]:
    """Rows ``{"NODE.INPUT": value}`` from a CSV, JSONL or JSON sweep file (see module doc)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise SweepError(f"cannot read sweep file {path}: {err.strerror or err}") from err
    suffix = path.suffix.lower()
    rows: list[Any]
    try:
        if suffix == ".csv":
            rows = [{k: v for k, v in row.items() if k is not None and v not in (None, "")}
                    for row in csv.DictReader(text.splitlines())]
        elif suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif suffix == ".json":
            rows = json.loads(text)
        else:
            raise SweepError(f"sweep file {path}: use .csv, .jsonl or .json")
    except json.JSONDecodeError as err:
        raise SweepError(f"sweep file {path}: not valid JSON: {err}") from err
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise SweepError(f"sweep file {path}: expected rows of {{\"NODE.INPUT\": value}} objects")
    if not rows:
        raise SweepError(f"sweep file {path} has no rows")
    return [{str(k): v for k, v in row.items() if v is not None} for row in rows]


# ---------------------------------------------------------------------------------------------------
# Resolving against the prompt
# ---------------------------------------------------------------------------------------------------


def _title(node: Mapping[str, Any]) -> str | None:
    meta = node.get("_meta")
    return meta.get("title") if isinstance(meta, dict) else None


def describe_nodes(prompt: Mapping[str, Any]) -> str:
    """Every node of ``prompt`` as ``#id 'title' (class)``, comma-separated, for error messages."""
    return ", ".join(node_label(nid, _title(n), n.get("class_type")) for nid, n in _sorted_nodes(prompt))


def _sorted_nodes(prompt: Mapping[str, Any]) -> list[tuple[str, Any]]:
    def order(nid: str) -> tuple:
        return tuple(int(p) if p.isdigit() else p for p in str(nid).split(":"))

    return sorted(prompt.items(), key=lambda kv: order(kv[0]))


def find_node(prompt: Mapping[str, Any], selector: str) -> str:
    """The node id ``selector`` names: an id, else a unique title, else a unique class type."""
    sel = selector[1:] if selector.startswith("#") and selector[1:] in prompt else selector
    if sel in prompt:
        return sel
    for key, fold in ((lambda n: _title(n), False), (lambda n: n.get("class_type"), False),
                      (lambda n: _title(n), True), (lambda n: n.get("class_type"), True)):
        matches = [nid for nid, n in _sorted_nodes(prompt)
                   if (str(key(n)).casefold() == selector.casefold() if fold else key(n) == selector)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            listed = ", ".join(node_label(m, _title(prompt[m]), prompt[m].get("class_type")) for m in matches)
            raise SweepError(f"{selector!r} matches {len(matches)} nodes: {listed}. Use the node id "
                             f"(e.g. --set '{matches[0]}.INPUT=...') or give the nodes distinct titles.")
    names = sorted({str(_title(n)) for n in prompt.values() if _title(n)} | {str(n.get("class_type")) for n in
                                                                             prompt.values()})
    close = difflib.get_close_matches(selector, names, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise SweepError(f"no node matches {selector!r}.{hint} Nodes in this workflow: {describe_nodes(prompt)}")


def resolve_target(prompt: Mapping[str, Any], label: str, object_info: Mapping[str, Any] | None = None) -> Target:
    """Resolve ``"NODE.INPUT"`` to a :class:`Target`; errors list the nodes or inputs that exist."""
    selector, name = split_label(label)
    node_id = find_node(prompt, selector)
    node = prompt[node_id]
    node_def = (object_info or {}).get(node.get("class_type"))
    specs = {n: spec for n, spec, _ in ordered_inputs(node_def)} if node_def else {}
    known = list(dict.fromkeys([*specs, *(node.get("inputs") or {})]))
    desc = node_label(node_id, _title(node), node.get("class_type"))
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise SweepError(f"node {desc} has no input {name!r}.{hint} Its inputs: {', '.join(known) or '(none)'}")
    current = (node.get("inputs") or {}).get(name)
    if _is_link(current):
        src = prompt.get(str(current[0]), {})
        raise SweepError(f"input {name!r} of node {desc} is connected to node "
                         f"{node_label(str(current[0]), _title(src), src.get('class_type'))}: set a value on "
                         "that node instead (or disconnect the input in the workflow)")
    typ = input_type(specs[name]) if name in specs else _type_of(current)
    return Target(label=label, node_id=node_id, input=name, type=typ if typ in _SCALARS else "")


_SCALARS = ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO")


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and isinstance(value[0], str)


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "INT"
    if isinstance(value, float):
        return "FLOAT"
    if isinstance(value, str):
        return "STRING"
    return ""


def coerce(value: Any, target: Target) -> Any:
    """``value`` converted to ``target``'s type (strings from the command line or a CSV)."""
    where = f"{target.label}={value!r}"
    try:
        if target.type == "INT":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            number = Decimal(str(value).strip())
            if number != number.to_integral_value():
                raise ValueError
            return int(number)
        if target.type == "FLOAT":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if target.type == "BOOLEAN":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if target.type in ("STRING", "COMBO"):
            return value if isinstance(value, str) else (json.dumps(value) if isinstance(value, (list, dict))
                                                         else str(value))
    except (ValueError, InvalidOperation, TypeError) as err:
        raise SweepError(f"{where}: not a valid {target.type} value") from err
    return value


# ---------------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------------


def build_jobs(prompt: Mapping[str, Any], sets: Sequence[str] = (), rows: Iterable[Mapping[str, Any]] | None = None,
               object_info: Mapping[str, Any] | None = None, base_dir: Path | None = None,
               warnings: list[str] | None = None) -> list[Job]:
    """The jobs of a sweep: sweep-file ``rows`` x the cartesian product of the ``sets`` options.

    Every label is resolved (and every value coerced) before any job is built. Jobs whose final prompt
    is identical to an earlier one are dropped, with a note in ``warnings``.
    """
    row_list = [dict(r) for r in rows] if rows is not None else [{}]
    targets: dict[str, Target] = {}
    axes: list[tuple[Target, list[Any]]] = []
    for text in sets:
        selector, name, raw = split_assignment(text)
        label = f"{selector}.{name}"
        if label in targets:
            raise SweepError(f"{label} is set twice; put all its values in one --set")
        target = resolve_target(prompt, label, object_info)
        targets[label] = target
        axes.append((target, [coerce(v, target) for v in parse_values(raw, base_dir)]))
    for row in row_list:
        for label in row:
            if label not in targets:
                targets[label] = resolve_target(prompt, label, object_info)
            if any(t.label == label for t, _ in axes):
                raise SweepError(f"{label} is both in the sweep file and in --set")
    seen_inputs: dict[tuple[str, str], str] = {}
    for target in targets.values():
        other = seen_inputs.setdefault((target.node_id, target.input), target.label)
        if other != target.label:
            raise SweepError(f"{other} and {target.label} name the same input (node #{target.node_id} "
                             f"{target.input!r}); use one of them")
    jobs: list[Job] = []
    keys: dict[str, int] = {}
    for row in row_list:
        row_values = {label: coerce(v, targets[label]) for label, v in row.items()}
        for combo in itertools.product(*(values for _, values in axes)):
            params = {**row_values, **{t.label: v for (t, _), v in zip(axes, combo)}}
            final = copy.deepcopy(dict(prompt))
            for label, value in params.items():
                t = targets[label]
                final[t.node_id].setdefault("inputs", {})[t.input] = value
            job = Job(index=len(jobs) + 1, params=params, prompt=final,
                      targets={label: (targets[label].node_id, targets[label].input) for label in params})
            if job.key in keys:
                if warnings is not None:
                    warnings.append(f"job {params} builds the same prompt as job {keys[job.key]}; running it once")
                continue
            keys[job.key] = job.index
            jobs.append(job)
    return jobs
