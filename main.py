"""Train and evaluate DAB-binarized networks: ``python main.py [flags]`` (see ``--help``).

    python main.py                                   # DAB-binarized Sketch-A-Net on the embedded digits set
    python main.py --dataset tuberlin --data_dir ~/data/tuberlin --model_def sketchanetwbin --tenCrop
    torchrun --nproc_per_node=4 main.py ...          # DistributedDataParallel, one process per GPU

Order of work: parse -> device and process group -> data -> model (init, binarize, move, wrap) ->
optimizer -> resume -> check folders -> epoch loop (lr, train, evaluate, log, checkpoint).
Bad input ends with one line on stderr and exit status 2, before anything is written.
"""

import math
import os
import random
import sys
import time

import numpy as np
import torch
from torch import nn

import binarize
import datasets
import models
import opts
from opts import UsageError
from train import LossNotFinite, binarization_losses, evaluate, train_one_epoch
from utils import dist
from utils.checkpoint import CheckpointError, atomic_save, load_checkpoint, rng_state, set_rng_state
from utils.log import RunLogger
from utils.schedule import lr_at

# Flags that must agree between a checkpoint and the run that resumes or evaluates it.
ARCH_KEYS = ("model_def", "binaryWeight", "binStart", "binEnd", "binarizer", "binActivation")


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(args):
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("CUDA was asked for (--device cuda / --cuda) but is not available; use --device cpu")
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def writable_target(path, flag):
    """Raise UsageError unless ``path`` exists as a writable folder or can be created."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path!r} is not writable ({probe!r} is not a writable folder); choose another path")


# Datasets whose images have one size: the original ignored --inpsize for them (its CIFAR lines pass 225).
NATIVE_SIZE = {"cifar10": 32, "cifar100": 32}


def resolve_input_size(args):
    """Use the native size of CIFAR whatever --inpsize says, as the original did; returns a note or None."""
    native = NATIVE_SIZE.get(args.dataset)
    if native is None or args.inpsize == native:
        return None
    note = (f"note: --inpsize {args.inpsize} does not apply to {args.dataset} (its images are {native}x{native}); "
            f"using {native}, as the original did")
    args.inpsize = native
    return note


def build_data(args):
    try:
        bundle = datasets.build(
            args.dataset, args.data_dir, inpsize=args.inpsize, ten_crop=args.tenCrop, fold=args.fold,
            cachemode=args.cachemode, cache_dir=args.cacheDir, skip_bad_images=args.skipBadImages,
            sketchy_variant=args.sketchyVariant, sketchy_drop_invalid=args.sketchyDropInvalid)
    except datasets.DataError as exc:
        raise UsageError(str(exc)) from None
    if args.nClasses is not None and args.nClasses != bundle.num_classes:
        raise UsageError(f"--nClasses {args.nClasses} does not match the {bundle.num_classes} classes found in "
                         f"{args.data_dir or args.dataset}; pass --nClasses {bundle.num_classes} or omit it")
    return bundle


def check_before_data(args):
    """The checks that need no data, done before reading it (--cachemode writes a cache while reading)."""
    try:
        models.check_input_size(args.model_def, args.inpsize)
        if args.binaryWeight:
            binarize.resolve_range(models.model_info(args.model_def).num_convs, args.binStart, args.binEnd)
    except ValueError as exc:
        raise UsageError(f"{args.model_def}: {exc}") from None
    for path in (args.resume, args.pretrained_file):
        if path and not os.path.isfile(path):
            raise UsageError(f"checkpoint {path!r} does not exist; give the path of a last.pth or best.pth file")
    if not args.evaluate:
        writable_target(args.logdir, "--logdir")
        writable_target(args.store, "--store")


def build_network(args, num_classes, in_channels):
    """The model of ``args``: built, initialised, binarized; not yet moved or wrapped."""
    try:
        models.check_input_size(args.model_def, args.inpsize)
        model = models.build_model(args.model_def, num_classes, in_channels, init=args.weight_init)
        if args.binActivation != "sign":
            swap_activations(model, binarize.ACTIVATIONS[args.binActivation])
        indices = binarize.binarize_weights(model, args.binStart, args.binEnd, args.binarizer) \
            if args.binaryWeight else []
    except ValueError as exc:
        raise UsageError(f"{args.model_def}: {exc}") from None
    return model, indices


def swap_activations(model, cls):
    """Replace every sign activation (BinActive) by ``cls()``."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, binarize.BinActive):
                setattr(parent, name, cls())


def make_optimizer(args, params):
    lr = args.maxlr
    if args.optimType == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=args.momentum, nesterov=args.nesterov and args.momentum > 0,
                               weight_decay=args.weightDecay)
    factories = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "adamax": torch.optim.Adamax,
                 "adadelta": torch.optim.Adadelta}
    return factories[args.optimType](params, lr=lr, weight_decay=args.weightDecay)


