#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (nvcc, ptxas, cicc/NVVM, the CUDA headers) from NVIDIA's
# PyPI wheels into the ignored project-local folder .toolchain/, where build.rs finds it.
#
# Why pinned: PTX must be accepted by the oldest driver we run on (580 = CUDA 13.0); a newer NVVM
# emits a PTX ISA version that driver rejects. Why wheels: no system CUDA, no root, no GPU needed.
#
# Layout: the wheels all unpack under nvidia/cu13/ (bin/ nvcc ptxas, nvvm/bin/cicc, include/,
# lib/), which is a CUDA_HOME as nvcc.profile expects it, so nvcc works there as is.
# .toolchain/cuda is a link to it: CUDA_HOME=.toolchain/cuda, nvcc=.toolchain/cuda/bin/nvcc.
#
# Idempotent: a stamp file records the pinned set; a second run with the same pins only checks
# that nvcc runs. The install goes to a temporary folder first and is moved into place, so an
# interrupted run never leaves a half toolchain behind.
set -euo pipefail
cd "$(dirname "$0")/.."

PINS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-cccl==13.0.85
    nvidia-nvvm==13.0.88
)
ROOT=.toolchain
DEST="$ROOT/cuda-13.0"
STAMP="$DEST/.pins"
NVCC="$ROOT/cuda/bin/nvcc"

want="$(printf '%s\n' "${PINS[@]}")"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$NVCC" ]] && "$NVCC" --version >/dev/null 2>&1; then
    echo "nvcc (pinned) already installed: $(pwd)/$NVCC"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    echo "error: $PYTHON -m pip is not available; install pip (e.g. apt-get install python3-pip)" >&2
    exit 1
fi

mkdir -p "$ROOT"
tmp="$(mktemp -d "$ROOT/.install.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "installing ${PINS[*]} into $DEST"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
    --root-user-action=ignore --target "$tmp/site" "${PINS[@]}"
if [[ ! -x "$tmp/site/nvidia/cu13/bin/nvcc" ]]; then
    echo "error: the wheels did not provide nvidia/cu13/bin/nvcc" >&2
    exit 1
fi
printf '%s\n' "$want" >"$tmp/site/.pins"
rm -rf "$DEST"
mv "$tmp/site" "$DEST"
ln -sfn "cuda-13.0/nvidia/cu13" "$ROOT/cuda"

# Smoke test: one kernel to PTX for compute_80, then PTX to SASS for sm_80 and sm_90.
probe="$tmp/probe"
mkdir -p "$probe"
cat >"$probe/probe.cu" <<'CU'
#include <cuda_fp16.h>
extern "C" __global__ void probe(float* o, const float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) o[i] = erff(x[i]) + __half2float(__float2half(x[i]));
}
CU
"$NVCC" -ptx -arch=compute_80 "$probe/probe.cu" -o "$probe/probe.ptx"
for sm in sm_80 sm_90; do
    "$ROOT/cuda/bin/ptxas" -arch="$sm" "$probe/probe.ptx" -o "$probe/probe.$sm.cubin"
done

# build.rs looks for .toolchain/cuda/bin/nvcc; touching build.rs makes cargo re-run it so a
# build made before this install picks the compiler up.
touch build.rs
"$NVCC" --version | tail -n 2
echo "nvcc installed: $(pwd)/$NVCC  (CUDA_HOME=$(pwd)/$ROOT/cuda)"
