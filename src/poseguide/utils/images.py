"""The one safe image reader, and the one figure-to-image conversion.

Every image poseguide reads (dataset rows, app uploads, photos for ``pose estimate`` and
``generate``, the evaluation's stored images) goes through :func:`read_image`:

* the bytes are read once; an empty file, a missing one or a folder is a clear error;
* the pixel count is read from the header before any pixel is decoded, so a decompression bomb
  costs nothing; over ``max_pixels`` is an error (Pillow's own limit applies too);
* the image is decoded in full (Pillow decodes lazily) and PNG chunk checksums are verified, so a
  truncated or corrupt file fails here, not later in the middle of a batch;
* EXIF orientation is applied only when asked (photos, uploads); dataset pixels stay as stored,
  because COCO keypoints are given in stored-pixel coordinates.

:func:`read_image_size` runs the same checks up to the decode and returns only the size (what
training from cached latents needs of an image the dataset scan already decoded once).

ultralytics monkey-patches ``PIL.Image.open`` when it is imported: on an unidentifiable file it
tries to pip-install a HEIF plugin and retry. poseguide opens images through :func:`pil_open`,
which always calls Pillow's own function.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import sys
import warnings
from pathlib import Path
from typing import IO, Any

from PIL import Image, ImageFile, ImageOps

from poseguide.errors import InputError

log = logging.getLogger(__name__)

# data.max_image_pixels' default, a guard against decompression bombs: PIL's own default limit
# (Image.MAX_IMAGE_PIXELS), stated here once for the config, the sources and the readers.
DEFAULT_MAX_IMAGE_PIXELS: int = 89_478_485
# Why an image cannot be read; the dataset's row problems use the same names.
IMAGE_PROBLEMS = ("missing_file", "zero_size", "too_many_pixels", "unreadable_image")

ImageSource = str | os.PathLike | bytes | bytearray | memoryview
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_warned_truncated = False


class ImageReadError(InputError):
    """An image cannot be read: ``problem`` is one of :data:`IMAGE_PROBLEMS`, ``detail`` names
    the file and what is wrong with it; ``facts`` holds the numbers behind it (``pixels``,
    ``width``, ``height``, ``limit``, ``bytes``, ``pil_limit``, ``reason``) for callers that word
    the message for their own users."""

    def __init__(self, problem: str, detail: str, **facts: Any) -> None:
        self.problem, self.detail, self.facts = problem, detail, facts
        super().__init__(detail)


def _reason(err: BaseException) -> str:
    """Pillow's message without the address of the in-memory buffer it was given."""
    return re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(err))


def pil_open(fp: str | Any | IO[bytes], *args: Any, **kwargs: Any) -> Image.Image:
    """``PIL.Image.open`` without third-party patches."""
    patches = sys.modules.get("ultralytics.utils.patches")
    original = getattr(patches, "_image_open", None) or Image.open
    return original(fp, *args, **kwargs)


def _read(src: ImageSource, what: str, max_bytes: int | None) -> tuple[bytes, str]:
    """The encoded bytes of an image and a short description of where they came from."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src), what
    path = Path(src)
    where = f"{what} {path}"
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            over = f"{size / 2**20:.1f} MB, over the limit of {max_bytes / 2**20:.1f} MB"
            raise ImageReadError("too_many_pixels", f"{where} is {over}; use a smaller file",
                                 bytes=size, limit=max_bytes)  # fmt: skip
        return path.read_bytes(), where
    except FileNotFoundError:
        raise ImageReadError("missing_file", f"{where} does not exist") from None
    except IsADirectoryError:
        raise ImageReadError("missing_file", f"{where} is a folder, not an image file") from None
    except OSError as err:
        raise ImageReadError("unreadable_image", f"{where} cannot be read: {err}") from None


def _png_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, without PIL (which refuses 0-pixel images)."""
    if data[:8] != _PNG_SIGNATURE or len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _check_truncation_flag() -> None:
    global _warned_truncated
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _warned_truncated:
        _warned_truncated = True
        log.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some other code): truncated "
            "images will load with grey areas instead of being reported as unreadable_image"
        )


