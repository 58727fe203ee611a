"""One module per CLI command (see ``lua_core/__main__.py``)."""
