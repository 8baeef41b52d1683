#!/usr/bin/env bash
# The GPU check, in two halves (see docs/gpu.md, docs/perf.md):
#
#   tools/gpu-check.sh [--no-wheels]
#       here (no GPU needed): install the pinned nvcc, build with PTX, and stage into gpu-stage/
#       (git-ignored, kept <= 40 MiB: a GPU run receives at most 64 MiB with the working tree)
#       stripped test binaries, clipcu, clipcu-bench, the PyTorch baseline (tools/bench_torch.py,
#       the model configs) and the pure-Python wheels it needs that the GPU image lacks
#       (open_clip_torch, ftfy, wcwidth; --no-wheels skips the download)
#   gpu-stage/run.sh [--budget S] [--device cuda|emu] [--quick]
#       on the GPU machine (no Rust there): the kernel and device tests on the card, the
#       Emu/Cuda-vs-Cpu training comparison, clipcu-bench train beside open_clip + PyTorch (eager
#       and torch.compile) for ViT-B/32 and RN50; each part under its own timeout, going on past
#       failures; a table last, everything under $OUT (when set). Exit status 1 when a part failed.
#       `--device emu --quick` is the dry run .ci/run makes on every change so that the script
#       cannot rot: the same parts, on the emulator, at tiny sizes.
#
# With the device tool: run(command="gpu-stage/run.sh --budget 480", carry=["gpu-stage"]).
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=1
[ "${1:-}" = "--no-wheels" ] && wheels=0

