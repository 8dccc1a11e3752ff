"""The errors a run reports as one line: bad input (exit status 2) and checkpoints that cannot be read or
written. A leaf module, so that every layer can raise them without importing the layer that catches them."""


class UsageError(ValueError):
    """A bad command line or bad input: reported as one line, exit status 2."""


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, not one of ours, or does not fit the model."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint or run log that could not be written (no space, a read-only folder): the previous
    checkpoint is kept, and ``--resume auto`` continues from it."""
