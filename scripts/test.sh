#!/usr/bin/env bash
# Run every test of the pack (README command #2; .ci/run calls exactly this), on two ComfyUI versions:
#   run 1: ruff, then the whole suite with .venv and ComfyUI 0.3.75, the oldest supported version
#          (pyproject's requires-comfyui), set up by scripts/setup_env.sh when missing;
#   run 2: the ComfyUI tests (tests/comfyui, browser tests included) again on ComfyUI 0.33.0 with its own
#          venv, set up by `scripts/setup_comfyui.sh 0.33` (source: COMFYUI_033_DIR, a v0.33.0 checkout,
#          or the tarball COMFYUI_033_TARBALL, default ../shared/reference/comfyui-0.33/comfyui-0.33.0.tar.xz).
# Ends red if either run fails. Where no ComfyUI 0.33.0 source is found, run 2 is skipped with a message;
# on CI (LUA_CI=1, set by .ci/run) that is a failure, as is any skipped test other than a version skip.
# LUA_COMFYUI_033=0 leaves run 2 out (not on CI).
# Extra arguments go to pytest, e.g. `scripts/test.sh -k conformance`. Run 2 gets the same options and
# only the given paths under tests/comfyui (no path given: tests/comfyui); it is left out when none is.
# Each run ends with its skipped tests by reason; the last lines sum both runs up.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
quiet_pip() { grep -v "is ignored: it is neither a file nor a directory" >&2; }
./scripts/setup_env.sh 2> >(quiet_pip)
PY=${LUA_VENV:-$ROOT/.venv}/bin/python
# the browser tests drive Debian's chromium through playwright-core (tests/browser/package-lock.json; it
# downloads no browser): install the npm part here when npm is there; chromium needs root, so only say how
if [ ! -d tests/browser/node_modules ] && command -v npm >/dev/null 2>&1; then
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) \
    || echo "[test] npm ci in tests/browser failed: the browser tests will skip (fail on CI)" >&2
fi
[ -x /usr/bin/chromium ] || echo "[test] /usr/bin/chromium is missing: the browser tests will skip (fail on CI);" \
  "install it with: sudo apt-get install -y chromium" >&2
ON_CI=${LUA_CI:-0}
# the newest ComfyUI tested: on CI a version skip ("needs ComfyUI >= ...") fails there (tests/conftest.py)
export LUA_NEWEST_COMFYUI=0.33.0

# -- what run 2 gets: the options, and the paths under tests/comfyui -----------------------------------
RUN2_ARGS=()
PATHS=0
COMFY_PATHS=0
for arg in "$@"; do
  target=${arg%%::*}
  if [[ "$arg" != -* && -e "$target" ]]; then
    PATHS=$((PATHS + 1))
    abs=$(cd "$(dirname "$target")" && pwd)/$(basename "$target")
    case "$abs/" in
      "$ROOT/tests/comfyui/"*) RUN2_ARGS+=("$arg"); COMFY_PATHS=$((COMFY_PATHS + 1)) ;;
      "$ROOT/"|"$ROOT/tests/"|"$ROOT/./"|"$ROOT/tests/./") RUN2_ARGS+=(tests/comfyui); COMFY_PATHS=$((COMFY_PATHS + 1)) ;;
    esac
  else
    RUN2_ARGS+=("$arg")
  fi
done
[ "$PATHS" -gt 0 ] || RUN2_ARGS+=(tests/comfyui)

RUN2=yes
RUN2_NOTE=
if [ "$PATHS" -gt 0 ] && [ "$COMFY_PATHS" -eq 0 ]; then
  RUN2=no; RUN2_NOTE="no ComfyUI tests (tests/comfyui) among the given paths"
elif [ "${LUA_COMFYUI_033:-1}" = "0" ]; then
  RUN2=no; RUN2_NOTE="LUA_COMFYUI_033=0"
  [ "$ON_CI" = "1" ] && { RUN2=fail; RUN2_NOTE="LUA_COMFYUI_033=0 is not allowed on CI"; }
