#!/usr/bin/env python3
"""PyTorch baseline for `clipcu-bench attention --device cuda`: forward + backward of
torch.nn.functional.scaled_dot_product_attention on the same packed projection (q, k, v as strided
views of qkv [B·T, 3·H·64], as open_clip's attention reads them), at the same shapes and dtype,
once per SDPA backend this torch has (flash, efficient, cudnn, math), CUDA events around each run
after warm-up; the same table format, FLOPs counted as clipcu-bench counts them.

    python3 tools/bench_torch_attention.py [--dtype bf16] [--iters 20]
"""
import argparse

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="bf16")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device for torch")
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    backends = [b for b in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH") if hasattr(SDPBackend, b)]
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    for batch, tokens, heads, causal in [(256, 50, 12, False), (256, 77, 8, True), (64, 197, 12, False)]:
        dh, width = 64, heads * 64
        qkv = torch.randn(batch * tokens, 3 * width, device="cuda", dtype=dtype, requires_grad=True)
        dout = torch.randn(batch, heads, tokens, dh, device="cuda", dtype=dtype)

        def run():
            q, k, v = qkv.view(batch, tokens, 3, heads, dh).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            o.backward(dout)
            qkv.grad = None

        flops = 3.5 * 4.0 * batch * tokens * tokens * width * (0.5 if causal else 1.0)
        for b in backends:
            name = f"torch sdpa {b.split('_')[0].lower()} {args.dtype} b{batch} h{heads} t{tokens}{' causal' if causal else ''}"
            try:
                with sdpa_kernel(getattr(SDPBackend, b)):
                    for _ in range(3):
                        run()
                    torch.cuda.synchronize()
                    times = []
                    for _ in range(args.iters):
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        run()
                        end.record()
                        torch.cuda.synchronize()
                        times.append(start.elapsed_time(end))
            except RuntimeError as e:
                print(f"{name:<44} not available: {str(e).splitlines()[0][:80]}")
                continue
            times.sort()
            med = times[len(times) // 2]
            print(f"{name:<44} {med:>9.3f} ms {times[0]:>9.3f} ms {flops / med / 1e6:>9.1f} GFLOP/s")


if __name__ == "__main__":
    main()
