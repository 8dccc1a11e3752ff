"""Train and evaluate binarized networks: ``python main.py [flags]`` (see ``--help``).

    python main.py                                   # DAB-binarized Sketch-A-Net on the embedded digits set
    python main.py --dataset tuberlin --data_dir ~/data/tuberlin --model_def sketchanetwbin --tenCrop
    torchrun --nproc_per_node=4 main.py ...          # DistributedDataParallel, one process per GPU

The script of a run: parse the flags -> plan the run folders and what to resume -> read the data ->
build the network and load its weights -> evaluate only, or fit (per epoch: learning rate and EDE
settings, train, evaluate, log, checkpoint) -> report. Bad input ends with one line on stderr and exit
status 2 before anything is written; SIGTERM, SIGUSR1 and Ctrl-C end a run after the current step
with a checkpoint (exit status 128 + the signal number), from which ``--resume auto`` continues exactly.
A crash at any other point (kill -9, a full disk) leaves files from which ``--resume auto`` ends the run
with every epoch logged once and best.pth holding the best epoch, as an uninterrupted run would.
"""

import math
import os
import random
import re
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import binarize
import datasets
import opts
from analysis.binerrors import report_losses
from launch import build
from launch.folders import plan_folders, prepare_folders
from launch.tools import load_packed_model, run_model_tool
from train import LossNotFinite, evaluate, train_one_epoch
from utils import dist
from utils.checkpoint import TrainingCheckpoints
from utils.errors import CheckpointError, CheckpointWriteError, UsageError
from utils.log import RunLogger
from utils.schedule import lr_at
from utils.signals import StopRequest


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def main(argv=None):
    """Entry point; returns the exit status (0 done, 1 training failed, 2 bad input, 128 + N signal N)."""
    notes, plan = [], None
    try:
        try:
            args = opts.parse(argv, notes=notes)
        except SystemExit as exc:  # argparse: --help (0) or a bad flag (2, message already printed)
            return exc.code if isinstance(exc.code, int) else 2
        device, amp = build.choose_device(args)
        given = opts.given_options(argv)
        if args.summary or args.export:
            return run_model_tool(args, given)
        plan = plan_folders(args, given)  # the options the run uses: the command's, completed from its checkpoint
        with StopRequest() as stop:
            return execute(plan.options, plan, device, amp, stop, notes + plan.notes)
    except (UsageError, CheckpointError) as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 2
    except CheckpointWriteError as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, without the checkpoint of this step
        last = plan.last_path if plan is not None else None
        kept = (f"the last checkpoint written is kept at {last}" if last and os.path.isfile(last)
                else "no checkpoint was written")
        print(f"interrupted; {kept}", file=sys.stderr)
        return 130
    finally:
        dist.cleanup()


def execute(args, plan, device, amp, stop, notes=()):
    """Run ``args`` in the folders of ``plan``: read the data, build the network, then evaluate or train it.
    ``notes`` are printed first (by rank 0). Returns the exit status."""
    build.check_model(args)
    rank, world, device = build.join_processes(device)
    if device.type == "cpu":
        build.keep_freed_memory()
    say = print if rank == 0 else (lambda *a, **k: None)
    for note in notes:
        say(note)
    seed_everything(args.manualSeed)
    bundle = build.load_data(args)
    model = load_network(args, bundle, plan, say)
    model, net = build.place_model(model, args, device, world)
    loaders = datasets.make_loaders(
        bundle.train, bundle.val, batch_size=args.batch_size, test_batch_size=args.testbatchsize,
        workers=args.workers, seed=args.manualSeed, rank=rank, world=world, pin=device.type == "cuda")
    weights = (f"{args.binarizer} weights on convs {binarize.format_indices(args.binLayers)}" if args.binaryWeight
               else "real weights")
    say(f"{args.model_def} ({weights}, {args.inpsize}x{args.inpsize}, {bundle.num_channels} channel(s), "
        f"{bundle.num_classes} classes) on {bundle.description}; device {device}"
        + (f", {world} processes" if world > 1 else ""), flush=True)
    if args.evaluate:
        return evaluate_only(args, model, loaders[1], device, amp, say)
    try:
        return fit(args, plan, bundle, model, net, loaders, device, amp, stop, say)
    except datasets.DataError as exc:  # a file that fails to decode mid-epoch (raised in a loader worker)
        found = re.findall(r"DataError: (.+)", str(exc))
        raise UsageError(found[-1] if found else str(exc).strip().splitlines()[-1]) from None


