"""Continuous batching: requests from many callers, of any settings, decoded together by one engine.

A caller turns its input into a target itself (so a bad input fails only its own request, before
it joins) and `submit`s it; a thread steps the running requests (batch.py). Between two steps --
never in the middle of one -- waiting requests join and finished ones leave and are answered, so
a request waits at most one step to start and a short caption does not wait for a long one.
Requests join in the order they came (first come, first served), whatever their settings, while
fewer than `max_batch` run; the others wait.

Lanes: no request starves the others. Requests of one method (methods.py) and any settings can
share a step (each row keeps its own knobs), but a step costs what its heaviest row costs, so
requests run in lanes of one method and similar cost (`Request.cost`: beams x candidates x
iterations; within a factor LANE_RATIO of the lane's first request), each lane a batch of its
method's kind stepped as one. The lanes take turns step by step,
fairly by time: the next step is always that of the lane that has had the least decoding time
so far (its virtual time, as Linux's CFS schedules tasks; a new lane starts at the least of the
others'). A heavy request therefore holds the light ones for at most one of its steps at a time,
and gets half the time while they run: light requests run about half as fast beside it, not
stopped for its whole length (bench/RESULTS.md has the numbers).

Isolation: a cancelled request leaves its lane before the next step; a request whose step
fails (a bug, a broken device) fails alone and its error is kept; out of memory, a lane is
stepped in halves (the requests keep their state, each still advances one token per round) and
fewer join from then on, and only a request that is out of memory on its own fails, with advice.
`health()` says whether the loop and the device still work.
"""
from __future__ import annotations

import collections
import ctypes
import math
import threading
import time
from typing import Callable

import torch

from .batch import Request
from .errors import InputError
from .threads import Sizer, release_pool

OUT_OF_MEMORY = "out of memory: lower beam_size or top_k, or combine fewer terms"
LANE_RATIO = 4.0  # requests whose step costs are within this factor share a lane
MAX_LANES = 4  # lanes at most; beyond, a request joins the lane nearest its cost


class Cancelled(Exception):
    """The request was cancelled before it finished."""


class Ticket:
    """A submitted request: its result when done (`result()`), `cancel()`, and what it shared."""

    def __init__(self, request: Request):
        self.request = request
        self.submitted = time.perf_counter()
        self.started: float | None = None  # its first step
        self.lane = None  # the scheduler's lane it runs in
        self.cancelled = False
        self._done = threading.Event()
        self._result = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[["Ticket"], None]] = []
        self._lock = threading.Lock()

    @property
    def waited(self) -> float:
        """Seconds from submission to its first step (or until now)."""
        return (self.started or time.perf_counter()) - self.submitted

    @property
    def batch_size(self) -> float:
        """Requests it shared its steps with, on average (itself included)."""
        shared = self.request.shared
        return sum(shared) / len(shared) if shared else 0.0

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None):
        if not self._done.wait(timeout):
            raise TimeoutError("the caption is not done yet")
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self) -> None:
        """Stop the request: it leaves the batch before the next step (result() raises Cancelled)."""
        self.cancelled = True

    def add_done_callback(self, fn: Callable[["Ticket"], None]) -> None:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _finish(self, result=None, error: BaseException | None = None) -> None:
        with self._lock:
            self._result, self._error = result, error
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # noqa: BLE001 -- a caller's callback must not stop the decoding loop
                pass


