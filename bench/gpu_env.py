#!/usr/bin/env python
"""The lent GPU machine's Python packages, checked before device time is spent on them.

    python bench/gpu_env.py check-wheels .whl          # fetch_wheels.sh runs it
    python bench/gpu_env.py slim-wheel .whl/bitsandbytes-*.whl
    python bench/gpu_env.py import-check /tmp/site     # gpu_smoke.sh runs it after the install
    python bench/gpu_env.py simulate /tmp/gpu-machine  # gpu_smoke.sh --cpu --as-gpu-machine

The machine's packages are listed in ``bench/gpu_machine.txt``, the carried wheels and their
requirements in ``bench/gpu_wheels.txt``. No torch import here: it runs before anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
MACHINE_LIST = BENCH / "gpu_machine.txt"
WHEEL_LIST = BENCH / "gpu_wheels.txt"
DROPPED = ".poseguide-dropped.json"  # in the install target: what import-check removed
# Requirement markers as the machine's interpreter evaluates them.
MACHINE_MARKERS = {
    "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
    "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": "",
}  # fmt: skip
# What the training path uses of a package (a bare `import diffusers` is lazy and proves little).
PROBES = {
    "diffusers": "from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel",
    "ultralytics": "from ultralytics import YOLO",
    "deepspeed": "from deepspeed import DeepSpeedEngine",
    "bitsandbytes": "import bitsandbytes.optim",
}
# The machine's own versions of these are put first on the path by `simulate` (the rest of the
# local environment stands in for the machine's other packages).
MACHINE_VERSIONS = ("transformers", "accelerate", "huggingface-hub", "tokenizers")
# Local distributions that stand in for another the machine has (the same modules).
STAND_INS = {"opencv-python": "opencv-python-headless"}
# bitsandbytes ships one library per CUDA and ROCm release (129 MB unpacked); the machine's
# torch is built for CUDA 13.0, so the carried wheel keeps these and the CPU one.
BNB_KEEP = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them: typing_inspection -> typing-inspection."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Pin:
    name: str  # normalized
    version: str
    requires: tuple[str, ...]  # normalized names


def read_pins(path: Path = WHEEL_LIST) -> tuple[dict[str, Pin], dict[str, str]]:
    """The carried wheels by name, and the requirements left out on purpose (name -> why)."""
    pins, skips = {}, {}
    for raw in path.read_text().splitlines():
        line, _, why = raw.partition("#")
        if not line.strip():
            continue
        if line.startswith("skip:"):
            skips[normalize(line[5:].strip())] = why.strip()
            continue
        pin, _, requires = line.partition("requires:")
        name, version = pin.strip().split("==")
        names = tuple(normalize(r.strip()) for r in requires.split(",") if r.strip())
        if normalize(name) in pins:
            raise SystemExit(f"{path}: {name} is pinned twice (one version each)")
        pins[normalize(name)] = Pin(normalize(name), version, names)
    return pins, skips


def read_machine(path: Path = MACHINE_LIST) -> dict[str, str | None]:
    """The machine's packages: name -> version (None where no pip list gave it)."""
    out: dict[str, str | None] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[normalize(name)] = version or None
    return out


def closure_problems(pins: dict[str, Pin], skips: dict[str, str],
                     machine: dict[str, str | None]) -> list[str]:  # fmt: skip
    """Requirements of the carried wheels that neither the machine nor a wheel provides."""
    missing = [(p, r) for p in pins.values() for r in p.requires
               if r not in pins and r not in machine and r not in skips]  # fmt: skip
    return [f"{p.name}=={p.version} requires {r}: neither the machine (bench/gpu_machine.txt) "
            "nor a wheel (bench/gpu_wheels.txt) provides it" for p, r in missing]  # fmt: skip


def machine_version(name: str, pins: dict[str, Pin], machine: dict[str, str | None]) -> str | None:
    return pins[name].version if name in pins else machine.get(name)


