"""``download [KEY ...] [--dest DIR] [--list] [--offline]``: fetch known checkpoints, ready to load.

Each KEY (or Hugging Face repo id) is downloaded into DIR if missing, pickles are converted to
safetensors once, and the path to give ``--model`` / ``load_model`` is printed. ``--list`` shows
the registry (with a column saying which are already in DIR), so users can pick without reading
the code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("keys", nargs="*", metavar="KEY",
                   help="checkpoint key (e.g. lua-flux) or Hugging Face repo id; --list shows them")
    p.add_argument("--dest", default=None,
                   help="destination folder (default: $LUA_MODELS_DIR, else ~/.cache/lua_core)")
    p.add_argument("--list", action="store_true", help="print the known checkpoints and exit")
    p.add_argument("--offline", action="store_true",
                   help="send no request: use files already in DIR or the Hugging Face cache "
                        "(same as HF_HUB_OFFLINE=1)")


def table(rows: list[dict[str, str]], columns: list[str]) -> str:
    """A plain-text table, column widths from the content."""
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip(),
             "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..errors import LuaError
    from ..hub import KNOWN, default_models_dir, describe, fetch, find_known

    dest = Path(args.dest).expanduser() if args.dest else default_models_dir()
    if args.list:
        rows = describe(KNOWN)
        for row, entry in zip(rows, KNOWN):
            row["here"] = "yes" if entry.is_present(dest) else "-"
        print(table(rows, ["key", "family", "channels", "scales", "fits", "license", "source", "here"]))
        print(f"\n'here': already in {dest}")
        return 0
    if not args.keys:
        print("error: name at least one KEY; python -m lua_core download --list shows them", file=sys.stderr)
        return 2
    entries = [find_known(k) for k in args.keys]  # an unknown key stops here, before any download
    failed = 0
    for entry in entries:
        try:
            path = fetch(entry, dest, offline=True if args.offline else None)
        except LuaError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{entry.key}: {path}")
    return 1 if failed else 0
