"""Where a dataset job's batches run, behind one interface: `backend(chunks)` yields each batch's
records, and `close()` ends what the backend started.

  Local   engines in this process, one per device (the authors' --multi_gpu became --devices);
          each takes the next batch when free, results come back in batch order, and at most
          two batches per engine are in flight, so a job list of any length runs in bounded memory
  Ray     a Ray Data actor pool (ray_backend.py)
"""
from __future__ import annotations

import collections
import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from ..errors import InputError

Job = TypeVar("Job")
Out = TypeVar("Out")


class Replicas:
    """One model replica per device, each taking the next job when free."""

    def __init__(self, engines: Sequence):
        if not engines:
            raise InputError("need at least one model replica")
        self.engines = list(engines)

    @classmethod
    def load(cls, lm: str, clip: str, devices: Sequence[str], lm_dtype: str = "float32", form="fast") -> "Replicas":
        from ..engine import ZeroCap

        return cls([ZeroCap.load(lm, clip, device=d, lm_dtype=lm_dtype, form=form) for d in devices])

    def map(self, work: Callable, jobs: Iterable[Job]) -> Iterator[Out]:
        """work(engine, job) for every job, on the next free replica; results in job order."""
        if len(self.engines) == 1:
            for job in jobs:
                yield work(self.engines[0], job)
            return
        free: queue.Queue = queue.Queue()
        for e in self.engines:
            free.put(e)

        def run(job):
            engine = free.get()
            try:
                return work(engine, job)
            finally:
                free.put(engine)

        with ThreadPoolExecutor(max_workers=len(self.engines)) as pool:
            pending: collections.deque = collections.deque()
            for job in jobs:
                pending.append(pool.submit(run, job))
                if len(pending) >= 2 * len(self.engines):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


class Local:
    """Batches on this process's engines (Replicas)."""

    def __init__(self, replicas: Replicas, mode, cfg, options: dict, progress=None):
        from .run import caption_batch

        self.replicas = replicas
        self.work = lambda engine, chunk: caption_batch(engine, chunk, mode, cfg, options, progress)

    def __call__(self, chunks: Iterable[list]) -> Iterator[list[dict]]:
        return self.replicas.map(self.work, chunks)

    def close(self) -> None:
        pass