def unmet_imports(imported: set[str]) -> list[str]:
    """Distributions a code path imported here that the machine lacks while a package it will
    run needs them: a hard requirement (no extra) of an imported distribution whose version
    here is the machine's (a pin, or a version its list gives). What nothing needs is an
    optional import (used here because it is installed) and what another version needs says
    nothing of the machine's; both pass. Each problem as one line."""
    from importlib import metadata

    from packaging.requirements import Requirement

    pins, skips = read_pins()
    machine = read_machine()
    provided = set(pins) | set(machine) | set(skips) | set(STAND_INS)
    problems = []
    for name in sorted(imported):
        there = machine_version(name, pins, machine)
        try:
            if there is None or metadata.version(name) != there:
                continue
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in map(Requirement, requires):
            needed = req.marker is None or req.marker.evaluate(MACHINE_MARKERS)
            if needed and normalize(req.name) not in provided:
                problems.append(f"{name} {there} imports need {req.name}, which the machine "
                                "lacks and no wheel carries")  # fmt: skip
    return problems


def imported_distributions() -> list[str]:
    """The distributions whose modules this process has imported (the standard library and the
    checkout's own modules left out): what a code path needs installed."""
    from importlib import metadata

    owners = metadata.packages_distributions()
    tops = {name.split(".")[0] for name in list(sys.modules)}
    tops -= set(sys.stdlib_module_names)
    return sorted({normalize(d) for top in tops for d in owners.get(top, [])} - {"poseguide"})


# --- check-wheels: the downloaded wheels against the list ---------------------------------------


def wheel_metadata(path: Path) -> tuple[str, str, list[str], str | None]:
    """(name, version, Requires-Dist lines, Requires-Python) of a wheel file."""
    with zipfile.ZipFile(path) as whl:
        meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        text = whl.read(meta).decode()
    fields = [line.split(": ", 1) for line in text.split("\n\n")[0].splitlines() if ": " in line]
    get = lambda key: [v for k, v in fields if k == key]  # noqa: E731
    python = get("Requires-Python")
    return normalize(get("Name")[0]), get("Version")[0], get("Requires-Dist"), (python or [None])[0]


