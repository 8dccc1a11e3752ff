"""Data-loading benchmark: training images/s through a DataLoader, decoding PNGs vs reading the uint8 cache.

Generates a TU-Berlin-like tree (png/<class name>/<n>.png, black strokes on white, 1111x1111 by default),
then for `datasets.build("tuberlin", ...)` fold 1 reports: build time, the cache's build time (one-off), the
images/s of `--epochs` training epochs with `--workers` workers, uncached and cached, and the time of one
training item in this process (less sensitive to other load on the machine than the DataLoader figures).

    python bench/bench_data.py                        # 20 classes x 20 images, a couple of minutes on 2 CPUs
    python bench/bench_data.py --classes 250 --per-class 80 --root /data/fake_tuberlin   # full-size tree
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import datasets  # noqa: E402


def make_tree(root, classes, per_class, size, seed=0):
    """png/<class k>/<n>.png of random strokes; an existing tree of the same shape is reused."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = os.path.join(root, "png", f"class {c:03d}")
        os.makedirs(folder, exist_ok=True)
        for n in range(1, per_class + 1):
            path = os.path.join(folder, f"{n}.png")
            if os.path.exists(path):
                continue
            im = Image.new("L", (size, size), 255)
            draw = ImageDraw.Draw(im)
            for _ in range(int(rng.integers(5, 15))):
                points = [tuple(int(v) for v in rng.integers(size // 10, size - size // 10, 2)) for _ in range(4)]
                draw.line(points, fill=0, width=max(1, size // 200))
            im.save(path)


def rate(dataset, batch_size, workers, epochs):
    """Steady-state images per second over `epochs` passes, after one untimed warm-up pass (which
    starts the persistent workers: with a few hundred images their start-up would dominate)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    for _ in loader:
        pass
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for x, _ in loader:
            seen += len(x)
    return seen / (time.perf_counter() - start)


def ms_per_image(dataset, n=100):
    """Mean time of dataset[i] in this process with one torch thread, as in a DataLoader worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset[0]
        start = time.perf_counter()
        for i in range(n):
            dataset[i % len(dataset)]
        return (time.perf_counter() - start) / n * 1e3
    finally:
        torch.set_num_threads(threads)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--size", type=int, default=1111, help="side of the generated PNGs")
    p.add_argument("--inpsize", type=int, default=225)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--root", default=None, help="where to generate (and keep) the tree; default: a temp dir")
    args = p.parse_args(argv)

    root = args.root or tempfile.mkdtemp(prefix="dabnet_bench_")
    cache_dir = os.path.join(root, ".dabnet_cache")
    try:
        t = time.perf_counter()
        make_tree(root, args.classes, args.per_class, args.size)
        print(f"tree: {args.classes} classes x {args.per_class} PNGs of {args.size}x{args.size} in {root} "
              f"({time.perf_counter() - t:.1f} s)")
        shutil.rmtree(cache_dir, ignore_errors=True)

        t = time.perf_counter()
        plain = datasets.build("tuberlin", root, inpsize=args.inpsize)
        print(f"build, uncached (scan + verify every file): {time.perf_counter() - t:.2f} s  [{plain.description}]")
        t = time.perf_counter()
        datasets.build("tuberlin", root, inpsize=args.inpsize, cachemode=True, cache_dir=cache_dir)
        print(f"build, cachemode, first run (scan + verify + decode into the cache): {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        cached = datasets.build("tuberlin", root, inpsize=args.inpsize, cachemode=True, cache_dir=cache_dir)
        print(f"build, cachemode, later runs (cache found): {time.perf_counter() - t:.2f} s")

        uncached_rate = rate(plain.train, args.batch_size, args.workers, args.epochs)
        cached_rate = rate(cached.train, args.batch_size, args.workers, args.epochs)
        print(f"train images/s, {args.workers} workers, batch {args.batch_size}, inpsize {args.inpsize}, "
              f"{args.epochs} epochs of {len(plain.train)}:")
        print(f"  uncached {uncached_rate:8.1f}")
        print(f"  cached   {cached_rate:8.1f}   ({cached_rate / uncached_rate:.1f}x)")
        plain_ms, cached_ms = ms_per_image(plain.train), ms_per_image(cached.train)
        print(f"ms per training image in one process, one thread (less sensitive to other load): "
              f"uncached {plain_ms:.2f}, cached {cached_ms:.2f} ({plain_ms / cached_ms:.1f}x)")
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