def check_compatible(saved_args, args, path):
    saved = saved_args or {}
    for key in ARCH_KEYS:
        if key in saved and saved[key] != getattr(args, key):
            raise UsageError(f"checkpoint {path!r} is from another model ({key}={saved[key]!r}, this run has "
                             f"{getattr(args, key)!r}); pass the same --{key} or another checkpoint")


def load_model_state(model, state, path):
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UsageError(f"checkpoint {path!r} does not fit this model ({first}); check --model_def, --nClasses, "
                         f"--binaryWeight and the bin range") from None


def make_loaders(bundle, args, world, rank, device):
    pin = device.type == "cuda"
    workers = args.workers
    train_sampler = (torch.utils.data.DistributedSampler(bundle.train, num_replicas=world, rank=rank, shuffle=True,
                                                         seed=args.manualSeed)
                     if world > 1 else None)
    gen = torch.Generator()
    train_loader = torch.utils.data.DataLoader(
        bundle.train, batch_size=args.batch_size, shuffle=train_sampler is None, sampler=train_sampler,
        num_workers=workers, pin_memory=pin, drop_last=False, generator=gen,
        # Fresh workers each epoch take their seeds from the per-epoch generator, so a resumed run
        # sees the same augmentation as an uninterrupted one; persistent workers would not.
        persistent_workers=False)
    val_sampler = dist.ShardSampler(len(bundle.val), rank, world) if world > 1 else None
    val_loader = torch.utils.data.DataLoader(
        bundle.val, batch_size=args.testbatchsize, shuffle=False, sampler=val_sampler, num_workers=workers,
        pin_memory=pin)
    return train_loader, val_loader, train_sampler, gen


def epoch_seed(seed, epoch):
    """Per-epoch seed: data order, augmentation and dropout of epoch e do not depend on how we got there."""
    return (seed * 1_000_003 + epoch * 7919) % 2**63


