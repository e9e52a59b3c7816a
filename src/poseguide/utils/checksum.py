"""SHA-256 records of a folder's files, written when the folder is finished, checked before use.

Checkpoints (``state.json``'s ``files``), the base's checkpoints and every export
(``checksums.json``) record each file's size and SHA-256; a resume or a load recomputes them, so a
truncated file, a flipped byte or a file swapped in from elsewhere is noticed before anything is
read from it. Hashing reads every byte once (about 1-2 GB/s from the page cache: a few seconds for
an SD1.5 ControlNet checkpoint with its optimizer state).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from poseguide.utils.io import atomic_write_json

CHECKSUMS_FILE = "checksums.json"
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Every file below ``folder`` except ``skip`` (relative path -> ``{"bytes", "sha256"}``)."""
    return {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and str(p.relative_to(folder)) not in skip
    }


def files_problem(folder: Path, recorded: dict[str, Any]) -> str | None:
    """Why the files of ``folder`` differ from ``recorded`` (:func:`file_records`; a plain int
    is a size alone, as older checkpoints recorded), or None when every one matches."""
    for name, record in recorded.items():
        file = folder / name
        if not (record is None or isinstance(record, (int, dict))):
            return f"the record of {file} is damaged ({record!r})"
        if not file.is_file():
            return f"{file} is missing"
        size = record if isinstance(record, int) or record is None else record.get("bytes")
        if size is not None and file.stat().st_size != size:
            return f"{file} is {file.stat().st_size} bytes, {size} when it was saved (truncated?)"
        expected = record.get("sha256") if isinstance(record, dict) else None
        if expected is not None and sha256_file(file) != expected:
            return f"{file} does not match the SHA-256 recorded when it was saved (damaged)"
    return None


def write_checksums(folder: Path) -> Path:
    """Record every file of a finished ``folder`` in ``folder/checksums.json`` (written last)."""
    return atomic_write_json(folder / CHECKSUMS_FILE, file_records(folder, skip=(CHECKSUMS_FILE,)))


def folder_problem(folder: Path) -> str | None:
    """Why ``folder`` does not match its ``checksums.json`` (None when it matches, or when it
    has none: a folder poseguide did not write, such as a hub download)."""
    record = folder / CHECKSUMS_FILE
    if not record.is_file():
        return None
    try:
        recorded = json.loads(record.read_text())
    except ValueError as err:
        return f"{record} is damaged ({err})"
    if not isinstance(recorded, dict):
        return f"{record} is damaged (not a JSON object)"
    return files_problem(folder, recorded)
