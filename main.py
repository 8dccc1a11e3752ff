"""Train and evaluate binarized networks: ``python main.py [flags]`` (see ``--help``).

    python main.py                                   # DAB-binarized Sketch-A-Net on the embedded digits set
    python main.py --dataset tuberlin --data_dir ~/data/tuberlin --model_def sketchanetwbin --tenCrop
    torchrun --nproc_per_node=4 main.py ...          # DistributedDataParallel, one process per GPU

The script of a run: parse the flags -> plan the run folders and what to resume -> read the data ->
build the network and load its weights -> evaluate only, or fit (per epoch: learning rate and EDE
settings, train, evaluate, checkpoint, log) -> report. Bad input ends with one line on stderr and exit
status 2 before anything is written; SIGTERM, SIGUSR1 and Ctrl-C end a run after the current step
with a checkpoint (exit status 128 + the signal number), from which ``--resume auto`` continues exactly.
"""

import math
import os
import random
import re
import sys
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

import binarize
import datasets
import opts
from utils.errors import UsageError
from train import LossNotFinite, evaluate, train_one_epoch
from launch import build
from utils import dist
from analysis.binerrors import report_losses
from utils.checkpoint import TrainingCheckpoints
from utils.errors import CheckpointError, CheckpointWriteError
from utils.log import RunLogger
from launch.folders import plan_run, prepare_folders
from utils.signals import StopRequest
from utils.schedule import lr_at


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def main(argv=None):
    """Entry point; returns the exit status (0 done, 1 training failed, 2 bad input, 128 + N signal N)."""
    args = None
    try:
        try:
            args = opts.parse(argv)
        except SystemExit as exc:  # argparse: --help (0) or a bad flag (2, message already printed)
            return exc.code if isinstance(exc.code, int) else 2
        with StopRequest() as stop:
            return run(args, stop)
    except (UsageError, CheckpointError) as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 2
    except CheckpointWriteError as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, without the checkpoint of this step
        last = os.path.join(getattr(args, "store", None) or "", "last.pth")
        kept = f"the last checkpoint written is kept at {last}" if os.path.isfile(last) else "no checkpoint was written"
        print(f"interrupted; {kept}", file=sys.stderr)
        return 130
    finally:
        dist.cleanup()


def run(args, stop):
    device, amp = build.device_and_amp(args)
    if args.summary or args.export:
        from launch.tools import compress_command
        return compress_command(args)
    note = build.input_size_note(args)
    plan = plan_run(args)
    build.check_model(args)
    rank, world, device = build.join_processes(device)
    if device.type == "cpu":
        build.keep_freed_memory()
    say = print if rank == 0 else (lambda *a, **k: None)
    if note:
        say(note)
    seed_everything(args.manualSeed)
    bundle = build.data(args)
    model = load_network(args, bundle, plan, say)
    model, net = build.place(model, args, device, world)
    train_loader, val_loader, batches = datasets.make_loaders(
        bundle.train, bundle.val, batch_size=args.batch_size, test_batch_size=args.testbatchsize,
        workers=args.workers, seed=args.manualSeed, rank=rank, world=world, pin=device.type == "cuda")
    weights = (f"{args.binarizer} weights on convs {binarize.format_indices(args.binLayers)}" if args.binaryWeight
               else "real weights")
    say(f"{args.model_def} ({weights}, {args.inpsize}x{args.inpsize}, {bundle.num_channels} channel(s), "
        f"{bundle.num_classes} classes) on {bundle.description}; device {device}"
        + (f", {world} processes" if world > 1 else ""), flush=True)
    if args.evaluate:
        m = evaluate(model, val_loader, nn.NLLLoss(), device, amp=amp, channels_last=args.channelsLast)
        say(f"val: loss {m['loss']:.4f}  top1 {m['top1']:.3f}  top5 {m['top5']:.3f}  ({m['count']} images"
            f"{', ten-crop' if args.tenCrop else ''})")
        report_losses(args, model, val_loader, device, None, 0, say)
        return 0
    loaders = (train_loader, val_loader, batches)
    try:
        return fit(args, plan, bundle, model, net, loaders, device, amp, stop, say)
    except datasets.DataError as exc:  # a file that fails to decode mid-epoch (raised in a loader worker)
        found = re.findall(r"DataError: (.+)", str(exc))
        raise UsageError(found[-1] if found else str(exc).strip().splitlines()[-1]) from None


