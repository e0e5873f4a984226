"""OpenMP worker pools of threads that are not the decoding thread.

PyTorch's CPU kernels run on OpenMP (libgomp in its Linux wheels), which gives every thread that
runs a parallel kernel a pool of worker threads of its own, kept after the kernel ends. Served,
decoding runs on the scheduler's thread while the models were loaded on the main thread and
requests' images are read on worker threads: with those threads' pools alive, every kernel of the
decoding thread ran about 1.4x slower on a 2-core CPU (the same matmul loop: 0.72 s on the main
thread, 1.03 s on a second thread, 0.72 s once the main thread's pool was released; AMD EPYC,
torch 2.14.1). A thread done with CPU work for now hands its pool back; its next parallel kernel
starts a new one.
"""
from __future__ import annotations

import ctypes
import functools
import os

OMP_PAUSE_HARD = 2  # omp_pause_resource_t: free the pool's threads


@functools.lru_cache(maxsize=1)
def _pause():
    """libgomp's omp_pause_resource_all as loaded by PyTorch, or None (another OpenMP, or none)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libgomp" in line}
    except OSError:
        return None
    for path in sorted(paths):
        if os.path.basename(path).startswith("libgomp"):
            try:
                return ctypes.CDLL(path).omp_pause_resource_all
            except (OSError, AttributeError):
                continue
    return None


def release_pool() -> None:
    """Free the calling thread's OpenMP pool (libgomp frees only the caller's); a no-op where
    PyTorch runs without libgomp."""
    pause = _pause()
    if pause is not None:
        pause(OMP_PAUSE_HARD)
