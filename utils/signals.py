"""How a run is asked to stop: signals that end it after the current step, with a checkpoint."""

import signal

from utils import dist


class StopRequest:
    """Ctrl-C, SIGTERM and SIGUSR1 (what SLURM and Kubernetes send before preemption) ask the run to stop
    after the current training step, with a checkpoint; a second Ctrl-C stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.signum, self._old = None, {}

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self, device):
        """Whether any rank was asked to stop (every rank must call this at the same step)."""
        return dist.any_rank(self.signum is not None, device)

    @property
    def name(self):
        return signal.Signals(self.signum or signal.SIGTERM).name

    @property
    def exit_status(self):
        return 128 + (self.signum or signal.SIGTERM)
