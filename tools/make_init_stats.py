#!/usr/bin/env python3
"""Initialisation statistics of open_clip's tiny models: tests/fixtures/models/init-stats.json.

    /tmp/torchenv/bin/python tools/make_init_stats.py

For every floating-point tensor of a freshly built open_clip model (tiny-vit, tiny-rn): the mean and
the sample standard deviation of its values pooled over as many fresh models (seeds 0, 1, ...) as
it takes to reach POOLED values (at least 8 models; 8 for constant tensors), so that even a 16-element tensor gives a
reference precise to about 1% (the std of n normal values spreads by 1/sqrt(2n)). Each entry is
[mean, std, numel, models pooled]; tests/models.rs pools as many models of its own.
"""
import json
import math
import os

import open_clip
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "models", "init-stats.json")
POOLED = 16384


def main():
    torch.set_num_threads(2)
    stats = {}
    for name in ["tiny-vit", "tiny-rn"]:
        with open(os.path.join(ROOT, "assets", "models", name + ".json")) as f:
            cfg = json.load(f)
        first = open_clip.model.CLIP(**cfg).state_dict()
        # constant tensors (LayerNorm gains, zero biases, logit_scale) need no pooling
        need = {
            k: 8 if v.numel() < 2 or float(v.double().std()) == 0.0 else max(8, math.ceil(POOLED / v.numel()))
            for k, v in first.items()
            if v.is_floating_point()
        }
        pooled = {k: [] for k in need}
        for seed in range(max(need.values())):
            torch.manual_seed(seed)
            sd = open_clip.model.CLIP(**cfg).state_dict()
            for k, n in need.items():
                if seed < n:
                    pooled[k].append(sd[k].detach().double().flatten())
        out = {}
        for k, parts in pooled.items():
            v = torch.cat(parts)
            out[k] = [float(v.mean()), float(v.std()) if v.numel() > 1 else 0.0, first[k].numel(), len(parts)]
        stats[name] = out
    with open(OUT, "w") as f:
        json.dump({"meta": {"torch": torch.__version__, "open_clip": open_clip.__version__, "pooled": POOLED}, **stats},
                  f, indent=0, sort_keys=True)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