def release_memory(device) -> None:
    """Give back what the finished requests held: their lanes' caches are gone by now (freed as
    their last reference goes); glibc's free pages (malloc_trim: freed memory otherwise stays in
    the process, e.g. after decoding large images; under a millisecond) and, on a GPU, the
    allocator's cached blocks. No gc.collect(): it takes ~0.3 s with the models loaded, which a
    client sending its next request at once would wait for."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Lane:
    """Requests of one method and of similar cost, decoded as one batch (the request's own kind:
    `new_batch`); `seconds`: its decoding time so far."""

    def __init__(self, engine, request, max_requests: int, seconds: float):
        self.batch = request.new_batch(engine, max_requests)
        self.kind = type(request)
        self.cost, self.seconds = request.cost, seconds

    def takes(self, request) -> bool:
        return type(request) is self.kind

    def fits(self, request: Request) -> bool:
        return self.takes(request) and 1 / LANE_RATIO <= request.cost / self.cost <= LANE_RATIO


class Scheduler:
    """One engine's decoding loop, shared by every caller (see the module docstring)."""

    def __init__(self, engine, max_batch: int = 8):
        self.engine = engine
        self.max_batch = max(1, min(max_batch, engine.form.max_images or max_batch))
        self.lanes: list[Lane] = []
        self.error: str | None = None  # why the loop cannot go on (a broken device), if it cannot
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._running: dict[int, Ticket] = {}  # id(request) -> ticket
        self._chunk: int | None = None  # after running out of memory: requests per step
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="zerocap-scheduler", daemon=True)
        self._thread.start()

    # ---- callers --------------------------------------------------------------------------------------
    def submit(self, request: Request) -> Ticket:
        release_pool()  # the submitting thread's CPU work is done: its idle OpenMP pool would slow the loop's
        ticket = Ticket(request)
        with self._cond:
            if self.error is not None:
                raise RuntimeError(f"the decoder cannot run: {self.error}")
            self._waiting.append(ticket)
            self._cond.notify()
        return ticket

    def caption(self, request: Request, timeout: float | None = None):
        """Submit and wait: the request's CaptionResult."""
        return self.submit(request).result(timeout)

    @property
    def load(self) -> int:
        """Requests waiting or running."""
        with self._cond:
            return len(self._waiting) + len(self._running)

    @property
    def requests(self) -> list[Request]:
        """The requests being decoded, lane by lane."""
        return [r for lane in list(self.lanes) for r in lane.batch.requests]

    def health(self) -> str | None:
        """None when the loop and the device work, else why not."""
        if self.error is not None:
            return self.error
        if not self._thread.is_alive():
            return "the decoding loop has stopped"
        if self.engine.device.type == "cuda":
            try:
                torch.zeros(1, device=self.engine.device).add_(1).item()
            except Exception as e:  # a device that no longer runs kernels
                return f"the GPU does not answer: {type(e).__name__}: {e}"
        return None

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=60)

    # ---- the loop -------------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._rounds()
        except BaseException as e:  # noqa: BLE001 -- a bug of the loop itself: say so, fail what waits
            self.error = f"the decoding loop stopped: {type(e).__name__}: {e}"
            self._fail_all(RuntimeError(self.error))
            raise

    def _rounds(self) -> None:
        sizer = Sizer()  # the CPU threads, sized again as other processes come and go (zerocap/threads.py)
        while True:
            with self._cond:
                idle = not self._stopping and not self._waiting and not self._running and bool(self.lanes)
            if idle:  # what the finished requests held goes back to the system
                self.lanes = []
                release_memory(self.engine.device)
            with self._cond:
                while not self._stopping and not self._waiting and not self._running:
                    self._cond.wait()
                if self._stopping:
                    break
                joining = self._joining()
            self._admit(joining)
            self._drop_cancelled()
            self.lanes = [lane for lane in self.lanes if lane.batch.requests]
            if self.lanes:
                # the least served lane steps next; on a tie (a new lane) the lighter one
                lane = min(self.lanes, key=lambda lane: (lane.seconds, lane.cost))
                if self.engine.device.type == "cpu" and self.engine.compiled is None:
                    sizer.tick()  # (a compiled step is compiled for its thread count: changing it recompiles)
                start = time.perf_counter()
                self._step(lane)
                lane.seconds += time.perf_counter() - start
        self._fail_all(Cancelled("the decoder was closed"))

    def _joining(self) -> list[Ticket]:
        """The waiting requests that join before the next step: first come, first served, while
        there is room."""
        for ticket in [t for t in self._waiting if t.cancelled]:
            self._waiting.remove(ticket)
            ticket._finish(error=Cancelled("cancelled before it started"))
        most = min(self.max_batch, 2 * self._chunk) if self._chunk else self.max_batch
        joining = []
        while self._waiting and len(self._running) + len(joining) < most:
            joining.append(self._waiting.popleft())
        return joining

    def _lane_for(self, request: Request) -> Lane:
        """The lane of requests of its cost; a new one while there are fewer than MAX_LANES."""
        same = [lane for lane in self.lanes if lane.takes(request)]  # its method's lanes
        nearest = min(same, key=lambda lane: abs(math.log(request.cost / lane.cost)), default=None)
        if nearest is not None and (nearest.fits(request) or len(self.lanes) >= MAX_LANES):
            return nearest  # (when any lane fits, the nearest does)
        lane = Lane(self.engine, request, self.max_batch, min((lane.seconds for lane in self.lanes), default=0.0))
        self.lanes.append(lane)
        return lane

    def _admit(self, joining: list[Ticket]) -> None:
        for i, ticket in enumerate(joining):
            lane = self._lane_for(ticket.request)
            try:
                lane.batch.add(ticket.request)
            except (torch.cuda.OutOfMemoryError, MemoryError):
                self._out_of_memory(lane)
                if not self._running:  # out of memory on its own
                    ticket._finish(error=InputError(OUT_OF_MEMORY))
                    continue
                with self._cond:  # back to the front, in their order, for a later round
                    self._waiting.extendleft(reversed(joining[i:]))
                return
            except Exception as e:  # noqa: BLE001 -- a request that cannot start fails alone
                ticket._finish(error=e)
                continue
            ticket.lane = lane
            ticket.started = time.perf_counter()
            self._running[id(ticket.request)] = ticket

    def _drop_cancelled(self) -> None:
        for ticket in [t for t in self._running.values() if t.cancelled]:
            ticket.lane.batch.remove(ticket.request)
            self._fail(ticket, Cancelled("cancelled"))

    def _step(self, lane: Lane) -> None:
        batch = lane.batch
        requests = list(batch.requests)
        chunks = [requests] if not self._chunk else [requests[i:i + self._chunk]
                                                      for i in range(0, len(requests), self._chunk)]
        for chunk in chunks:
            try:
                finished = batch.step(only=chunk)
            except (torch.cuda.OutOfMemoryError, MemoryError):
                self._out_of_memory(lane)
                if len(chunk) == 1:  # out of memory on its own: it cannot be decoded here
                    batch.remove(chunk[0])
                    self._fail(self._running[id(chunk[0])], InputError(OUT_OF_MEMORY))
                return  # the next round steps smaller chunks
            except Exception as e:  # noqa: BLE001 -- a bug or a broken device: these requests fail
                if "CUDA" in str(e) or "device-side" in str(e):
                    self.error = f"{type(e).__name__}: {e}"
                for r in chunk:
                    batch.remove(r)
                    self._fail(self._running[id(r)], e)
                continue
            for r in finished:
                ticket = self._running.pop(id(r))
                if r.error is not None:
                    ticket._finish(error=r.error)
                    continue
                try:
                    ticket._finish(batch.result(r))
                except Exception as e:  # noqa: BLE001
                    ticket._finish(error=e)

    def _out_of_memory(self, lane: Lane) -> None:
        """Free what the allocator holds and step (and admit) fewer requests at once from now on."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        size = self._chunk or len(lane.batch.requests) or 1
        self._chunk = max(1, size // 2)

    def _fail(self, ticket: Ticket, error: BaseException) -> None:
        self._running.pop(id(ticket.request), None)
        ticket._finish(error=error)

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for ticket in waiting + list(self._running.values()):
            self._running.pop(id(ticket.request), None)
            ticket._finish(error=error)