def _identify(data: bytes, where: str, max_pixels: int, limit_name: str) -> Image.Image:
    """Open (not decode) the image and check its size from the header."""
    with warnings.catch_warnings():
        # Our own limit is checked below; PIL's warning would only repeat it.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = pil_open(io.BytesIO(data))
        except Image.DecompressionBombError as err:
            raise ImageReadError("too_many_pixels", f"{where}: {err} (PIL's own limit, "
                                 "PIL.Image.MAX_IMAGE_PIXELS, also applies)",
                                 pil_limit=True) from None  # fmt: skip
        except Exception as err:  # any failure to identify untrusted bytes
            size = _png_header_size(data)
            if size is not None and 0 in size:
                detail = f"{where} is {size[0]}x{size[1]} pixels"
                raise ImageReadError("zero_size", detail) from None
            detail = f"{where} is not a readable image ({_reason(err)})"
            raise ImageReadError("unreadable_image", detail, reason=_reason(err)) from None
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageReadError("zero_size", f"{where} is {width}x{height} pixels")
    if width * height > max_pixels:
        raise ImageReadError(
            "too_many_pixels",
            f"{where} is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} ({limit_name}; a guard against decompression bombs)",
            width=width, height=height, pixels=width * height, limit=max_pixels,
        )  # fmt: skip
    return image


def read_image(
    src: ImageSource,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    what: str = "image",
    exif: bool = False,
    max_bytes: int | None = None,
    limit_name: str = "data.max_image_pixels",
) -> Image.Image:
    """Decode an untrusted image in full and return it as an RGB PIL image.

    Args:
        src: a file path or the encoded bytes.
        max_pixels: the largest width * height accepted (checked from the header first).
        what: names the image in errors, e.g. ``"pose image"`` or ``"uploaded image"``.
        exif: apply the EXIF orientation (photos); False keeps the stored pixels (datasets).
        max_bytes: the largest file accepted (uploads), None for no limit.
        limit_name: the setting behind ``max_pixels``, named in the error.

    Raises:
        ImageReadError: (an :class:`~poseguide.errors.InputError`) with ``problem``
            ``missing_file``, ``zero_size``, ``too_many_pixels`` or ``unreadable_image``.
    """
    data, where = _read(src, what, max_bytes)
    if not data:
        raise ImageReadError("zero_size", f"{where} is empty (0 bytes)")
    _check_truncation_flag()
    image = _identify(data, where, max_pixels, limit_name)
    try:
        if image.format == "PNG":
            image.verify()  # chunk checksums up to IEND: catches PNGs cut inside the data
            image = pil_open(io.BytesIO(data))
        image.load()  # PIL decodes lazily: truncation and corruption show only here
        if exif:
            image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except Exception as err:  # any failure to decode untrusted bytes
        detail = f"{where} is corrupt or truncated ({_reason(err)})"
        raise ImageReadError("unreadable_image", detail, reason=_reason(err)) from None


def read_image_size(
    src: ImageSource,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    what: str = "image",
    limit_name: str = "data.max_image_pixels",
) -> tuple[int, int]:
    """(width, height) of an untrusted image from its header, without decoding a pixel.

    The checks of :func:`read_image` up to the decode (missing or empty file, not an image, zero
    or too many pixels) with the same :class:`ImageReadError`; what only a full decode shows (a
    truncated or corrupt body) is not checked: use it where the image was decoded once already
    (the dataset scan) and only its size is needed now (training from cached latents).
    """
    data, where = _read(src, what, None)
    if not data:
        raise ImageReadError("zero_size", f"{where} is empty (0 bytes)")
    return _identify(data, where, max_pixels, limit_name).size


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_to_image(fig: Any, dpi: int = 100, tight: bool = True) -> Image.Image:
    """A matplotlib figure rendered to an RGB PIL image (the figure is closed)."""
    plt = pyplot()
    buffer = io.BytesIO()
    if tight:
        fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    buffer.seek(0)
    return pil_open(buffer).convert("RGB")


def image_png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
