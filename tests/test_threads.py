"""A thread done with CPU work hands its OpenMP pool back (zerocap/threads.py)."""
import os
import threading
import time

import pytest
import torch

from zerocap import threads


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(threads._pause() is None or torch.get_num_threads() < 2,
                    reason="PyTorch without libgomp here, or one intra-op thread: no pool to free")
def test_a_thread_that_ran_parallel_kernels_frees_its_pool():
    counts = {}

    def work():
        x = torch.randn(512, 512)
        for _ in range(3):
            x = torch.sigmoid(x @ x)  # parallel kernels: this thread now has a pool of workers
        counts["with pool"] = _threads()
        threads.release_pool()
        for _ in range(100):  # the pool's threads exit
            if _threads() < counts["with pool"]:
                break
            time.sleep(0.01)
        counts["released"] = _threads()
        y = torch.randn(512, 512)
        counts["after"] = float(torch.sigmoid(y @ y).sum())  # a new pool serves the next kernels

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert counts["released"] < counts["with pool"], counts
    assert counts["after"] == counts["after"]  # finite: kernels still run
