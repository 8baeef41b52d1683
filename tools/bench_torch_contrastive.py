#!/usr/bin/env python3
"""PyTorch baseline for `clipcu-bench contrastive --device cuda`: CLIP's loss as open_clip computes
it — F.normalize, s·I·Tᵀ, cross-entropy over rows and over columns — forward + backward, eager, at
the same N, D and dtype, same table format (CUDA events around each run after one warm-up), and
the peak memory beyond the inputs and their gradients.

    python3 tools/bench_torch_contrastive.py --batch 32768 --dtype bf16 [--iters 5]
"""
import argparse

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32768)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="bf16")
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device for torch")
        return
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    torch.backends.cuda.matmul.allow_tf32 = False
    n, d = args.batch, args.dim
    gen = torch.Generator(device="cuda").manual_seed(0)
    img = torch.randn(n, d, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    txt = torch.randn(n, d, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    scale = torch.tensor(100.0, device="cuda").log().requires_grad_()
    labels = torch.arange(n, device="cuda")

    def run():
        i, t = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
        logits = scale.exp() * i @ t.T
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        loss.backward()
        img.grad = txt.grad = scale.grad = None

    name = f"torch contrastive {args.dtype} n{n} d{d}"
    try:
        run()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        times = []
        for _ in range(args.iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    except torch.cuda.OutOfMemoryError as e:
        print(f"{name:<34} out of memory: {str(e).splitlines()[0]}")
        return
    times.sort()
    med = times[len(times) // 2]
    flops = 2.0 * 3.0 * n * n * d  # as clipcu-bench counts it: S, dI, dT
    print(f"{name:<34} {med:>9.2f} ms {times[0]:>9.2f} ms {flops / med / 1e6:>9.1f} GFLOP/s")
    grads = 2 * n * d * img.element_size()  # the gradients clipcu counts beside the inputs
    extra = torch.cuda.max_memory_allocated() - base - grads
    print(f"{'':<34} peak beyond inputs and gradients {extra / 2**20:.1f} MiB (torch {torch.__version__})")


if __name__ == "__main__":
    main()
