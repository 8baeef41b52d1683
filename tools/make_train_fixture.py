#!/usr/bin/env python3
"""Training-parity fixture: 20 steps of open_clip training on the tiny ViT.

    /tmp/torchenv/bin/python tools/make_train_fixture.py   # writes tests/fixtures/train/

Start: tests/fixtures/models/tiny-vit.safetensors (from make_fixtures.py) with logit_scale set to
4.7, above the clamp at ln(100), so the first step's clamp is exercised. Batches: 8 pairs per step, made by
splitmix64 from (step, index) so that the Rust test regenerates them bit for bit (see
`train_batch` in tests/common/mod.rs) instead of reading them from disk. Training as
open_clip_train does it: ClipLoss, AdamW (lr 2e-4, betas 0.9/0.98, eps 1e-6, weight decay 0.2 with
open_clip's no-decay group), cosine schedule with 5 warmup steps, logit_scale clamped to
[0, ln 100] after each step. Writes the loss of every step and the final parameters.
"""
import json
import math
import os

import numpy as np
import open_clip
import torch
from open_clip.loss import ClipLoss
from safetensors.torch import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "train")
STEPS, BATCH, LR, WARMUP, WD = 20, 8, 2e-4, 5, 0.2
M64 = (1 << 64) - 1


def splitmix64(x):
    """Vectorised splitmix64 on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(M64)
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(M64)
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(M64)
        return z ^ (z >> np.uint64(31))


def uniform(stream, step, n):
    """n values in [-1, 1): 24 random bits each, exact in f32."""
    idx = np.arange(n, dtype=np.uint64) + np.uint64(stream << 40) + np.uint64(step << 24)
    bits = splitmix64(idx) >> np.uint64(40)
    return (bits.astype(np.float64) / float(1 << 24) * 2.0 - 1.0).astype(np.float32)


def batch(step, image_size, ctx):
    images = uniform(1, step, BATCH * 3 * image_size * image_size).reshape(BATCH, 3, image_size, image_size)
    r = splitmix64(np.arange(BATCH * ctx, dtype=np.uint64) + np.uint64((2 << 40) + (step << 24)))
    ids = np.zeros((BATCH, ctx), dtype=np.int64)
    for i in range(BATCH):
        end = 2 + int(r[i * ctx] % np.uint64(ctx - 2))
        ids[i, 0] = 998
        for j in range(1, end):
            ids[i, j] = 1 + int(r[i * ctx + j] % np.uint64(997))
        ids[i, end] = 999
    return torch.from_numpy(images), torch.from_numpy(ids)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    with open(os.path.join(ROOT, "assets", "models", "tiny-vit.json")) as f:
        cfg = json.load(f)
    model = open_clip.model.CLIP(**cfg)
    model.load_state_dict(load_file(os.path.join(ROOT, "tests", "fixtures", "models", "tiny-vit.safetensors")))
    with torch.no_grad():
        model.logit_scale.fill_(4.7)
    model.train()

    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
    named = list(model.named_parameters())
    no_decay = [p for n, p in named if exclude(n, p) and p.requires_grad]
    decay = [p for n, p in named if not exclude(n, p) and p.requires_grad]
    opt = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": WD}],
                            lr=LR, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    losses = []
    for step in range(STEPS):
        lr = LR * (step + 1) / WARMUP if step < WARMUP else 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP))) * LR
        for g in opt.param_groups:
            g["lr"] = lr
        images, ids = batch(step, cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"])
        img_f, txt_f, scale = model(images, ids)[:3]
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
    out = {"losses": torch.tensor(losses, dtype=torch.float32)}
    for n, p in model.state_dict().items():
        out["final." + n] = p.detach().contiguous().clone()
    # a few generated values, so that the Rust generator can be checked on its own
    images, ids = batch(3, cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"])
    out["check.images_step3"] = images[:1].contiguous()
    out["check.ids_step3"] = ids.to(torch.float32)
    save_file(out, os.path.join(OUT, "tiny-vit-20-steps.safetensors"))
    print("losses:", " ".join(f"{l:.5f}" for l in losses))


if __name__ == "__main__":
    main()
