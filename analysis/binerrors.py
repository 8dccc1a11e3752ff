"""Binarization errors measured over the val set, per layer, and their report.

* ``input_binarization_losses`` (``--calculateBinarizationLosses``, the original's meaning): a forward
  hook on every activation binarizer collects its input ``x`` and its output ``b(x)`` (``sign(x)`` for
  the sign activation) and accumulates, per sample of C*H*W values,
  ``mse = ||b(x) - x||^2 / (C H W)``, its normalised form ``mse / mean(x^2)`` and the element mean of
  ``|1 - clamp(x, -1, 1)^2|``. Reported: ``rmse = sqrt(mean over samples of mse)``,
  ``nrmse = sqrt(mean over samples of mse / mean(x^2))`` and ``err_1mx2`` (the mean of the last). These
  are the errors Hybrid Binary Networks (Prabhu et al., WACV 2018) choose full-precision inputs by.
  Unlike the original, the hooks are removed afterwards and every sample counts once (its accumulators
  were never reset and weighted each batch equally).
* ``weight_binarization_losses`` (``--calculateWeightBinarizationLosses``): per binarized conv, the RMS
  difference between its output with the latent real weights and with the binarized ones, on the same
  input.
* ``report_losses`` measures what the two flags ask for (given as booleans: nothing here reads the
  command line), prints it and, with a run logger, logs and saves it.
"""

import math

import torch
import torch.nn.functional as F

import binarize
from train import run_over
from utils import dist

__all__ = ["input_binarization_losses", "weight_binarization_losses", "report_losses"]


def _run_with_hooks(model, loader, device, channels_last, hooks):
    """Run ``model`` over ``loader`` with the forward ``hooks`` ({module: hook}) attached, then remove them."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    try:
        run_over(model, loader, device, channels_last)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def input_binarization_losses(model, loader, device, *, channels_last=False):
    """Per conv with a binarized input: ``[{index, name, rmse, nrmse, err_1mx2}]`` over ``loader``."""
    slots = binarize.input_binarizers(model)
    sums = torch.zeros(len(slots), 4, dtype=torch.float64, device=device)  # mse, nmse, |1-x^2| sums; samples

    def hook_for(slot):
        def hook(module, inputs, output):
            x = inputs[0].float().flatten(1)
            mse = (output.float().flatten(1) - x).square().mean(dim=1)
            sums[slot, 0] += mse.sum().double()
            sums[slot, 1] += (mse / x.square().mean(dim=1).clamp_min(1e-12)).sum().double()
            sums[slot, 2] += (1 - x.clamp(-1, 1).square()).abs().mean(dim=1).sum().double()
            sums[slot, 3] += x.shape[0]
        return hook

    _run_with_hooks(model, loader, device, channels_last, {b: hook_for(s) for s, (*_, b) in enumerate(slots)})
    flat = dist.all_sum(list(sums.flatten()), device)
    out = []
    for s, (index, name, *_) in enumerate(slots):
        mse, nmse, err, count = flat[4 * s:4 * s + 4]
        count = max(count, 1)
        out.append(dict(index=index, name=name, rmse=math.sqrt(mse / count), nrmse=math.sqrt(nmse / count),
                        err_1mx2=err / count))
    return out


@torch.no_grad()
def weight_binarization_losses(model, loader, device, *, channels_last=False):
    """Per binarized conv, the RMS difference between its output with real and with binarized weights.

    Runs the model (binarized) over ``loader``; a forward hook on each binarized conv also convolves the
    same input with the latent real weight. Returns [{index, name, rmse}] summed over all ranks.
    """
    layers = [row for row in binarize.binarized_layers(model) if row[0] is not None]
    sums = torch.zeros(len(layers), 2, dtype=torch.float64, device=device)  # squared error sum, count

    def hook_for(slot, conv):
        def hook(module, inputs, output):
            real = conv._conv_forward(inputs[0], conv.parametrizations.weight.original, conv.bias)
            sums[slot, 0] += F.mse_loss(output.float(), real.float(), reduction="sum").double()
            sums[slot, 1] += output.numel()
        return hook

    _run_with_hooks(model, loader, device, channels_last,
                    {conv: hook_for(slot, conv) for slot, (_, _, conv, _) in enumerate(layers)})
    flat = dist.all_sum(list(sums.flatten()), device)
    return [dict(index=index, name=name, rmse=math.sqrt(flat[2 * s] / max(flat[2 * s + 1], 1)))
            for s, (index, name, _, _) in enumerate(layers)]


def report_losses(model, loader, device, logger, step, say, *, inputs, weights, channels_last):
    """Measure and print the errors asked for: ``inputs`` (--calculateBinarizationLosses) the input
    binarization errors, ``weights`` (--calculateWeightBinarizationLosses) the weight binarization errors.
    With a ``logger`` the rows are also logged as scalars at ``step`` and saved as JSON in the run's folder;
    ``say`` prints a line. Returns ``{"inputs": rows or None, "weights": rows or None}``."""
    found = {"inputs": None, "weights": None}
    if inputs:
        found["inputs"] = rows = input_binarization_losses(model, loader, device, channels_last=channels_last)
        say("input binarization errors on val (the original's --calculateBinarizationLosses):" if rows else
            "input binarization errors: no conv of this model has a binarized input")
        for r in rows:
            say(f"  conv {r['index']:>3} {r['name']:<36} rmse {r['rmse']:.6f}  normalised {r['nrmse']:.6f}  "
                f"|1-x^2| {r['err_1mx2']:.6f}")
        if logger is not None and rows:
            logger.scalars({f"binarization/conv{r['index']:02d}/{k}": r[k] for r in rows
                            for k in ("rmse", "nrmse", "err_1mx2")}, step)
            logger.write_json("binarization_losses.json", rows)
    if weights:
        found["weights"] = rows = weight_binarization_losses(model, loader, device, channels_last=channels_last)
        say("weight binarization losses (RMS of real minus binarized conv outputs on val):" if rows else
            "weight binarization losses: no binarized conv (pass --binaryWeight)")
        for r in rows:
            say(f"  conv {r['index']:>3} {r['name']:<36} {r['rmse']:.6f}")
        if logger is not None and rows:
            logger.scalars({f"weight_binarization_rmse/conv{r['index']:02d}": r["rmse"] for r in rows}, step)
            logger.write_json("weight_binarization_losses.json", rows)
    return found