def check_wheels(folder: Path) -> tuple[list[str], list[str]]:
    """(problems, notes) of the wheels in ``folder``: one per pin, one version each, their
    requirements as listed and provided, their version specifiers met where versions are known."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    pins, skips = read_pins()
    machine = read_machine()
    problems, notes, seen = closure_problems(pins, skips, machine), [], {}
    for path in sorted(folder.glob("*.whl")):
        name, version, requires, python = wheel_metadata(path)
        if name in seen:
            problems.append(f"{path.name}: a second {name} ({seen[name]} too): keep one version")
        seen[name] = version
        pin = pins.get(name)
        if pin is None or pin.version != version:
            problems.append(f"{path.name}: not pinned in bench/gpu_wheels.txt: remove it")
            continue
        if python and "3.12" not in SpecifierSet(python):
            problems.append(f"{path.name}: needs Python {python}, the machine has 3.12")
        reqs = [Requirement(r) for r in requires]
        reqs = [r for r in reqs if r.marker is None or r.marker.evaluate(MACHINE_MARKERS)]
        names = {normalize(r.name) for r in reqs}
        if names != set(pin.requires):
            problems.append(f"{name}=={version}: its wheel requires {sorted(names)}, "
                            f"bench/gpu_wheels.txt says {sorted(pin.requires)}")  # fmt: skip
        for req in reqs:
            dep = normalize(req.name)
            have = pins[dep].version if dep in pins else machine.get(dep)
            if dep in skips or not req.specifier:
                continue
            if have is None:
                notes.append(f"{req} ({name})")
            elif have not in req.specifier:
                problems.append(f"{name} needs {req}; {dep} {have} is what there is")
    problems += [f"{p.name}=={p.version}: no wheel in {folder}" for p in pins.values()
                 if p.name not in seen]  # fmt: skip
    return problems, notes


def slim_wheel(path: Path) -> int:
    """Drop bitsandbytes' libraries for other CUDA/ROCm releases from its wheel (and RECORD);
    the bytes saved."""
    before = path.stat().st_size
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        drop = {n for n in src.namelist() if n.endswith(".so") and "libbitsandbytes_" in n
                and not BNB_KEEP.search(n)}  # fmt: skip
        for info in src.infolist():
            if info.filename in drop:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = "".join(f"{ln}\n" for ln in lines if ln.split(",")[0] not in drop).encode()
            dst.writestr(info, data)
    tmp.replace(path)
    return before - path.stat().st_size


# --- import-check: after the install on the machine ---------------------------------------------


def installed(site: Path) -> dict[str, tuple[str, Path]]:
    """The distributions installed in ``site``: name -> (version, dist-info folder)."""
    out = {}
    for info in site.glob("*.dist-info"):
        meta = (info / "METADATA").read_text(errors="replace").split("\n\n")[0]
        fields = dict(ln.split(": ", 1) for ln in meta.splitlines() if ": " in ln)
        out[normalize(fields["Name"])] = (fields["Version"], info)
    return out


def top_level(info: Path) -> list[str]:
    """The importable top-level names a distribution installed (its RECORD's first parts)."""
    names = set()
    for line in (info / "RECORD").read_text().splitlines():
        first = line.split(",")[0].split("/")[0]
        if first.endswith(".py"):
            names.add(first[:-3])
        elif first and "." not in first and first != "__pycache__" and not first.startswith(".."):
            names.add(first)
    return sorted(names)


def probe(name: str, info: Path) -> str:
    return PROBES.get(name) or "; ".join(f"import {m}" for m in top_level(info)) or "pass"


def try_import(code: str, timeout: int = 180) -> str | None:
    """None when ``code`` runs in a fresh interpreter (this environment), else why not."""
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    if done.returncode == 0:
        return None
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit {done.returncode}"


def remove(site: Path, info: Path) -> None:
    """Uninstall one distribution from a ``pip install --target`` folder (its RECORD's files,
    then the folders that leaves empty)."""
    tops = set()
    for line in (info / "RECORD").read_text().splitlines():
        rel = line.split(",")[0]
        if rel and not rel.startswith(".."):
            (site / rel).unlink(missing_ok=True)
            tops.add(rel.split("/")[0])
    for top in sorted(t for t in tops if (site / t).is_dir()):
        for folder, _, _ in os.walk(site / top, topdown=False):
            if Path(folder).name == "__pycache__":
                shutil.rmtree(folder)
            elif not os.listdir(folder):
                os.rmdir(folder)
    shutil.rmtree(info, ignore_errors=True)


def import_check(site: Path) -> dict[str, str]:
    """Import each distribution installed in ``site`` in its own interpreter; remove those that
    fail (so that accelerate and transformers do not find a half-working DeepSpeed, say) and
    record them in ``site/.poseguide-dropped.json``. Returns every dropped one (name -> why)."""
    dists = installed(site)
    with ThreadPoolExecutor(max_workers=max(1, len(dists))) as pool:
        found = dict(zip(dists, pool.map(lambda n: try_import(probe(n, dists[n][1])), dists),
                         strict=True))  # fmt: skip
    record = site / DROPPED
    dropped = json.loads(record.read_text()) if record.is_file() else {}
    for name, why in found.items():
        if why is None:
            continue
        version, info = dists[name]
        dropped[name] = f"{version}: `{probe(name, info)}` failed: {why}"
        remove(site, info)
    record.write_text(json.dumps(dropped, indent=1))
    ok = [n for n, why in found.items() if why is None]
    print(f"import check: {len(ok)} of {len(found)} carried packages import", file=sys.stderr)
    for name, why in dropped.items():
        print(f"import check: DROPPED {name} {why}; what needs it is skipped", file=sys.stderr)
    return dropped


# --- simulate: this CPU machine dressed as the GPU machine --------------------------------------


def _requirement_closure(roots: set[str]) -> set[str]:
    """``roots`` and every distribution they require here, recursively (installed ones only)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    todo, seen = list(roots), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for req in map(Requirement, requires):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(normalize(req.name))
    return seen


def _link_machine_packages(site: Path) -> list[str]:
    """Symbolic links in ``site`` to this environment's distributions that the machine has too
    (and to what the local torch itself requires: the machine's torch brings its own), except
    those whose machine versions come first on the path; the names linked."""
    from importlib import metadata

    pins, _ = read_pins()
    machine = read_machine()
    wanted = (set(machine) | _requirement_closure({"torch", "torchvision"})) - set(pins)
    wanted |= {here for here, there in STAND_INS.items() if there in machine}
    wanted -= {normalize(n) for n in MACHINE_VERSIONS}
    linked = []
    for dist in metadata.distributions():
        name, files = normalize(dist.metadata["Name"]), dist.files
        if name not in wanted or not files or name in linked:
            continue
        root = Path(dist.locate_file(""))
        for first in {f.parts[0] for f in files}:
            if first.startswith("..") or first in ("__pycache__", "bin"):
                continue
            if (root / first).exists() and not (site / first).exists():
                (site / first).symlink_to(root / first)
        linked.append(name)
    return sorted(linked)


def _pip(*args: str, cache: Path) -> None:
    env = {**os.environ, "PIP_CACHE_DIR": str(cache), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def _local_wheels(wheels: Path, scratch: Path) -> list[Path]:
    """The carried wheels that install here as they are, and for those built for the machine's
    Python only (compiled ones), the same versions for this Python (downloaded once)."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    here, out = set(sys_tags()), []
    local = scratch / "local-wheels"
    for path in sorted(wheels.glob("*.whl")):
        name, version, _, tags = parse_wheel_filename(path.name)
        if tags & here:
            out.append(path)
            continue
        found = sorted(local.glob(f"{str(name).replace('-', '_')}-{version}-*.whl"))
        if not found:
            print(f"simulate: {path.name} is built for the machine's Python; fetching "
                  f"{name}=={version} for this one", file=sys.stderr)  # fmt: skip
            _pip("download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(local),
                 f"{name}=={version}", cache=scratch / "pip-cache")  # fmt: skip
            found = sorted(local.glob(f"{str(name).replace('-', '_')}-{version}-*.whl"))
        out += found
    return out


def simulate(scratch: Path, wheels: Path) -> Path:
    """A virtual environment at ``scratch`` that imports what the GPU machine would: the local
    packages the machine has (linked), the machine's transformers, accelerate, huggingface-hub
    and tokenizers versions (installed once into ``scratch/machine``), and the carried wheels
    installed afresh into ``scratch/site`` as gpu_smoke.sh installs them into /tmp/site there.
    Every other local package is absent. Writes and returns ``scratch/env.sh`` (PY, SITE, EXTRA)."""
    venv, machine_site, site = scratch / "venv", scratch / "machine", scratch / "site"
    stamp = scratch / ".built"
    if not stamp.is_file():
        shutil.rmtree(scratch, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
        code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        purelib = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                                 text=True, check=True).stdout.strip()  # fmt: skip
        linked = _link_machine_packages(Path(purelib))
        print(f"simulate: {len(linked)} local packages linked as the machine's", file=sys.stderr)
        versions = [f"{n}=={read_machine()[normalize(n)]}" for n in MACHINE_VERSIONS]
        print(f"simulate: the machine's {', '.join(versions)} into {machine_site}", file=sys.stderr)
        _pip("install", "-q", "--no-deps", "--target", str(machine_site), *versions,
             cache=scratch / "pip-cache")  # fmt: skip
        stamp.write_text("")
    carried = _local_wheels(wheels, scratch)
    shutil.rmtree(site, ignore_errors=True)  # a fresh machine: what import-check dropped is back
    _pip("install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(site),
         *map(str, carried), cache=scratch / "pip-cache")  # fmt: skip
    env = scratch / "env.sh"
    env.write_text(f"PY={venv / 'bin' / 'python'}\nSITE={site}\nEXTRA={machine_site}\n")
    return env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("check-wheels").add_argument("folder", type=Path)
    sub.add_parser("slim-wheel").add_argument("wheel", type=Path)
    sub.add_parser("import-check").add_argument("site", type=Path)
    sim = sub.add_parser("simulate")
    sim.add_argument("scratch", type=Path)
    sim.add_argument("--wheels", type=Path, default=BENCH.parent / ".whl")
    args = p.parse_args()
    if args.command == "check-wheels":
        problems, notes = check_wheels(args.folder)
        if notes:
            print(f"  not known there, so left to the import check on the machine: "
                  f"{', '.join(notes)}", file=sys.stderr)  # fmt: skip
        for line in problems:
            print(f"  PROBLEM: {line}", file=sys.stderr)
        print(f"wheels in {args.folder}: {'OK' if not problems else 'NOT READY'}", file=sys.stderr)
        raise SystemExit(1 if problems else 0)
    if args.command == "slim-wheel":
        saved = slim_wheel(args.wheel)
        print(f"{args.wheel.name}: {saved / 2**20:.1f} MiB of other CUDA/ROCm builds dropped",
              file=sys.stderr)  # fmt: skip
    elif args.command == "import-check":
        import_check(args.site)
    else:
        print(simulate(args.scratch, args.wheels))


if __name__ == "__main__":
    main()
