"""Batch rendering through the ComfyUI HTTP API, resumable and safe against crashes (no torch imported).

Python API::

    from lua_core.batch import run_batch
    result = run_batch("workflow.json", server=["http://gpu1:8188", "http://gpu2:8188"],
                       sets=["KSampler.seed=1..12", "Empty Latent Image.width=512,768"],
                       out_dir="renders", in_flight=2)
    print(result.succeeded, result.failed, result.manifest)

Lower-level pieces: :class:`ComfyClient` (HTTP + websocket), :func:`ui_to_api` (UI workflow -> API
prompt), :func:`load_workflow`, :func:`build_jobs` (sweeps), :func:`plan_batch`, :class:`BatchRunner`
with :class:`RunOptions`, :class:`Manifest`; :func:`make_farm` / :func:`server_specs` for several
servers (one worker thread per server, :mod:`lua_core.batch.worker`; shared state in
:mod:`lua_core.batch.farm`). CLI: ``python -m lua_core batch --help``. Manifest format
and resume rules: ``docs/batch.md``.

Only the standard library and ``tqdm`` are imported here: the client runs on machines without torch
(a laptop driving a remote GPU server).
"""

from __future__ import annotations

from .api import Plan, fetch_object_info, make_client, make_farm, plan_batch, run_batch
from .client import ComfyClient
from .convert import Conversion, ui_to_api
from .errors import (
    BatchError,
    PromptRejected,
    RequestError,
    ServerGaveUp,
    ServerUnreachable,
    SweepError,
    WorkflowError,
)
from .jobs import Job, prompt_key
from .manifest import Journal, Manifest
from .runner import BatchResult, BatchRunner, RunOptions
from .servers import ServerSpec, read_servers_file, server_specs
from .sweep import build_jobs, load_sweep_file, parse_values
from .workflow import Workflow, load_workflow

__all__ = ["BatchError", "BatchResult", "BatchRunner", "ComfyClient", "Conversion", "Job", "Journal", "Manifest",
           "Plan", "PromptRejected", "RequestError", "RunOptions", "ServerGaveUp", "ServerSpec", "ServerUnreachable",
           "SweepError", "Workflow", "WorkflowError", "build_jobs", "fetch_object_info", "load_sweep_file",
           "load_workflow", "make_client", "make_farm", "parse_values", "plan_batch", "prompt_key",
           "read_servers_file", "run_batch", "server_specs", "ui_to_api"]
