"""The training and evaluation loops: plain PyTorch, no binarization code inside.

Binarized layers carry their own parametrization (binarize/), so ``train_one_epoch`` is the usual
forward / loss / backward / step, started at any step of the epoch and stopped after any step on
request (a signal, see utils/signals.py); ``evaluate`` runs the model with its binarized weights under
``torch.no_grad()``, averaging the log-probabilities over the ten crops when the batch has them.
Metrics are summed over all ranks under torchrun, with each validation sample counted once.
"""

import math
import sys
import time

import torch
from torch.nn.utils import parametrize

from utils import dist
from utils.log import progress
from utils.meters import correct_topk


class LossNotFinite(RuntimeError):
    """The training loss became NaN or inf."""


def autocast(device, amp):
    if amp is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=amp)


def _to_device(images, target, device, channels_last):
    non_blocking = device.type == "cuda"
    images = images.to(device, non_blocking=non_blocking)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, target.to(device, non_blocking=non_blocking)


def train_one_epoch(model, loader, loss_fn, optimizer, device, *, epoch, steps, start_step=0, totals=None,
                    seconds=0.0, amp=None, scaler=None, channels_last=False, print_freq=50, verbose=False,
                    after_step=None):
    """Train on ``loader`` (the epoch from ``start_step`` of ``steps`` on); ``loss_fn(output, target, images)``.

    ``totals`` and ``seconds`` carry the sums of an epoch resumed mid-way. ``after_step(step, totals,
    seconds)`` runs after every optimizer step (``step`` counted from 1) and returns True to stop there.
    Returns {loss, top1, top5, count, seconds} over all ranks, plus ``step`` (steps done) and ``stopped``.
    """
    model.train()
    start = time.perf_counter() - seconds
    totals = torch.zeros(4, dtype=torch.float64, device=device) if totals is None else totals.to(device)
    interactive = sys.stderr.isatty()
    bar = progress(loader, desc=f"train {epoch + 1}", total=steps, initial=start_step,
                   enabled=interactive and dist.is_main())
    step, stopped = start_step, False
    for step, (images, target) in enumerate(bar, start=start_step + 1):
        images, target = _to_device(images, target, device, channels_last)
        with autocast(device, amp):
            output = model(images)
        loss = loss_fn(output.float(), target, images)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        loss = loss.detach()
        c1, c5 = correct_topk(output.detach(), target)
        n = target.shape[0]
        totals += torch.stack([loss.double() * n, c1.double(), c5.double(),
                               torch.tensor(n, device=device, dtype=torch.float64)])
        if step % print_freq == 0 or step == start_step + 1 or step == steps:
            # One host sync per print (and at the first and last step, to catch divergence early). Under
            # torchrun only the summed check after the epoch raises, on every rank at once.
            if not dist.is_distributed() and not math.isfinite(loss.item()):
                raise LossNotFinite(f"training loss is {loss.item()} at epoch {epoch + 1}, step {step}")
            if step % print_freq == 0 and dist.is_main() and (verbose or not interactive):
                seen = totals[3].item()
                print(f"  epoch {epoch + 1} [{step:>5}/{steps}]  loss {totals[0].item() / seen:.4f}  "
                      f"top1 {100 * totals[1].item() / seen:6.2f}  top5 {100 * totals[2].item() / seen:6.2f}",
                      flush=True)
        if after_step is not None and after_step(step, totals, time.perf_counter() - start):
            stopped = True
            break
    loss_sum, c1, c5, count = dist.all_sum(list(totals), device)
    if not math.isfinite(loss_sum):
        raise LossNotFinite(f"training loss became {loss_sum / max(count, 1)} during epoch {epoch + 1}")
    count = max(count, 1)
    return dict(loss=loss_sum / count, top1=100 * c1 / count, top5=100 * c5 / count, count=int(count),
                seconds=time.perf_counter() - start, step=step, stopped=stopped)


@torch.no_grad()
def evaluate(model, loader, criterion, device, *, amp=None, channels_last=False, desc="val"):
    """Accuracy and loss of ``model`` on ``loader``; ten-crop batches ``[B, 10, C, H, W]`` are averaged.

    The average over crops is the mean of the log-probabilities, as in the original code. Returns
    {loss, top1, top5, count} over all ranks (each sample counted once).
    """
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    bar = progress(loader, desc=desc, total=len(loader), enabled=sys.stderr.isatty() and dist.is_main())
    # The weights cannot change during evaluation: solve each binarized layer once, not once per batch.
    with parametrize.cached():
        for images, target in bar:
            images, target = _to_device(images, target, device, False)
            crops = images.shape[1] if images.dim() == 5 else 0
            if crops:
                images = images.flatten(0, 1)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                output = model(images).float()
            if crops:
                output = output.reshape(-1, crops, output.shape[-1]).mean(dim=1)
            loss = criterion(output, target)
            c1, c5 = correct_topk(output, target)
            n = target.shape[0]
            totals += torch.stack([loss.double() * n, c1.double(), c5.double(),
                                   torch.tensor(n, device=device, dtype=torch.float64)])
    loss_sum, c1, c5, count = dist.all_sum(list(totals), device)
    count = max(count, 1)
    return dict(loss=loss_sum / count, top1=100 * c1 / count, top5=100 * c5 / count, count=int(count))


def run_over(model, loader, device, channels_last=False):
    """Forward every val batch (ten crops flattened) through ``model``, for measurements made by hooks."""
    model.eval()
    with torch.no_grad(), parametrize.cached():
        for images, _ in loader:
            images = images.to(device)
            if images.dim() == 5:
                images = images.flatten(0, 1)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            model(images)