tools/install-nvcc.sh >/dev/null
export NVCC="$PWD/.toolchain/cuda/bin/nvcc"
cargo build --release --quiet --bin clipcu-bench --bin clipcu
# Test binaries that run kernels or whole steps on the device; paths from cargo's JSON messages.
# (Not `emulator`: its sanitizer tests rebuild from paths under target/ that never travel.)
tests=$(cargo test --release --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
keep = ("cuda_device", "train_device", "device_transfers", "precision")
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        name = m["target"]["name"]
        if name.startswith("kernels") or name in keep:
            print(name, m["executable"])
')
rm -rf gpu-stage
mkdir -p gpu-stage/bin gpu-stage/tools gpu-stage/assets
while read -r name exe; do
    [ -n "$name" ] && cp "$exe" "gpu-stage/bin/test-$name"
done <<< "$tests"
cp target/release/clipcu-bench target/release/clipcu gpu-stage/bin/
strip gpu-stage/bin/*
# The ~20 binaries share most of their code (each holds the crate, the PTX and the emulator):
# one xz stream with a 64 MiB dictionary stores it once (~70 MiB stripped -> ~7 MiB).
tar -C gpu-stage -cf - bin | xz -9e -T2 > gpu-stage/bin.tar.xz
rm -rf gpu-stage/bin
# bench_torch.py finds the configs at ../assets/models from its own folder, as in the repository.
cp tools/bench_torch.py tools/bench_table.py tools/bench_torch_gpu.py tools/bench_torch_contrastive.py tools/bench_torch_attention.py gpu-stage/tools/
cp -r assets/models gpu-stage/assets/
if [ "$wheels" = 1 ]; then
    # Pure-Python wheels (any Python, any platform); torch, timm, regex are on the GPU image.
    python3 -m pip download -q --no-deps --only-binary=:all: -d gpu-stage/wheels \
        open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.13 ||
        echo "warning: could not download the open_clip wheels: the PyTorch baseline will not run" >&2
fi
cat > gpu-stage/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine (or, with --device emu --quick, anywhere as a dry run): the tests on the
# card, then clipcu-bench train beside open_clip + PyTorch; each part under its own timeout (a hung
# part costs its timeout, not the run), a summary table last. Exit status 1 when a part failed.
#   gpu-stage/run.sh [--budget SECONDS] [--device cuda|emu] [--quick]
set -uo pipefail
cd "$(dirname "$0")"
budget=480 device=cuda quick=0
while [ $# -gt 0 ]; do
    case $1 in
        --budget) budget=$2; shift 2 ;;
        --device) device=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        *) echo "usage: run.sh [--budget S] [--device cuda|emu] [--quick]" >&2; exit 2 ;;
    esac
done
start=$(date +%s)
out="${OUT:-$PWD/out}"
mkdir -p "$out"
here=$PWD
# the binaries travel as one xz archive (see tools/gpu-check.sh); unpack beside a scratch dir
work="${TMPDIR:-/tmp}/clipcu-gpu-check"
rm -rf "$work" && mkdir -p "$work"
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' bin.tar.xz "$work" ||
    tar -C "$work" -xJf bin.tar.xz
bin="$work/bin"
left() { echo $(( budget - ($(date +%s) - start) )); }
if [ "$device" = cuda ]; then
    # cuBLAS from the PyPI wheels that PyTorch brings, when no system CUDA is on the loader path.
    libs=$(python3 -c 'import nvidia, os; d = os.path.dirname(nvidia.__path__[0]); print(":".join(os.path.join(r, x) for r, ds, fs in os.walk(os.path.join(d, "nvidia")) for x in ds if x == "lib"))' 2>/dev/null || true)
    export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # On the GPU machine a test whose cuda:0 run cannot start is a failure, not a skip.
    export CLIPCU_REQUIRE_CUDA=1
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | tee "$out/gpu.txt"
fi
"$bin/clipcu" info 2>&1 | tee "$out/info.txt"
# The PyTorch baseline: open_clip and its pure-Python needs from the staged wheels.
torch_ok=0
if ls wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$work/site" wheels/*.whl > "$out/wheels.log" 2>&1 &&
        export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c 'import torch, open_clip' 2>/dev/null && torch_ok=1
table=() failed=0 results="$out/bench.jsonl"
: > "$results"
# part NAME SECONDS CMD...: runs CMD under min(SECONDS, what is left), logs to $out/NAME.log
part() {
    local name=$1 limit=$2; shift 2
    local l; l=$(left)
    if [ "$l" -lt 20 ]; then table+=("$(printf '%-34s skipped: budget spent' "$name")"); return; fi
    [ "$limit" -gt "$l" ] && limit=$l
    echo "== $name (timeout ${limit}s)"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -8 "$out/$name.log"
    local res; res=$(grep -E "^test result" "$out/$name.log" | tail -1 | sed -E 's/test result: ([a-zA-Z]+)\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2 passed, \3 failed/')
    if grep -q "is not built yet" "$out/$name.log"; then
        res="not built yet (see log)"
    elif [ "$rc" = 124 ]; then
        res="TIMED OUT after ${limit}s"; failed=1
    elif [ "$rc" != 0 ]; then
        res="FAILED${res:+: $res}"; failed=1
    fi
    table+=("$(printf '%-34s %-40s rc=%s' "$name" "${res:-ok}" "$rc")")
}
# bench NAME CONFIG BATCH PRECISION [compile]: clipcu-bench train and the PyTorch baseline beside it
bench() {
    local name=$1 config=$2 batch=$3 precision=$4 compile=${5:-}
    local sizes=() tdev=$device
    [ "$quick" = 1 ] && sizes=(--steps 2 --warmup 1)
    [ "$device" = emu ] && tdev=cpu
    part "bench-$name" 150 "$bin/clipcu-bench" train --device "$device" --config "$config" --batch "$batch" --precision "$precision" "${sizes[@]}" --json
    grep -h '^{' "$out/bench-$name.log" >> "$results"
    if [ "$torch_ok" = 0 ]; then table+=("$(printf '%-34s skipped: no torch + open_clip here' "torch-$name")"); return; fi
    for mode in eager $compile; do
        local flag=(); [ "$mode" = compile ] && flag=(--compile)
        part "torch-$name-$mode" 150 python3 "$here/tools/bench_torch.py" --device "$tdev" --config "$config" --batch "$batch" --precision "$precision" "${sizes[@]}" "${flag[@]}" --json
        grep -h '^{' "$out/torch-$name-$mode.log" >> "$results"
    done
}
if [ "$quick" = 1 ]; then
    part kernels 120 "$bin/test-kernels" --test-threads=2
    part train-cli-$device 120 "$bin/clipcu" train --config synthetic-tiny --device "$device" --steps 3 --batch-size 8 --checkpoint-every 2 --eval-every 0 --out "$out/train-$device"
    part train-cli-cpu 120 "$bin/clipcu" train --config synthetic-tiny --device cpu --steps 3 --batch-size 8 --checkpoint-every 2 --eval-every 0 --out "$out/train-cpu"
else
    # the kernel tests first (fast), then whole steps on the card
    for t in "$bin"/test-kernels*; do part "${t#"$bin"/test-}" 60 "$t" --test-threads=1; done
    part cuda_device 60 "$bin/test-cuda_device" --test-threads=1
    part device_transfers 60 "$bin/test-device_transfers"
    part train_device 180 "$bin/test-train_device" --nocapture
    # the CLI's run of a small ViT on the card (batches staged on the copy stream) against the CPU
    part train-cli-cuda 120 "$bin/clipcu" train --config synthetic-tiny --device cuda --steps 40 --checkpoint-every 20 --eval-every 0 --out "$out/train-cuda"
    part train-cli-cpu 120 "$bin/clipcu" train --config synthetic-tiny --device cpu --steps 40 --checkpoint-every 20 --eval-every 0 --out "$out/train-cpu"
fi
# issue 19: the multi-process NCCL path at world size 1 (torchrun's variables set: rendezvous,
# NCCL's id, ncclCommInitRank, the gathered loss's all-gather and reduce-scatter and the statistics'
# all-reduce through NCCL; a world of 1 skips the gradient buckets), against
# the one-process run above. On emu (the dry run) the same command line is a one-process run: a
# world of 1 there has no NCCL.
sizes=(--steps 40); [ "$quick" = 1 ] && sizes=(--steps 3 --batch-size 8)
part train-nccl-world1 120 env RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29531 "$bin/clipcu" train --config synthetic-tiny --device "$device" "${sizes[@]}" --checkpoint-every 20 --eval-every 0 --out "$out/train-nccl1"
part train-nccl-compare 10 python3 -c 'import json, sys
ls = [[json.loads(l)["loss"] for l in open(sys.argv[i] + "/metrics.jsonl") if "\"loss\"" in l] for i in (1, 2)]
rel = max(abs(a - b) / abs(b) for a, b in zip(*ls)) if ls[0] and len(ls[0]) == len(ls[1]) else float("inf")
print("NCCL world 1 vs one process, %d steps: worst loss rel %.2e" % (len(ls[1]), rel)); sys.exit(0 if rel < 1e-3 else 1)' "$out/train-nccl1" "$out/train-$device"
# ZeRO-1 through NCCL at world size 1 under amp (the sharded clip's all-reduce of Σ g² through NCCL,
# the loss scaler's unscaling in its factor), against the same run without it; on the card only
# (--zero1 needs ranks, which the emu dry run's one process does not have).
if [ "$device" = cuda ]; then
    part train-nccl-zero1 120 env RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29532 "$bin/clipcu" train --config synthetic-tiny --device cuda "${sizes[@]}" --precision amp --zero1 --checkpoint-every 20 --eval-every 0 --out "$out/train-nccl1-zero1"
    part train-nccl-amp 120 env RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29533 "$bin/clipcu" train --config synthetic-tiny --device cuda "${sizes[@]}" --precision amp --checkpoint-every 20 --eval-every 0 --out "$out/train-nccl1-amp"
    part train-zero1-compare 10 python3 -c 'import json, sys
ls = [[json.loads(l)["loss"] for l in open(sys.argv[i] + "/metrics.jsonl") if "\"loss\"" in l] for i in (1, 2)]
rel = max(abs(a - b) / abs(b) for a, b in zip(*ls)) if ls[0] and len(ls[0]) == len(ls[1]) else float("inf")
print("NCCL world 1, amp: zero1 vs not, %d steps: worst loss rel %.2e" % (len(ls[1]), rel)); sys.exit(0 if rel < 1e-4 else 1)' "$out/train-nccl1-zero1" "$out/train-nccl1-amp"
fi
part train-cli-compare 10 python3 -c 'import json, sys
ls = [[json.loads(l)["loss"] for l in open(sys.argv[i] + "/metrics.jsonl") if "\"loss\"" in l] for i in (1, 2)]
rel = max(abs(a - b) / abs(b) for a, b in zip(*ls)) if ls[0] and len(ls[0]) == len(ls[1]) else float("inf")
print("device vs cpu, %d steps: worst loss rel %.2e" % (len(ls[1]), rel)); sys.exit(0 if rel < 1e-3 else 1)' "$out/train-$device" "$out/train-cpu"
if [ "$quick" = 1 ]; then
    part bench-kernels 60 "$bin/clipcu-bench" kernels --device "$device" --quick --iters 1
    part bench-contrastive-32k 60 "$bin/clipcu-bench" contrastive --device "$device" --batch 64 --dtype bf16 --fused-only --iters 1
    part bench-attention 120 "$bin/clipcu-bench" attention --device "$device" --quick --iters 1
    bench tiny-vit tiny-vit 8 fp32
    bench tiny-vit-amp_bf16 tiny-vit 8 amp_bf16
else
    part bench-kernels 90 "$bin/clipcu-bench" kernels --device cuda --iters 20
    part bench-gemm 60 "$bin/clipcu-bench" gemm --device cuda --iters 20
    bench vit-b32-fp32 ViT-B-32 256 fp32 compile
    bench vit-b32-tf32 ViT-B-32 256 tf32
    bench vit-b32-amp_bf16 ViT-B-32 256 amp_bf16 compile
    bench vit-b32-pure_bf16 ViT-B-32 256 pure_bf16
    bench rn50-amp_bf16 RN50 256 amp_bf16
    part bench-contrastive 90 "$bin/clipcu-bench" contrastive --device cuda --batch 16384 --iters 5
    # issue 12's targets: bf16 at N = 32,768 against PyTorch's normalize + matmul + both
    # cross-entropies in the same run (>= 3x), and N = 262,144 on one card (< 2 GB extra)
    part bench-contrastive-32k 60 "$bin/clipcu-bench" contrastive --device cuda --batch 32768 --dtype bf16 --iters 5
    part torch-contrastive-32k 60 python3 "$here/tools/bench_torch_contrastive.py" --batch 32768 --dtype bf16 --iters 5
    # issue 13's target: fused attention fwd+bwd at CLIP's shapes, bf16, >= 1.5x the fastest SDPA
    part bench-attention 60 "$bin/clipcu-bench" attention --device cuda --dtype bf16 --iters 20
    part torch-attention 90 python3 "$here/tools/bench_torch_attention.py" --dtype bf16 --iters 20
    part bench-contrastive-262k 120 "$bin/clipcu-bench" contrastive --device cuda --batch 262144 --dtype bf16 --fused-only --iters 1
    part torch-gemm 60 python3 "$here/tools/bench_torch_gpu.py"
    # last (the measurements come first): every --precision policy on the card against the
    # CPU under the same policy (issue 14)
    part precision 240 "$bin/test-precision" --nocapture --test-threads=4
fi
echo
echo "================ gpu-check summary ($(( $(date +%s) - start )) s of ${budget}, device $device) ================"
printf '%s\n' "${table[@]}" | tee "$out/summary.txt"
cat "$out"/bench-kernels.log 2>/dev/null | tee -a "$out/summary.txt"
grep -hE "GFLOP/s|error|loss rel|MiB|memory" "$out"/bench-gemm.log "$out"/bench-contrastive*.log "$out"/torch-contrastive*.log "$out"/bench-attention.log "$out"/torch-attention.log "$out"/torch-gemm.log "$out"/train-cli-compare.log "$out"/train-nccl-compare.log "$out"/train-zero1-compare.log 2>/dev/null | tee -a "$out/summary.txt"
echo
python3 tools/bench_table.py "$results" | tee -a "$out/summary.txt"
exit "$failed"
RUN
chmod +x gpu-stage/run.sh
mb=$(du -sm gpu-stage | cut -f1)
echo "staged $(tar -tJf gpu-stage/bin.tar.xz | grep -c 'bin/.') binaries into gpu-stage/ (${mb} MiB); on the GPU machine run gpu-stage/run.sh --budget 480"
if [ "$mb" -gt 40 ]; then
    echo "error: gpu-stage/ is ${mb} MiB, over the 40 MiB a GPU run can carry beside the tree" >&2
    exit 1
fi
