#!/usr/bin/env bash
# The GPU check, in two halves (see docs/gpu.md):
#
#   tools/gpu-check.sh            here (no GPU needed): install the pinned nvcc, build with PTX, and
#                                 stage the kernel/device test binaries, clipcu-bench and the
#                                 PyTorch baseline into gpu-stage/ (git-ignored)
#   gpu-stage/run.sh              on the GPU machine (no Rust there): the tests on the real card
#                                 first, then clipcu-bench beside PyTorch, a short table last
#
# With the device tool: run(command="gpu-stage/run.sh", carry=["gpu-stage"]).
set -euo pipefail
cd "$(dirname "$0")/.."

tools/install-nvcc.sh >/dev/null
export NVCC="$PWD/.toolchain/cuda/bin/nvcc"
cargo build --release --quiet --bin clipcu-bench --bin clipcu
# Test binaries that touch kernels or the device; their paths come from cargo's JSON messages.
tests=$(cargo test --release --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        name = m["target"]["name"]
        if name.startswith("kernels") or name in ("cuda_device", "emulator"):
            print(name, m["executable"])
')
rm -rf gpu-stage
mkdir -p gpu-stage/bin
while read -r name exe; do
    [ -n "$name" ] && cp "$exe" "gpu-stage/bin/test-$name"
done <<< "$tests"
cp target/release/clipcu-bench target/release/clipcu gpu-stage/bin/
cp tools/bench_torch_gpu.py gpu-stage/
cp -r tests/fixtures gpu-stage/fixtures 2>/dev/null || true
cat > gpu-stage/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine: kernel and device tests on the card, then the benchmarks beside PyTorch.
set -uo pipefail
cd "$(dirname "$0")"
# cuBLAS from the PyPI wheels that PyTorch brings, when no system CUDA is on the loader path.
libs=$(python3 -c 'import nvidia, os; d = os.path.dirname(nvidia.__path__[0]); print(":".join(os.path.join(r, x) for r, ds, fs in os.walk(os.path.join(d, "nvidia")) for x in ds if x == "lib"))' 2>/dev/null || true)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# On the GPU machine a kernel test whose cuda:0 run cannot start is a failure, not a skip.
export CLIPCU_REQUIRE_CUDA=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
table=()
for t in bin/test-*; do
    out=$("$t" --test-threads=1 2>&1)
    rc=$?
    echo "$out" | tail -25
    res=$(echo "$out" | grep -E "^test result" | tail -1 | sed -E 's/test result: ([a-zA-Z]+)\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2 passed, \3 failed/')
    skips=$(echo "$out" | grep -cE "skipped: no CUDA device|SKIPPED" || true)
    table+=("$(printf '%-28s %-34s gpu-skips:%s rc=%s' "${t#bin/}" "$res" "$skips" "$rc")")
done
echo "== clipcu-bench (cuda)"
bench=$(bin/clipcu-bench gemm --device cuda --iters 20 2>&1); echo "$bench"
echo "== PyTorch baseline"
torch=$(python3 bench_torch_gpu.py 2>&1); echo "$torch"
echo
echo "================ gpu-check summary ================"
printf '%s\n' "${table[@]}"
echo "$bench" | grep -E "GFLOP/s|error" | sed 's/^/clipcu  /'
echo "$torch" | grep -E "GFLOP/s|error" | sed 's/^/torch   /'
RUN
chmod +x gpu-stage/run.sh
echo "staged $(ls gpu-stage/bin | wc -l) binaries into gpu-stage/ ($(du -sh gpu-stage | cut -f1)); on the GPU machine run gpu-stage/run.sh"
