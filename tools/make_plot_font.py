#!/usr/bin/env python3
"""The font of the training plot (src/train/plot.rs): a subset of DejaVu Sans with the characters
the plot writes (printable ASCII and a few symbols), without hinting or layout tables, written to
assets/fonts/DejaVuSans-plot.ttf beside the DejaVu licence (LICENSE-DejaVu.txt, kept by hand).

Needs fonttools (`pip install fonttools`, in the venv of tools/README.md) and DejaVu Sans
(Debian/Ubuntu: fonts-dejavu-core):

    /tmp/torchenv/bin/python tools/make_plot_font.py [/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf]
"""

import os
import sys

from fontTools import subset

SRC = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "fonts",
                   "DejaVuSans-plot.ttf")
# printable ASCII, · × – — ← → ↔ ≤ ≥ µ
UNICODES = "U+0020-007E,U+00B7,U+00D7,U+2013,U+2014,U+2190,U+2192,U+2194,U+2264,U+2265,U+00B5"

subset.main([
    SRC,
    f"--unicodes={UNICODES}",
    f"--output-file={OUT}",
    "--no-hinting",
    "--layout-features=",
    "--desubroutinize",
    "--name-IDs=*",
    "--notdef-outline",
])
print(f"{os.path.getsize(OUT)} bytes in {OUT}")
