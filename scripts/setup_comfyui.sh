#!/usr/bin/env bash
# Set up a second ComfyUI for the ComfyUI tests (tests/comfyui), beside the default 0.3.75 of setup_env.sh.
#
#   scripts/setup_comfyui.sh 0.33        -> .comfyui/0.33/ComfyUI (source) and .comfyui/0.33/venv
#
# ComfyUI 0.33.0 is not on any package registry. Its source comes from, in this order:
#   COMFYUI_033_DIR      an existing ComfyUI v0.33.0 checkout (e.g. `git clone` of upstream at tag v0.33.0);
#                        used where it is, nothing is written into it
#   COMFYUI_033_TARBALL  the source tarball (default: ../shared/reference/comfyui-0.33/comfyui-0.33.0.tar.xz
#                        relative to the repository root, where CI has it), unpacked into .comfyui/0.33/ComfyUI
# The venv (LUA_VENV_033, default .comfyui/0.33/venv) gets CPU torch 2.13.0 (pinned by constraints.txt, so
# nothing pulls a CUDA torch), ComfyUI's requirements.txt pinned by requirements-comfyui-0.33-lock.txt,
# huggingface_hub < 1.0, and the pack's requirements.txt and requirements-dev.txt.
# COMFYUI_033_PYTHON: use that Python (your own 0.33 venv, with pytest installed) instead; nothing is
#   installed into it.
# Idempotent: a stamp in the venv records what was installed; re-running with unchanged files is a no-op.
# Progress goes to stderr; stdout gets one line, `COMFYUI_DIR=... PYTHON=...`, what the tests run with
# (scripts/test.sh reads it). Exit status 3: no ComfyUI 0.33 source here (nothing built).
set -euo pipefail
exec 3>&1 1>&2   # everything but the last line to stderr
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=${1:?usage: setup_comfyui.sh 0.33}
case "$VERSION" in
  0.33|0.33.0) ;;
  *) echo "[setup 0.33] only 0.33 is set up by this script (0.3.75: scripts/setup_env.sh)" >&2; exit 2 ;;
esac
HOME033=$ROOT/.comfyui/0.33
TARBALL=${COMFYUI_033_TARBALL:-$ROOT/../shared/reference/comfyui-0.33/comfyui-0.33.0.tar.xz}
PYTHON=${PYTHON:-python3}
LOCK=requirements-comfyui-0.33-lock.txt

version_of() { sed -n 's/^__version__ = "\(.*\)"/\1/p' "$1/comfyui_version.py" 2>/dev/null; }

# -- the source -------------------------------------------------------------------------------------
if [ -n "${COMFYUI_033_DIR:-}" ]; then
  COMFY=$(cd "$COMFYUI_033_DIR" 2>/dev/null && pwd) \
    || { echo "[setup 0.33] COMFYUI_033_DIR=$COMFYUI_033_DIR is not a directory" >&2; exit 3; }
  [ -f "$COMFY/main.py" ] || { echo "[setup 0.33] COMFYUI_033_DIR=$COMFY has no main.py" >&2; exit 3; }
else
  COMFY=$HOME033/ComfyUI
  SRC_STAMP=$COMFY/.lua-source
  if [ ! -f "$TARBALL" ] && [ -f "$SRC_STAMP" ]; then
    echo "[setup 0.33] $TARBALL is not here: keeping the source unpacked before ($(cat "$SRC_STAMP"))"
  elif [ ! -f "$SRC_STAMP" ] || [ "$(cat "$SRC_STAMP")" != "$(basename "$TARBALL") $(stat -c %s "$TARBALL" 2>/dev/null)" ]; then
    if [ ! -f "$TARBALL" ]; then
      echo "[setup 0.33] no ComfyUI 0.33.0 source here: $TARBALL does not exist." >&2
      echo "[setup 0.33] Set COMFYUI_033_TARBALL to comfyui-0.33.0.tar.xz, or COMFYUI_033_DIR to a ComfyUI v0.33.0" \
           "checkout (git clone https://github.com/comfyanonymous/ComfyUI -b v0.33.0)." >&2
      exit 3
    fi
    echo "[setup 0.33] ComfyUI source from $TARBALL into $COMFY"
    mkdir -p "$HOME033"
    rm -rf "$COMFY" "$HOME033/unpack"
    mkdir "$HOME033/unpack"
    tar -xJf "$TARBALL" -C "$HOME033/unpack"
    mv "$HOME033/unpack/ComfyUI" "$COMFY"
    rmdir "$HOME033/unpack"
    echo "$(basename "$TARBALL") $(stat -c %s "$TARBALL")" > "$SRC_STAMP"
  fi
fi
GOT=$(version_of "$COMFY")
[ "$GOT" = "0.33.0" ] || { echo "[setup 0.33] $COMFY is ComfyUI '${GOT:-?}', not 0.33.0" >&2; exit 1; }

# -- the Python -------------------------------------------------------------------------------------
if [ -n "${COMFYUI_033_PYTHON:-}" ]; then
  PY=$COMFYUI_033_PYTHON
  "$PY" -c 'import pytest, torch' 2>/dev/null || {
    echo "[setup 0.33] COMFYUI_033_PYTHON=$PY cannot import pytest and torch:" \
         "pip install -r requirements.txt -r requirements-dev.txt into it" >&2; exit 1; }
else
  VENV=${LUA_VENV_033:-$HOME033/venv}
  PY=$VENV/bin/python
  REQS=("$LOCK" requirements.txt requirements-dev.txt constraints.txt scripts/setup_comfyui.sh scripts/patch_torchvision.py)
  STAMP="$VENV/.lua-setup-$({ (cd "$ROOT" && cat "${REQS[@]}"); cat "$COMFY/requirements.txt"; } | sha256sum | cut -c1-16)"
  if [ ! -f "$STAMP" ]; then
    echo "[setup 0.33] python env in $VENV"
    [ -x "$PY" ] || "$PYTHON" -m venv "$VENV"
    TMP=$(mktemp -d)
    # torch, torchvision and torchaudio are pinned here (constraints.txt), not taken from ComfyUI's list
    grep -vE '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*$' "$COMFY/requirements.txt" > "$TMP/comfy-reqs.txt"
    "$PY" -m pip install -q -c "$ROOT/constraints.txt" -c "$ROOT/$LOCK" \
        torch==2.13.0 torchvision==0.28.0 torchaudio==2.11.0 -r "$TMP/comfy-reqs.txt" \
        -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
    rm -rf "$TMP"
    "$PY" "$ROOT/scripts/patch_torchvision.py"
    SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    rm -f "$SITE"/torchaudio/lib/*.so   # CUDA-linked; without them torchaudio runs as pure Python
    "$PY" -c "import torch, torchvision, torchaudio; print('[setup 0.33] torch', torch.__version__, 'torchvision', torchvision.__version__)"
    rm -f "$VENV"/.lua-setup-*
    touch "$STAMP"
  fi
fi
echo "[setup 0.33] ready: ComfyUI $GOT"
echo "COMFYUI_DIR=$COMFY PYTHON=$PY" >&3
