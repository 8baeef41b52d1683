#!/usr/bin/env python3
"""A ModifiedResNet checkpoint exactly as torch writes it, for the integer-buffer loading test.

    /tmp/torchenv/bin/python tools/make_torch_state_dict_fixture.py
    # writes tests/fixtures/models/tiny-rn-torch-state-dict.safetensors

open_clip's tiny-rn model gets the weights of tests/fixtures/models/tiny-rn.safetensors (made by
tools/make_fixtures.py), its BatchNorm layers count some batches (so every `num_batches_tracked`
is a nonzero int64), and `safetensors.torch.save_file(model.state_dict())` writes everything torch
holds: float weights and int64 buffers, as a user converting a torch checkpoint would. The script
checks that open_clip, loaded back from that file, still gives the embeddings of
tiny-rn-io.safetensors, which the Rust test compares clipcu's embeddings of this file against.
"""
import os
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import OUT, build, load_cfg  # noqa: E402


def main():
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(20261203)
    cfg = load_cfg("tiny-rn")
    model = build(cfg)
    missing, unexpected = model.load_state_dict(load_file(os.path.join(OUT, "tiny-rn.safetensors")), strict=False)
    assert all(k.endswith("num_batches_tracked") for k in missing) and not unexpected, (missing, unexpected)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(int(torch.randint(1, 10_000, (1,), generator=gen)))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    ints = [k for k, v in sd.items() if v.dtype == torch.int64]
    assert ints, "the state dict should hold int64 num_batches_tracked buffers"
    path = os.path.join(OUT, "tiny-rn-torch-state-dict.safetensors")
    save_file(sd, path)

    # open_clip, loaded back from the written file, reproduces the io fixture's embeddings.
    back = build(cfg)
    back.load_state_dict(load_file(path), strict=True)
    io = load_file(os.path.join(OUT, "tiny-rn-io.safetensors"))
    with torch.no_grad():
        img = back.encode_image(io["images"])
        txt = back.encode_text(io["text_ids"].long())
    for got, want, what in [(img, io["image_embeds"], "image"), (txt, io["text_embeds"], "text")]:
        err = float((got - want).norm() / want.norm())
        assert err < 1e-6, f"{what}: {err}"
    print(f"wrote {path}: {len(sd)} tensors, {len(ints)} int64 ({ints[0]}, ...)", file=sys.stderr)


if __name__ == "__main__":
    main()