def load_network(args, bundle, plan, say):
    """The network with the weights it starts from: a resumed checkpoint, a pretrained file or an export."""
    if args.packed != "off":
        from launch.tools import packed_model
        return packed_model(args, say)
    model = build.network(args, bundle.num_classes, bundle.num_channels)
    if plan.state is not None:
        build.resumed(model, args, plan.state, plan.resume_path)
    elif args.pretrained_file:
        build.pretrained(model, args, say)
    return model


def fit(args, plan, bundle, model, net, loaders, device, amp, stop, say):
    train_loader, val_loader, batches = loaders
    optimizer = build.optimizer(args, model.parameters())
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    ckpt = TrainingCheckpoints(plan.last_path, plan.best_path, model, optimizer, scaler, batches, dict(
        args=vars(args), num_classes=bundle.num_classes, in_channels=bundle.num_channels, classes=list(bundle.classes)))
    start, step, best = 0, 0, dict(top1=-math.inf, top5=-math.inf)
    if plan.state is not None:
        start, step, best = ckpt.restore(plan.state)
        start, step = (args.start_epoch, 0) if args.start_epoch is not None else (start, step)
    if start >= args.epochs and not step:  # a finished run asked to go on: leave its folders as they are
        say(f"nothing to train: {plan.resume_path} is at epoch {start} of {args.epochs}")
        return 0
    teacher = build.teacher(args, bundle.num_classes, bundle.num_channels, device)
    loss_fn = build.TrainingLoss(args.criterion, args.labelSmoothing, teacher, args.kdT, args.kdAlpha, amp)
    if dist.is_main():
        prepare_folders(plan)
    dist.barrier()
    logger = RunLogger(plan.log_dir, vars(args), tensorboard=args.tensorboard, enabled=dist.is_main(),
                       resume_epoch=start if plan.state is not None else None)
    say(f"run folder {plan.log_dir}, checkpoints in {plan.store}")
    if plan.state is not None:
        # Epochs counted from 1, as the stop message counts them.
        say(f"resumed from {plan.resume_path} " + (f"at epoch {start + 1}, step {step} of {batches.steps}" if step
                                                   else f"after epoch {start}"))
    if batches.drops_tail:
        say("note: the last training batch of each epoch would hold 1 sample per process; it is dropped "
            "(BatchNorm needs 2), and the shuffle changes which sample that is")
    run = SimpleNamespace(args=args, net=net, loader=train_loader, batches=batches, loss_fn=loss_fn,
                          optimizer=optimizer, scaler=scaler, device=device, amp=amp, stop=stop, ckpt=ckpt)
    metrics = None
    try:
        for epoch in range(start, args.epochs):
            train_m = train_epoch(run, epoch, step, plan.state if epoch == start and step else None, best)
            if train_m["stopped"]:
                say(f"stopped by {stop.name} at epoch {epoch + 1}, step {train_m['step']} of {batches.steps}; "
                    f"{plan.last_path} holds that point: rerun the same command with --resume auto to continue")
                return stop.exit_status
            step = 0
            dist.broadcast_buffers(model)  # every rank evaluates and saves the same BatchNorm statistics
            metrics = evaluate(model, val_loader, nn.NLLLoss(), device, amp=amp, channels_last=args.channelsLast)
            is_best = metrics["top1"] > best["top1"]
            best = dict(top1=max(best["top1"], metrics["top1"]), top5=max(best["top5"], metrics["top5"]))
            say(f"epoch {epoch + 1}/{args.epochs}  lr {train_m['lr']:.2e}  train loss {train_m['loss']:.4f} "
                f"top1 {train_m['top1']:.2f}  |  val loss {metrics['loss']:.4f} top1 {metrics['top1']:.2f} "
                f"top5 {metrics['top5']:.2f}  (best {best['top1']:.2f})  {train_m['seconds']:.1f}s", flush=True)
            ckpt.save(epoch + 1, 0, best, is_best=is_best)
            logger.epoch(model, epoch + 1, train_m, metrics, best["top1"])
            if stop.requested(device):
                say(f"stopped by {stop.name} after epoch {epoch + 1}; rerun with --resume auto to continue")
                return stop.exit_status
        return finish(args, model, val_loader, device, best, metrics, logger, say)
    except LossNotFinite as exc:
        kept = f"the last good checkpoint is kept at {plan.last_path}" if os.path.exists(plan.last_path) else \
            "no checkpoint was written yet"
        say(f"stopped: {exc}; {kept}", file=sys.stderr)
        return 1
    finally:
        logger.close()


