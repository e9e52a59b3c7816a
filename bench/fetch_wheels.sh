#!/usr/bin/env bash
# Wheels for the lent GPU machine (Python 3.12, manylinux x86_64, no network), into .whl/ at the
# repository root (git-excluded): the pins of bench/gpu_wheels.txt, every package poseguide's
# training path and bench/gpu_smoke.sh import that the machine (bench/gpu_machine.txt) lacks,
# with their missing requirements.
#
#   bash bench/fetch_wheels.sh        # then run(carry=[".whl"], ...) as bench/gpu_smoke.sh says
#   WHL=/tmp/whl bash bench/fetch_wheels.sh   # elsewhere (link it as .whl to carry it)
#
# Binary wheels only, one version each; deepspeed alone, which PyPI has as an sdist only, is
# built here as a pure-Python wheel (DS_BUILD_OPS=0: its CUDA ops compile on first use there).
# Nothing compiled is ever built here (this Python is not the machine's: the ABI would be
# wrong). bitsandbytes' wheel keeps its CPU and CUDA 13 libraries only (the machine's torch is
# cu130): 43 MB -> ~3 MB. Then `python bench/gpu_env.py check-wheels` checks the set (every
# pin, one version each, the requirements as listed and provided, version specifiers met where
# the machine's version is known), and the script prints what would travel: the working tree
# plus .whl/ must stay under 64 MiB.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
[[ -z "${PYTHON:-}" && -x "$REPO/.venv/bin/python" ]] && PY="$REPO/.venv/bin/python"
WHL="${WHL:-.whl}"
SOURCE_BUILDS=" deepspeed "  # the only packages built from an sdist (pure Python)
mapfile -t PINS < <(sed -e 's/#.*//' bench/gpu_wheels.txt | awk '$1 ~ /==/ {print $1}')
PLATFORMS=()
for n in 17 24 27 28 31 34 35; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)

exclude="$(git rev-parse --git-path info/exclude)"  # in a worktree .git is a file
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
grep -qxF '/.whl' "$exclude" 2>/dev/null || echo '/.whl' >>"$exclude"  # .whl as a link
mkdir -p "$WHL"

stem() {  # a wheel's "name-version" as its file name spells it: pydantic-core==1 -> pydantic_core-1
    local name="${1%%==*}"
    name="${name//-/_}"
    echo "${name,,}-${1#*==}"
}

keep=()
for pin in "${PINS[@]}"; do
    keep+=("$(stem "$pin")")
    if compgen -G "$WHL/$(stem "$pin")-*.whl" >/dev/null; then
        continue
    fi
    echo "fetching $pin" >&2
    if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${PLATFORMS[@]}" -d "$WHL" "$pin"; then
        if [[ "$SOURCE_BUILDS" != *" ${pin%%==*} "* ]]; then
            echo "no cp312 manylinux wheel for $pin: pick a version that has one" >&2
            exit 1
        fi
        echo "  no wheel for $pin: building a pure-Python one from its sdist" >&2
        DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-binary "${pin%%==*}" -w "$WHL" "$pin"
    fi
    if [[ "$pin" == bitsandbytes==* ]]; then
        "$PY" bench/gpu_env.py slim-wheel "$WHL"/"$(stem "$pin")"-*.whl
    fi
done

# One version of each package, or the install there stops: drop wheels no pin names.
for f in "$WHL"/*.whl; do
    base="$(basename "$f")"
    IFS=- read -r name version _ <<<"$base"
    if [[ ! " ${keep[*]} " == *" ${name,,}-$version "* ]]; then
        echo "removing $base (not pinned)" >&2
        rm -f "$f"
    fi
done
"$PY" bench/gpu_env.py check-wheels "$WHL"

wheels=$(du -cbL "$WHL"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null \
    | awk '$2 == "total" {s += $1} END {print s + 0}')
limit=$((64 * 1024 * 1024))
ls -lL "$WHL"/*.whl | awk '{printf "  %6.2f MiB  %s\n", $5 / 1048576, $NF}'
awk -v w="$wheels" -v t="$tree" -v l="$limit" 'BEGIN {
    printf "wheels %.2f MiB + working tree %.2f MiB = %.2f MiB of the 64 MiB that may travel: %s\n",
        w / 1048576, t / 1048576, (w + t) / 1048576, (w + t < l) ? "fits" : "TOO LARGE"
    exit (w + t < l) ? 0 : 1
}'