else
  set +e
  SETUP033=$(./scripts/setup_comfyui.sh 0.33 2> >(quiet_pip))
  rc=$?
  set -e
  if [ "$rc" -eq 3 ]; then
    RUN2=no; RUN2_NOTE="no ComfyUI 0.33.0 source here (see the [setup 0.33] lines above)"
    [ "$ON_CI" = "1" ] && { RUN2=fail; RUN2_NOTE="no ComfyUI 0.33.0 source on CI: the ComfyUI tests cannot run on it"; }
  elif [ "$rc" -ne 0 ]; then
    echo "[test] scripts/setup_comfyui.sh 0.33 failed (exit $rc)" >&2
    exit "$rc"
  else
    COMFY033=$(echo "$SETUP033" | sed -n 's/^COMFYUI_DIR=\(.*\) PYTHON=.*/\1/p')
    PY033=$(echo "$SETUP033" | sed -n 's/^COMFYUI_DIR=.* PYTHON=\(.*\)/\1/p')
  fi
fi
if [ "$RUN2" != yes ]; then
  echo "[test] ComfyUI 0.33.0: the second run is NOT going to happen: $RUN2_NOTE"
fi

"$PY" -m ruff check .

SUMMARY=$(mktemp -d)
trap 'rm -rf "$SUMMARY"' EXIT
STATUS=0

COMFY1=${COMFYUI_DIR:-$ROOT/.comfyui/ComfyUI}
echo "[test] run 1: ${*:-the whole suite} on ComfyUI $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFY1/comfyui_version.py") ($PY, $COMFY1)"
start=$SECONDS
set +e
LUA_TEST_SUMMARY=$SUMMARY/run1.json "$PY" -m pytest "$@"
RC1=$?
set -e
T1=$((SECONDS - start))
[ "$RC1" -eq 0 ] || STATUS=1

RC2=
T2=0
if [ "$RUN2" = yes ]; then
  # test_launch_script.py checks README command 1, which runs the local ComfyUI 0.3.75 (run 1 covers it)
  echo "[test] run 2: ${RUN2_ARGS[*]} on ComfyUI 0.33.0 ($PY033, COMFYUI_DIR=$COMFY033)"
  start=$SECONDS
  set +e
  COMFYUI_DIR=$COMFY033 LUA_TEST_SUMMARY=$SUMMARY/run2.json "$PY033" -m pytest \
      --ignore=tests/comfyui/test_launch_script.py "${RUN2_ARGS[@]}"
  RC2=$?
  set -e
  T2=$((SECONDS - start))
  if [ "$RC2" -eq 5 ]; then
    echo "[test] run 2 collected no test (exit 5): nothing of the selection runs on ComfyUI 0.33.0"
  elif [ "$RC2" -ne 0 ]; then
    STATUS=1
  fi
elif [ "$RUN2" = fail ]; then
  STATUS=1
fi

# -- both runs in a few lines ---------------------------------------------------------------------------
"$PY" - "$SUMMARY" "$RC1" "$T1" "${RC2:-}" "$T2" "$RUN2" "$RUN2_NOTE" "${*:-the whole suite}" "${RUN2_ARGS[*]}" <<'PY'
import json, pathlib, sys
folder, rc1, t1, rc2, t2, run2, note, what1, what2 = sys.argv[1:10]

def show(n: str, what: str, rc: str, secs: str) -> None:
    path = pathlib.Path(folder) / f"run{n}.json"
    took = f"{int(secs) // 60} min {int(secs) % 60:02d} s"
    if not path.is_file():
        print(f"[test] run {n} ({what}): pytest exit {rc}, no summary (it stopped early), {took}")
        return
    s = json.loads(path.read_text())
    c = s["counts"]
    parts = [f"{c[k]} {k}" for k in ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "deselected") if c[k]]
    verdict = "OK" if rc in ("0", "5") else f"FAILED (pytest exit {rc})"
    print(f"[test] run {n}: {what} on ComfyUI {s['comfyui']}: {', '.join(parts) or 'nothing ran'}; {took}; {verdict}")
    for reason, k in s["skipped"].items():
        print(f"[test]     skipped {k} x {reason}")

print("[test] " + "-" * 70)
show("1", what1, rc1, t1)
if run2 == "yes":
    show("2", what2, rc2, t2)
elif run2 == "fail":
    print(f"[test] run 2 (ComfyUI 0.33.0): FAILED: {note}")
else:
    print(f"[test] run 2 (ComfyUI 0.33.0): not run: {note}")
PY
if [ "$STATUS" -ne 0 ]; then
  echo "[test] FAILED"
elif [ "$RUN2" = no ] && [ "$COMFY_PATHS" -gt 0 -o "$PATHS" -eq 0 ]; then
  echo "[test] OK, but ComfyUI 0.33.0 was not tested: $RUN2_NOTE"
else
  echo "[test] OK"
fi
exit "$STATUS"
