"""One admit/step loop for the requests of any method, and the snapshot each step leaves.

The interfaces every method gives are declared here (`Decoder`, `MethodRequest`, `Batch`).
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
from typing import Any, Callable, Protocol, Sequence, runtime_checkable


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


@runtime_checkable
class Batch(Protocol):
    """Requests of one method sharing its steps (ZeroCap's batch.Batch, pseudo_tokens' PseudoTokenBatch)."""

    requests: list

    def __len__(self) -> int: ...
    def accepts(self, request, most: int | None = None) -> bool: ...
    def add(self, request) -> None: ...
    def remove(self, request) -> None: ...
    def step(self, only: list | None = None) -> list:
        """One step of every request (or of those in `only`): the finished ones, removed."""
    def result(self, request) -> Any: ...
    def snapshot(self, request) -> Snapshot | None: ...


@runtime_checkable
class MethodRequest(Protocol):
    """One caption by a method: what the loop and the scheduler read of it."""

    cfg: Any
    error: BaseException | None
    shared: list  # requests in its batch at each of its steps
    on_step: Callable[[Snapshot], None] | None

    @property
    def cost(self) -> float: ...  # what one of its steps costs (the scheduler's lanes)
    @property
    def done(self) -> bool: ...
    def new_batch(self, engine, max_requests: int | None = None) -> Batch: ...


@runtime_checkable
class Decoder(Protocol):
    """A method on an engine's models (methods.Method.runner makes it; engine.decoder keeps it)."""

    name: str
    Config: type  # its knob table

    def check(self, cfg) -> Any: ...  # cfg validated against the models, or InputError
    def request(self, target, cfg, on_step: Callable[[Snapshot], None] | None = None) -> MethodRequest: ...


def tell(batch: Batch, request) -> None:
    """After one of its steps: the request's `on_step` gets its snapshot. What on_step raises (the
    container's cancellation) becomes the request's error: it stops that request alone, which its
    batch then returns as finished."""
    if request.on_step is None:
        return
    try:
        request.on_step(batch.snapshot(request))
    except Exception as e:  # noqa: BLE001 -- whatever it raises stops that request alone
        request.error = e


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
