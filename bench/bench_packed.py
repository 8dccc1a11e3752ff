"""Inference speed and memory: fp32 convs against bit-packed convs (deploy/packed.py) on exported models.

For each model (Sketch-A-Net fbin at 225, ResNet-18 fbin at 224, and SD-BNN's ResNet-20 1w1a at 32 when
it is registered) the script exports the binarized model (DAB codes by default), rebuilds it dense
(``deploy.export.load_export``) and packed (``deploy.packed.load_packed`` with the dense fallback, so a
binarized layer that cannot run packed, such as ResNet-18's classifier on the pooled real features,
stays dense and is listed). It then runs the whole benchmark once per thread count of ``--threads``
(default 1 and all cores), with torch's and numba's pools both set to that count, and measures:

    per binary conv     each PackedConv2d called on the very input it receives in the packed model
                        (captured by a forward pre-hook during one forward at each batch size: floats
                        in the layout the model hands over, or ``PackedBits`` when the conv before it
                        passes bits through folded BN, ReLU, pooling and signs), against ``F.conv2d`` in
                        fp32 with the dense weight on a random +-1 NCHW input of the same shape, as in
                        the dense model. The "io" column says whether the packed conv reads bits or
                        floats and writes bits or floats in the packed model (its captured input, and
                        its output seen by a forward hook);
    whole model         the dense model against the packed one on a random image batch, with the share
                        of the packed forward spent outside the binary convs (packed whole minus the sum
                        of the packed conv times above, over packed whole, clamped to [0, 1]) and the
                        Amdahl ceiling, dense whole over that remainder ("inf" when nothing remains): the
                        speedup if every binary conv took no time. Both are estimates, since the conv
                        times are measured alone (warm caches, no neighbours), not inside the forward;
    memory              the peak live memory of tensors and arrays during one forward: the peak of
                        torch's CPU allocations (the torch profiler's allocation and free events
                        replayed in time order) plus the peak of numpy's (tracemalloc: the packed convs'
                        outputs; buffers allocated inside numba kernels are not counted), an upper bound
                        since the two peaks need not coincide; and the bytes the weights take
                        (parameters and buffers, plus the numpy arrays the packed convs keep for their
                        kernels: blocked weight words, tap tables, scales, thresholds).

The header names the CPU, whether it has AVX-512 VPOPCNTDQ, AVX-512F and AVX2, and the popcount path
the kernels compile to. Timings are medians over ``--repeats`` after ``--warmup`` calls, the two sides
interleaved call by call so that both see the same machine state. After a short summary per thread
count, the last lines are for the largest thread count: per batch, the spread of the per-layer
speedups over the binary convs of all the models; the median per-layer speedup at batch 1; and, last,
each model's whole-model speedup at batch 1. ``--quick`` (5 repeats, 2 warm-up calls, batch 1, no
memory; explicit flags still win) is for smoke runs.

    python bench/bench_packed.py [--models sketchanetfbin resnetfbin18] [--batches 1 16] [--threads 1 2]
    python bench/bench_packed.py --quick --models resnet20_1w1a --threads 1     # smoke run
"""

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import binarize  # noqa: E402
import models  # noqa: E402
from deploy.export import export_model, load_export  # noqa: E402
from deploy.kernels import kernel_path  # noqa: E402
from deploy.packed import PackedBits, PackedConv2d, load_packed, report_line  # noqa: E402

DEFAULT_MODELS = ("sketchanetfbin", "resnetfbin18", "resnet20_1w1a")
CPU_FLAGS = ("avx512_vpopcntdq", "avx512f", "avx2")
DEFAULTS = dict(repeats=20, warmup=3, batches=[1, 16])
QUICK = dict(repeats=5, warmup=2, batches=[1])  # and no memory


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


