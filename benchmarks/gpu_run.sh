#!/usr/bin/env bash
# One call of the GPU acceptance run on a lent GPU machine, from the checkout's root (docs/gpu.md):
#   bash benchmarks/gpu_run.sh main      # carry .gpu-stage/main   (benchmarks/gpu_stage.py main)
#   bash benchmarks/gpu_run.sh colmap    # carry .gpu-stage/colmap (gpu_stage.py colmap, then gpu_stage.py handoff DIR)
# Unpacks the staged packages into a site folder beside the machine's own Python (which has torch), then runs
# benchmarks/gpu_acceptance.py with its report going to $OUT (or ./gpu-acceptance-<call> where OUT is unset).
# GPU_ACCEPTANCE_ARGS adds options, after this script's own, so they win (GPU_ACCEPTANCE_ARGS=--smoke tries the
# whole path on a CPU machine; "--budget 500 --limit 560" gives a call more time).
# Time: a lent session has about 900 s of device time, the machine's start (60-120 s) included. Call 1 is sent with
# timeout_s 420 and call 2, on the still-warm machine, with timeout_s 300: 120 + 420 + 300 = 840 s. Inside a call,
# --budget: no section starts after it; --limit: child commands (the extract runs, dense) are ended by it, so
# that the report says what was cut instead of the whole call being killed at its timeout.
set -euo pipefail
call="${1:?usage: bash benchmarks/gpu_run.sh main|colmap}"
stage=".gpu-stage/$call"
[ -d "$stage" ] || { echo "error: $stage: missing; pack it with python benchmarks/gpu_stage.py $call" >&2; exit 2; }
out="${OUT:-gpu-acceptance-$call}"
read -r -a extra <<< "${GPU_ACCEPTANCE_ARGS:-}"
mkdir -p "$out"
site="$(mktemp -d /tmp/d2sfm-site.XXXXXX)"
unpack() { python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' "$1" "$site"; }
if compgen -G "$stage/wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$stage"/wheels/*.whl
fi
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "CPUs: $(nproc); shared memory: $(df -h /dev/shm 2>/dev/null | tail -1)"
# call 1's output, kept on the machine (ignored by git, carried by no call) for call 2 if the machine stays warm
kept=".gpu-stage/main-output"
status=0
if [ "$call" = main ]; then
    [ -f "$stage/ray.tar.xz" ] && unpack "$stage/ray.tar.xz"
    python3 benchmarks/gpu_acceptance.py --output "$out" --stage "$stage" --budget 300 --limit 370 "${extra[@]}" \
        || status=$?
    rm -rf "$kept" && mkdir -p "$kept" && cp "$out"/report.json "$out"/handoff.tar "$kept"/ 2>/dev/null || true
    exit "$status"
else
    unpack "$stage/pycolmap.tar.xz"
    x11="$(mktemp -d /tmp/d2sfm-x11.XXXXXX)"
    for deb in "$stage"/debs/*.deb; do dpkg -x "$deb" "$x11"; done
    # libcudart.so.12 from the staged wheel; libcurand.so.10 (the same soname in CUDA 12 and 13) from torch's
    curand="$(python3 -c 'import nvidia, pathlib; print(":".join(sorted({str(p.parent) for d in nvidia.__path__ for p in pathlib.Path(d).rglob("libcurand.so.10*")})))' || true)"
    export LD_LIBRARY_PATH="$x11/usr/lib/x86_64-linux-gnu:$x11/lib/x86_64-linux-gnu:$site/nvidia/cuda_runtime/lib:$curand:${LD_LIBRARY_PATH:-}"
    python3 -c 'import pycolmap; print("pycolmap", pycolmap.__version__, "CUDA:", pycolmap.has_cuda, "GPUs:",
        getattr(pycolmap, "get_num_cuda_devices", lambda: "?")())' || true
    # call 1's output: as left on this machine (sent right after call 1, within the 30 s it stays warm), else as
    # handed over from the files it returned (gpu_stage.py handoff DIR; a fresh machine)
    previous=()
    if [ -f "$kept/report.json" ]; then
        previous=(--previous "$kept"); echo "continuing from call 1's output left on this machine"
    elif [ -f "$stage/from-main/report.json" ]; then
        previous=(--previous "$stage/from-main"); echo "continuing from call 1's output handed over (from-main)"
    else
        echo "no output of call 1 here or handed over: the reconstruction sections will say they were skipped"
    fi
    python3 benchmarks/gpu_acceptance.py --output "$out" --stage "$stage" "${previous[@]}" --budget 180 --limit 240 \
        "${extra[@]}" || status=$?
    exit "$status"
fi
