#!/usr/bin/env python3
"""Forward FLOPs per sample of every shipped config, counted the way open_clip's profiler counts.

    /tmp/torchenv/bin/python tools/make_flops_fixture.py   # writes tests/fixtures/models/flops.json

open_clip_train/profiler.py (`--profiler torch`, its default) runs each tower once under
`torch.utils.flop_counter.FlopCounterMode` and sums the counts: 2 FLOPs per multiply-add of every
matmul, convolution and attention product, nothing for elementwise work. This script does the
same, on the models built from the configs in assets/models (open_clip's format; a CustomTextCLIP,
as the profiler's `force_custom_text=True` builds), at batch 2 on the CPU (per sample), no weights downloaded.

One difference, on purpose: the towers run in training mode (under no_grad). open_clip's profiler
puts the model in eval mode, where `nn.MultiheadAttention` takes PyTorch's fused fast path
(`_native_multi_head_attention`), which FlopCounterMode does not see: its ViT-B-32 image count
(5.89 GFLOPs with torch 2.15) is the MLPs and the patch embedding only, without the q/k/v/out
projections and the attention products. Training mode counts every GEMM a training step runs, which
is what an MFU needs. `clipcu-bench train` computes these counts from the config alone
(src/model/flops.rs); tests/flops.rs checks that the two agree exactly.
"""
import json
import os
import sys

import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODELS = os.path.join(ROOT, "assets", "models")
OUT = os.path.join(ROOT, "tests", "fixtures", "models", "flops.json")


def count(tower, example):
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        tower(example)
    return sum(counter.get_flop_counts()["Global"].values())


def main():
    torch.set_num_threads(2)
    names = sorted(f[:-5] for f in os.listdir(MODELS) if f.endswith(".json") and "quickgelu" not in f)
    out = {"_about": f"FlopCounterMode forward FLOPs per sample (open_clip {open_clip.__version__}, "
                     f"torch {torch.__version__}, tools/make_flops_fixture.py)"}
    for name in names:
        with open(os.path.join(MODELS, name + ".json")) as f:
            cfg = json.load(f)
        cfg.pop("quick_gelu", None)
        model = open_clip.model.CustomTextCLIP(**cfg).train()
        s = cfg["vision_cfg"]["image_size"]
        ctx = cfg["text_cfg"].get("context_length", 77)
        # batch 2 (training-mode BatchNorm refuses one value per channel), counted per sample
        image = count(model.visual, torch.randn(2, 3, s, s)) // 2
        text = count(model.text, torch.randint(1, 100, (2, ctx))) // 2
        out[name] = {"image": int(image), "text": int(text)}
        print(f"{name:<16} image {image / 1e9:8.3f} GFLOPs  text {text / 1e9:8.3f} GFLOPs", file=sys.stderr)
        del model
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
