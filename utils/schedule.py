"""The learning rate as a pure function of the (0-based) epoch."""

SCHEDULES = ("decayschedular", "constant")  # the original's spelling is kept on purpose


def lr_at(epoch, *, schedule, maxlr, minlr, decayinterval, decaylevel):
    """``decayschedular``: ``max(minlr, maxlr / decaylevel ** (epoch // decayinterval))``; ``constant``: maxlr."""
    if schedule == "constant":
        return maxlr
    if schedule == "decayschedular":
        return max(minlr, maxlr / decaylevel ** (epoch // decayinterval))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose from {SCHEDULES}")