def run(args):
    device = pick_device(args)
    if args.ngpus > 1 and not dist.launched_by_torchrun():
        raise UsageError(f"--ngpus {args.ngpus} is replaced by torchrun: launch "
                         f"'torchrun --nproc_per_node={args.ngpus} main.py ...' instead")
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    if args.syncBN and device.type != "cuda":
        raise UsageError("--syncBN needs CUDA (SyncBatchNorm runs on GPUs only); drop --syncBN on CPU")
    if amp is not None and device.type != "cuda":
        raise UsageError(f"--amp {args.amp} needs CUDA; drop --amp on {device.type}")
    if args.summary or args.export:
        return compression_command(args, device)

    note = resolve_input_size(args)
    if note and dist.rank_from_env() == 0:
        print(note)
    check_before_data(args)
    seed_everything(args.manualSeed)
    bundle = build_data(args)
    model, bin_indices = build_network(args, bundle.num_classes, bundle.num_channels)

    # Everything a resume or an evaluation needs is read and checked before anything is written.
    start_epoch, best_acc1, resume_state = 0, -math.inf, None
    if args.resume:
        try:
            resume_state = load_checkpoint(args.resume)
        except CheckpointError as exc:
            raise UsageError(str(exc)) from None
        check_compatible(resume_state.get("args"), args, args.resume)
        load_model_state(model, resume_state["model"], args.resume)
        # Saved after validation, so the latent weights are already projected: don't project twice.
        binarize.mark_projected_(model)
        start_epoch = int(resume_state.get("epoch", 0))
        best_acc1 = float(resume_state.get("best_acc1", -math.inf))
    elif args.pretrained_file:
        load_pretrained(model, args)
    if args.start_epoch is not None:
        start_epoch = args.start_epoch

    rank, world, local_rank = dist.init(device.type)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    main_rank = rank == 0
    say = print if main_rank else (lambda *a, **k: None)

    model.to(device)
    if args.channelsLast:
        model.to(memory_format=torch.channels_last)
    if args.syncBN and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None) \
        if world > 1 else model
    criterion = nn.NLLLoss().to(device)
    optimizer = make_optimizer(args, model.parameters())
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    if resume_state is not None and not args.evaluate:
        optimizer.load_state_dict(resume_state["optimizer"])
        if scaler is not None and "scaler" in resume_state:
            scaler.load_state_dict(resume_state["scaler"])

    train_loader, val_loader, train_sampler, loader_gen = make_loaders(bundle, args, world, rank, device)
    weights = (f"{args.binarizer} weights on convs {bin_indices[0]}..{bin_indices[-1]}" if bin_indices
               else "full-precision weights")
    say(f"{args.model_def} ({weights}, {args.inpsize}x{args.inpsize}, {bundle.num_channels} channel(s), "
        f"{bundle.num_classes} classes) on {bundle.description}; device {device}"
        + (f", {world} processes" if world > 1 else ""), flush=True)

    if args.evaluate:
        metrics = evaluate(net if world == 1 else model, val_loader, criterion, device, amp=amp,
                           channels_last=args.channelsLast)
        say(f"val: loss {metrics['loss']:.4f}  top1 {metrics['top1']:.3f}  top5 {metrics['top5']:.3f}  "
            f"({metrics['count']} images{', ten-crop' if args.tenCrop else ''})")
        if args.calculateBinarizationLosses:
            report_binarization_losses(model, val_loader, device, args, None, 0, say)
        return 0

    log_dir = os.path.join(args.logdir, args.name)
    logger = RunLogger(log_dir, vars(args), tensorboard=args.tensorboard, enabled=main_rank,
                       resume=resume_state is not None)
    if main_rank:
        os.makedirs(args.store, exist_ok=True)
    last_path, best_path = os.path.join(args.store, "last.pth"), os.path.join(args.store, "best.pth")
    if resume_state is not None and "rng" in resume_state:
        set_rng_state(resume_state["rng"])

    metrics, last_epoch = None, start_epoch
    try:
        for epoch in range(start_epoch, args.epochs):
            lr = lr_at(epoch, schedule=args.learningratescheduler, maxlr=args.maxlr, minlr=args.minlr,
                       decayinterval=args.decayinterval, decaylevel=args.decaylevel)
            for group in optimizer.param_groups:
                group["lr"] = lr
            seed = epoch_seed(args.manualSeed, epoch)
            seed_everything(seed + rank)
            loader_gen.manual_seed(seed)
            if train_sampler is not None:
                train_sampler.set_epoch(epoch)
            train_m = train_one_epoch(net, train_loader, criterion, optimizer, device, epoch=epoch,
                                      print_freq=args.printfreq if args.verbose else 0, amp=amp, scaler=scaler,
                                      channels_last=args.channelsLast)
            val_m = evaluate(model, val_loader, criterion, device, amp=amp, channels_last=args.channelsLast)
            is_best = val_m["top1"] > best_acc1
            best_acc1 = max(best_acc1, val_m["top1"])
            metrics, last_epoch = val_m, epoch + 1
            say(f"epoch {epoch + 1}/{args.epochs}  lr {lr:.2e}  train loss {train_m['loss']:.4f} "
                f"top1 {train_m['top1']:.2f}  |  val loss {val_m['loss']:.4f} top1 {val_m['top1']:.2f} "
                f"top5 {val_m['top5']:.2f}  (best {best_acc1:.2f})  {train_m['seconds']:.1f}s", flush=True)
            if main_rank:
                log_epoch(logger, model, epoch, lr, train_m, val_m, best_acc1)
                state = dict(epoch=epoch + 1, model=model.state_dict(), optimizer=optimizer.state_dict(),
                             best_acc1=best_acc1, args=vars(args), rng=rng_state(),
                             num_classes=bundle.num_classes, in_channels=bundle.num_channels)
                if scaler is not None:
                    state["scaler"] = scaler.state_dict()
                atomic_save(state, last_path)
                if is_best:
                    atomic_save(state, best_path)
            dist.barrier()
    except LossNotFinite as exc:
        logger.close()
        say(f"stopped: {exc}; the last good checkpoint is kept at {last_path}", file=sys.stderr)
        return 1

    if world > 1:
        with torch.no_grad():
            checked = list(model.parameters()) + [conv.weight for _, _, conv, _ in binarize.binarized_layers(model)]
        same = dist.replicas_identical(checked, device)
        say(f"latent and binarized weights identical on all {world} ranks: {'yes' if same else 'NO'}")
    if args.calculateBinarizationLosses:
        report_binarization_losses(model, val_loader, device, args, logger, last_epoch, say)
    if metrics is not None:
        say(f"best val top1 {best_acc1:.3f}  final val top1 {metrics['top1']:.3f}  "
            f"(final top5 {metrics['top5']:.3f}, {metrics['count']} val images)")
        logger.write_json("final.json", dict(best_top1=best_acc1, final_top1=metrics["top1"],
                                             final_top5=metrics["top5"], val_images=metrics["count"]))
    else:
        say(f"nothing to train: the checkpoint is at epoch {start_epoch} of {args.epochs}")
    logger.close()
    return 0


