#!/usr/bin/env bash
# clipcu-bench and the PyTorch baseline on the CPU, alternating in one sitting.
#   tools/bench_cpu.sh [ITERS] [WORKLOAD] [ROUNDS]
# WORKLOAD: all (default), gemm, block, vit-b32, rn50, text. ROUNDS (default 1): how many times the
# clipcu / PyTorch pair runs back to back, so that a shared machine's load hits both alike.
# Needs torch (and open_clip for the model workloads) importable by $PYTHON (default python3);
# set PYTHON=/path/to/venv/bin/python. THREADS (default: all cores) sets both sides' thread count.
set -euo pipefail
cd "$(dirname "$0")/.."
iters=${1:-10}
workload=${2:-all}
rounds=${3:-1}
threads=${THREADS:-$(nproc)}
cargo build --release --bin clipcu-bench
for r in $(seq "$rounds"); do
    [ "$rounds" -gt 1 ] && echo "== round $r of $rounds ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))"
    RAYON_NUM_THREADS=$threads ./target/release/clipcu-bench "$workload" --device cpu --iters "$iters"
    echo
    "${PYTHON:-python3}" tools/bench_torch_cpu.py --iters "$iters" --threads "$threads" --workload "$workload"
    echo
done
