"""The learning rate as a pure function of the (0-based) epoch."""

import math

SCHEDULES = ("decayschedular", "constant", "cosine", "linear")  # the original's spelling is kept on purpose


def lr_at(epoch, *, schedule, maxlr, minlr, decayinterval, decaylevel, epochs=None):
    """The learning rate of 0-based ``epoch`` (set at its start):

    * ``decayschedular`` (the original's): ``max(minlr, maxlr / decaylevel ** (epoch // decayinterval))``;
    * ``constant``: ``maxlr``;
    * ``cosine`` (SD-BNN's CIFAR recipe): ``maxlr * (1 + cos(pi * epoch / epochs)) / 2``, towards 0;
    * ``linear`` (Bi-Real's and ReActNet's, per epoch here): ``maxlr * (1 - epoch / epochs)``, towards 0.
    """
    if schedule == "constant":
        return maxlr
    if schedule == "decayschedular":
        return max(minlr, maxlr / decaylevel ** (epoch // decayinterval))
    if schedule in ("cosine", "linear"):
        if not epochs:
            raise ValueError(f"the {schedule} schedule needs the number of epochs")
        progress = epoch / epochs
        return maxlr * (0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose from {SCHEDULES}")