def load_network(args, bundle, plan, say):
    """The network with the weights it starts from: a resumed checkpoint, a pretrained file or an export."""
    if args.packed != "off":
        return load_packed_model(args, say)
    model = build.build_network(args, bundle.num_classes, bundle.num_channels)
    if plan.state is not None:
        build.load_resumed(model, args, plan.state, plan.resume_path)
    elif args.pretrained_file:
        build.load_pretrained(model, args, say)
    return model


def binarization_report(args, model, loader, device, logger, step, say):
    """The binarization errors --calculateBinarizationLosses and --calculateWeightBinarizationLosses ask for."""
    report_losses(model, loader, device, logger, step, say, inputs=args.calculateBinarizationLosses,
                  weights=args.calculateWeightBinarizationLosses, channels_last=args.channelsLast)


def evaluate_only(args, model, val_loader, device, amp, say):
    """--evaluate: print the validation metrics (and the binarization errors asked for); writes nothing."""
    m = evaluate(model, val_loader, nn.NLLLoss(), device, amp=amp, channels_last=args.channelsLast)
    say(f"val: loss {m['loss']:.4f}  top1 {m['top1']:.3f}  top5 {m['top5']:.3f}  ({m['count']} images"
        f"{', ten-crop' if args.tenCrop else ''})")
    binarization_report(args, model, val_loader, device, None, 0, say)
    return 0


@dataclass
class Training:
    """What the epochs of one training run share; the settings are read from the flags."""

    model: nn.Module             # the network (its state is what checkpoints hold)
    net: nn.Module               # what trains: the DDP wrapper of ``model`` under torchrun, else ``model``
    train_loader: object
    val_loader: object
    batches: object              # the epoch plan of the training loader (steps, set_epoch, order)
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: object               # the gradient scaler of --amp fp16, else None
    device: torch.device
    amp: object                  # the autocast dtype, or None
    stop: StopRequest
    ckpt: TrainingCheckpoints
    logger: RunLogger
    say: object                  # print on rank 0, silent elsewhere


def fit(args, plan, bundle, model, net, loaders, device, amp, stop, say):
    """Train from where ``plan`` starts (a fresh run or a checkpoint) to --epochs; returns the exit status."""
    train_loader, val_loader, batches = loaders
    optimizer = build.make_optimizer(args, model.parameters())
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    recorded = plan.record(vars(args))
    facts = build.resolved_facts(args, model, bundle, dist.world_size())
    ckpt = TrainingCheckpoints(plan.last_path, plan.best_path, model, optimizer, scaler, batches, dict(
        args=recorded, facts=facts, num_classes=bundle.num_classes, in_channels=bundle.num_channels,
        classes=list(bundle.classes)))
    start, step, best = starting_point(args, plan, ckpt)
    reporting = start >= args.epochs and report_missing(args, plan, start, device)
    if start >= args.epochs and not reporting:  # a finished run asked to go on: leave its folders as they are
        say(f"nothing to train: {plan.resume_path} is at epoch {start} of {args.epochs}")
        return 0
    teacher = build.load_teacher(args, bundle.num_classes, bundle.num_channels, device)
    loss_fn = build.TrainingLoss(args.criterion, args.labelSmoothing, teacher, args.kdT, args.kdAlpha, amp)
    logger = open_logs(args, plan, recorded, facts, (start, step, batches), say)
    training = Training(model, net, train_loader, val_loader, batches, loss_fn, optimizer, scaler, device, amp,
                        stop, ckpt, logger, say)
    try:
        if reporting:
            say(f"{plan.resume_path} is at epoch {start} of {args.epochs} but the run stopped before its final "
                f"report: writing it")
            return finish(args, training, best, evaluate(model, val_loader, nn.NLLLoss(), device, amp=amp,
                                                         channels_last=args.channelsLast))
        if not resumes_own_last(args, plan):  # every log row needs a last.pth behind it: see train_epochs
            ckpt.begin(start, step, best, resumed=plan.state)
        return train_epochs(args, plan, training, start, step, best)
    except LossNotFinite as exc:
        say(f"stopped: {exc}; the last good checkpoint is kept at {plan.last_path}", file=sys.stderr)
        return 1
    finally:
        logger.close()