def train_epoch(run, epoch, step, position, best):
    """Set the epoch's learning rate, EDE settings and seeds (or a mid-epoch position), then train it."""
    args = run.args
    lr = lr_at(epoch, schedule=args.learningratescheduler, maxlr=args.maxlr, minlr=args.minlr,
               decayinterval=args.decayinterval, decaylevel=args.decaylevel, epochs=args.epochs)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    ede = binarize.ede_schedule(epoch, args.epochs, args.edeTmin, args.edeTmax) if args.backward == "ede" else None
    if ede:
        binarize.set_ede(run.net, *ede)
    seed_everything(datasets.epoch_seed(args.manualSeed, epoch) + dist.rank())
    run.batches.set_epoch(epoch, step)
    totals, seconds = run.ckpt.continue_epoch(position, dist.rank()) if position is not None else (None, 0.0)

    def after_step(done, totals, seconds):
        stopping = run.stop.requested(run.device)
        if stopping or (args.saveEvery and done % args.saveEvery == 0 and done < run.batches.steps):
            run.ckpt.save(epoch, done, best, totals, seconds)
        return stopping

    m = train_one_epoch(run.net, run.loader, run.loss_fn, run.optimizer, run.device, epoch=epoch,
                        steps=run.batches.steps, start_step=step, totals=totals, seconds=seconds, amp=run.amp,
                        scaler=run.scaler, channels_last=args.channelsLast, print_freq=args.printfreq,
                        verbose=args.verbose, after_step=after_step)
    m.update(lr=lr, ede_t=ede[0] if ede else "", ede_k=ede[1] if ede else "")
    return m


def finish(args, model, val_loader, device, best, metrics, logger, say):
    """The end of a run: replica check under torchrun, binarization losses, final.json."""
    world = dist.world_size()
    if world > 1:
        with torch.no_grad():
            checked = (list(model.parameters()) + list(model.buffers())
                       + [m.weight for _, _, m, _ in binarize.binarized_layers(model)])
        same = dist.replicas_identical(checked, device)
        say(f"latent and binarized weights and BatchNorm statistics identical on all {world} ranks: "
            f"{'yes' if same else 'NO'}")
    report_losses(args, model, val_loader, device, logger, args.epochs, say)
    say(f"best val top1 {best['top1']:.3f}  final val top1 {metrics['top1']:.3f}  "
        f"(final top5 {metrics['top5']:.3f}, {metrics['count']} val images)")
    logger.write_json("final.json", dict(best_top1=best["top1"], final_top1=metrics["top1"],
                                         best_top5=best["top5"], final_top5=metrics["top5"],
                                         epochs_done=args.epochs, val_images=metrics["count"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
