"""Opening images safely.

ultralytics monkey-patches ``PIL.Image.open`` when it is imported: on an unidentifiable file it
tries to pip-install a HEIF plugin and retry. For a corrupt dataset image that means a network
install attempt (or a ``ModuleNotFoundError`` offline) instead of a clear error. poseguide opens
images through :func:`pil_open`, which always calls Pillow's own function.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from PIL import Image


def pil_open(fp: str | Any | IO[bytes], *args: Any, **kwargs: Any) -> Image.Image:
    """``PIL.Image.open`` without third-party patches."""
    patches = sys.modules.get("ultralytics.utils.patches")
    original = getattr(patches, "_image_open", None) or Image.open
    return original(fp, *args, **kwargs)
