#!/usr/bin/env bash
# Set up and launch ComfyUI with this pack installed, ready at http://127.0.0.1:8188 (README command 1).
#
#   scripts/launch_comfyui.sh [extra main.py args...]
#
# With COMFYUI_DIR=/path/to/ComfyUI (your own install): links this repository into
#   $COMFYUI_DIR/custom_nodes/ComfyUI-LUA (unless something is already there), installs the pack's
#   requirements.txt with $PYTHON (default python3), and runs $PYTHON main.py from $COMFYUI_DIR
#   (--cpu only when that torch sees no CUDA device).
# Without COMFYUI_DIR: runs scripts/setup_env.sh (a local CPU ComfyUI 0.3.75 in .comfyui/ComfyUI and a
#   .venv), links the pack into .comfyui/ComfyUI/custom_nodes/ComfyUI-LUA and runs it with --cpu.
# Env: PORT (default 8188), LISTEN (default 127.0.0.1). Extra arguments go to main.py unchanged.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=${PORT:-8188}
LISTEN=${LISTEN:-127.0.0.1}
PACK_NAME=ComfyUI-LUA

link_pack() {  # link_pack CUSTOM_NODES_DIR
  local dest="$1/$PACK_NAME"
  mkdir -p "$1"
  if [ -L "$dest" ] || [ -e "$dest" ]; then
    if [ "$(cd "$dest" 2>/dev/null && pwd -P)" != "$(cd "$ROOT" && pwd -P)" ]; then
      echo "[launch] note: $dest already exists and is not this checkout; leaving it as it is" >&2
    fi
  else
    ln -s "$ROOT" "$dest"
    echo "[launch] linked $dest -> $ROOT"
  fi
}

if [ -n "${COMFYUI_DIR:-}" ]; then
  COMFY=$(cd "$COMFYUI_DIR" && pwd)
  [ -f "$COMFY/main.py" ] || { echo "[launch] COMFYUI_DIR=$COMFYUI_DIR has no main.py" >&2; exit 1; }
  PY=${PYTHON:-python3}
  link_pack "$COMFY/custom_nodes"
  echo "[launch] installing the pack's requirements with $PY"
  "$PY" -m pip install -r "$ROOT/requirements.txt"
  DEVICE_ARGS=()
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "[launch] torch sees no CUDA device: adding --cpu"
    DEVICE_ARGS=(--cpu)
  fi
else
  "$ROOT/scripts/setup_env.sh"
  COMFY=$ROOT/.comfyui/ComfyUI
  PY=${LUA_VENV:-$ROOT/.venv}/bin/python
  link_pack "$COMFY/custom_nodes"
  DEVICE_ARGS=(--cpu)
fi

cd "$COMFY"
echo "[launch] ComfyUI in $COMFY -> http://$LISTEN:$PORT"
exec "$PY" main.py ${DEVICE_ARGS[@]+"${DEVICE_ARGS[@]}"} --listen "$LISTEN" --port "$PORT" "$@"
