"""Suite-wide guards and helpers.

* No test may leave a child process running. A DataLoader worker still alive at interpreter exit is
  terminated and then joined by multiprocessing; one that cannot be terminated hangs the whole run (CI once
  waited out its time limit that way, after every test had passed). Leftover workers fail the test that
  left them instead.
* :func:`subprocess_timeout`: a subprocess's time limit sized by its own work and by how fast this machine
  runs right now, so that a loaded machine (a parallel suite, a busy CI runner) slows the suite down
  without failing it, while a hung child still ends within minutes.
"""

import functools
import gc
import math
import multiprocessing
import subprocess
import sys
import time

import pytest

# A fixed workload: start Python, import torch, train a two-layer conv net for 20 steps. It takes about
# REFERENCE_SECONDS on the idle machine the budgets were measured on (2 x86 cores).
WORKLOAD = """
import torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, padding=1))
x = torch.randn(8, 3, 32, 32)
for _ in range(20):
    net(x).square().mean().backward()
"""
REFERENCE_SECONDS = 1.6
MARGIN = 4           # a budget is 4 x the expected time: load changes while a test runs
PYTHON_START = 3.0   # seconds (reference machine) to start a Python subprocess that imports torch and the project


@functools.lru_cache(maxsize=None)
def slowness():
    """How many times longer than on the reference machine the workload takes here now (at least 1);
    measured once per session, by the first test that asks (the median of 3 runs)."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", WORKLOAD], check=True, capture_output=True, timeout=600)
        times.append(time.perf_counter() - start)
    return max(1.0, sorted(times)[1] / REFERENCE_SECONDS)


def subprocess_timeout(seconds):
    """The time limit (whole seconds) for a subprocess that takes ``seconds`` on the reference machine:
    ``seconds`` x :data:`MARGIN` x :func:`slowness`."""
    return math.ceil(seconds * MARGIN * slowness())


@pytest.fixture(autouse=True)
def no_child_process_left_running():
    yield
    if not multiprocessing.active_children():
        return
    gc.collect()  # a loader kept only by a reference cycle (an exception's traceback) shuts down here
    left = []
    for child in multiprocessing.active_children():
        child.join(timeout=10)
        if child.is_alive():
            left.append(f"{child.name} (pid {child.pid})")
            child.kill()
            child.join(timeout=10)
    assert not left, f"processes left running by this test: {', '.join(left)}"
