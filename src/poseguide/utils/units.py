"""Sizes for people: a byte count in the unit that shows it (B, kB, MB, GB, TB; decimal, as
``df -H``), so a small disk reads "35.2 MB free", not "0.0 GB free"."""

from __future__ import annotations

BYTE_UNITS = ("B", "kB", "MB", "GB", "TB")


def format_bytes(count: float) -> str:
    """``count`` bytes in the largest unit in which it is at least 1, with one decimal
    (whole bytes below 1 kB): ``format_bytes(35_200_000) == "35.2 MB"``."""
    value = float(count)
    if abs(value) < 1000:
        return f"{int(value)} B"
    index = 0
    while index < len(BYTE_UNITS) - 1 and (index == 0 or abs(value) >= 999.95):
        value /= 1000  # 999.96 would print as 1000.0: the next unit shows it
        index += 1
    return f"{value:.1f} {BYTE_UNITS[index]}"
