#!/usr/bin/env python3
"""Reference fixtures for clipcu's image decoding and preprocessing (tests/preprocess.rs).

Writes small seeded test images (PNG in every mode PIL distinguishes, JPEG, WebP) into
tests/fixtures/preprocess/, and beside them expected.safetensors with, per image file NAME:

  NAME/crop64        u8  [64, 64, 3]   torchvision Resize(64, BICUBIC) + CenterCrop(64) on the PIL
                                         image, then convert("RGB") -- the pixels ToTensor sees
  NAME/tensor32      f32 [3, 32, 32]   open_clip.image_transform(32, is_train=False)(image)
  NAME/resize_WxH    u8  [H, W, 3]     image.resize((W, H), BICUBIC).convert("RGB") (some images)
  NAME/decoded       u8  [H, W, C]     np.asarray(image) as PIL decodes it (lossy formats only)
  rgb_97x61.png/tensor224  f32 [3, 224, 224]  the same transform at CLIP's own size

Every image is opened with PIL.Image.open from the written file, as open_clip's datasets do.
Nothing is downloaded. Run with the venv described in tools/README.md:

    /tmp/torchenv/bin/python tools/make_preprocess_fixtures.py
"""

import json
import os
import struct
import zlib

import numpy as np
import open_clip
import PIL
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

SEED = 20240611
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "preprocess")


