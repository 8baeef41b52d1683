#!/usr/bin/env python3
"""PyTorch GPU baseline for `clipcu-bench gemm --device cuda`: the same GEMM, same table format.

    python3 tools/bench_torch_gpu.py [--iters 20]
"""
import argparse

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device for torch")
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    m, k, n = 4096, 768, 3072
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        a = torch.randn(m, k, device="cuda", dtype=dtype)
        b = torch.randn(k, n, device="cuda", dtype=dtype)
        for _ in range(3):
            a @ b
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(args.iters):
            start.record()
            a @ b
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        times.sort()
        med = times[len(times) // 2]
        name = f"gemm {str(dtype).split('.')[-1]} {m}x{k}x{n}"
        print(f"{name:<34} {med:>9.3f} ms {times[0]:>9.3f} ms {2 * m * k * n / med / 1e9:>9.1f} GFLOP/s")


if __name__ == "__main__":
    main()
