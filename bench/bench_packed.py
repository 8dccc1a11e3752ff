"""Inference speed and memory: fp32 convs against bit-packed convs (deploy/packed.py) on exported models.

For each model (Sketch-A-Net fbin at 225, ResNet-18 fbin at 224, and SD-BNN's ResNet-20 1w1a at 32 when
it is registered) the script exports the binarized model (DAB codes by default), rebuilds it dense
(``deploy.export.load_export``) and packed (``deploy.packed.load_packed`` with the dense fallback, so a
binarized layer that cannot run packed, such as ResNet-18's classifier on the pooled real features,
stays dense and is listed) and measures, in one process on the same threads (torch's and numba's pools
both set to ``--threads``, all cores by default):

    per binary conv     ``F.conv2d`` in fp32 with the dense weight against the PackedConv2d call
                        (input packing included) on a random +-1 input of the layer's shape, at each
                        batch size; each side gets the memory layout it sees in its own model (the dense
                        model feeds NCHW, the packed model mostly channels-last: packed convs write it);
    whole model         the dense model against the packed one on a random image batch;
    memory              the peak live memory of tensors and arrays during one forward: the peak of
                        torch's CPU allocations (the torch profiler's allocation and free events
                        replayed in time order) plus the peak of numpy's (tracemalloc: the packed convs'
                        outputs; their packed inputs, 1/32 of the float input, are allocated inside
                        numba and not counted), an upper bound since the two peaks need not coincide;
                        and the bytes the weights take (parameters and buffers, plus the packed convs'
                        kernel copies of their words and tables).

Timings are medians over ``--repeats`` after ``--warmup`` calls, the two sides interleaved call by call
so that both see the same machine state. The last line is the median per-layer speedup at batch 1 over
the binary convs of all the models benchmarked.

    python bench/bench_packed.py [--models sketchanetfbin resnetfbin18] [--batches 1 16] [--repeats 20]
"""

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import tracemalloc

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import binarize  # noqa: E402
import models  # noqa: E402
from deploy.export import export_model, load_export  # noqa: E402
from deploy.packed import PackedConv2d, load_packed, report_line  # noqa: E402

DEFAULT_MODELS = ("sketchanetfbin", "resnetfbin18", "resnet20_1w1a")


def export_binarized(name, method, num_classes, folder):
    """Export ``name`` with its default binarized layers; returns the path and the input size."""
    info = models.model_info(name)
    torch.manual_seed(0)
    model = models.build_model(name, num_classes)
    binarize.binarize_weights(model, layers=info.bin_layers, method=method)
    path = os.path.join(folder, f"{name}.safetensors")
    export_model(model.eval(), path, dict(model_def=name, num_classes=num_classes,
                                          in_channels=info.default_in_channels, inpsize=info.default_inpsize))
    return path, info.default_in_channels, info.default_inpsize


def interleaved(first, second, warmup, repeats):
    """Median seconds of ``first()`` and of ``second()``, called alternately."""
    times = ([], [])
    for i in range(warmup + repeats):
        for fn, bucket in zip((first, second), times):
            start = time.perf_counter()
            fn()
            if i >= warmup:
                bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


