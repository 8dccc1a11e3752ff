"""Training throughput: full precision vs DAB/XNOR weight binarization vs fully binarized models.

For each model (Sketch-A-Net at 225, ResNet-18 at 224, ResNet-20 at 32; batch 128 by default, as the
original trained them at 128-512 and SD-BNN at 128) it times whole training steps (zero_grad, forward,
NLL loss, backward, Adam step, and the projection of the latent weights after it) of

    fp         the wbin architecture with full-precision weights (same convs, the baseline)
    wbin-dab   the same with DAB weights on the family's bin range
    fbin-dab   the fbin variant (binarized activations too) with DAB weights
    wbin-xnor  the wbin architecture with BWN/XNOR weights

and for ResNet-20 (SD-BNN's CIFAR model, 1 input channel as the digits)

    fp         resnet20_fp
    sdbnn      resnet20_1w1a with SD-BNN's conv: sign weights + WSD shift, ASD activations, EDE backward
    dab-asd-ede  the same with DAB weights

interleaved in one process (one step of each in turn, so all see the same machine state), and reports
the median over the repeats after warm-up, steps/s, images/s and the ratio of each step time to fp.
On CUDA, ``--amp`` and ``--channels-last`` select the fast paths, and ``--epoch-images N`` also times
a whole epoch over a generated TU-Berlin-like tree (N images of 1111x1111) read through the
decoded-image cache with 4 workers.

    python bench/bench_train.py [--models sketchanet resnet] [--batch 128] [--repeats 5] [--device auto]
"""

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import binarize  # noqa: E402
import models  # noqa: E402

SDBNN = dict(shift="wsd", activation="asd", backward="ede")
FAMILIES = {  # family -> (input size, {label: (model, weight binarizer or None, SD-BNN parts or None)})
    "sketchanet": (225, {"fp": ("sketchanetwbin", None, None), "wbin-dab": ("sketchanetwbin", "dab", None),
                         "fbin-dab": ("sketchanetfbin", "dab", None), "wbin-xnor": ("sketchanetwbin", "xnor", None)}),
    "resnet": (224, {"fp": ("resnetwbin18", None, None), "wbin-dab": ("resnetwbin18", "dab", None),
                     "fbin-dab": ("resnetfbin18", "dab", None), "wbin-xnor": ("resnetwbin18", "xnor", None)}),
    "resnet20": (32, {"fp": ("resnet20_fp", None, None), "sdbnn": ("resnet20_1w1a", "sign", SDBNN),
                      "dab-asd-ede": ("resnet20_1w1a", "dab", SDBNN)}),
}


def build(name, method, parts, num_classes, device, channels_last):
    model = models.build_model(name, num_classes, 1)
    if method is not None:
        parts = parts or {}
        shift = parts.get("shift") if method == "sign" else None
        if parts.get("activation"):
            binarize.binarize_inputs(model, parts["activation"], backward=parts.get("backward"))
        binarize.binarize_weights(model, layers=models.model_info(name).bin_layers, method=method,
                                  backward=parts.get("backward"), shift=shift)
        binarize.set_ede(model, 0.5, 2.0)  # mid-schedule EDE settings; the cost does not depend on them
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    return model.train(), optimizer


def make_step(model, optimizer, images, target, amp):
    criterion = nn.NLLLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=amp, enabled=amp is not None):
            output = model(images)
        loss = criterion(output.float(), target)
        loss.backward()
        optimizer.step()
    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_family(family, args, device, amp):
    size, configs = FAMILIES[family]
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 1, size, size, generator=gen).to(device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, args.classes, (args.batch,), generator=gen).to(device)
    steps = {}
    for label, (name, method, parts) in configs.items():
        model, optimizer = build(name, method, parts, args.classes, device, args.channels_last)
        steps[label] = make_step(model, optimizer, images, target, amp)
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    sync(device)
    times = {label: [] for label in steps}
    for _ in range(args.repeats):
        for label, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[label].append(time.perf_counter() - start)
    med = {label: statistics.median(ts) for label, ts in times.items()}
    print(f"{family} ({', '.join(sorted({c[0] for c in configs.values()}))}) at {size}x{size}, batch {args.batch}, "
          f"{args.classes} classes, "
          f"device {device}, amp {args.amp}, channels_last {args.channels_last}, median of {args.repeats}:")
    for label, t in med.items():
        print(f"  {label:10s} {t * 1e3:9.1f} ms/step  {1 / t:7.3f} steps/s  {args.batch / t:8.1f} images/s  "
              f"{t / med['fp']:.3f}x fp")
    return med


def bench_epoch(args, device, amp):
    """One epoch of sketchanetwbin (DAB) over a generated TU-Berlin-sized tree, through the cache."""
    import tempfile

    import datasets
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_data import make_tree  # noqa: E402
    root = tempfile.mkdtemp(prefix="dabnet-epoch-")
    classes = 250
    per_class = max(1, args.epoch_images // classes)
    make_tree(root, classes, per_class, 1111)
    start = time.perf_counter()
    bundle = datasets.build("tuberlin", root, inpsize=225, cachemode=True)
    build_s = time.perf_counter() - start
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=args.batch, shuffle=True, num_workers=4,
                                         pin_memory=device.type == "cuda", drop_last=True)
    model, optimizer = build("sketchanetwbin", "dab", None, bundle.num_classes, device, args.channels_last)
    criterion = nn.NLLLoss()
    for epoch in range(2):  # the first epoch warms up cudnn and the workers
        sync(device)
        start = time.perf_counter()
        for images, target in loader:
            images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                output = model(images)
            criterion(output.float(), target).backward()
            optimizer.step()
        sync(device)
        seconds = time.perf_counter() - start
    print(f"epoch over {len(bundle.train)} training images (cache built in {build_s:.1f}s): {seconds:.1f}s, "
          f"{len(bundle.train) / seconds:.1f} images/s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sketchanet", "resnet", "resnet20"], choices=sorted(FAMILIES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--classes", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--epoch-images", type=int, default=0, help="also time one epoch over N generated images")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but CUDA is not available; use --device cpu")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        from launch.build import keep_freed_memory
        keep_freed_memory()  # as main.py does on the CPU
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    results = {family: bench_family(family, args, device, amp) for family in args.models}
    if args.epoch_images:
        bench_epoch(args, device, amp)
    return results


if __name__ == "__main__":
    main()
