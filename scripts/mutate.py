#!/usr/bin/env python3
"""Hand-made mutation testing: break the code on purpose, one named change at a time, and check that a
test notices (issue #18 item 7).

Why hand-made: mutmut and cosmic-ray generate thousands of operator swaps and need hours on a 2-core
machine; the mutations that matter here are few and known (a loss term cut from the graph, a resume that
re-runs finished jobs, a checkpoint reader that prefers the raw weights to the EMA ones...). Each is
written out in ``scripts/mutations.py`` as an exact text replacement with the tests that should catch it.

How a run works, and why the working tree stays clean: the tracked and untracked-but-not-ignored files
are copied into a temporary folder (``.venv`` and ``.comfyui`` are linked, not copied); each mutation is
written into that copy only, the chosen tests run there (``pytest -x``), and the runner puts the file's
original bytes back before the next mutation. The real tree is never written; the script checks that
the mutated files (and their ``git status``) are the same after the run as before.

Outcomes: ``killed`` (a test failed), ``timeout`` (counted as killed), ``survived`` (every test passed),
``accepted`` (survived, but listed in ``mutations.py`` as an equivalent mutant, with the reason), ``error``
(pytest could not run: collection error or the like; a bug in the mutation list).

    .venv/bin/python scripts/mutate.py                      # every mutation
    .venv/bin/python scripts/mutate.py --only 'objective.*' --log docs/measurements/cpu-DATE-mutation.log
    .venv/bin/python scripts/mutate.py --list
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

from mutations import MUTATIONS, Mutation  # noqa: E402
from runlog import add_log_argument, logged  # noqa: E402

LINKED = (".venv", ".comfyui")


@dataclass
class Outcome:
    mutation: Mutation
    status: str
    seconds: float
    detail: str = ""


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def copy_tree(dst: Path) -> None:
    """The files git would see (tracked, and untracked not ignored) into ``dst``; ``.venv``/``.comfyui`` linked."""
    files = git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if not src.is_file() or rel.split("/")[0] in LINKED:
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel)
    for name in LINKED:
        if (ROOT / name).exists():
            (dst / name).symlink_to((ROOT / name).resolve())


def product_state(paths: list[str]) -> tuple[str, dict[str, bytes]]:
    """``git status`` of the mutated files and their bytes: the same after a run, or the runner wrote one."""
    return git("status", "--porcelain", "--", *paths), {p: (ROOT / p).read_bytes() for p in paths}


def check_list(mutations: list[Mutation]) -> list[str]:
    """Every mutation's text must occur exactly once in its file (else the list is stale)."""
    problems = []
    for m in mutations:
        text = (ROOT / m.path).read_text(encoding="utf-8")
        n = text.count(m.old)
        if n != 1:
            problems.append(f"{m.name}: the text to replace occurs {n} times in {m.path}")
    return problems


def pytest_cmd(tests: tuple[str, ...], exitfirst: bool = True) -> list[str]:
    return [sys.executable, "-m", "pytest", *(["-x"] if exitfirst else []), "-q", "-p", "no:cacheprovider",
            "-p", "no:randomly", *tests]


