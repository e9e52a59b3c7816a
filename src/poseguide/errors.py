"""One error taxonomy: what a person can fix is a :class:`UserError`; everything else is a bug.

Every error meant for people inherits :class:`UserError` (config keys, rows, files, keypoints,
models, weights, checkpoints, reports...) and names the key, row, file or step together with what
to do. The CLI and the app print such an error as one line; every other exception (a bug, an
out-of-memory error) keeps its traceback, an out-of-memory error with a hint. Environment
problems that only the user can fix (a full disk, no permission, a read-only folder) are shown
as one line too. :func:`classify` is that rule, written once.

The classes also inherit the built-in exception they refine (``ValueError``,
``FileNotFoundError``, ...), so code that catches those keeps working.
"""

from __future__ import annotations

import errno

# What to try when a run runs out of memory, in the order that costs the least.
OOM_HINT = (
    "out of memory: lower train.batch_size (raise train.grad_accum to keep the global batch), "
    "set train.gradient_checkpointing=true, use train.optim.optimizer=adamw8bit, "
    "train.mixed_precision=bf16, or run each stage in its own process (--stage NAME)"
)
# OSError numbers that mean "the machine, not the code": shown as one line with the path.
ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EMFILE}
)


class UserError(Exception):
    """A problem the user can fix (bad config, missing model, diverged run...); the message
    names the file, row, key or step and says what to do."""

    exit_status = 2  # what the CLI exits with


class Interrupted(UserError, RuntimeError):
    """A signal (SIGINT, SIGTERM) stopped the work after saving what it had (a checkpoint)."""

    exit_status = 130


class InputError(UserError, ValueError):
    """A value, option or file given by the user cannot be used."""


class NotFoundError(UserError, FileNotFoundError):
    """A file, folder, model or dataset given by the user does not exist or cannot be reached."""


def is_out_of_memory(err: BaseException) -> bool:
    """A device (CUDA, MPS) or host allocation failed."""
    if isinstance(err, MemoryError):
        return True
    try:
        import torch

        if isinstance(err, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def classify(err: BaseException) -> str:
    """``"user"`` (print one line), ``"oom"`` (traceback and :data:`OOM_HINT`) or ``"bug"``
    (traceback)."""
    if isinstance(err, UserError):
        return "user"
    if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
        return "user"
    if is_out_of_memory(err):
        return "oom"
    return "bug"


def one_line(err: BaseException) -> str:
    """The message of a user error on one line (multi-line lists are joined with "; ")."""
    lines = [line.strip(" -") for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines) or type(err).__name__


class TrainingError(UserError, RuntimeError):
    """The run cannot go on (bad set-up, diverged loss); the message says which stage and step."""
