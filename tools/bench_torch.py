#!/usr/bin/env python3
"""The open_clip + PyTorch side of `clipcu-bench train`: the same step, the same numbers.

    python3 tools/bench_torch.py --config ViT-B-32 --batch 256 --precision amp_bf16 --device cuda \
        --steps 50 --warmup 10 [--compile] [--json]

The step is open_clip's training step as open_clip_train/train.py runs it: the model of the
config in assets/models (open_clip's own JSON; `open_clip.model.CLIP`, whose transformers use
`nn.MultiheadAttention`, i.e. SDPA in training), synthetic inputs of the model's shape (images
~ N(0, 1) as normalised pixels, captions of random ids with an EOT at a random length — never
zeros), open_clip's `ClipLoss` (the naive N×N contrastive loss), backward, gradient clipping at
norm 1, AdamW (lr 5e-4, wd 0.2 on weights, none on gains/biases/logit_scale; `fused=True` on
GPU), and the logit-scale clamp. These match clipcu's TrainStepCase.

--precision has open_clip's semantics: fp32; tf32 (TF32 matmuls and convolutions); amp (fp16
autocast + GradScaler); amp_bf16 (bf16 autocast); pure_fp16 / pure_bf16 (the model cast to 16
bits). --compile wraps the model in torch.compile (default mode).

Times: CUDA events around each step on GPU, perf_counter on CPU. MFU: the same FLOP count as
clipcu (FlopCounterMode over the towers in training mode, 3 × forward; see
tools/make_flops_fixture.py) over the same datasheet peaks. Memory: torch.cuda.max_memory_allocated
on GPU; the process's peak RSS on CPU. --json prints one object with clipcu-bench's field names.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

# (name test, row, fp32, tf32, bf16/fp16) dense TFLOP/s: the table of src/bench/train.rs
PEAKS = [
    (lambda n: "H200" in n, "H200 SXM", 67.0, 494.7, 989.4),
    (lambda n: "H100" in n and "PCI" in n.upper(), "H100 PCIe", 51.0, 378.0, 756.0),
    (lambda n: "H100" in n, "H100 SXM", 67.0, 494.7, 989.4),
    (lambda n: "A100" in n, "A100", 19.5, 156.0, 312.0),
    (lambda n: "L40S" in n, "L40S", 91.6, 183.0, 362.1),
]


def load_cfg(name):
    path = name if name.endswith(".json") else os.path.join(ROOT, "assets", "models", name + ".json")
    if not os.path.exists(path):
        import open_clip
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            sys.exit(f"error: no config {name} (assets/models or open_clip)")
        return dict(cfg)
    with open(path) as f:
        return json.load(f)


def percentile(v, q):
    v = sorted(v)
    x = q * (len(v) - 1)
    lo, hi = int(x), min(int(x) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (x - lo)


def forward_flops(model, cfg, device):
    from torch.utils.flop_counter import FlopCounterMode
    s, ctx = cfg["vision_cfg"]["image_size"], cfg["text_cfg"].get("context_length", 77)
    counter = FlopCounterMode(display=False)
    was = model.training
    model.train()
    with torch.no_grad(), counter:
        model.encode_image(torch.randn(2, 3, s, s, device=device))
        model.encode_text(torch.randint(1, 100, (2, ctx), device=device))
    model.train(was)
    return sum(counter.get_flop_counts()["Global"].values()) / 2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--precision", default="fp32",
                    choices=["fp32", "tf32", "amp", "amp_bf16", "pure_fp16", "pure_bf16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    gpu = a.device.startswith("cuda")
    config = a.config or "ViT-B-32"
    batch = a.batch or (256 if gpu else 16)
    steps = a.steps or (50 if gpu else 10)
    warmup = a.warmup if a.warmup is not None else (10 if gpu else 2)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)

    import open_clip
    from open_clip.loss import ClipLoss

    cfg = load_cfg(config)
    torch.manual_seed(0)
    if a.precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = open_clip.model.CLIP(**cfg).to(device).train()
    params = sum(p.numel() for p in model.parameters())
    flops = 3 * forward_flops(model, cfg, device) * batch
    if a.precision in ("pure_fp16", "pure_bf16"):
        model = model.to(torch.float16 if a.precision == "pure_fp16" else torch.bfloat16)
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.2},
    ]
    opt = torch.optim.AdamW(groups, lr=5e-4, betas=(0.9, 0.98), eps=1e-6, **({"fused": True} if gpu else {}))
    loss_fn = ClipLoss()
    autocast = {"amp": torch.float16, "amp_bf16": torch.bfloat16}.get(a.precision)
    scaler = torch.amp.GradScaler("cuda") if a.precision == "amp" else None
    fwd = torch.compile(model) if a.compile else model

    s, ctx = cfg["vision_cfg"]["image_size"], cfg["text_cfg"].get("context_length", 77)
    vocab = cfg["text_cfg"].get("vocab_size", 49408)
    gen = torch.Generator().manual_seed(7)
    in_dtype = {"pure_fp16": torch.float16, "pure_bf16": torch.bfloat16}.get(a.precision, torch.float32)
    images = torch.randn(batch, 3, s, s, generator=gen).to(device, in_dtype)
    ids = torch.zeros(batch, ctx, dtype=torch.long)
    for row in ids:
        end = int(torch.randint(2, ctx, (1,), generator=gen))
        row[0] = vocab - 2
        row[1:end] = torch.randint(1, vocab - 2, (end - 1,), generator=gen)
        row[end] = vocab - 1
    ids = ids.to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            img, txt, scale = fwd(images, ids)
            loss = loss_fn(img, txt, scale)
        if scaler:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        return loss

    def timed():
        if gpu:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            loss = step()
            end.record()
            end.synchronize()
            return start.elapsed_time(end), loss
        t = time.perf_counter()
        loss = step()
        return (time.perf_counter() - t) * 1e3, loss

    for _ in range(warmup):
        timed()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    ms, loss = [], None
    for _ in range(steps):
        t, loss = timed()
        ms.append(t)
    loss = float(loss.detach())
    med = statistics.median(ms)
    achieved = flops / (med * 1e-3) / 1e12
    card = torch.cuda.get_device_name(device) if gpu else None
    peak, source = a.peak_tflops, "--peak-tflops" if a.peak_tflops else None
    if peak is None and card:
        for test, row, fp32, tf32, half in PEAKS:
            if test(card):
                peak = {"fp32": fp32, "tf32": tf32}.get(a.precision, half)
                source = f"{row} {a.precision} datasheet (dense)"
                break
    if gpu:
        mem, kind = torch.cuda.max_memory_allocated(device), "allocator peak in use"
    else:
        mem, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak resident set"
    report = {
        "engine": "open_clip" + (" compiled" if a.compile else " eager"),
        "config": config, "batch": batch, "precision": a.precision,
        "device": f"{a.device} ({card})" if card else a.device,
        "steps": steps, "warmup": warmup,
        "step": {"median_ms": med, "p10_ms": percentile(ms, 0.1), "p90_ms": percentile(ms, 0.9),
                 "min_ms": min(ms), "max_ms": max(ms)},
        "pairs_per_s": batch / (med * 1e-3),
        "flops_per_step": flops, "achieved_tflops": achieved,
        "peak_tflops": peak, "peak_source": source, "mfu": achieved / peak if peak else None,
        "peak_memory_bytes": mem, "memory_kind": kind, "parameters": params,
        "bytes_per_parameter": mem / params, "last_loss": loss,
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__},
    }
    if a.json:
        print(json.dumps(report))
    else:
        st = report["step"]
        print(f"train {config} batch {batch} {a.precision} on {report['device']} ({report['engine']}): "
              f"{steps} timed steps after {warmup} warm-up")
        print(f"  {report['pairs_per_s']:.1f} pairs/s   step median {med:.2f} ms "
              f"(p10 {st['p10_ms']:.2f}, p90 {st['p90_ms']:.2f})")
        mfu = f"MFU {100 * report['mfu']:.1f}% of {source}" if peak else "MFU: no peak known (--peak-tflops)"
        print(f"  {achieved:.2f} TFLOP/s achieved ({flops / 1e9:.1f} GFLOP a step)   {mfu}")
        print(f"  peak memory {mem / 2**20:.1f} MiB ({kind}), {mem / params:.1f} bytes per parameter")


if __name__ == "__main__":
    main()
