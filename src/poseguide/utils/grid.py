"""Image grids with text: data previews, validation images, the report's qualitative figures."""

from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont, ImageOps

BACKGROUND = (245, 245, 245)
PLACEHOLDER = (200, 200, 200)
TEXT = (20, 20, 20)
ERROR_TEXT = (190, 0, 0)


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def thumbnail(image: Image.Image | None, cell: int) -> Image.Image:
    """``image`` fitted into a ``cell`` square (grey when None), aspect ratio kept."""
    canvas = Image.new("RGB", (cell, cell), PLACEHOLDER)
    if image is not None:
        thumb = ImageOps.contain(image.convert("RGB"), (cell, cell))
        canvas.paste(thumb, ((cell - thumb.width) // 2, (cell - thumb.height) // 2))
    return canvas


def image_grid(
    rows: list[list[Image.Image | None]],
    texts: list[str] | None = None,
    titles: list[str] | None = None,
    cell: int = 192,
    text_width: int | None = None,
    errors: list[bool] | None = None,
    font_size: int = 13,
) -> Image.Image:
    """One line per row: its images as ``cell``-sized thumbnails, then its text (wrapped).

    ``titles`` label the image columns; ``errors`` marks rows whose text is drawn in red.
    """
    pad = 8
    columns = max((len(r) for r in rows), default=0)
    text_width = (2 * cell if texts else 0) if text_width is None else text_width
    title_h = font_size + 2 * pad if titles else 0
    width = pad + columns * (cell + pad) + (text_width + pad if texts else 0)
    grid = Image.new("RGB", (width, title_h + pad + max(len(rows), 1) * (cell + pad)), BACKGROUND)
    draw, face = ImageDraw.Draw(grid), font(font_size)
    for j, title in enumerate(titles or []):
        draw.text((pad + j * (cell + pad), pad), title, fill=TEXT, font=face)
    chars = max(20, int(text_width / (0.55 * font_size)))
    for k, images in enumerate(rows):
        top = title_h + pad + k * (cell + pad)
        for j, image in enumerate(images):
            grid.paste(thumbnail(image, cell), (pad + j * (cell + pad), top))
        if texts:
            lines = [
                w for part in texts[k].split("\n") for w in (textwrap.wrap(part, chars) or [""])
            ]
            colour = ERROR_TEXT if errors and errors[k] else TEXT
            draw.multiline_text((pad + columns * (cell + pad), top),
                                "\n".join(lines[: max(1, cell // (font_size + 3))]),
                                fill=colour, font=face, spacing=3)  # fmt: skip
    return grid
