#!/usr/bin/env bash
# One call of the GPU acceptance run on a lent GPU machine, from the checkout's root (docs/gpu.md):
#   bash benchmarks/gpu_run.sh main      # carry .gpu-stage/main   (benchmarks/gpu_stage.py main)
#   bash benchmarks/gpu_run.sh colmap    # carry .gpu-stage/colmap (gpu_stage.py colmap, then gpu_stage.py handoff DIR)
# Unpacks the staged packages into a site folder beside the machine's own Python (which has torch), then runs
# benchmarks/gpu_acceptance.py with its report going to $OUT (or ./gpu-acceptance-<call> where OUT is unset).
# GPU_ACCEPTANCE_ARGS adds options (GPU_ACCEPTANCE_ARGS=--smoke tries the whole path on a CPU machine).
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
if [ "$call" = main ]; then
    [ -f "$stage/ray.tar.xz" ] && unpack "$stage/ray.tar.xz"
    # 8 minutes at most on an H100: what is left after 420 s is skipped, and said so in the report
    python3 benchmarks/gpu_acceptance.py --output "$out" --stage "$stage" --budget 420 "${extra[@]}"
else
    unpack "$stage/pycolmap.tar.xz"
    x11="$(mktemp -d /tmp/d2sfm-x11.XXXXXX)"
    for deb in "$stage"/debs/*.deb; do dpkg -x "$deb" "$x11"; done
    # libcudart.so.12 from the staged wheel; libcurand.so.10 (the same soname in CUDA 12 and 13) from torch's
    curand="$(python3 -c 'import nvidia, pathlib; print(":".join(sorted({str(p.parent) for d in nvidia.__path__ for p in pathlib.Path(d).rglob("libcurand.so.10*")})))' || true)"
    export LD_LIBRARY_PATH="$x11/usr/lib/x86_64-linux-gnu:$x11/lib/x86_64-linux-gnu:$site/nvidia/cuda_runtime/lib:$curand:${LD_LIBRARY_PATH:-}"
    python3 -c 'import pycolmap; print("pycolmap", pycolmap.__version__, "CUDA:", pycolmap.has_cuda)' || true
    previous=()
    [ -f "$stage/from-main/report.json" ] && previous=(--previous "$stage/from-main")
    python3 benchmarks/gpu_acceptance.py --output "$out" --stage "$stage" "${previous[@]}" --budget 420 "${extra[@]}"
fi
