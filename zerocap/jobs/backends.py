"""Where a dataset job's inputs are captioned, behind one interface: `backend(inputs)` yields
(index, record) for each input as soon as it is done, and `close()` ends what it started.

  Local   engines in this process, one per device (the authors' --multi_gpu became --devices),
          each with its scheduler (scheduler.py): up to `in_flight` inputs per engine are decoded
          together, and one that finishes early frees its place for the next at once; each input
          is read and turned into a target here, one at a time, while the engines decode
  Ray     a Ray Data actor pool (ray_backend.py)
"""
from __future__ import annotations

import queue
from typing import Iterable, Iterator, Sequence

from ..engine import ZeroCap
from ..errors import InputError
from ..scheduler import Scheduler
from .inputs import Input
from .run import error_record, result_record  # noqa: F401  (backends' records: run.py's)


class Local:
    """Inputs captioned on this process's engines (see the module docstring)."""

    def __init__(self, engines: Sequence, mode, cfg, options: dict, in_flight: int = 8, on_step=None):
        if not engines:
            raise InputError("need at least one model replica")
        self.engines = list(engines)
        self.schedulers = [Scheduler(e, max_batch=in_flight) for e in self.engines]
        self.mode, self.cfg, self.options = mode, self.engines[0].check(cfg), options
        self.in_flight, self.on_step = in_flight, on_step

    @classmethod
    def load(cls, lm: str, clip: str, devices: Sequence[str], mode, cfg, options: dict, lm_dtype: str = "float32",
             form="fast", in_flight: int = 8, on_step=None, compile=None) -> "Local":
        engines = [ZeroCap.load(lm, clip, device=d, lm_dtype=lm_dtype, form=form, compile=compile or False)
                   for d in devices]
        return cls(engines, mode, cfg, options, in_flight, on_step)

    def __call__(self, inputs: Iterable[Input]) -> Iterator[tuple[int, dict]]:
        key = self.mode.kind.name
        done: queue.Queue = queue.Queue()  # (index, item, ticket) as each finishes
        outstanding = 0

        def finished():
            index, item, ticket = done.get()
            return index, _record(key, item, ticket)

        for index, item in enumerate(inputs):
            while outstanding >= self.in_flight * len(self.schedulers):  # room first: bounded work in flight
                yield finished()
                outstanding -= 1
            while not done.empty():
                yield finished()
                outstanding -= 1
            scheduler = min(self.schedulers, key=lambda s: s.load)
            try:
                target = self.mode.kind.target(scheduler.engine, item.source, item.name, cfg=self.cfg, **self.options)
            except InputError as e:
                yield index, error_record(key, item, e)
                continue
            ticket = scheduler.submit(scheduler.engine.request(target, self.cfg, self.on_step))
            ticket.add_done_callback(lambda t, index=index, item=item: done.put((index, item, t)))
            outstanding += 1
        while outstanding:
            yield finished()
            outstanding -= 1

    def close(self) -> None:
        for scheduler in self.schedulers:
            scheduler.close()


def _record(key: str, item: Input, ticket) -> dict:
    try:
        return result_record(key, item, ticket.result())
    except InputError as e:  # e.g. out of memory on its own: that input's error line
        return error_record(key, item, e)
