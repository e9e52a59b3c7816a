"""Atomic file and folder output.

Everything poseguide writes (configs, keypoint files, images, checkpoints, metrics) goes through
these helpers so that an interrupted run or a full disk never leaves a half-written file where a
good one used to be: data is written to a temporary name beside the target, flushed to disk, and
renamed over the target in one step.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from poseguide.errors import InputError, UserError


def read_at_most(path: str | os.PathLike, limit: int) -> bytes | None:
    """The file's bytes, or None when it holds more than ``limit`` bytes: no more than
    ``limit + 1`` bytes are read, whatever the file's size (a config or keypoint file that is
    really a multi-GB dump is refused without reading it)."""
    with Path(path).open("rb") as handle:
        data = handle.read(limit + 1)
    return None if len(data) > limit else data


def _fsync_dir(path: Path) -> None:
    # Make the rename itself durable; not every filesystem supports opening a folder.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class WriteError(UserError, OSError):
    """An output could not be written (full disk, no permission, read-only folder): names the
    file; whatever was there before is unchanged."""

    def __str__(self) -> str:  # the message, not OSError's "[Errno n] ...: 'file'" layout
        return str(self.args[0]) if self.args else ""


def write_error(path: str | os.PathLike, err: OSError) -> WriteError:
    """``err`` (raised while writing ``path``) as a :class:`WriteError` naming the file."""
    what = err.strerror or str(err)
    hint = "free space or fix the folder's permissions, then run again"
    out = WriteError(f"could not write {path}: {what}; what was there before is unchanged ({hint})")
    out.errno, out.filename = err.errno, str(path)
    return out


# safetensors reports a failed write as SafetensorError("Error while serializing: I/O error:
# No space left on device (os error 28) at path ..."); its other errors are not about the disk.
_SAFETENSORS_IO = re.compile(r"I/O error: (?P<what>.+?) \(os error (?P<errno>\d+)\)")


def _os_error_of(err: BaseException) -> OSError | None:
    """The OSError behind a failed write: ``err`` itself, or the I/O failure a safetensors
    error reports; None for anything else (a bug keeps its traceback)."""
    if isinstance(err, OSError):
        return err
    safetensors = sys.modules.get("safetensors")  # not imported: cannot be its error
    if safetensors is None or not isinstance(err, safetensors.SafetensorError):
        return None
    found = _SAFETENSORS_IO.search(str(err))
    if found is None:
        return None
    number = int(found["errno"])
    return OSError(number, os.strerror(number) or found["what"])


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Inside, a failed write (an ``OSError``, or safetensors' error for an I/O failure, e.g.
    from ``save_pretrained``) becomes a :class:`WriteError` naming ``path``: the file or folder
    being written, for writes that do not go through the atomic helpers above."""
    try:
        yield
    except WriteError:
        raise
    except Exception as err:
        cause = _os_error_of(err)
        if cause is None:
            raise
        raise write_error(path, cause) from err


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; the previous file survives any failure (an
    ``OSError`` becomes a :class:`WriteError` naming the file)."""
    path = Path(path)
    try:
        return _atomic_write_bytes(path, data)
    except WriteError:
        raise
    except OSError as err:
        raise write_error(path, err) from err


def _atomic_write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual mode
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_save_image(path: str | os.PathLike, image: Any, **save_kwargs: Any) -> Path:
    """Save a PIL image (or an HxWx3 uint8 array) atomically; the format follows the suffix."""
    import io

    from PIL import Image

    path = Path(path)
    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unknown image file extension {path.suffix!r}")
    image.save(buffer, format=fmt, **save_kwargs)
    return atomic_write_bytes(path, buffer.getvalue())


# What the writers above leave when the process dies mid-write: ".<name>.<random>.tmp" files and
# folders, and ".<name>.old" (a replaced folder not yet removed).
STALE_PATTERNS = (".*.tmp", ".*.old")


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove what killed atomic writes left in ``folder`` (see :data:`STALE_PATTERNS`); returns
    what was removed. Call it only where no other process is writing at the same time."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    glob = folder.rglob if recursive else folder.glob
    found = sorted({p for pattern in STALE_PATTERNS for p in glob(pattern)}, key=str)
    removed = []
    for path in found:
        if any(parent in found for parent in path.parents):
            continue  # inside a stale folder removed as a whole
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _follow_umask(folder: Path) -> None:
    """Files and folders below ``folder`` get the usual modes (0666 / 0777 less the umask):
    some writers (safetensors) create 0600 files."""
    mask = _umask()
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name and move it to ``path`` only when complete.

    Yields the temporary folder. On success an existing ``path`` is replaced (moved aside, then
    removed); on any exception the temporary folder is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
    try:
        yield tmp
        _follow_umask(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
