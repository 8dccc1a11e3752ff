"""torch.distributed helpers: torchrun's environment, rank-0-only side effects, exact sharded eval."""

import os

import torch
import torch.distributed as dist


def launched_by_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def rank_from_env():
    """This process's rank as torchrun set it (0 outside torchrun), usable before init()."""
    return int(os.environ.get("RANK", 0))


def init(device_type):
    """Join the process group torchrun set up (nccl on CUDA, gloo on CPU); returns (rank, world, local_rank)."""
    if not launched_by_torchrun():
        return 0, 1, 0
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def is_main():
    return rank() == 0


def barrier():
    if is_distributed():
        dist.barrier()


def all_sum(values, device):
    """Sum a list of numbers (or 0-d tensors) over all ranks; returns Python floats."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    if is_distributed():
        dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup():
    if is_distributed():
        dist.destroy_process_group()


class ShardSampler(torch.utils.data.Sampler):
    """Every ``world``-th index from ``rank``: each sample on exactly one rank, no padding.

    DistributedSampler pads the last shard with repeats, which would count some validation samples
    twice; evaluation uses this sampler and sums the counts over ranks instead.
    """

    def __init__(self, length, rank, world):
        self.indices = list(range(rank, length, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


@torch.no_grad()
def replicas_identical(tensors, device):
    """True when every rank holds bit-identical ``tensors`` (compared through per-tensor float64 sums
    and sums of squares, gathered from all ranks)."""
    if not is_distributed():
        return True
    local = torch.stack([torch.stack([t.detach().double().sum(), t.detach().double().square().sum()])
                         for t in tensors]).flatten().to(device)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])