def cpu_description():
    """(CPU model name, {flag: present} for CPU_FLAGS), from /proc/cpuinfo where there is one."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name is None:
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return name or platform.processor() or "unknown CPU", {flag: flag in flags for flag in CPU_FLAGS}


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
    """Bytes of the parameters and buffers, plus the numpy arrays each packed conv keeps for its kernels (its
    blocked weight words, tap tables, scales and thresholds: whatever arrays it holds as attributes)."""
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    for m in model.modules():
        if isinstance(m, PackedConv2d):
            total += sum(v.nbytes for v in vars(m).values() if isinstance(v, np.ndarray))
    return total


def kind(value):
    """"bits" for PackedBits, "float" for a tensor."""
    return "bits" if isinstance(value, PackedBits) else "float"


def snapshot(value):
    """A private copy of a conv's input, so that later in-place work in the model cannot change it; a tensor
    keeps its strides (channels-last stays channels-last)."""
    if isinstance(value, PackedBits):
        return PackedBits(value.words.copy(), value.channels)
    return value.detach().clone()


def capture_inputs(model, channels, size, batch):
    """{name: (input, io)} of every PackedConv2d of ``model`` during one forward at ``batch``: the input object
    it was called with (a copy) and "in->out", each "bits" or "float"."""
    inputs, outputs, hooks = {}, {}, []

    def before(key, args):
        if key not in inputs:
            inputs[key] = snapshot(args[0])

    def after(key, out):
        outputs.setdefault(key, kind(out))

    # the hooks return None, so the model's own inputs and outputs pass through unchanged
    for name, m in model.named_modules():
        if isinstance(m, PackedConv2d):
            hooks.append(m.register_forward_pre_hook(lambda mod, args, key=name: before(key, args)))
            hooks.append(m.register_forward_hook(lambda mod, args, out, key=name: after(key, out)))
    try:
        x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return {name: (value, f"{kind(value)}->{outputs[name]}") for name, value in inputs.items()}


def bench_layers(name, dense, packed, report, channels, size, args):
    """Per-layer rows: (model, index, name, geometry, batch, io, dense s, packed s), each packed conv timed on
    the input it gets in the packed model, the dense conv on a random +-1 NCHW float input of that shape."""
    convs, packs = dict(dense.named_modules()), dict(packed.named_modules())
    captured = {batch: capture_inputs(packed, channels, size, batch) for batch in args.batches}
    rows = []
    for row in report:
        if not row["packed"]:
            continue
        conv, pconv = convs[row["name"]], packs[row["name"]]
        for batch in args.batches:
            xp, io = captured[batch][row["name"]]
            _, cin, h, w = xp.shape
            geometry = (f"{cin}->{conv.out_channels} k{conv.kernel_size[0]} s{conv.stride[0]} "
                        f"p{conv.padding[0]} {h}x{w}")
            gen = torch.Generator().manual_seed(batch)
            x = torch.where(torch.rand(tuple(xp.shape), generator=gen) > 0.5, 1.0, -1.0)
            with torch.no_grad():
                td, tp = interleaved(lambda: F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding),
                                     lambda: pconv(xp), args.warmup, args.repeats)
            rows.append((name, row["index"], row["name"], geometry, batch, io, td, tp))
    return rows


def print_layers(rows, batches):
    """The per-layer table, then per batch the median speedup and the convs' total times."""
    print(f"{'conv':>4} {'name':<28} {'geometry':<30} {'batch':>5} {'io':<12} {'fp32 ms':>9} {'packed ms':>9} "
          f"{'speedup':>8}")
    for _, index, lname, geometry, batch, io, td, tp in rows:
        print(f"{index:>4} {lname:<28} {geometry:<30} {batch:>5} {io:<12} {td * 1e3:9.3f} {tp * 1e3:9.3f} "
              f"{td / tp:7.2f}x")
    for batch in batches:
        ratios = [td / tp for *_, b, _, td, tp in rows if b == batch]
        total_d = sum(td for *_, b, _, td, tp in rows if b == batch)
        total_p = sum(tp for *_, b, _, td, tp in rows if b == batch)
        print(f"  batch {batch}: median speedup {statistics.median(ratios):.2f}x over {len(ratios)} binary convs, "
              f"their total {total_d * 1e3:.2f} ms fp32 -> {total_p * 1e3:.2f} ms packed "
              f"({total_d / total_p:.2f}x)")


