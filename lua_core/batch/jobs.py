"""A job = one final API prompt, its sweep parameters, its identity and its output folder.

Why identity is a hash of the prompt: resuming must recognise a job across runs, even when the sweep
is written differently (``--set seed=1..4`` then ``--set seed=1,2,3,4,5``) or jobs are reordered. The
identity (:func:`prompt_key`) is the SHA-256 of the final API prompt in canonical JSON (sorted keys, no
whitespace) *without* the ``_meta`` entries (titles are display-only: the server ignores them), cut to
20 hex digits. Two jobs with the same key would send the same graph; the sweep keeps only the first.
A changed workflow (another sampler setting, a new node) gives new keys, so its jobs run again.

The output folder is named after the parameters (``seed=3_scale=2``) plus the first 8 digits of the key,
so two workflows sharing an output directory, or values that sanitise to the same text, never write
into each other's folders.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def strip_volatile(prompt: Mapping[str, Any]) -> dict:
    """The prompt without what does not change execution (``_meta``: titles shown in the UI)."""
    return {str(nid): {k: v for k, v in node.items() if k != "_meta"} for nid, node in prompt.items()}


def prompt_key(prompt: Mapping[str, Any]) -> str:
    """A job's identity: 20 hex digits of SHA-256 over the canonical JSON of :func:`strip_volatile`."""
    canonical = json.dumps(strip_volatile(prompt), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:20]


def _slug(text: str, limit: int) -> str:
    text = _UNSAFE.sub("_", text).strip("._")
    return text[:limit].rstrip("._") if len(text) > limit else text


def folder_name(params: Mapping[str, Any], key: str) -> str:
    """``seed=3_scale=2__1a2b3c4d``: short input names (the full label where two share a name) + key."""
    short = [label.rsplit(".", 1)[-1] for label in params]
    parts = []
    for label, name in zip(params, short):
        shown = name if short.count(name) == 1 else label
        value = params[label]
        text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
        parts.append(f"{_slug(shown, 24)}={_slug(text, 32)}")
    slug = _slug("_".join(parts), 120) or "job"
    return f"{slug}__{key[:8]}"


@dataclass
class Job:
    """One prompt to run. ``index`` is 1-based in sweep order; ``params`` maps ``--set`` labels to values."""

    index: int
    params: dict[str, Any]
    prompt: dict[str, Any]
    key: str = ""
    folder: str = ""
    targets: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> (node id, input)

    def __post_init__(self) -> None:
        if not self.key:
            self.key = prompt_key(self.prompt)
        if not self.folder:
            self.folder = folder_name(self.params, self.key)

    @property
    def label(self) -> str:
        """``seed=3 scale=2`` (or ``job <key>`` without parameters): how progress lines name the job."""
        if not self.params:
            return f"job {self.key[:8]}"
        return " ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in self.params.items())


def _short(value: Any, limit: int = 24) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
