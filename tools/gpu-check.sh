#!/usr/bin/env bash
# The GPU check, in two halves (see docs/gpu.md):
#
#   tools/gpu-check.sh            here (no GPU needed): install the pinned nvcc, build with PTX, and
#                                 stage stripped test binaries, clipcu, clipcu-bench and the PyTorch
#                                 baseline into gpu-stage/ (git-ignored, kept <= 40 MiB: a GPU run
#                                 receives at most 64 MiB with the working tree)
#   gpu-stage/run.sh [--budget S] on the GPU machine (no Rust there): the kernel and device tests on
#                                 the real card, the Emu-vs-Cuda-vs-Cpu training comparison, the
#                                 transfer accounting, then clipcu-bench beside PyTorch; each part
#                                 under its own timeout, going on past failures; a table last and
#                                 everything under $OUT (when set) for the record
#
# With the device tool: run(command="gpu-stage/run.sh --budget 480", carry=["gpu-stage"]).
set -euo pipefail
cd "$(dirname "$0")/.."

tools/install-nvcc.sh >/dev/null
export NVCC="$PWD/.toolchain/cuda/bin/nvcc"
cargo build --release --quiet --bin clipcu-bench --bin clipcu
# Test binaries that run kernels or whole steps on the device; paths from cargo's JSON messages.
# (Not `emulator`: its sanitizer tests rebuild from paths under target/ that never travel.)
tests=$(cargo test --release --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
keep = ("cuda_device", "train_device", "device_transfers")
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        name = m["target"]["name"]
        if name.startswith("kernels") or name in keep:
            print(name, m["executable"])
')
rm -rf gpu-stage
mkdir -p gpu-stage/bin
while read -r name exe; do
    [ -n "$name" ] && cp "$exe" "gpu-stage/bin/test-$name"
done <<< "$tests"
cp target/release/clipcu-bench target/release/clipcu gpu-stage/bin/
strip gpu-stage/bin/*
# The ~20 binaries share most of their code (each holds the crate, the PTX and the emulator):
# one xz stream with a 64 MiB dictionary stores it once (~70 MiB stripped -> ~7 MiB).
tar -C gpu-stage -cf - bin | xz -9e -T2 > gpu-stage/bin.tar.xz
rm -rf gpu-stage/bin
cp tools/bench_torch_gpu.py gpu-stage/
cat > gpu-stage/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine: the tests on the card, then the benchmarks beside PyTorch, each part
# under its own timeout (a hung part costs its timeout, not the run), a summary table last.
#   gpu-stage/run.sh [--budget SECONDS]   (default 480)
set -uo pipefail
cd "$(dirname "$0")"
budget=480
[ "${1:-}" = "--budget" ] && budget="${2:-480}"
start=$(date +%s)
out="${OUT:-$PWD/out}"
mkdir -p "$out"
# the binaries travel as one xz archive (see tools/gpu-check.sh); unpack beside a scratch dir
work="${TMPDIR:-/tmp}/clipcu-gpu-check"
rm -rf "$work" && mkdir -p "$work"
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' bin.tar.xz "$work" ||
    tar -C "$work" -xJf bin.tar.xz
here=$PWD
cd "$work"
left() { echo $(( budget - ($(date +%s) - start) )); }
# cuBLAS from the PyPI wheels that PyTorch brings, when no system CUDA is on the loader path.
libs=$(python3 -c 'import nvidia, os; d = os.path.dirname(nvidia.__path__[0]); print(":".join(os.path.join(r, x) for r, ds, fs in os.walk(os.path.join(d, "nvidia")) for x in ds if x == "lib"))' 2>/dev/null || true)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# On the GPU machine a test whose cuda:0 run cannot start is a failure, not a skip.
export CLIPCU_REQUIRE_CUDA=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$out/gpu.txt"
bin/clipcu info 2>&1 | tee "$out/info.txt"
table=()
# part NAME SECONDS CMD...: runs CMD under min(SECONDS, what is left), logs to $out/NAME.log
part() {
    local name=$1 limit=$2; shift 2
    local l; l=$(left)
    if [ "$l" -lt 20 ]; then table+=("$(printf '%-30s skipped: budget spent' "$name")"); return; fi
    [ "$limit" -gt "$l" ] && limit=$l
    echo "== $name (timeout ${limit}s)"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -20 "$out/$name.log"
    local res; res=$(grep -E "^test result" "$out/$name.log" | tail -1 | sed -E 's/test result: ([a-zA-Z]+)\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2 passed, \3 failed/')
    [ "$rc" = 124 ] && res="TIMED OUT after ${limit}s"
    table+=("$(printf '%-30s %-36s rc=%s' "$name" "${res:-see $name.log}" "$rc")")
}
# the kernel tests first (fast), then whole steps on the card
for t in bin/test-kernels*; do part "${t#bin/test-}" 60 "$t" --test-threads=1; done
part cuda_device 60 bin/test-cuda_device --test-threads=1
part device_transfers 60 bin/test-device_transfers
part train_device 180 bin/test-train_device --nocapture
# the CLI's run of a small ViT on the card (batches staged on the copy stream) against the CPU
part train-cli-cuda 120 bin/clipcu train --config synthetic-tiny --device cuda --steps 40 --checkpoint-every 20 --eval-every 0 --out "$out/train-cuda"
part train-cli-cpu 120 bin/clipcu train --config synthetic-tiny --device cpu --steps 40 --checkpoint-every 20 --eval-every 0 --out "$out/train-cpu"
part train-cli-compare 10 python3 -c 'import json, sys
ls = [[json.loads(l)["loss"] for l in open(sys.argv[i] + "/metrics.jsonl") if "\"loss\"" in l] for i in (1, 2)]
rel = max(abs(a - b) / abs(b) for a, b in zip(*ls)) if ls[0] and len(ls[0]) == len(ls[1]) else float("inf")
print("cuda vs cpu, %d steps: worst loss rel %.2e" % (len(ls[1]), rel)); sys.exit(0 if rel < 1e-3 else 1)' "$out/train-cuda" "$out/train-cpu"
# benchmarks: GEMM, a ViT-B/32 training step at batch 128 in fp32 and tf32, PyTorch beside
part bench-gemm 60 bin/clipcu-bench gemm --device cuda --iters 20
part bench-train-fp32 90 bin/clipcu-bench train --device cuda --config ViT-B-32 --batch 128 --iters 10
part bench-train-tf32 90 bin/clipcu-bench train --device cuda --config ViT-B-32 --batch 128 --iters 10 --tf32
part bench-contrastive 90 bin/clipcu-bench contrastive --device cuda --batch 16384 --iters 5
part torch-gemm 60 python3 "$here/bench_torch_gpu.py"
echo
echo "================ gpu-check summary ($(( $(date +%s) - start )) s of ${budget}) ================"
printf '%s\n' "${table[@]}" | tee "$out/summary.txt"
grep -hE "GFLOP/s|pairs/s|error|loss rel" "$out"/bench-*.log "$out"/torch-*.log "$out"/train-cli-*.log 2>/dev/null | tee -a "$out/summary.txt"
RUN
chmod +x gpu-stage/run.sh
mb=$(du -sm gpu-stage | cut -f1)
echo "staged $(tar -tJf gpu-stage/bin.tar.xz | grep -c 'bin/.') binaries into gpu-stage/ (${mb} MiB); on the GPU machine run gpu-stage/run.sh --budget 480"
if [ "$mb" -gt 40 ]; then
    echo "error: gpu-stage/ is ${mb} MiB, over the 40 MiB a GPU run can carry beside the tree" >&2
    exit 1
fi