def starting_point(args, plan, ckpt):
    """``(epochs done, step within the next epoch, best metrics)`` where training starts; a resumed run
    also gets its optimizer (and gradient scaler) state back."""
    if plan.state is None:
        return 0, 0, dict(top1=-math.inf, top5=-math.inf)
    start, step, best = ckpt.restore(plan.state)
    if args.start_epoch is not None:
        start, step = args.start_epoch, 0
    return start, step, best


def resumes_own_last(args, plan):
    """Whether the run starts where its own last.pth is (resumed from it, without --start-epoch)."""
    return (plan.state is not None and args.start_epoch is None
            and os.path.realpath(plan.resume_path) == os.path.realpath(plan.last_path))


def report_missing(args, plan, start, device):
    """Whether a run resumed in its own folders at its last epoch lacks final.json: a crash after its last
    checkpoint, before the end of the run. Decided by rank 0, for every rank."""
    missing = (dist.is_main() and plan.continues and start == args.epochs
               and not os.path.exists(os.path.join(plan.log_dir, "final.json")))
    return dist.any_rank(missing, device)


def open_logs(args, plan, recorded, facts, position, say):
    """Prepare the run folders (rank 0), open the logs (args.json with ``recorded`` and ``facts``) and say
    where the run writes and where it starts; ``position`` is ``(start, step, batches)``."""
    start, step, batches = position
    if dist.is_main():
        prepare_folders(plan)
    dist.barrier()
    logger = RunLogger(plan.log_dir, recorded, facts=facts, tensorboard=args.tensorboard, enabled=dist.is_main(),
                       resume_epoch=start if plan.state is not None else None)
    say(f"run folder {plan.log_dir}, checkpoints in {plan.store}")
    if plan.state is not None:
        # Epochs counted from 1, as the stop message counts them.
        say(f"resumed from {plan.resume_path} " + (f"at epoch {start + 1}, step {step} of {batches.steps}" if step
                                                   else f"after epoch {start}"))
    if batches.drops_tail:
        say("note: the last training batch of each epoch would hold 1 sample per process; it is dropped "
            "(BatchNorm needs 2), and the shuffle changes which sample that is")
    return logger


