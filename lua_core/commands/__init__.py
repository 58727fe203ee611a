"""One module per CLI command (see ``lua_core/__main__.py``), and the option types they share."""

from __future__ import annotations

import argparse


def latent_format_arg(text: str) -> str:
    """``--latent-format``: a format name or an alias users type (qwen-image, klein, z-image...)."""
    from ..errors import LuaError
    from ..latent_formats import format_name

    try:
        return format_name(text)
    except LuaError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


LATENT_FORMAT_HELP = ("flux (FLUX.1, Z-Image, Lumina 2), sd3, sdxl, sd15, flux2 (FLUX.2, Klein), wan21 (Qwen-Image, "
                      "Wan 2.1), hunyuanimage21, cogview4; aliases such as qwen-image, klein, z-image work too")
