#!/usr/bin/env python3
"""Reference fixtures for clipcu's training transform (tests/augment.rs).

Reads the seeded images that tools/make_preprocess_fixtures.py wrote into
tests/fixtures/preprocess/ (it does not rewrite them) and writes
tests/fixtures/augment/expected.safetensors with, per image file NAME and case K:

  NAME/K/box      i64 [5]           top, left, h, w, size: a crop box and the output side
  NAME/K/tensor   f32 [3, S, S]     open_clip.image_transform(S, is_train=True)(image) with its
                                    RandomResizedCrop's box fixed to that box (get_params
                                    patched), which the script checks equals
                                    torchvision's resized_crop(image, top, left, h, w, [S, S],
                                    BICUBIC) -> convert("RGB") -> ToTensor -> Normalize
  fallback/WxH    i64 [4]           RandomResizedCrop.get_params on a W x H image with
                                    scale=(2, 3) (no try can fit, so torchvision's deterministic
                                    fallback: the central crop clamped to ratio (3/4, 4/3))

Nothing is downloaded. Run with the venv described in tools/README.md:

    /tmp/torchenv/bin/python tools/make_augment_fixtures.py
"""

import json
import os
import struct

import numpy as np
import open_clip
import PIL
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F

SEED = 20251203
HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES = os.path.join(HERE, "..", "tests", "fixtures", "preprocess")
OUT = os.path.join(HERE, "..", "tests", "fixtures", "augment")
MEAN = open_clip.OPENAI_DATASET_MEAN
STD = open_clip.OPENAI_DATASET_STD

# Images of every mode the loader meets (RGB, RGBA, LA, L, palette with transparency).
FILES = ["rgb_97x61.png", "rgba_120x90.png", "la_70x100.png", "gray_80x60.png",
         "palette_90x70.png", "rgb_50x400.png"]


def save_safetensors(path, tensors, metadata):
    """safetensors with a deterministic header (sorted names, sorted keys)."""
    dtypes = {np.dtype(np.int64): "I64", np.dtype(np.float32): "F32"}
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        data = t.astype(t.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def boxes(rng, w, h):
    """The whole image, a one-pixel-smaller box, a small box (upscaled), a box touching the
    bottom-right corner, and two random ones."""
    out = [(0, 0, h, w), (1, 0, h - 1, w - 1), (h // 3, w // 4, max(1, h // 5), max(1, w // 6)),
           (h - h // 2, w - w // 2, h // 2, w // 2)]
    for _ in range(2):
        bh, bw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
        out.append((int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1)), bh, bw))
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(SEED)
    tensors = {}
    for name in FILES:
        im = Image.open(os.path.join(IMAGES, name))
        w, h = im.size
        print(f"{name}: mode {im.mode} size {im.size}")
        for k, (top, left, bh, bw) in enumerate(boxes(rng, w, h)):
            size = [32, 24, 40][k % 3]
            ref = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])(
                F.resized_crop(im, top, left, bh, bw, [size, size],
                               T.InterpolationMode.BICUBIC).convert("RGB"))
            train = open_clip.image_transform(size, is_train=True)
            rrc = train.transforms[0]
            assert isinstance(rrc, T.RandomResizedCrop), train
            rrc.get_params = lambda img, scale, ratio, b=(top, left, bh, bw): b
            got = train(im)
            assert torch.equal(got, ref), (name, k)
            tensors[f"{name}/{k}/box"] = np.array([top, left, bh, bw, size], dtype=np.int64)
            tensors[f"{name}/{k}/tensor"] = got.numpy()
    for w, h in [(97, 61), (61, 97), (100, 100), (50, 400), (400, 50), (3, 1), (1, 3), (1, 1),
                 (4, 3), (3, 4), (5, 3), (301, 224)]:
        img = Image.new("RGB", (w, h))
        box = T.RandomResizedCrop.get_params(img, scale=(2.0, 3.0), ratio=(3 / 4, 4 / 3))
        tensors[f"fallback/{w}x{h}"] = np.array(box, dtype=np.int64)

    meta = {
        "seed": str(SEED),
        "PIL": PIL.__version__,
        "torchvision": torchvision.__version__,
        "open_clip": open_clip.__version__,
        "torch": torch.__version__,
    }
    path = os.path.join(OUT, "expected.safetensors")
    save_safetensors(path, tensors, meta)
    print(f"{len(tensors)} tensors, {os.path.getsize(path)} bytes in {path}")


if __name__ == "__main__":
    main()
