"""The training and evaluation loops: plain PyTorch, no binarization code inside.

Binarized layers carry their own parametrization (binarize/), so ``train_one_epoch`` is the usual
forward / loss / backward / step; ``evaluate`` runs the model with its binarized weights under
``torch.no_grad()``, averaging the log-probabilities over the ten crops when the batch has them.
Metrics are summed over all ranks under torchrun, with each validation sample counted once.
"""

import math
import time

import torch
from torch.nn import functional as F
from torch.nn.utils import parametrize

from binarize import binarized_layers
from utils import dist
from utils.log import progress
from utils.meters import correct_topk


class LossNotFinite(RuntimeError):
    """The training loss became NaN or inf."""


def _autocast(device, amp):
    if amp is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=amp)


def _to_device(images, target, device, channels_last):
    non_blocking = device.type == "cuda"
    images = images.to(device, non_blocking=non_blocking)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, target.to(device, non_blocking=non_blocking)


def train_one_epoch(model, loader, criterion, optimizer, device, *, epoch, print_freq=0, amp=None,
                    scaler=None, channels_last=False, show_progress=True):
    """One pass over ``loader``; returns {loss, top1, top5, count, seconds} over all ranks."""
    model.train()
    start = time.perf_counter()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, count
    bar = progress(loader, desc=f"train {epoch + 1}", total=len(loader), enabled=show_progress and dist.is_main())
    for i, (images, target) in enumerate(bar):
        images, target = _to_device(images, target, device, channels_last)
        with _autocast(device, amp):
            output = model(images)
        loss = criterion(output.float(), target)
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
        totals += torch.stack([loss.double() * n, c1.double(), c5.double(), torch.tensor(n, device=device,
                                                                                          dtype=torch.float64)])
        if print_freq and (i + 1) % print_freq == 0 or i == 0 or i + 1 == len(loader):
            # One host sync per print (and at the first and last batch, to catch divergence early).
            seen = totals[3].item()
            # Under torchrun only the summed check after the epoch raises, on every rank at once.
            if not dist.is_distributed() and not math.isfinite(loss.item()):
                raise LossNotFinite(f"training loss is {loss.item()} at epoch {epoch + 1}, batch {i + 1}")
            if print_freq and (i + 1) % print_freq == 0 and dist.is_main():
                print(f"  epoch {epoch + 1} [{i + 1:>5}/{len(loader)}]  loss {totals[0].item() / seen:.4f}  "
                      f"top1 {100 * totals[1].item() / seen:6.2f}  top5 {100 * totals[2].item() / seen:6.2f}",
                      flush=True)
    loss_sum, c1, c5, count = dist.all_sum(list(totals), device)
    if not math.isfinite(loss_sum):
        raise LossNotFinite(f"training loss became {loss_sum / max(count, 1)} during epoch {epoch + 1}")
    return dict(loss=loss_sum / count, top1=100 * c1 / count, top5=100 * c5 / count, count=int(count),
                seconds=time.perf_counter() - start)


@torch.no_grad()
def evaluate(model, loader, criterion, device, *, amp=None, channels_last=False, show_progress=True,
             desc="val"):
    """Accuracy and loss of ``model`` on ``loader``; ten-crop batches ``[B, 10, C, H, W]`` are averaged.

    The average over crops is the mean of the log-probabilities, as in the original code. Returns
    {loss, top1, top5, count} over all ranks (each sample counted once).
    """
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    bar = progress(loader, desc=desc, total=len(loader), enabled=show_progress and dist.is_main())
    # The weights cannot change during evaluation: solve each binarized layer once, not once per batch.
    with parametrize.cached():
        for images, target in bar:
            _evaluate_batch(model, images, target, criterion, device, amp, channels_last, totals)
    loss_sum, c1, c5, count = dist.all_sum(list(totals), device)
    count = max(count, 1)
    return dict(loss=loss_sum / count, top1=100 * c1 / count, top5=100 * c5 / count, count=int(count))


def _evaluate_batch(model, images, target, criterion, device, amp, channels_last, totals):
    images, target = _to_device(images, target, device, False)
    crops = images.shape[1] if images.dim() == 5 else 0
    if crops:
        images = images.flatten(0, 1)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with _autocast(device, amp):
        output = model(images).float()
    if crops:
        output = output.reshape(-1, crops, output.shape[-1]).mean(dim=1)
    loss = criterion(output, target)
    c1, c5 = correct_topk(output, target)
    n = target.shape[0]
    totals += torch.stack([loss.double() * n, c1.double(), c5.double(),
                           torch.tensor(n, device=device, dtype=torch.float64)])


@torch.no_grad()
def binarization_losses(model, loader, device, *, channels_last=False):
    """Per binarized conv, the RMS difference between its output with real and with binarized weights.

    Runs the model (binarized) over ``loader``; a forward hook on each binarized conv also convolves the
    same input with the latent real weight. Returns [{index, name, rmse}] summed over all ranks.
    """
    layers = binarized_layers(model)
    sums = torch.zeros(len(layers), 2, dtype=torch.float64, device=device)  # squared error sum, count

    def hook_for(slot, conv):
        def hook(module, inputs, output):
            real = conv._conv_forward(inputs[0], conv.parametrizations.weight.original, conv.bias)
            sums[slot, 0] += F.mse_loss(output.float(), real.float(), reduction="sum").double()
            sums[slot, 1] += output.numel()
        return hook

    handles = [conv.register_forward_hook(hook_for(slot, conv)) for slot, (_, _, conv, _) in enumerate(layers)]
    try:
        model.eval()
        with parametrize.cached():
            _run_over(model, loader, device, channels_last)
    finally:
        for h in handles:
            h.remove()
    flat = dist.all_sum(list(sums.flatten()), device)
    return [dict(index=index, name=name, rmse=math.sqrt(flat[2 * s] / max(flat[2 * s + 1], 1)))
            for s, (index, name, _, _) in enumerate(layers)]


def _run_over(model, loader, device, channels_last):
    for images, _ in loader:
        images = images.to(device)
        if images.dim() == 5:
            images = images.flatten(0, 1)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        model(images)
