"""Running averages and top-k accuracy (as in pytorch/examples)."""

import torch


class AverageMeter:
    """Weighted running sum and count; ``avg`` is their ratio."""

    def __init__(self):
        self.sum = 0.0
        self.count = 0

    def update(self, value, n=1):
        self.sum += float(value) * n
        self.count += n

    @property
    def avg(self):
        return self.sum / self.count if self.count else 0.0


@torch.no_grad()
def correct_topk(output, target, topk=(1, 5)):
    """Number of samples whose target is among the k highest outputs, for each k (tensors, no sync)."""
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, dim=1).indices
    hits = pred.eq(target.unsqueeze(1))
    return [hits[:, :min(k, maxk)].any(dim=1).sum() for k in topk]