def pattern(rng, h, w, c):
    """Blocky random colours (hard edges: ringing that bicubic must clip), a few pure black and
    white blocks, and one patch of full-range noise; compresses well enough to keep files small."""
    bh, bw = max(1, h // 7), max(1, w // 9)
    blocks = rng.integers(0, 256, size=(h // bh + 1, w // bw + 1, c), dtype=np.uint8)
    extremes = rng.random(blocks.shape[:2]) < 0.2
    blocks[extremes] = rng.choice([0, 255], size=(int(extremes.sum()), 1)).astype(np.uint8)
    img = np.repeat(np.repeat(blocks, bh, axis=0), bw, axis=1)[:h, :w].copy()
    ph, pw = max(1, h // 6), max(1, w // 6)
    y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    img[y0:y0 + ph, x0:x0 + pw] = rng.integers(0, 256, size=(ph, pw, c), dtype=np.uint8)
    return img


def smooth(rng, h, w, c):
    """A photo-like image (smooth gradients plus mild noise) for the lossy codecs."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((h, w, c))
    for ch in range(c):
        fx, fy, ph = rng.uniform(0.01, 0.08), rng.uniform(0.01, 0.08), rng.uniform(0, 6.3)
        out[..., ch] = 128 + 100 * np.sin(fx * xx + ph) * np.cos(fy * yy) + rng.normal(0, 6, (h, w))
    return np.clip(out, 0, 255).astype(np.uint8)


def png16_rgb(path, rgb16):
    """A 16-bit RGB PNG, written by hand (PIL cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def save_safetensors(path, tensors, metadata):
    """safetensors with a deterministic header (sorted names, sorted keys), so that regenerating
    the fixtures with the same library versions gives the same bytes."""
    dtypes = {np.dtype(np.uint8): "U8", np.dtype(np.float32): "F32"}
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


def make_images(rng):
    """Writes the images; returns [(file name, resize targets, lossy)]."""
    cases = []

    def save(name, im, resizes=(), lossy=False, **kw):
        im.save(os.path.join(OUT, name), **kw)
        cases.append((name, resizes, lossy))

    for w, h, resizes in [
        (97, 61, [(40, 90), (200, 30), (97, 30), (50, 61), (90, 20), (93, 53)]),
        # ^ up/down mixed; one axis only; vertical pass first; a tie (horizontal first)
        (300, 224, []),
        (224, 224, []),
        (50, 400, []),
        (1, 1, [(5, 3)]),
        (225, 225, []),
        (69, 64, []),  # no resize at 64; crop offset round(2.5) = 2 (half to even)
        (64, 65, []),  # no resize at 64; crop offset round(0.5) = 0
        (133, 67, []),  # resized to 127x64: crop offset round(31.5) = 32
        (80, 300, []),  # resized to 64x240: Pillow 13 runs the vertical pass first
    ]:
        save(f"rgb_{w}x{h}.png", Image.fromarray(pattern(rng, h, w, 3), "RGB"), resizes)

    rgba = pattern(rng, 90, 120, 4)
    rgba[:10, :, 3] = 0  # fully transparent rows, coloured underneath
    rgba[10:20, :, 3] = 255
    save("rgba_120x90.png", Image.fromarray(rgba, "RGBA"), [(33, 77), (150, 40), (100, 30)])
    la = pattern(rng, 100, 70, 2)
    save("la_70x100.png", Image.fromarray(la, "LA"), [(100, 20)])
    save("gray_80x60.png", Image.fromarray(pattern(rng, 60, 80, 1)[..., 0], "L"), [(81, 59)])

    pal = Image.fromarray(pattern(rng, 70, 90, 3), "RGB").quantize(colors=37, dither=Image.Dither.NONE)
    save("palette_90x70.png", pal, [(50, 150), (13, 7)], transparency=3)
    bits = Image.fromarray((pattern(rng, 33, 45, 1)[..., 0] > 127).astype(np.uint8) * 255, "L").convert("1")
    save("bilevel_45x33.png", bits)
    save("rgbtrns_40x50.png", Image.fromarray(pattern(rng, 50, 40, 3), "RGB"), [(20, 31)],
         transparency=(0, 0, 0))

    rgb16 = pattern(rng, 30, 40, 3).astype(np.uint16) * 257 + rng.integers(0, 257, (30, 40, 3)).astype(np.uint16)
    png16_rgb(os.path.join(OUT, "rgb16_40x30.png"), rgb16)
    cases.append(("rgb16_40x30.png", [], False))

    save("photo_128x96.jpg", Image.fromarray(smooth(rng, 96, 128, 3), "RGB"), lossy=True, quality=90)
    save("photo444_96x72.jpg", Image.fromarray(smooth(rng, 72, 96, 3), "RGB"), lossy=True, quality=95,
         subsampling=0)
    save("progressive_64x48.jpg", Image.fromarray(smooth(rng, 48, 64, 3), "RGB"), lossy=True, quality=80,
         progressive=True)
    save("gray_120x80.jpg", Image.fromarray(smooth(rng, 80, 120, 1)[..., 0], "L"), lossy=True, quality=90)
    save("photo_120x80.webp", Image.fromarray(smooth(rng, 80, 120, 3), "RGB"), lossy=True, quality=85)
    save("lossless_rgba_60x80.webp", Image.fromarray(pattern(rng, 80, 60, 4), "RGBA"), [(30, 50)], lossless=True)
    return cases


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    rng = np.random.default_rng(SEED)
    cases = make_images(rng)

    pil64 = T.Compose([T.Resize(64, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(64)])
    clip32 = open_clip.image_transform(32, is_train=False)
    clip224 = open_clip.image_transform(224, is_train=False)
    print(clip32)

    tensors = {}
    for name, resizes, lossy in cases:
        im = Image.open(os.path.join(OUT, name))
        print(f"{name}: mode {im.mode} size {im.size}")
        tensors[f"{name}/crop64"] = np.asarray(pil64(im).convert("RGB"), dtype=np.uint8)
        tensors[f"{name}/tensor32"] = clip32(im).numpy()
        for w, h in resizes:
            tensors[f"{name}/resize_{w}x{h}"] = np.asarray(
                im.resize((w, h), Image.Resampling.BICUBIC).convert("RGB"), dtype=np.uint8)
        if lossy:
            tensors[f"{name}/decoded"] = np.asarray(im, dtype=np.uint8)
        if name == "rgb_97x61.png":
            tensors[f"{name}/tensor224"] = clip224(im).numpy()

    meta = {
        "seed": str(SEED),
        "PIL": PIL.__version__,
        "torchvision": torchvision.__version__,
        "open_clip": open_clip.__version__,
        "torch": torch.__version__,
    }
    save_safetensors(os.path.join(OUT, "expected.safetensors"), tensors, meta)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"{len(tensors)} tensors, {len(os.listdir(OUT))} files, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