def amdahl(dense_s, packed_s, convs_s):
    """(share of the packed forward outside the binary convs, clamped to [0, 1]; dense over that remainder,
    inf when the convs' times add up to the whole or more)."""
    rest = packed_s - convs_s
    return min(1.0, max(0.0, rest / packed_s)), (dense_s / rest if rest > 0 else float("inf"))


def bench_whole(dense, packed, channels, size, rows, args):
    """Time the two models at each batch and print a line per batch; returns {batch: (dense s, packed s)}."""
    wholes = {}
    for batch in args.batches:
        x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            td, tp = interleaved(lambda: dense(x), lambda: packed(x), args.warmup, args.repeats)
            memory = "" if args.no_memory else (f", peak live memory {peak_bytes(lambda: dense(x)) / 2**20:.1f} MiB "
                                                f"dense, {peak_bytes(lambda: packed(x)) / 2**20:.1f} MiB packed")
        share, ceiling = amdahl(td, tp, sum(t for *_, b, _, _, t in rows if b == batch))
        ceiling = "inf" if ceiling == float("inf") else f"{ceiling:.2f}x"
        print(f"    batch {batch:>2}: dense {td * 1e3:8.2f} ms, packed {tp * 1e3:8.2f} ms: {td / tp:.2f}x "
              f"({batch / tp:.1f} images/s); fp layers {share:.0%} of packed time, Amdahl ceiling {ceiling}{memory}")
        wholes[batch] = (td, tp)
    return wholes


def bench_model(name, loaded, args):
    """The per-layer table and the whole-model lines of one model; returns (rows, {batch: (dense s, packed s)})."""
    dense, packed, report, channels, size = loaded
    print(f"\n{name} (input {channels}x{size}x{size}, {args.method} weights): {report_line(report)}")
    rows = bench_layers(name, dense, packed, report, channels, size, args)
    print_layers(rows, args.batches)
    print(f"  whole model ({len(report)} binarized layers, {sum(r['packed'] for r in report)} packed):")
    wholes = bench_whole(dense, packed, channels, size, rows, args)
    print(f"    weights in memory: {weight_bytes(dense) / 2**20:.2f} MiB dense, {weight_bytes(packed) / 2**20:.2f} "
          f"MiB packed")
    return rows, wholes


def set_threads(count):
    """Set numba's and torch's thread pools to ``count``; returns what each reports. numba's first call
    launches its OpenMP layer, which resets torch's count, so numba goes first."""
    import numba
    numba.set_num_threads(count)
    torch.set_num_threads(count)
    return torch.get_num_threads(), numba.get_num_threads()


def print_header(args):
    """The CPU, its popcount-relevant flags, the kernels' path, the versions and the timing settings."""
    import numba
    cpu, flags = cpu_description()
    print(f"CPU: {cpu}; " + ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in flags.items()))
    print(f"kernel path: {kernel_path()}")
    print(f"torch {torch.__version__}, numba {numba.__version__}; threads {' '.join(map(str, args.threads))}; "
          f"{args.repeats} repeats after {args.warmup} warm-up calls, medians")


def conv_ratios(rows, batch):
    """Per-layer speedups (fp32 over packed) at ``batch``."""
    return [td / tp for *_, b, _, td, tp in rows if b == batch]


def whole_ratios(results, batch):
    """Whole-model speedups at ``batch``, in model order."""
    return [wholes[batch][0] / wholes[batch][1] for _, wholes in results.values()]


