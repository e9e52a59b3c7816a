"""Rendering the report's blocks as Markdown and as one self-contained HTML page.

A report is a list of blocks, rendered by both functions so the two files say the same thing.
"""

from __future__ import annotations

import base64
import html
import re

Cell = list[tuple[str, bool]]  # a table cell: text segments, each bold or not
Table = tuple[list[str], list[list[Cell]]]  # header, rows
# A document block: ("h1" | "h2" | "h3" | "p", text), ("ul", [text]), ("table", Table),
# ("img", file name, png bytes, caption). Rendered to Markdown and HTML from the same list.
Block = tuple


def _md_cell(cell: Cell) -> str:
    return "".join(f"**{text}**" if bold else text for text, bold in cell).replace("|", "\\|")


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + args[0])
        elif kind == "p":
            out.append(args[0])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in args[0]))
        elif kind == "table":
            header, rows = args[0]
            lines = [
                "| " + " | ".join(header) + " |",
                "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
            ]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{args[2]}]({args[0]})")
    return "\n\n".join(out) + "\n"


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;
padding:4px 10px}td:not(:first-child){text-align:right}th{background:#f0f0f0}
img{max-width:100%}figcaption{color:#555;font-size:90%}code{background:#f4f4f4}"""


def _html_text(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html_cell(cell: Cell, tag: str = "td") -> str:
    body = "".join(f"<strong>{html.escape(t)}</strong>" if b else html.escape(t) for t, b in cell)
    return f"<{tag}>{body}</{tag}>"


def render_html(blocks: list[Block], title: str) -> str:
    """One self-contained page: inline CSS, images as base64 data URIs, nothing external."""
    out = []
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3", "p"):
            out.append(f"<{kind}>{_html_text(args[0])}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_html_text(i)}</li>" for i in args[0]) + "</ul>")
        elif kind == "table":
            header, rows = args[0]
            head = "".join(_html_cell([(h, False)], "th") for h in header)
            body = "".join("<tr>" + "".join(map(_html_cell, row)) + "</tr>" for row in rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(args[1]).decode("ascii")
            alt = html.escape(args[2])
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                f"<figcaption>{alt}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(out)
        + "\n</body>\n</html>\n"
    )
