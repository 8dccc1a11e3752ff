"""Time the exact DAB solve against one torch.sort of the same [C_out, n] matrices.

The weights are those of ResNet-18 as the paper trains it (1-channel input, 250 classes; the conv
shapes of the original DAB code's ResNet-18, conv classifier included). DAB and the sort are
measured interleaved in one process (sort, dab, sort, dab, ...) so that both see the same machine
state; each repeat times all 21 layers; the median of the repeats is reported after a warm-up.
``dab-warm`` is the solve as training runs it: the weights after a small step, sorted starting from
the previous solve's permutation.

    python bench/bench_dab.py [--repeats 11] [--device auto|cpu|cuda] [--dtype float32]
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from binarize import dab, xnor  # noqa: E402
from binarize.functions import _dab_solve  # noqa: E402

# (C_out, C_in, k) of the 21 convs of resnetwbin18, in binStart/binEnd order.
RESNET18_CONVS = (
    [(64, 1, 7)]
    + [(64, 64, 3)] * 4
    + [(128, 64, 3), (128, 128, 3), (128, 64, 1), (128, 128, 3), (128, 128, 3)]
    + [(256, 128, 3), (256, 256, 3), (256, 128, 1), (256, 256, 3), (256, 256, 3)]
    + [(512, 256, 3), (512, 512, 3), (512, 256, 1), (512, 512, 3), (512, 512, 3)]
    + [(250, 512, 1)]
)


def timed(fn, weights, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for w in weights:
        fn(w)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but CUDA is not available; use --device cpu")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cpu":
        from launch.build import keep_freed_memory
        keep_freed_memory()  # as main.py does on the CPU: no page faults on each call's fresh buffers
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    weights = [(torch.randn(o, i, k, k, generator=gen) * (2.0 / (o * k * k)) ** 0.5).to(device, dtype)
               for o, i, k in RESNET18_CONVS]
    rows = [w.reshape(w.shape[0], -1) for w in weights]

    def one_sort(w):
        return torch.sort(w, dim=1, descending=True)

    # Training solves each layer again after a small optimizer step, starting from the last permutation.
    stepped = [w + torch.randn(w.shape, generator=gen).to(device, dtype) * w.std() * 1e-2 for w in rows]
    warm = list(zip(stepped, [_dab_solve(w)[4] for w in rows]))

    def dab_warm(pair):
        return _dab_solve(*pair)

    contenders = {"sort": (one_sort, rows), "dab": (dab, weights), "dab-warm": (dab_warm, warm),
                  "xnor": (xnor, weights)}
    for _ in range(args.warmup):
        for fn, ws in contenders.values():
            timed(fn, ws, device)
    times = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, (fn, ws) in contenders.items():
            times[name].append(timed(fn, ws, device))

    med = {name: statistics.median(ts) for name, ts in times.items()}
    elements = sum(w.numel() for w in weights)
    print(f"device {device} ({torch.get_num_threads()} threads), dtype {args.dtype}, "
          f"ResNet-18 convs: {len(weights)} layers, {elements:,} weights, median of {args.repeats}")
    for name, t in med.items():
        print(f"  {name:8s} {t * 1e3:9.2f} ms   ({t / med['sort']:.3f}x one sort)")
    print(f"DAB / sort ratio: {med['dab'] / med['sort']:.3f} (warm-started, as in training: "
          f"{med['dab-warm'] / med['sort']:.3f})")
    return med


if __name__ == "__main__":
    main()
