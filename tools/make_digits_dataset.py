#!/usr/bin/env python3
"""A real image–caption set to fine-tune on, made locally with nothing downloaded: scikit-learn's
copy of the UCI handwritten digits (1,797 8×8 greyscale scans, bundled with scikit-learn).

Writes OUT/images/<i>.png (upscaled to 32×32, nearest), OUT/train.csv and OUT/val.csv
(filepath,title — captions such as "a handwritten digit seven", 80/20 split by a fixed seed)
and OUT/zeroshot/<name>/<i>.png, an ImageFolder of the validation images by class for
`clipcu train --zeroshot-data`. Usage:

    pip install scikit-learn pillow numpy
    python3 tools/make_digits_dataset.py data/digits
"""
import os
import sys

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["a handwritten digit {}", "a scan of the number {}", "the digit {}, written by hand"]


def main(out):
    d = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(d.images))
    n_val = len(order) // 5
    val, train = set(order[:n_val].tolist()), order[n_val:]
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    rows = {"train": ["filepath,title"], "val": ["filepath,title"]}
    for i, (img, label) in enumerate(zip(d.images, d.target)):
        pixels = (255 - img * (255 / 16)).astype(np.uint8)  # dark ink on white
        im = Image.fromarray(pixels, "L").resize((32, 32), Image.NEAREST)
        rel = f"images/{i}.png"
        im.save(os.path.join(out, rel))
        caption = TEMPLATES[i % len(TEMPLATES)].format(NAMES[label])
        split = "val" if i in val else "train"
        rows[split].append(f"{rel},{caption}")
        if split == "val":
            folder = os.path.join(out, "zeroshot", NAMES[label])
            os.makedirs(folder, exist_ok=True)
            im.save(os.path.join(folder, f"{i}.png"))
    for split, lines in rows.items():
        with open(os.path.join(out, f"{split}.csv"), "w") as f:
            f.write("\n".join(lines) + "\n")
    print(f"{out}: {len(train)} training pairs, {n_val} validation pairs, 10 zero-shot classes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/digits")
