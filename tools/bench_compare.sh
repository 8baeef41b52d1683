#!/usr/bin/env bash
# clipcu-bench train beside open_clip + PyTorch (eager, and torch.compile with COMPILE=1), same
# config, batch, precision and step count, alternating in one sitting; one table of ratios last.
#
#   tools/bench_compare.sh [CASE ...]          CASE = CONFIG:BATCH:PRECISION (default below)
#
# Environment: DEVICE (cpu | cuda | emu; default cpu), STEPS, WARMUP (default: clipcu-bench's per
# device), ROUNDS (default 1: each engine runs once per case; more alternate so that a shared
# machine's load hits both alike, and the best round of each is kept), COMPILE=1 (also
# torch.compile), PYTHON (a python with torch and open_clip; default python3), CLIPCU_BENCH (a
# built clipcu-bench; default: build it), OUT (a folder for the JSON lines; default a temp dir).
# Defaults per device: cpu ViT-B-32:16:fp32; cuda ViT-B-32:256:fp32 ViT-B-32:256:tf32.
set -euo pipefail
cd "$(dirname "$0")/.."
device=${DEVICE:-cpu}
py=${PYTHON:-python3}
rounds=${ROUNDS:-1}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
if [ $# -eq 0 ]; then
    case $device in
        cuda) set -- ViT-B-32:256:fp32 ViT-B-32:256:tf32 ;;
        emu) set -- tiny-vit:8:fp32 ;;
        *) set -- ViT-B-32:16:fp32 ;;
    esac
fi
bench=${CLIPCU_BENCH:-}
if [ -z "$bench" ]; then
    cargo build --release --quiet --bin clipcu-bench
    bench=target/release/clipcu-bench
fi
threads=${THREADS:-$(nproc)}
steps=${STEPS:+--steps $STEPS}
warmup=${WARMUP:+--warmup $WARMUP}
torch_device=$device
[ "$device" = emu ] && torch_device=cpu
results="$out/results.jsonl"
: > "$results"
for r in $(seq "$rounds"); do
    for c in "$@"; do
        IFS=: read -r config batch precision <<< "$c"
        echo "== round $r: $config batch $batch $precision on $device ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
        # shellcheck disable=SC2086
        RAYON_NUM_THREADS=$threads "$bench" train --device "$device" --config "$config" --batch "$batch" \
            --precision "$precision" $steps $warmup --json >> "$results" ||
            echo "{\"engine\":\"clipcu\",\"config\":\"$config\",\"batch\":$batch,\"precision\":\"$precision\",\"error\":\"clipcu-bench failed (see above)\"}" >> "$results"
        for mode in eager ${COMPILE:+compile}; do
            flag=""
            [ "$mode" = compile ] && flag=--compile
            # shellcheck disable=SC2086
            "$py" tools/bench_torch.py --device "$torch_device" --config "$config" --batch "$batch" \
                --precision "$precision" --threads "$threads" $steps $warmup $flag --json >> "$results" ||
                echo "{\"engine\":\"open_clip $mode\",\"config\":\"$config\",\"batch\":$batch,\"precision\":\"$precision\",\"error\":\"bench_torch.py failed (see above)\"}" >> "$results"
        done
    done
done
python3 tools/bench_table.py "$results"
