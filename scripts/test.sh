#!/usr/bin/env bash
# Run every test of the pack (README command #2; .ci/run calls exactly this).
# Sets up .venv and the local CPU ComfyUI first when they are missing (scripts/setup_env.sh).
# Extra arguments go to pytest, e.g. `scripts/test.sh -k conformance`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
./scripts/setup_env.sh 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
PY=${LUA_VENV:-$ROOT/.venv}/bin/python
"$PY" -m ruff check .
exec "$PY" -m pytest "$@"
