"""Test-wide settings: nothing may reach a model hub, and ultralytics may not auto-install.

Also: a ``no_network`` fixture that refuses (and records) every connection a test attempts, and
a session check that fails the run when the tests wrote into the repository (they must write
under pytest's temporary folders only).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Built models (the tiny SD pipeline) go to a per-session folder, not ~/.cache."""
    os.environ["POSEGUIDE_CACHE"] = str(tmp_path_factory.mktemp("poseguide-cache"))


@pytest.fixture(scope="session")
def tiny_sd() -> str:
    """A tiny SD pipeline folder (random weights), built once per session."""
    from poseguide.models.tiny import build_tiny_sd

    return str(build_tiny_sd())


# --- no network -----------------------------------------------------------------------------


class NetworkAttempted(ConnectionRefusedError):
    """What a refused connection raises under ``no_network`` (an OSError, as a closed port)."""


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse every connection and name lookup; returns the list of what was attempted.

    Every ``socket.connect``/``connect_ex``, ``socket.create_connection`` and
    ``socket.getaddrinfo`` call is recorded (as ``"connect(('host', port))"``) and refused with
    :class:`NetworkAttempted`, a ConnectionRefusedError. Code under test may catch that error, so
    assert on the list: ``assert no_network == []`` means nothing tried to reach the network.
    """
    attempts: list[str] = []

    def refuse(what: str, address: object) -> NetworkAttempted:
        attempts.append(f"{what}({address!r})")
        return NetworkAttempted(f"the test refuses network access: {what}({address!r})")

    def connect(self: socket.socket, address: object) -> None:
        raise refuse("connect", address)

    def connect_ex(self: socket.socket, address: object) -> int:
        raise refuse("connect_ex", address)

    def create_connection(address: object, *args: object, **kwargs: object) -> socket.socket:
        raise refuse("create_connection", address)

    def getaddrinfo(host: object, port: object, *args: object, **kwargs: object) -> list:
        raise refuse("getaddrinfo", (host, port))

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """No offline variable set (poseguide.utils.offline): code may try the network, so pair it
    with no_network or a patched download."""
    from poseguide.utils.offline import OFFLINE_ENV_VARS

    for name in OFFLINE_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


# --- the tests leave the repository as they found it ----------------------------------------

# What any run creates in a checkout and that is harmless: bytecode, tool caches, the venv and the
# editable install's metadata. Any other path that appears or changes is a test writing into the
# working folder (a relative path, a missing monkeypatch.chdir(tmp_path)).
HARMLESS_DIRS = frozenset({"__pycache__", ".pytest_cache", ".ruff_cache", ".venv"})
_REPO_STATE = pytest.StashKey[dict]()
_REPO_CHANGES = pytest.StashKey[list]()


def _harmless(path: str) -> bool:
    return any(p in HARMLESS_DIRS or p.endswith(".egg-info") for p in path.split("/"))


def _repo_state(skip: Path | None) -> dict[str, tuple] | None:
    """``git status --porcelain --ignored`` of the repository, one file per entry (``-uall``,
    so new files under an already ignored folder such as runs/ count too), as path -> state.

    The state is the status code, and for ignored files also their size and mtime (rewriting an
    ignored file leaves its status as it was). Paths under ``skip`` are left out. None when git
    is missing or the tests are not in a git checkout.
    """
    git = shutil.which("git")
    if git is None:
        return None
    try:
        top = subprocess.run([git, "-C", str(REPO), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        if top.returncode != 0:  # not a git checkout (an sdist, a copied folder)
            return None
        status = subprocess.run(
            [git, "-C", str(REPO), "status", "--porcelain=v1", "-z", "--ignored", "-uall",
             "--", ".", ":(exclude).venv"],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if status.returncode != 0:
        return None
    root = Path(top.stdout.strip()).resolve()  # porcelain paths are relative to the top
    fields = status.stdout.decode("utf-8", "surrogateescape").split("\0")
    state: dict[str, tuple] = {}
    i = 0
    while i < len(fields):
        entry = fields[i]
        i += 1
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        if code[0] in "RC":  # a rename or copy: the next field is the original path
            i += 1
        if _harmless(path) or (skip is not None and (root / path).is_relative_to(skip)):
            continue
        state[path] = (code,)
        if code == "!!":
            try:
                stat = (root / path).lstat()
            except OSError:
                continue
            state[path] = (code, stat.st_size, stat.st_mtime_ns)
    return state


def _basetemp(config: pytest.Config) -> Path | None:
    """--basetemp, where the tests' temporary folders go; inside the checkout they are fine."""
    basetemp = config.option.basetemp
    return (config.invocation_params.dir / basetemp).resolve() if basetemp else None


def pytest_sessionstart(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: its controller checks
        return
    state = _repo_state(_basetemp(session.config))
    if state is not None:
        session.config.stash[_REPO_STATE] = state


def _appeared(after: dict[str, tuple], before: dict[str, tuple]) -> list[str]:
    """The new entries, those under a folder new altogether as the folder and a file count."""
    known = {str(parent) for path in before for parent in Path(path).parents}
    groups: dict[str, list[str]] = {}
    for path in sorted(after.keys() - before.keys()):
        folders = [str(p) for p in reversed(Path(path).parents) if str(p) != "."]
        new = next((f for f in folders if f not in known), path)  # the outermost new folder
        groups.setdefault(new, []).append(path)
    lines = []
    for paths in groups.values():
        codes = "/".join(sorted({after[p][0] for p in paths}))
        if len(paths) == 1:
            lines.append(f"appeared: {codes} {paths[0]}")
        else:
            lines.append(f"appeared: {codes} {os.path.commonpath(paths)}/ ({len(paths)} files)")
    return lines


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_REPO_STATE, None)
    if before is None:
        return
    after = _repo_state(_basetemp(session.config))
    if after is None:
        return
    changes = _appeared(after, before)
    changes += [
        f"changed:  {after[p][0]} {p}" for p in sorted(after.keys() & before.keys())
        if before[p] != after[p]
    ]  # fmt: skip
    changes += [f"removed:  {before[p][0]} {p}" for p in sorted(before.keys() - after.keys())]
    if not changes:
        return
    session.config.stash[_REPO_CHANGES] = changes
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    changes = config.stash.get(_REPO_CHANGES, [])
    if not changes:
        return
    terminalreporter.section("the tests changed the repository", sep="=", red=True, bold=True)
    terminalreporter.line(
        f"{REPO}: `git status --porcelain --ignored` differs after the run; tests must write "
        "under tmp_path (monkeypatch.chdir(tmp_path) for relative paths):"
    )
    shown = 50
    for line in changes[:shown]:
        terminalreporter.line(f"  {line}", red=True)
    if len(changes) > shown:
        terminalreporter.line(f"  ... and {len(changes) - shown} more")
    terminalreporter.line("This fails the run (exit status 1).", red=True)
