"""``python -m lua_core.batch ...``: the same command as ``python -m lua_core batch ...``."""

from __future__ import annotations

import sys

from lua_core.commands.batch import main

if __name__ == "__main__":
    sys.exit(main())
