"""Several devices at once: one model replica per device, each taking the next job when free.

(The authors' --multi_gpu became --devices.) Results come back in job order, as a stream: at
most two jobs per replica are in flight, so a job list of any length runs in bounded memory.
"""
from __future__ import annotations

import collections
import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from .engine import ZeroCap
from .errors import InputError

Job = TypeVar("Job")
Out = TypeVar("Out")


class Replicas:
    def __init__(self, engines: Sequence[ZeroCap]):
        if not engines:
            raise InputError("need at least one model replica")
        self.engines = list(engines)

    @classmethod
    def load(cls, lm: str, clip: str, devices: Sequence[str], lm_dtype: str = "float32",
             exact: bool = False) -> "Replicas":
        return cls([ZeroCap.load(lm, clip, device=d, lm_dtype=lm_dtype, exact=exact) for d in devices])

    def map(self, work: Callable[[ZeroCap, Job], Out], jobs: Iterable[Job]) -> Iterator[Out]:
        """work(engine, job) for every job, on the next free replica; results in job order."""
        if len(self.engines) == 1:
            for job in jobs:
                yield work(self.engines[0], job)
            return
        free: queue.Queue[ZeroCap] = queue.Queue()
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
