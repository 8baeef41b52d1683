#!/usr/bin/env python3
"""PyTorch CPU baseline for clipcu-bench: the same workloads, printed in the same table format.

    python3 tools/bench_torch_cpu.py [--iters 10] [--threads 2] [--workload all|gemm|block|vit-b32|rn50|text]

Workloads (identical shapes to `clipcu-bench`):
  gemm   f32 [4096, 768] @ [768, 3072]
  block  one pre-LN CLIP transformer block (width 768, 12 heads, GELU), batch 16 x 50 tokens,
         forward + backward with parameter and input gradients
Needs torch (pip install torch); nothing else. Run beside `clipcu-bench` in one sitting
(tools/bench_cpu.sh does both) so that both see the same machine state.
"""
import argparse
import os
import statistics
import time

import torch
import torch.nn as nn


class Block(nn.Module):
    """open_clip's ResidualAttentionBlock: x += attn(ln_1(x)); x += mlp(ln_2(x))."""

    def __init__(self, d, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


def timeit(fn, iters):
    fn()
    ts = []
    for _ in range(iters):
        s = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - s)
    return statistics.median(ts), min(ts)


def report(name, flops, t):
    med, best = t
    print(f"{name:<34} {med * 1e3:>9.2f} ms {best * 1e3:>9.2f} ms {flops / med / 1e9:>9.1f} GFLOP/s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workload", default="all", choices=["all", "gemm", "block", "vit-b32", "rn50", "text"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__} on cpu ({torch.get_num_threads()} threads)")
    print(f"{'workload':<34} {'median':>12} {'best':>12} {'throughput':>17}")

    want = lambda w: args.workload in ("all", w)
    if want("gemm"):
        m, k, n = 4096, 768, 3072
        a, b = torch.randn(m, k), torch.randn(k, n)
        report("gemm f32 4096x768x3072", 2.0 * m * k * n, timeit(lambda: a @ b, args.iters))

    if want("block"):
        bs, t, d = 16, 50, 768
        blk = Block(d, d // 64)
        x = torch.randn(bs, t, d, requires_grad=True)
        g = torch.randn(bs, t, d)

        def step():
            blk.zero_grad(set_to_none=True)
            x.grad = None
            blk(x).backward(g)

        flops = 3.0 * bs * t * (24.0 * d * d + 4.0 * t * d)
        report("block fwd+bwd w768 t50 b16", flops, timeit(step, args.iters))

    try:
        import open_clip
    except ImportError:
        print("(open_clip not installed: skipping the model workloads)")
        return
    for name, w in [("ViT-B-32", "vit-b32"), ("RN50", "rn50")]:
        if not want(w):
            continue
        model = open_clip.create_model(name).eval()
        images = torch.randn(16, 3, 224, 224)
        with torch.inference_mode():
            med, best = timeit(lambda: model.encode_image(images), max(3, args.iters // 2))
        print(f"{name + ' encode_image b16':<34} {med * 1e3:>9.2f} ms {best * 1e3:>9.2f} ms {16 / med:>9.1f} img/s")
    if not want("text"):
        return
    model = open_clip.create_model("ViT-B-32").eval()
    tok = open_clip.get_tokenizer("ViT-B-32")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    with open(os.path.join(root, "assets", "bench_captions.txt")) as f:
        captions = [line.strip() for line in f if line.strip()][:16]
    ids = tok(captions)
    with torch.inference_mode():
        med, best = timeit(lambda: model.encode_text(ids), args.iters)
    print(f"{'text b16 (77 tokens)':<34} {med * 1e3:>9.2f} ms {best * 1e3:>9.2f} ms {16 / med:>9.1f} texts/s")


if __name__ == "__main__":
    main()