def first_failure(output: str) -> str:
    """The first FAILED/ERROR line, and with every test run (``--all``) pytest's count line too."""
    lines = output.splitlines()
    failed = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    counts = [line.strip("= ") for line in lines if re.search(r"\d+ (failed|passed)", line)]
    if failed:
        return failed[0][:200] + (f" [{counts[-1]}; failed: {', '.join(f.split()[1] for f in failed)}]"
                                  if len(failed) > 1 and counts else "")
    tail = [line for line in lines if line.strip()]
    return tail[-1][:200] if tail else ""


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float, exitfirst: bool = True) -> tuple[int | None, str]:
    """(pytest's exit code or None on timeout, its output)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        p = subprocess.run(pytest_cmd(tests, exitfirst), cwd=tree, env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, out
    return p.returncode, p.stdout + p.stderr


def mutate_one(tree: Path, m: Mutation, timeout: float, exitfirst: bool = True) -> Outcome:
    target = tree / m.path
    original = (ROOT / m.path).read_bytes()  # the pristine bytes, from the untouched tree
    t0 = time.monotonic()
    try:
        mutant = original.decode("utf-8").replace(m.old, m.new, 1)
        target.write_text(mutant, encoding="utf-8")
        try:
            compile(mutant, str(target), "exec")
        except SyntaxError as e:
            return Outcome(m, "error", time.monotonic() - t0, f"the mutant does not compile: {e}")
        rc, out = run_tests(tree, m.tests, timeout, exitfirst)
    finally:
        target.write_bytes(original)  # restored by the runner, whatever happened
    dt = time.monotonic() - t0
    if rc is None:
        return Outcome(m, "timeout", dt, f"no result within {timeout:g}s")
    if rc == 0:
        return Outcome(m, "accepted" if m.accept else "survived", dt, m.accept or "every test passed")
    if rc == 1:
        return Outcome(m, "killed", dt, first_failure(out))
    return Outcome(m, "error", dt, f"pytest exit {rc}: {first_failure(out)}")


def baseline(tree: Path, mutations: list[Mutation], timeout: float) -> list[str]:
    """Each distinct test selection must pass on the unmutated tree, or its kills mean nothing."""
    bad = []
    for tests in dict.fromkeys(m.tests for m in mutations):
        t0 = time.monotonic()
        rc, out = run_tests(tree, tests, timeout)
        print(f"baseline {'ok  ' if rc == 0 else 'FAIL'} {time.monotonic() - t0:6.1f}s  {' '.join(tests)}", flush=True)
        if rc != 0:
            bad.append(f"{' '.join(tests)}: {first_failure(out)}")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[], metavar="GLOB",
                    help="mutation names to run (fnmatch pattern; repeatable). Default: all")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run (default 900)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of each test selection")
    ap.add_argument("--tests", metavar="ARGS", help="pytest arguments replacing every chosen mutation's tests, e.g. "
                    "\"tests/test_train_gradients.py -k consistency\" (to check which tests a mutation fails)")
    ap.add_argument("--all", action="store_true", help="run every selected test (no -x) and list all that fail")
    add_log_argument(ap)
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or any(fnmatch.fnmatch(m.name, g) for g in args.only)]
    if args.tests:
        chosen = [replace(m, tests=tuple(shlex.split(args.tests))) for m in chosen]
    if args.list:
        for m in chosen:
            print(f"{m.name:42s} {m.path:34s} {' '.join(m.tests)}")
        return 0
    problems = check_list(chosen)
    if problems:
        print("stale mutation list:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    paths = sorted({m.path for m in chosen})
    product_before = product_state(paths)
    # a SIGTERM unwinds like Ctrl-C, so the mutated copy is restored and the temporary tree removed
    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt()))
    with logged(args.log):
        print(f"{len(chosen)} mutations; tests run with: {' '.join(pytest_cmd(('TESTS',), not args.all)[1:])}",
              flush=True)
        with tempfile.TemporaryDirectory(prefix="lua-mutate-") as tmp:
            tree = Path(tmp)
            copy_tree(tree)
            if not args.no_baseline:
                bad = baseline(tree, chosen, args.timeout)
                if bad:
                    print("the unmutated tests fail; fix them first:\n  " + "\n  ".join(bad))
                    return 2
            outcomes = []
            for i, m in enumerate(chosen, 1):
                o = mutate_one(tree, m, args.timeout, exitfirst=not args.all)
                outcomes.append(o)
                print(f"[{i:3d}/{len(chosen)}] {o.status:8s} {o.seconds:6.1f}s  {m.name}: {o.detail}", flush=True)
        counts = {s: sum(o.status == s for o in outcomes) for s in ("killed", "timeout", "survived", "accepted",
                                                                    "error")}
        print("summary: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        for o in outcomes:
            if o.status in ("survived", "accepted", "error"):
                print(f"  {o.status}: {o.mutation.name} ({o.mutation.path}): {o.mutation.why}")
    if product_state(paths) != product_before:
        print(f"a mutated file changed in the working tree during the run: {paths}", file=sys.stderr)
        return 3
    return 1 if counts["survived"] or counts["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
