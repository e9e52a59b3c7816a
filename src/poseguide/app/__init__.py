"""``poseguide app``: a Gradio page for pose-guided generation (the ``app`` extra).

:func:`build_app` builds the page and :func:`launch` serves it (on 127.0.0.1 by default).
:mod:`poseguide.app.core` holds the callbacks as plain Python (no Gradio import),
:mod:`poseguide.app.editor` the drag-the-joints keypoint editor and :mod:`poseguide.app.ui` the
layout. Gradio is imported only when :func:`build_app` or :func:`launch` is first used.
"""

from __future__ import annotations

from typing import Any

from poseguide.app.core import AppBackend, AppError, AppLimits, PoseResult
from poseguide.errors import UserError

__all__ = ["AppBackend", "AppError", "AppLimits", "PoseResult", "build_app", "launch"]


class AppDependencyError(UserError, RuntimeError):
    """Gradio is not installed."""


def _ui() -> Any:
    try:
        from poseguide.app import ui
    except ImportError as err:
        raise AppDependencyError(
            f"the app needs Gradio ({err}); install it with: pip install -e '.[app]'"
        ) from None
    return ui


def build_app(*args: Any, **kwargs: Any) -> Any:
    """A ``gr.Blocks`` page; see :func:`poseguide.app.ui.build_app`."""
    return _ui().build_app(*args, **kwargs)


def launch(*args: Any, **kwargs: Any) -> Any:
    """Serve the page; see :func:`poseguide.app.ui.launch`."""
    return _ui().launch(*args, **kwargs)
