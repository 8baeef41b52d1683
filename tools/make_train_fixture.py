#!/usr/bin/env python3
"""Training-parity fixture: 20 steps of open_clip training on the tiny ViT, three ways.

    /tmp/torchenv/bin/python tools/make_train_fixture.py   # writes tests/fixtures/train/

Start: tests/fixtures/models/tiny-vit.safetensors (from make_fixtures.py) with logit_scale set to
4.7, above the clamp at ln(100), so the first step's clamp is exercised. Batches: 8 pairs per step, made by
splitmix64 from (step, index) so that the Rust test regenerates them bit for bit (see
`train_batch` in tests/common/mod.rs) instead of reading them from disk. Training as
open_clip_train does it: ClipLoss, AdamW (lr 2e-4, betas 0.9/0.98, eps 1e-6, weight decay 0.2 with
open_clip's no-decay group), cosine schedule with 5 warmup steps, logit_scale clamped to
[0, ln 100] after each step. Writes the loss of every step and the final parameters of three runs:

- plain (keys `losses`, `final.*`): the loop above;
- clipped (`clip.*`): the same with `torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)` before
  every optimizer step, CLIP_NORM chosen so that most steps clip and a few do not (the gradients of
  these random batches at logit scale 100 have norms of 100–900); `clip.grad_norms` holds the norms
  before clipping (what clip_grad_norm_ returns);
- micro-batched (`micro.*`): open_clip_train's `--accum-freq 2` algorithm on the same 8 pairs per
  step (two micro-batches of 4): features of every micro-batch cached without gradients, then each
  micro-batch re-run with gradients, its features spliced into the cached ones, the loss over all 8
  pairs and backward. The parameter gradients equal the full batch's, except `logit_scale`'s, which
  open_clip accumulates once per micro-batch (ACCUM times the full-batch gradient); AdamW's update is
  invariant to a constant factor on a gradient up to eps, so the final values still agree.
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
CLIP_NORM, ACCUM = 300.0, 2
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


def train(cfg, clip_norm=None, accum=1):
    """20 steps as open_clip_train does them; returns (losses, grad norms before clipping, model)."""
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
    losses, norms = [], []
    for step in range(STEPS):
        lr = LR * (step + 1) / WARMUP if step < WARMUP else 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP))) * LR
        for g in opt.param_groups:
            g["lr"] = lr
        images, ids = batch(step, cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"])
        if accum == 1:
            img_f, txt_f, scale = model(images, ids)[:3]
            loss = loss_fn(img_f, txt_f, scale)
            opt.zero_grad()
            loss.backward()
        else:
            # open_clip_train/train.py with accum_freq: cache, then re-run each chunk with grad.
            chunks = list(zip(images.chunk(accum), ids.chunk(accum)))
            with torch.no_grad():
                cached = [model(im, tx)[:2] for im, tx in chunks]
            opt.zero_grad()
            for j, (im, tx) in enumerate(chunks):
                img_j, txt_j, scale = model(im, tx)[:3]
                img_f = torch.cat([c[0] for c in cached[:j]] + [img_j] + [c[0] for c in cached[j + 1:]])
                txt_f = torch.cat([c[1] for c in cached[:j]] + [txt_j] + [c[1] for c in cached[j + 1:]])
                loss = loss_fn(img_f, txt_f, scale)
                loss.backward()
        if clip_norm is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm, norm_type=2.0)))
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
    return losses, norms, model


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    with open(os.path.join(ROOT, "assets", "models", "tiny-vit.json")) as f:
        cfg = json.load(f)
    out = {}
    for prefix, kwargs in [("", {}), ("clip.", {"clip_norm": CLIP_NORM}), ("micro.", {"accum": ACCUM})]:
        losses, norms, model = train(cfg, **kwargs)
        out[prefix + "losses"] = torch.tensor(losses, dtype=torch.float32)
        if norms:
            # most steps must clip, or the clipped run proves nothing about clipping, and a few must
            # not (the factor applies only below 1); none so close to the limit that rounding decides
            clipped = sum(n > CLIP_NORM for n in norms)
            assert clipped >= 10 and clipped <= 18, f"{clipped} of 20 steps clip: norms {norms}"
            assert min(abs(n - CLIP_NORM) for n in norms) > 1e-3 * CLIP_NORM, norms
            out[prefix + "grad_norms"] = torch.tensor(norms, dtype=torch.float32)
            print(prefix, "grad norms:", " ".join(f"{n:.4f}" for n in norms))
        for n, p in model.state_dict().items():
            out[prefix + "final." + n] = p.detach().contiguous().clone()
        print(prefix or "plain", "losses:", " ".join(f"{l:.5f}" for l in losses))
    # a few generated values, so that the Rust generator can be checked on its own
    images, ids = batch(3, cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"])
    out["check.images_step3"] = images[:1].contiguous()
    out["check.ids_step3"] = ids.to(torch.float32)
    meta = {"clip_norm": str(CLIP_NORM), "accum_freq": str(ACCUM), "torch": torch.__version__,
            "open_clip": open_clip.__version__}
    save_file(out, os.path.join(OUT, "tiny-vit-20-steps.safetensors"), metadata=meta)


if __name__ == "__main__":
    main()
