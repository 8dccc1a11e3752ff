"""Suite-wide guard: no test may leave a child process running.

A DataLoader worker still alive at interpreter exit is terminated and then joined by multiprocessing;
one that cannot be terminated hangs the whole run (CI once waited out its time limit that way, after
every test had passed). Leftover workers fail the test that left them instead.
"""

import gc
import multiprocessing

import pytest


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
