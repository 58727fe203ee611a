"""The one-call Python API: plan a sweep, or plan and run it.

Why: most scripts want "this workflow, these values, that server -> files + manifest" without wiring the
client, converter, sweep and runner together; the CLI is a thin shell over these two functions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .client import ComfyClient, parse_header
from .errors import BatchError, ServerGaveUp, ServerUnreachable
from .jobs import Job
from .runner import BatchResult, BatchRunner, RunOptions
from .servers import DEFAULT_SERVER, make_clients, server_specs
from .sweep import build_jobs, load_sweep_file
from .workflow import Workflow, load_workflow


def build_headers(headers: Iterable[str] | Mapping[str, str] | None = None, token_env: str | None = None) -> dict:
    """The headers every request carries: ``headers`` (``{"Name": "value"}`` or ``["Name: value", ...]``)
    plus ``Authorization: Bearer <token>`` when ``token_env`` names an environment variable holding one
    (the token itself never appears on the command line, in the manifest or in messages)."""
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
    return hdrs


def make_client(server: str | None = None, *, headers: Iterable[str] | Mapping[str, str] | None = None,
                token_env: str | None = None, timeout: float = 30.0, verify_tls: bool = True) -> ComfyClient:
    """A :class:`ComfyClient` for ``server`` (default ``$COMFYUI_URL`` or ``http://127.0.0.1:8188``);
    ``headers`` and ``token_env`` as in :func:`build_headers`."""
    return ComfyClient(server or os.environ.get("COMFYUI_URL") or DEFAULT_SERVER,
                       headers=build_headers(headers, token_env), timeout=timeout, verify_tls=verify_tls)


def make_farm(servers: Sequence[str] | str | None = None, servers_file: str | Path | None = None, *,
              headers: Iterable[str] | Mapping[str, str] | None = None, token_env: str | None = None,
              timeout: float = 30.0, verify_tls: bool = True, warnings: list[str] | None = None) -> list[ComfyClient]:
    """One client per server of ``servers`` (URLs) and ``servers_file`` (see :mod:`lua_core.batch.servers`);
    neither given: the single default server. A server's own token replaces ``token_env`` for it."""
    specs = server_specs(servers, servers_file, warnings)
    return make_clients(specs, headers=build_headers(headers, token_env), timeout=timeout, verify_tls=verify_tls)


def fetch_object_info(clients: Sequence[ComfyClient], wait: float,
                      say: Callable[[str], None] | None = None) -> tuple[str, dict[str, Any]]:
    """``(server URL, /object_info)`` of the first server that answers, asking each in turn and retrying
    with backoff for up to ``wait`` seconds while none does (a farm being started, a restarting server)."""
    start, delay = time.monotonic(), 0.5
    while True:
        errors = []
        for client in clients:
            try:
                return client.base_url, client.object_info()
            except ServerUnreachable as err:
                errors.append(str(err))
        if time.monotonic() - start > wait:
            raise ServerGaveUp(f"cannot reach {'the server' if len(clients) == 1 else 'any server'}: "
                               f"{'; '.join(errors)}")
        if say is not None:
            say(f"server unreachable ({'; '.join(errors)}); retrying")
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


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


def run_batch(workflow: str | Path | Mapping[str, Any], *, server: str | Sequence[str] | None = None,
              servers_file: str | Path | None = None, sets: Sequence[str] = (),
              sweep: str | Path | Iterable[Mapping[str, Any]] | None = None, out_dir: str | Path = "comfy_batch_out",
              manifest: str | Path | None = None, client: ComfyClient | Sequence[ComfyClient] | None = None,
              headers: Iterable[str] | Mapping[str, str] | None = None, token_env: str | None = None,
              timeout: float = 30.0, options: RunOptions | None = None, **option_overrides: Any) -> BatchResult:
    """Plan and run a batch; returns a :class:`BatchResult` (rows appended to the manifest, counts).

    ``server``: one URL or a list (a farm: each job goes to a free server that can run it), or
    ``servers_file``; or ready ``client`` object(s). Keyword ``option_overrides`` set :class:`RunOptions`
    fields (``in_flight=4``, ``use_ws=False``...). A re-run with the same ``out_dir``/``manifest`` skips
    jobs that already succeeded and resumes the rest, on whatever servers it is given.
    """
    if client is None:
        clients = make_farm(server, servers_file, headers=headers, token_env=token_env, timeout=timeout)
    else:
        clients = [client] if isinstance(client, ComfyClient) else list(client)
    opts = replace(options or RunOptions(), **option_overrides)
    fetched: dict[str, dict[str, Any]] = {}

    def object_info() -> dict[str, Any]:
        if not fetched:
            url, info = fetch_object_info(clients, opts.server_wait)
            fetched[url] = info
        return next(iter(fetched.values()))

    plan = plan_batch(workflow, sets=sets, sweep=sweep, object_info=object_info)
    return BatchRunner(clients, plan.jobs, out_dir, manifest=manifest, options=opts, object_info=fetched).run()
