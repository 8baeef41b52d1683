#!/usr/bin/env python3
"""open_clip's data-parallel loss, for the local-rows-against-global-columns form of the fused loss.

    /tmp/torchenv/bin/python tools/make_local_loss_fixture.py
    # writes tests/fixtures/contrastive/local-loss.safetensors

For world sizes 2 and 4, that many processes on the CPU join a torch.distributed gloo group and
run open_clip's `ClipLoss(local_loss=True, gather_with_grad=True, rank, world_size)` on their own
rows of one seeded batch of raw (unnormalised) features: each rank L2-normalises its rows, the
loss gathers every rank's features with gradient (torch.distributed.nn.all_gather, whose backward
sums each rank's share back to its owner), and takes its rows against all columns, labels offset
by rank·n. Recorded per world size W (prefix `w{W}.`): the batch (`image`, `text` [W·n, D], the
`logit_scale` parameter, a log), each rank's loss (`loss` [W]), each rank's gradient of its own
raw rows after backward of its own loss (`dimage`, `dtext`, rows in rank order: what DDP would see
before averaging parameter gradients) and each rank's `dlogit` [W]. tests/contrastive.rs simulates
the ranks in one process with clipcu's `contrastive_local` and checks all of it within 1e-5.
"""
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "contrastive", "local-loss.safetensors")
CASES = [(2, 5, 24), (4, 3, 16)]  # (world, rows per rank, D)


def batch(world, n, d):
    g = torch.Generator().manual_seed(1000 + world)
    img = torch.randn(world * n, d, generator=g, dtype=torch.float64).float()
    # texts correlated with their images so the loss is neither trivial nor saturated
    txt = (0.6 * img + torch.randn(world * n, d, generator=g)).float()
    return img, txt, torch.tensor(2.3, dtype=torch.float32)


def rank_main(rank, world, n, d, port, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    img, txt, ls = batch(world, n, d)
    il = img[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    tl = txt[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    lsp = ls.clone().requires_grad_(True)
    loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=False, rank=rank, world_size=world)
    loss = loss_fn(F.normalize(il, dim=-1), F.normalize(tl, dim=-1), lsp.exp())
    loss.backward()
    torch.save({"loss": loss.detach(), "dimage": il.grad, "dtext": tl.grad, "dlogit": lsp.grad},
               os.path.join(tmp, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def main():
    out = {}
    for i, (world, n, d) in enumerate(CASES):
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(rank_main, args=(world, n, d, 29500 + i, tmp), nprocs=world, join=True)
            ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]
        img, txt, ls = batch(world, n, d)
        p = f"w{world}."
        out[p + "image"], out[p + "text"], out[p + "logit_scale"] = img, txt, ls
        out[p + "loss"] = torch.stack([r["loss"] for r in ranks])
        out[p + "dimage"] = torch.cat([r["dimage"] for r in ranks])
        out[p + "dtext"] = torch.cat([r["dtext"] for r in ranks])
        out[p + "dlogit"] = torch.stack([r["dlogit"] for r in ranks])
        print(f"world {world}: losses {out[p + 'loss'].tolist()}", file=sys.stderr)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    import open_clip
    save_file({k: v.contiguous() for k, v in out.items()}, OUT,
              metadata={"open_clip": open_clip.__version__, "torch": torch.__version__})


if __name__ == "__main__":
    main()
