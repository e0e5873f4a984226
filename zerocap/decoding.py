"""One admit/step loop for the requests of any method, and the snapshot each step leaves.

A method's request makes its own batch (`request.new_batch(engine, most)`), whose `step()`
advances every request in it by one of the method's steps (ZeroCap's token, the pseudo-tokens'
sampled token) and returns the finished ones, and whose `snapshot(request)` says where a request
is. `decode` runs that loop in the caller's thread (the Python API, dataset jobs on one process);
the container's scheduler (scheduler.py) runs the same batches from many callers, a step at a
time between admissions. Either way a request's `on_step(snapshot)` hears of every step it
takes, and the command line's progress, the container's log line and Python's `progress`
callback read the same `Snapshot`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Snapshot:
    """Where one request is after a step."""

    unit: str  # what one of the method's steps makes, in words: "token", "sentence"
    step: int  # steps done
    total: int  # steps at most
    best: str  # the best text so far (ZeroCap's: after the prompt; the pseudo-tokens': their latest sentence)
    caption: str  # the same as a caption reads (ZeroCap's with its prompt)

    def where(self) -> str:
        """'token 3/15': a progress bar's words."""
        return f"{self.unit} {self.step}/{self.total}"

    def line(self) -> str:
        """'token 3/15: Image of a dog': the container's log line."""
        return f"{self.where()}: {self.caption}"


OnStep = Callable[[list[Snapshot]], None]  # after each step of a decode: the started requests' snapshots


def decode(requests: Sequence, batch, most: int | None = None, on_step: OnStep | None = None) -> None:
    """Decode `requests` (of one method) in `batch`, in their order: each joins when the batch
    accepts it (at most `most` at once), each step advances every request in the batch, a
    request's error (its own part failed) is raised, and `on_step` gets the snapshots of the
    requests that have started after each step."""
    waiting = list(requests)
    while waiting or len(batch):
        while waiting and batch.accepts(waiting[0], most):
            batch.add(waiting.pop(0))
        for r in batch.step():
            if r.error is not None:
                raise r.error
        if on_step is not None:
            snapshots = [s for s in (batch.snapshot(r) for r in requests) if s is not None]
            if snapshots:
                on_step(snapshots)
