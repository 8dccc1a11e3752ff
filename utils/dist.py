"""torch.distributed helpers: torchrun's environment, rank-0-only side effects, agreement between ranks."""

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


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main():
    return rank() == 0


def barrier():
    if is_distributed():
        dist.barrier()


def all_sum(values, device):
    """Sum a list of numbers (or 0-d tensors) over all ranks; returns Python floats."""
    if not values:
        return []
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


def gather_object(obj):
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` outside torchrun)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag, device):
    """True on every rank when ``flag`` is true on any rank (all ranks must call it at the same step)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


@torch.no_grad()
def broadcast_buffers(module):
    """Give every rank rank 0's buffers (BatchNorm running statistics): DDP broadcasts them at the start
    of each forward, so after the last training step each rank's own update would otherwise remain."""
    if is_distributed():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def cleanup():
    if is_distributed():
        dist.destroy_process_group()


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
