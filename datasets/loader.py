"""Data loaders whose epochs can be stopped and resumed at any step, bit for bit.

- The training order of epoch e is a permutation drawn from a generator seeded with (seed, e), not from
  a global RNG state; under torchrun it is padded and sliced per rank as DistributedSampler does.
- Each training sample is transformed under its own seed (the epoch seed and the sample's position in
  the epoch), with the global torch RNG forked around it: augmentation depends neither on the number of
  workers nor on the step an epoch was resumed at.
- A last batch holding fewer than 2 samples per process is dropped (BatchNorm cannot train on one
  sample); the shuffle changes which sample is left out from one epoch to the next.
- ``EpochBatches.set_epoch(epoch, start_step)`` starts an epoch at a given step.
- Worker processes outlive the stop signals sent to the whole process group (SIGINT, SIGUSR1, and a
  SIGTERM from anyone but their parent): the main process finishes its step and saves before the
  workers are shut down. Their parent's SIGTERM (how torch and multiprocessing end a worker that did
  not stop politely, as at interpreter exit) still ends them, so a run never hangs on exit.

Validation shards the val set without padding (``ShardSampler``), so each image is counted once.
"""

import math
import os
import signal
import threading

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["epoch_seed", "SeededItems", "EpochBatches", "ShardSampler", "make_loaders"]

MIN_BATCH = 2  # BatchNorm in training mode needs more than one value per channel


def epoch_seed(seed, epoch):
    """Per-epoch seed: data order, augmentation and dropout of epoch e do not depend on how we got there."""
    return (seed * 1_000_003 + epoch * 7919) % 2**63


class SeededItems(Dataset):
    """``dataset[index]`` computed under ``torch.manual_seed(seed)`` for keys ``(index, seed)``; the global
    torch RNG is restored afterwards, so loading in the main process does not disturb dropout."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class EpochBatches(Sampler):
    """Batches of ``(index, seed)`` keys for one process: the epoch's permutation, this rank's share of it,
    cut into ``batch_size`` batches; a last batch under 2 samples is dropped."""

    def __init__(self, length, batch_size, *, seed, rank=0, world=1):
        if length < 1:
            raise ValueError("the training set is empty")
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.rank, self.world = rank, world
        self.per_rank = math.ceil(length / world)
        self.epoch, self.start_step = 0, 0
        tail = self.per_rank % batch_size
        self.drops_tail = 0 < tail < MIN_BATCH and self.per_rank >= MIN_BATCH
        if self.per_rank < MIN_BATCH:
            raise ValueError(f"{length} training samples give {self.per_rank} per process; BatchNorm needs at "
                             f"least {MIN_BATCH} per batch")

    @property
    def steps(self):
        """Batches per epoch (after dropping a tail of one)."""
        return self.per_rank // self.batch_size + (self.per_rank % self.batch_size >= MIN_BATCH)

    def set_epoch(self, epoch, start_step=0):
        if not 0 <= start_step <= self.steps:
            raise ValueError(f"step {start_step} is outside an epoch of {self.steps} steps")
        self.epoch, self.start_step = epoch, start_step

    def order(self):
        """This rank's sample indices for the epoch, in order (as DistributedSampler pads and slices)."""
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        perm = torch.randperm(self.length, generator=gen)
        padded = self.per_rank * self.world
        if padded > self.length:
            perm = torch.cat([perm, perm[:padded - self.length]])
        return perm[self.rank::self.world]

    def __iter__(self):
        order = self.order().tolist()
        base = epoch_seed(self.seed, self.epoch)
        for step in range(self.start_step, self.steps):
            positions = range(step * self.batch_size, min((step + 1) * self.batch_size, self.per_rank))
            # The seed of a sample depends on its slot in the global (all-rank) order of the epoch.
            yield [(order[j], (base + 104_729 * (j * self.world + self.rank + 1)) % 2**63) for j in positions]

    def __len__(self):
        return self.steps - self.start_step


class ShardSampler(Sampler):
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


def _quiet_worker(worker_id):
    """Ignore the group's stop requests; end on the parent's SIGTERM only (see the module's docstring).

    A worker inherits the main process's Python handlers (utils.signals.StopRequest), which would turn a
    SIGTERM into a flag nobody reads; ignoring SIGTERM outright instead makes multiprocessing's exit
    (terminate, then join) wait for ever. So SIGTERM is blocked here and a thread reads who sent it.
    """
    for sig in (signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not hasattr(signal, "sigwaitinfo"):  # macOS, Windows: a group SIGTERM ends the workers too
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_end_on_sigterm_from, args=(os.getppid(),), daemon=True,
                     name="sigterm-from-parent").start()


def _end_on_sigterm_from(parent):
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    # SIGTERM is blocked in every other thread: unblocked here, it takes its default action (exit -15).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    os.kill(os.getpid(), signal.SIGTERM)


def make_loaders(train, val, *, batch_size, test_batch_size, workers, seed, rank=0, world=1, pin=False):
    """``(train_loader, val_loader, batches)``: ``batches`` is the train loader's EpochBatches."""
    batches = EpochBatches(len(train), batch_size, seed=seed, rank=rank, world=world)
    # A private generator: the loader's draw of its workers' base seed must not consume the global RNG.
    common = dict(num_workers=workers, pin_memory=pin, worker_init_fn=_quiet_worker if workers else None,
                  generator=torch.Generator())
    train_loader = DataLoader(SeededItems(train), batch_sampler=batches, **common)
    val_sampler = ShardSampler(len(val), rank, world) if world > 1 else None
    val_loader = DataLoader(val, batch_size=test_batch_size, shuffle=False, sampler=val_sampler, **common)
    return train_loader, val_loader, batches
