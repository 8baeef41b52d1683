#!/usr/bin/env bash
# clipcu-bench and the PyTorch baseline on the CPU, one after the other in one sitting.
#   tools/bench_cpu.sh [ITERS]
# Needs torch importable by $PYTHON (default python3); set PYTHON=/path/to/venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
iters=${1:-10}
cargo build --release --bin clipcu-bench
./target/release/clipcu-bench all --device cpu --iters "$iters"
echo
"${PYTHON:-python3}" tools/bench_torch_cpu.py --iters "$iters" --threads "$(nproc)"
