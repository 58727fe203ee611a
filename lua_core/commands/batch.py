"""``batch WORKFLOW --set NODE.INPUT=VALUES ... [--server URL ...] [--out DIR]``: render a sweep on ComfyUI servers.

Queues the jobs through the HTTP API (N in flight per server), follows them over the websocket, downloads
every output into a folder per job and appends one manifest row per finished job. Several --server (or
--servers FILE) share one sweep: each job goes to a free server that has its nodes and models, jobs of
a server that goes away move to the others. Re-running the same command resumes: finished jobs are
skipped, jobs lost by a crashed server are sent again, nothing is reported twice.
Imports no torch (only ``lua_core.batch``). Full guide: docs/batch.md.

Exit status: 0 all jobs done, 1 some jobs failed (see the manifest) or bad input, 3 the servers stayed
unreachable (re-run to resume), 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lua_core.batch.runner import BatchResult

EXIT_FAILED, EXIT_SERVER, EXIT_INTERRUPTED = 1, 3, 130


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__
    p.add_argument("workflow", help="workflow JSON, UI format (Save) or API format (Export (API))")
    p.add_argument("--server", dest="servers", action="append", default=[], metavar="URL",
                   help="ComfyUI base URL, http(s)://host:port[/prefix]; repeat it to share the sweep among several "
                        "servers (default: $COMFYUI_URL or http://127.0.0.1:8188)")
    p.add_argument("--servers", dest="servers_file", metavar="FILE",
                   help="servers from a file: one 'URL [TOKEN]' per line, TOKEN being env:NAME or the bearer token "
                        "itself; # comments (adds to --server)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUES",
                   help="sweep an input: NODE is a title, class type or id; VALUES is a,b,c | 1..20 | 0..1:0.25 | "
                        "[JSON list] | @file.txt (one per line) | @file.json. Repeat for a cartesian product.")
    p.add_argument("--sweep", metavar="FILE", help="explicit rows: CSV/JSONL/JSON with NODE.INPUT columns")
    p.add_argument("--out", default="comfy_batch_out", help="output folder (default: comfy_batch_out)")
    p.add_argument("--manifest", default=None, help="manifest JSONL (default: OUT/manifest.jsonl)")
    p.add_argument("--in-flight", type=int, default=2, help="prompts of this client on each server at once (2)")
    p.add_argument("--token-env", metavar="NAME", help="send 'Authorization: Bearer $NAME' (token read from env)")
    p.add_argument("--header", dest="headers", action="append", default=[], metavar="'NAME: VALUE'",
                   help="extra HTTP header for every request (repeatable)")
    p.add_argument("--insecure", action="store_true", help="https: do not verify the server certificate")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request (30)")
    p.add_argument("--server-wait", type=float, default=600.0,
                   help="stop when no server that can run the remaining jobs answered this many seconds (600)")
    p.add_argument("--move-after", type=float, default=30.0,
                   help="several servers: move the jobs of a server that stopped answering to the others after "
                        "this many seconds (30)")
    p.add_argument("--stall-after", type=float, default=600.0,
                   help="several servers: a server whose queue has not moved (same prompt running, no progress "
                        "event of ours) this many seconds while it holds jobs is stuck; its jobs move after "
                        "--move-after (600; 0: never)")
    p.add_argument("--max-attempts", type=int, default=3, help="sends per job when servers lose it (3)")
    p.add_argument("--job-timeout", type=float, default=None, help="interrupt a job running longer than this")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between /queue checks without websocket (1)")
    p.add_argument("--no-ws", action="store_true", help="do not use the websocket; poll only")
    p.add_argument("--include-temp", action="store_true", help="also download temp files (PreviewImage)")
    p.add_argument("--skip-failed", action="store_true",
                   help="on resume, also skip jobs whose last outcome was an error (default: retry them)")
    p.add_argument("--dry-run", action="store_true", help="list the jobs (and what is already done); send nothing")
    p.add_argument("--export-api", metavar="FILE", help="write the workflow as an API prompt ('-' = stdout), exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per finished job)")
    p.add_argument("--quiet", action="store_true", help="only warnings, errors and the summary")


def _check_numbers(args: argparse.Namespace) -> None:
    for name, value, low in (("--in-flight", args.in_flight, 1), ("--max-attempts", args.max_attempts, 1)):
        if value < low:
            raise ValueError(f"{name} must be at least {low}, got {value}")
    for name, value in (("--timeout", args.timeout), ("--server-wait", args.server_wait), ("--poll", args.poll)):
        if not value > 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {value:g}")
    if not args.stall_after >= 0:
        raise ValueError(f"--stall-after must be 0 (never) or more seconds, got {args.stall_after:g}")
    if not args.move_after >= 0:
        raise ValueError(f"--move-after must be 0 or more seconds, got {args.move_after:g}")


def run(args: argparse.Namespace) -> int:
    from lua_core.batch import RunOptions, fetch_object_info, make_farm, plan_batch
    from lua_core.batch.errors import ServerGaveUp
    from lua_core.batch.manifest import Manifest
    from lua_core.batch.runner import BatchRunner

    _check_numbers(args)
    warnings: list[str] = []
    clients = make_farm(args.servers, args.servers_file, headers=args.headers, token_env=args.token_env,
                        timeout=args.timeout, verify_tls=not args.insecure, warnings=warnings)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    fetched: dict[str, dict[str, Any]] = {}

    def object_info() -> dict[str, Any]:
        if not fetched:
            url, info = fetch_object_info(clients, args.server_wait, say=lambda m: print(m, file=sys.stderr))
            fetched[url] = info
        return next(iter(fetched.values()))

    try:
        plan = plan_batch(args.workflow, sets=args.sets, sweep=args.sweep,
                          object_info=None if (args.dry_run or args.export_api) and _is_api(args.workflow)
                          else object_info)
    except ServerGaveUp as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_SERVER
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)

    if args.export_api:
        text = json.dumps(plan.workflow.prompt, indent=2, ensure_ascii=False) + "\n"
        if args.export_api == "-":
            sys.stdout.write(text)
        else:
            Path(args.export_api).write_text(text, encoding="utf-8")
            print(f"wrote {args.export_api} ({len(plan.workflow.prompt)} nodes)", file=sys.stderr)
        return 0

    out_dir = Path(args.out)
    manifest = Manifest(args.manifest or out_dir / "manifest.jsonl")
    if args.dry_run:
        latest = manifest.latest()
        for job in plan.jobs:
            status = (latest.get(job.key) or {}).get("status", "todo")
            print(f"{job.index:>5}  {status:<11} {job.key[:12]}  {job.label}  ->  {out_dir / job.folder}")
        print(f"{len(plan.jobs)} jobs ({plan.workflow.format} workflow {args.workflow}); nothing sent (--dry-run)",
              file=sys.stderr)
        return 0

    opts = RunOptions(in_flight=args.in_flight, use_ws=not args.no_ws, poll_interval=args.poll,
                      server_wait=args.server_wait, move_after=args.move_after,
                      stall_after=args.stall_after or None, max_attempts=args.max_attempts,
                      job_timeout=args.job_timeout, include_temp=args.include_temp, retry_failed=not args.skip_failed,
                      progress=False if args.no_progress else None, quiet=args.quiet)
    if not args.quiet:
        where = (f"on {clients[0].base_url}, {args.in_flight} in flight" if len(clients) == 1 else
                 f"on {len(clients)} servers ({', '.join(c.base_url for c in clients)}), {args.in_flight} in flight "
                 "each")
        print(f"{_jobs(len(plan.jobs))} from {args.workflow} ({plan.workflow.format} format) {where}; outputs in "
              f"{out_dir}/, manifest {manifest.path}", file=sys.stderr)
    try:
        result = BatchRunner(clients, plan.jobs, out_dir, manifest=manifest.path, options=opts,
                             object_info=fetched).run()
    except KeyboardInterrupt:  # the second Ctrl-C
        print("stopped at once: prompts already sent may still run on the servers; re-run the same command to "
              "collect them (they are found again by their prompt ids)", file=sys.stderr)
        return EXIT_INTERRUPTED
    _summary(result, farm=len(clients) > 1)
    if result.interrupted:
        return EXIT_INTERRUPTED
    if result.gave_up:
        return EXIT_SERVER
    return 0 if result.ok else EXIT_FAILED


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


def _summary(result: BatchResult, farm: bool) -> None:
    """The last lines: counts, then (several servers) one line per server with its jobs and its failures."""
    parts = [f"{result.succeeded} succeeded", f"{result.failed} failed", f"{result.skipped} already done"]
    if result.count("cancelled"):
        parts.append(f"{result.count('cancelled')} cancelled")
    if result.not_run:
        parts.append(f"{result.not_run} not run")
    print(f"{_jobs(result.total)}: {', '.join(parts)} in {result.elapsed:.1f}s; manifest {result.manifest}",
          file=sys.stderr)
    if not farm:
        return
    nowhere = sum(1 for r in result.rows if r.get("server") is None)
    for stats in result.servers:
        rate = stats.rate_per_min()
        line = f"  {stats.url}: {stats.succeeded} succeeded" + (f" ({rate:.1f}/min)" if rate is not None else "")
        trouble = []
        if stats.failed_jobs:
            trouble.append(", ".join(stats.failed_jobs))
        if stats.times_away:
            trouble.append(f"unreachable {stats.times_away} time{'s' if stats.times_away > 1 else ''}")
        if stats.moved_away:
            trouble.append(f"{stats.moved_away} job{'s' if stats.moved_away > 1 else ''} moved to other servers")
        if stats.disabled:
            trouble.append(f"out of the run: {stats.disabled}")
        print(line + ("; " + "; ".join(trouble) if trouble else ""), file=sys.stderr)
    if nowhere:
        print(f"  {nowhere} job{'s' if nowhere > 1 else ''} validated on no server (see the manifest)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m lua_core.batch``, or a ``comfy-lua-batch`` console script)."""
    parser = argparse.ArgumentParser(prog="python -m lua_core.batch")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as err:  # BatchError and friends: actionable messages
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED


def _is_api(path: str) -> bool:
    from lua_core.batch.errors import WorkflowError
    from lua_core.batch.workflow import detect_format, read_json

    try:
        return detect_format(read_json(path)) != "ui"
    except WorkflowError:
        return True  # let load_workflow report the problem
