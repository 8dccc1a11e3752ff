"""Tiny image trees in the layouts the loaders read, for the end-to-end tests."""

import os

import numpy as np
from PIL import Image, ImageDraw


def sketch_png(path, seed, size=40):
    """A black-on-white stroke drawing (like a TU-Berlin sketch), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    img = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        pts = [tuple(int(v) for v in rng.integers(2, size - 2, 2)) for _ in range(3)]
        draw.line(pts, fill=0, width=2)
    img.save(path)


def split_tree(root, classes, train_per_class=2, val_per_class=1, size=40, subdir=""):
    """``<root>/<subdir>/{train,val}/<class>/<i>.png`` (the original's pre-split layout)."""
    seed = 0
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in classes:
            folder = os.path.join(root, subdir, split, c)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                seed += 1
                sketch_png(os.path.join(folder, f"{i}.png"), seed, size)
    return root