def train_epochs(args, plan, t, start, step, best):
    """The epochs from ``start`` (at ``step`` within it) to --epochs: train, evaluate, checkpoint and log each;
    a stop request ends the run with a checkpoint. Returns the exit status."""
    metrics = None
    for epoch in range(start, args.epochs):
        train_m = train_epoch(args, t, epoch, step, plan.state if epoch == start and step else None, best)
        if train_m["stopped"]:
            t.say(f"stopped by {t.stop.name} at epoch {epoch + 1}, step {train_m['step']} of {t.batches.steps}; "
                  f"{plan.last_path} holds that point: rerun the same command with --resume auto to continue")
            return t.stop.exit_status
        step = 0
        dist.broadcast_buffers(t.model)  # every rank evaluates and saves the same BatchNorm statistics
        metrics = evaluate(t.model, t.val_loader, nn.NLLLoss(), t.device, amp=t.amp, channels_last=args.channelsLast)
        is_best = metrics["top1"] > best["top1"]
        best = dict(top1=max(best["top1"], metrics["top1"]), top5=max(best["top5"], metrics["top5"]))
        t.say(f"epoch {epoch + 1}/{args.epochs}  lr {train_m['lr']:.2e}  train loss {train_m['loss']:.4f} "
              f"top1 {train_m['top1']:.2f}  |  val loss {metrics['loss']:.4f} top1 {metrics['top1']:.2f} "
              f"top5 {metrics['top5']:.2f}  (best {best['top1']:.2f})  {train_m['seconds']:.1f}s", flush=True)
        # The log first: a crash while saving leaves last.pth at an earlier point, and the run resumed from it
        # drops the rows logged after that point before it logs them again.
        t.logger.epoch(t.model, epoch + 1, train_m, metrics, best["top1"])
        t.ckpt.save(epoch + 1, 0, best, is_best=is_best)
        if t.stop.requested(t.device):
            t.say(f"stopped by {t.stop.name} after epoch {epoch + 1}; rerun with --resume auto to continue")
            return t.stop.exit_status
    return finish(args, t, best, metrics)


def train_epoch(args, t, epoch, step, position, best):
    """Set the epoch's learning rate, EDE settings and seeds (or a mid-epoch position), then train it."""
    lr = lr_at(epoch, schedule=args.learningratescheduler, maxlr=args.maxlr, minlr=args.minlr,
               decayinterval=args.decayinterval, decaylevel=args.decaylevel, epochs=args.epochs)
    for group in t.optimizer.param_groups:
        group["lr"] = lr
    ede = binarize.ede_schedule(epoch, args.epochs, args.edeTmin, args.edeTmax) if opts.uses_ede(vars(args)) else None
    if ede:
        binarize.set_ede(t.net, *ede)
    seed_everything(datasets.epoch_seed(args.manualSeed, epoch) + dist.rank())
    t.batches.set_epoch(epoch, step)
    totals, seconds = t.ckpt.continue_epoch(position, dist.rank()) if position is not None else (None, 0.0)

    def after_step(done, totals, seconds):
        stopping = t.stop.requested(t.device)
        if stopping or (args.saveEvery and done % args.saveEvery == 0 and done < t.batches.steps):
            t.ckpt.save(epoch, done, best, totals, seconds)
        return stopping

    m = train_one_epoch(t.net, t.train_loader, t.loss_fn, t.optimizer, t.device, epoch=epoch,
                        steps=t.batches.steps, start_step=step, totals=totals, seconds=seconds, amp=t.amp,
                        scaler=t.scaler, channels_last=args.channelsLast, print_freq=args.printfreq,
                        verbose=args.verbose, after_step=after_step)
    m.update(lr=lr, ede_t=ede[0] if ede else "", ede_k=ede[1] if ede else "")
    return m


def finish(args, t, best, metrics):
    """The end of a run: replica check under torchrun, binarization losses, final.json."""
    world = dist.world_size()
    if world > 1:
        with torch.no_grad():
            checked = (list(t.model.parameters()) + list(t.model.buffers())
                       + [m.weight for _, _, m, _ in binarize.binarized_layers(t.model)])
        same = dist.replicas_identical(checked, t.device)
        t.say(f"latent and binarized weights and BatchNorm statistics identical on all {world} ranks: "
              f"{'yes' if same else 'NO'}")
    binarization_report(args, t.model, t.val_loader, t.device, t.logger, args.epochs, t.say)
    t.say(f"best val top1 {best['top1']:.3f}  final val top1 {metrics['top1']:.3f}  "
          f"(final top5 {metrics['top5']:.3f}, {metrics['count']} val images)")
    t.logger.write_json("final.json", dict(best_top1=best["top1"], final_top1=metrics["top1"],
                                           best_top5=best["top5"], final_top5=metrics["top5"],
                                           epochs_done=args.epochs, val_images=metrics["count"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
