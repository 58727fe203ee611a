"""The one-call Python API: plan a sweep, or plan and run it.

Why: most scripts want "this workflow, these values, that server -> files + manifest" without wiring the
client, converter, sweep and runner together; the CLI is a thin shell over these two functions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .client import ComfyClient, parse_header
from .errors import BatchError
from .jobs import Job
from .runner import BatchResult, BatchRunner, RunOptions
from .sweep import build_jobs, load_sweep_file
from .workflow import Workflow, load_workflow

DEFAULT_SERVER = "http://127.0.0.1:8188"


def make_client(server: str | None = None, *, headers: Iterable[str] | Mapping[str, str] | None = None,
                token_env: str | None = None, timeout: float = 30.0, verify_tls: bool = True) -> ComfyClient:
    """A :class:`ComfyClient` for ``server`` (default ``$COMFYUI_URL`` or ``http://127.0.0.1:8188``).

    ``headers``: ``{"Name": "value"}`` or ``["Name: value", ...]``. ``token_env``: the name of an
    environment variable holding a bearer token, sent as ``Authorization: Bearer <token>`` (the token
    itself never appears on the command line, in the manifest or in messages).
    """
    hdrs: dict[str, str] = {}
    if isinstance(headers, Mapping):
        hdrs.update({str(k): str(v) for k, v in headers.items()})
    else:
        for text in headers or ():
            try:
                name, value = parse_header(text)
            except ValueError as err:
                raise BatchError(str(err)) from err
            hdrs[name] = value
    if token_env:
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise BatchError(f"--token-env {token_env}: that environment variable is not set or empty")
        if any(k.lower() == "authorization" for k in hdrs):
            raise BatchError("give either --token-env or an Authorization --header, not both")
        hdrs["Authorization"] = f"Bearer {token}"
    return ComfyClient(server or os.environ.get("COMFYUI_URL") or DEFAULT_SERVER, headers=hdrs, timeout=timeout,
                       verify_tls=verify_tls)


@dataclass
class Plan:
    """A planned batch: the workflow as an API prompt, its jobs, and what deserves a warning."""

    workflow: Workflow
    jobs: list[Job]
    warnings: list[str] = field(default_factory=list)


def plan_batch(workflow: str | Path | Mapping[str, Any], *, sets: Sequence[str] = (),
               sweep: str | Path | Iterable[Mapping[str, Any]] | None = None,
               object_info: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
               base_dir: Path | None = None) -> Plan:
    """Load ``workflow``, resolve the sweep and build the jobs; nothing is sent.

    ``object_info`` (dict or a function returning it) converts UI workflows and types the sweep values;
    without it, API-format workflows still plan (values typed after the workflow's current values).
    """
    cache: dict[str, Mapping[str, Any]] = {}

    def info() -> Mapping[str, Any]:
        if "v" not in cache:
            cache["v"] = object_info() if callable(object_info) else (object_info or {})
        return cache["v"]

    wf = load_workflow(workflow, info if object_info is not None else None)
    rows = load_sweep_file(sweep) if isinstance(sweep, (str, Path)) else (list(sweep) if sweep is not None else None)
    warnings = list(wf.warnings)
    jobs = build_jobs(wf.prompt, sets, rows, info() if object_info is not None else None, base_dir, warnings)
    swept = {target for job in jobs[:1] for target in job.targets.values()}
    for (node_id, name), control in sorted(wf.controls.items()):
        if (node_id, name) not in swept:
            warnings.append(f"node #{node_id} input {name!r} is set to '{control}' after each run in the UI; the "
                            f"batch sends the saved value to every job (sweep it with --set to vary it)")
    return Plan(wf, jobs, warnings)


def run_batch(workflow: str | Path | Mapping[str, Any], *, server: str | None = None, sets: Sequence[str] = (),
              sweep: str | Path | Iterable[Mapping[str, Any]] | None = None, out_dir: str | Path = "comfy_batch_out",
              manifest: str | Path | None = None, client: ComfyClient | None = None,
              headers: Iterable[str] | Mapping[str, str] | None = None, token_env: str | None = None,
              timeout: float = 30.0, options: RunOptions | None = None, **option_overrides: Any) -> BatchResult:
    """Plan and run a batch; returns a :class:`BatchResult` (rows appended to the manifest, counts).

    Keyword ``option_overrides`` set :class:`RunOptions` fields (``in_flight=4``, ``use_ws=False``...).
    A re-run with the same ``out_dir``/``manifest`` skips jobs that already succeeded and resumes the rest.
    """
    client = client or make_client(server, headers=headers, token_env=token_env, timeout=timeout)
    plan = plan_batch(workflow, sets=sets, sweep=sweep, object_info=client.object_info)
    opts = replace(options or RunOptions(), **option_overrides)
    return BatchRunner(client, plan.jobs, out_dir, manifest=manifest, options=opts).run()