def print_summary(by_threads, names, batches):
    """A compact line per thread count, then the closing lines for the largest thread count."""
    print(f"\nsummary (models: {' / '.join(names)}):")
    for threads, results in by_threads.items():
        rows = [row for model_rows, _ in results.values() for row in model_rows]
        wholes = "; ".join(f"batch {b}: " + " / ".join(f"{r:.2f}x" for r in whole_ratios(results, b))
                           for b in batches)
        print(f"  threads {threads}: binary convs median {statistics.median(conv_ratios(rows, 1)):.2f}x (batch 1); "
              f"whole models {wholes}")
    threads = max(by_threads)
    results = by_threads[threads]
    rows = [row for model_rows, _ in results.values() for row in model_rows]
    print(f"\nthreads {threads}:")
    for batch in batches:
        ratios = conv_ratios(rows, batch)
        print(f"all models, batch {batch}: median {statistics.median(ratios):.2f}x, min {min(ratios):.2f}x, "
              f"max {max(ratios):.2f}x over {len(ratios)} binary convs")
    print(f"binary convs: packed is {statistics.median(conv_ratios(rows, 1)):.2f}x faster than fp32 "
          f"(median over layers, batch 1)")
    print(f"whole models: packed is {' / '.join(f'{r:.2f}x' for r in whole_ratios(results, 1))} faster than fp32 "
          f"(batch 1) ({' / '.join(names)})")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv=None):
    """The command line, with the --quick or normal defaults filled in and checked."""
    parser = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"models to run (default: those of {', '.join(DEFAULT_MODELS)} that are registered)")
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes (default 1 16)")
    parser.add_argument("--repeats", type=int, help="timed calls per measurement (default 20)")
    parser.add_argument("--warmup", type=int, help="untimed calls first (default 3)")
    parser.add_argument("--threads", nargs="+", type=int, default=None,
                        help="thread counts of torch and numba, one full run each (default: 1 and all cores)")
    parser.add_argument("--method", default="dab", choices=binarize.weight_methods(), help="weight binarizer")
    parser.add_argument("--classes", type=int, default=10, help="number of classes of the models (default 10)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 5 repeats after 2 warm-up calls, batch 1 only, no memory (flags given "
                             "explicitly still win)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.no_memory = args.no_memory or args.quick
    check_args(parser, args)
    return args


def check_args(parser, args):
    """Reject bad values with one line naming the fix; fill in the default thread counts."""
    import numba
    cores = len(os.sched_getaffinity(0))
    args.threads = list(dict.fromkeys(args.threads or [1, cores]))
    limit = numba.config.NUMBA_NUM_THREADS
    if min(args.threads) < 1 or max(args.threads) > limit:
        parser.error(f"--threads {' '.join(map(str, args.threads))}: each count must be 1 to {limit} "
                     f"(numba's pool size)")
    if min(args.batches) < 1 or 1 not in args.batches:
        parser.error("--batches must be positive and include 1 (the summary lines are at batch 1)")
    args.batches = list(dict.fromkeys(args.batches))
    if args.repeats < 1 or args.warmup < 0:
        parser.error(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    if args.classes < 1:
        parser.error(f"--classes must be >= 1, got {args.classes}")
    known = models.list_models()
    unknown = [n for n in args.models or () if n not in known]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}: pick from {', '.join(known)}")


def main(argv=None):
    args = parse_args(argv)
    names = args.models or [n for n in DEFAULT_MODELS if n in models.list_models()]
    print_header(args)
    by_threads = {}
    with tempfile.TemporaryDirectory() as folder:
        loaded = {}
        for name in names:
            path, channels, size = export_binarized(name, args.method, args.classes, folder)
            packed, _, report = load_packed(path, fallback=True)
            loaded[name] = (load_export(path)[0], packed, report, channels, size)
    for threads in args.threads:
        got_torch, got_numba = set_threads(threads)
        print(f"\n=== threads {threads} (torch {got_torch}, numba {got_numba}) ===")
        by_threads[threads] = {name: bench_model(name, loaded[name], args) for name in names}
    print_summary(by_threads, names, args.batches)


if __name__ == "__main__":
    main()