def log_epoch(logger, model, epoch, lr, train_m, val_m, best_acc1):
    step = epoch + 1
    values = {"lr": lr, "train/loss": train_m["loss"], "train/top1": train_m["top1"], "train/top5": train_m["top5"],
              "val/loss": val_m["loss"], "val/top1": val_m["top1"], "val/top5": val_m["top5"]}
    for s in binarize.layer_stats(model):
        tag = f"binarize/conv{s['index']:02d}"
        values.update({f"{tag}/k_frac": s["k_frac"], f"{tag}/alpha": s["alpha"], f"{tag}/beta": s["beta"]})
    logger.scalars(values, step)
    logger.epoch_row(dict(epoch=step, lr=lr, train_loss=train_m["loss"], train_top1=train_m["top1"],
                          train_top5=train_m["top5"], val_loss=val_m["loss"], val_top1=val_m["top1"],
                          val_top5=val_m["top5"], best_top1=best_acc1, seconds=round(train_m["seconds"], 3)))
    logger.flush()


def report_binarization_losses(model, loader, device, args, logger, step, say):
    losses = binarization_losses(model, loader, device, channels_last=args.channelsLast)
    if not losses:
        say("binarization losses: no binarized conv (pass --binaryWeight)")
        return
    say("binarization losses (RMS of real minus binarized conv outputs on val):")
    for row in losses:
        say(f"  conv {row['index']:>3} {row['name']:<40} {row['rmse']:.6f}")
    if logger is not None:
        logger.scalars({f"binarization_rmse/conv{r['index']:02d}": r["rmse"] for r in losses}, step)
        logger.write_json("binarization_losses.json", losses)


def load_pretrained(model, args):
    """Start from the weights of a checkpoint or an export (.safetensors)."""
    path = args.pretrained_file
    if path.endswith(".safetensors"):
        from utils.export import ExportError, load_export_into
        try:
            # Evaluation takes the exported code as is; training keeps the layers binarized.
            load_export_into(model, path, keep_latent=not args.evaluate)
        except ExportError as exc:
            raise UsageError(str(exc)) from None
        return
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    check_compatible(state.get("args"), args, path)
    load_model_state(model, state["model"], path)


# Classes and channels of each dataset, for --summary and --export, which read no data.
DATASET_SHAPES = {"digits": (10, 1), "tuberlin": (250, 1), "sketchyrecognition": (125, 1), "sketchy": (125, 1),
                  "cifar10": (10, 3), "cifar100": (100, 3), "imagenet12": (1000, 3)}


def compression_command(args, device):
    """--summary and --export: no data needed."""
    resolve_input_size(args)
    num_classes, in_channels = DATASET_SHAPES[args.dataset]
    num_classes = args.nClasses or num_classes
    if args.export:
        source = args.resume or args.pretrained_file
        try:
            state = load_checkpoint(source)
        except CheckpointError as exc:
            raise UsageError(str(exc)) from None
        for key in ARCH_KEYS + ("inpsize",):  # the checkpoint knows what it is
            if key in (state.get("args") or {}):
                setattr(args, key, state["args"][key])
        num_classes = state.get("num_classes", num_classes)
        in_channels = state.get("in_channels", in_channels)
        model, _ = build_network(args, num_classes, in_channels)
        load_model_state(model, state["model"], source)
        binarize.mark_projected_(model)
        writable_target(os.path.dirname(os.path.abspath(args.export)), "--export")
        from utils.export import export_model
        report = export_model(model, args.export, dict(
            model_def=args.model_def, num_classes=num_classes, in_channels=in_channels, inpsize=args.inpsize,
            binStart=args.binStart, binEnd=args.binEnd, binaryWeight=args.binaryWeight, binarizer=args.binarizer,
            binActivation=args.binActivation))
        print(f"wrote {args.export}: {report['bytes']:,} bytes, {report['ratio']:.2f}x smaller than the fp32 "
              f"state_dict ({report['fp32_bytes']:,} bytes)")
        return 0
    model, _ = build_network(args, num_classes, in_channels)
    from utils.summary import format_summary, summarize
    weights = (f"{args.binarizer} weights on convs {args.binStart}..{args.binEnd}" if args.binaryWeight
               else "full-precision weights")
    print(format_summary(summarize(model, args.inpsize, in_channels), title=(
        f"{args.model_def}, {num_classes} classes, {in_channels} channel(s), {args.inpsize}x{args.inpsize}, {weights}")))
    return 0


def main(argv=None):
    """Entry point; returns the exit status (0 ok, 1 training stopped, 2 bad input)."""
    try:
        try:
            args = opts.parse(argv)
        except SystemExit as exc:  # argparse: --help (0) or a bad flag (2, message already printed)
            return exc.code if isinstance(exc.code, int) else 2
        return run(args)
    except UsageError as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint written is kept", file=sys.stderr)
        return 130
    finally:
        dist.cleanup()


if __name__ == "__main__":
    sys.exit(main())