@contextlib.contextmanager
def quiet_stderr():
    """Silence the C++ profiler's start/stop lines on file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_bytes(fn):
    """Peak live CPU memory of tensors and arrays while ``fn()`` runs: the peak of torch's allocations (the
    profiler's allocation and free events replayed in time order, at op granularity) plus the peak of
    numpy's (tracemalloc; the packed convs allocate their outputs there). An upper bound: the two peaks
    need not coincide."""
    from torch.profiler import ProfilerActivity, profile
    tracemalloc.start()
    try:
        with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            fn()
            numpy_peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    deltas = []
    for event in prof.events():
        # each allocation or free is charged to the innermost op running it (its self usage), or is a
        # "[memory]" event of its own; an op's net growth counts at its start, its net release at its end
        delta = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if delta:
            deltas.append((event.time_range.start if delta > 0 else event.time_range.end, delta))
    live = peak = 0
    for _, delta in sorted(deltas):
        live += delta
        peak = max(peak, live)
    return peak + numpy_peak


def weight_bytes(model):
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    for m in model.modules():
        if isinstance(m, PackedConv2d):
            total += m._wt.nbytes + m._taps.nbytes + 3 * m._diff.nbytes
    return total


def layer_shapes(model, channels, size):
    """{name: (input shape at batch 1, channels_last)} of every PackedConv2d, from one forward."""
    shapes = {}
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, key=name: shapes.__setitem__(key, (tuple(args[0].shape), not args[0].is_contiguous())))
        for name, m in model.named_modules() if isinstance(m, PackedConv2d)]
    with torch.no_grad():
        model(torch.randn(1, channels, size, size))
    for h in hooks:
        h.remove()
    return shapes


def bench_layers(name, dense, packed, report, channels, size, args):
    """Per-layer rows: (model, index, name, geometry, batch, dense s, packed s)."""
    shapes = layer_shapes(packed, channels, size)
    convs, packs = dict(dense.named_modules()), dict(packed.named_modules())
    rows = []
    for row in report:
        if not row["packed"]:
            continue
        conv, pconv = convs[row["name"]], packs[row["name"]]
        (_, cin, h, w), channels_last = shapes[row["name"]]
        geometry = (f"{cin}->{conv.out_channels} k{conv.kernel_size[0]} s{conv.stride[0]} p{conv.padding[0]} "
                    f"{h}x{w}")
        for batch in args.batches:
            gen = torch.Generator().manual_seed(batch)
            x = torch.where(torch.rand(batch, cin, h, w, generator=gen) > 0.5, 1.0, -1.0)
            xp = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            with torch.no_grad():
                td, tp = interleaved(lambda: F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding),
                                     lambda: pconv(xp), args.warmup, args.repeats)
            rows.append((name, row["index"], row["name"], geometry, batch, td, tp))
    return rows


def bench_model(name, args, folder):
    path, channels, size = export_binarized(name, args.method, args.classes, folder)
    dense, _ = load_export(path)
    packed, _, report = load_packed(path, fallback=True)
    print(f"\n{name} (input {channels}x{size}x{size}, {args.method} weights): {report_line(report)}")
    rows = bench_layers(name, dense, packed, report, channels, size, args)
    print(f"{'conv':>4} {'name':<28} {'geometry':<30} {'batch':>5} {'fp32 ms':>9} {'packed ms':>9} {'speedup':>8}")
    for _, index, lname, geometry, batch, td, tp in rows:
        print(f"{index:>4} {lname:<28} {geometry:<30} {batch:>5} {td * 1e3:9.3f} {tp * 1e3:9.3f} {td / tp:7.2f}x")
    for batch in args.batches:
        ratios = [td / tp for *_, b, td, tp in rows if b == batch]
        total_d = sum(td for *_, b, td, tp in rows if b == batch)
        total_p = sum(tp for *_, b, td, tp in rows if b == batch)
        print(f"  batch {batch}: median speedup {statistics.median(ratios):.2f}x over {len(ratios)} binary convs, "
              f"their total {total_d * 1e3:.2f} ms fp32 -> {total_p * 1e3:.2f} ms packed "
              f"({total_d / total_p:.2f}x)")
    print(f"  whole model ({len(report)} binarized layers, {sum(r['packed'] for r in report)} packed):")
    for batch in args.batches:
        x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            td, tp = interleaved(lambda: dense(x), lambda: packed(x), args.warmup, args.repeats)
            memory = "" if args.no_memory else (f", peak live memory {peak_bytes(lambda: dense(x)) / 2**20:.1f} MiB "
                                                f"dense, {peak_bytes(lambda: packed(x)) / 2**20:.1f} MiB packed")
        print(f"    batch {batch:>2}: dense {td * 1e3:8.2f} ms, packed {tp * 1e3:8.2f} ms: {td / tp:.2f}x "
              f"({batch / tp:.1f} images/s){memory}")
    print(f"    weights in memory: {weight_bytes(dense) / 2**20:.2f} MiB dense, {weight_bytes(packed) / 2**20:.2f} "
          f"MiB packed")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"models to run (default: those of {', '.join(DEFAULT_MODELS)} that are registered)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16], help="batch sizes (default 1 16)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads of torch and of numba (default: all cores)")
    parser.add_argument("--method", default="dab", choices=binarize.weight_methods(), help="weight binarizer")
    parser.add_argument("--classes", type=int, default=10, help="number of classes of the models (default 10)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    args = parser.parse_args()
    if 1 not in args.batches:
        parser.error("--batches must include 1 (the summary line is at batch 1)")
    names = args.models or [n for n in DEFAULT_MODELS if n in models.list_models()]

    import numba
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    print(f"threads: torch {torch.get_num_threads()}, numba {numba.get_num_threads()}; torch {torch.__version__}, "
          f"numba {numba.__version__}; {args.repeats} repeats after {args.warmup} warm-up calls, medians")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            rows += bench_model(name, args, folder)
    print()
    for batch in args.batches:
        ratios = [td / tp for *_, b, td, tp in rows if b == batch]
        print(f"all models, batch {batch}: median {statistics.median(ratios):.2f}x, min {min(ratios):.2f}x, "
              f"max {max(ratios):.2f}x over {len(ratios)} binary convs")
    ratios = [td / tp for *_, b, td, tp in rows if b == 1]
    print(f"binary convs: packed is {statistics.median(ratios):.2f}x faster than fp32 (median over layers, batch 1)")


if __name__ == "__main__":
    main()
