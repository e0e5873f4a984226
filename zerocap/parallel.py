"""Several images at once: batches of images x beams rows, spread over model replicas.

One replica per device (the authors' --multi_gpu became --devices); each takes the next batch
when it is free. Results come back in input order.
"""
from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

from .engine import CaptionResult, Progress, ZeroCap
from .errors import InputError


class Replicas:
    def __init__(self, engines: Sequence[ZeroCap]):
        if not engines:
            raise InputError("need at least one model replica")
        self.engines = list(engines)

    @classmethod
    def load(cls, lm: str, clip: str, devices: Sequence[str], lm_dtype: str = "float32",
             exact: bool = False) -> "Replicas":
        return cls([ZeroCap.load(lm, clip, device=d, lm_dtype=lm_dtype, exact=exact) for d in devices])

    def caption(self, images: Sequence, config, batch_size: int = 8,
                progress: Progress | None = None, names: Sequence[str] | None = None) -> Iterator[CaptionResult]:
        """Caption images in batches of `batch_size`, yielding one result per image, in order."""
        names = list(names) if names is not None else None
        batches = [
            (list(images[i:i + batch_size]), names[i:i + batch_size] if names else None)
            for i in range(0, len(images), batch_size)
        ]
        if len(self.engines) == 1:
            for imgs, nms in batches:
                yield from self.engines[0].caption(imgs, config=config, progress=progress, names=nms)
            return
        free: queue.Queue[ZeroCap] = queue.Queue()
        for e in self.engines:
            free.put(e)

        def work(batch):
            engine = free.get()
            try:
                return engine.caption(batch[0], config=config, progress=progress, names=batch[1])
            finally:
                free.put(engine)

        with ThreadPoolExecutor(max_workers=len(self.engines)) as pool:
            futures = [pool.submit(work, b) for b in batches]
            for f in futures:
                yield from f.result()
