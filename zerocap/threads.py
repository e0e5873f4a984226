"""CPU threads: how many the intra-op pool gets, how idle ones wait, and pools handed back.

**How many.** PyTorch sizes its pool by the host's cores, which in a container started with
`--cpus=2` on a 64-core host, or beside other jobs, is far more than the CPU time there is: every
parallel kernel then waits for a thread that shares its core with another process. Here the pool
gets the smallest of
  - the CPUs this process may run on (its affinity: `taskset`, `docker --cpuset-cpus`),
  - its cgroup's CPU quota, rounded up (`cpu.max`, or v1's `cpu.cfs_quota_us`: `docker --cpus`),
  - those CPUs less the ones other processes keep busy (`/proc/stat`, our own time taken out),
unless the user said: `ZEROCAP_THREADS=N`, else `OMP_NUM_THREADS=N`, wins. The last bound is
measured again while a job or a server decodes (`Sizer`, from the scheduler's loop), so a job
that started on a quiet machine gives a core back when another process takes it, and takes it
again when it is free. Measured (tiny models, a 6-token caption, Intel Xeon, 2 cores): 0.50 s
quiet; with one CPU hog pinned to core 0, 3.5 s on two threads and 0.70 s on one; with 8 hogs,
59.7 s on two threads and 3.9 s on one (bench/RESULTS.md).

**How idle threads wait.** libgomp spins a worker that has no work for ~300,000 iterations
(3 ms on the Intel Xeon of bench/RESULTS.md, 11 ns an iteration; up to ~15 ms where a pause
instruction is slower) before it sleeps: on a core another process needs, that spinning takes
its time. `GOMP_SPINCOUNT` is set lower by default (prepare(), before torch loads libgomp):
  - 100,000 (~1 ms there) when the pool is ours to size: it has only CPUs other processes left
    free (measured again every 2 s), so a worker spins where nobody else wanted to run, and
    spinning through the gaps between a decoding step's kernels (Python's work between them, up
    to about a millisecond) saves waking it through the kernel's futex for the next: a
    pseudo-token request 7-15% faster than at 10,000 on a quiet 2-core machine;
  - 10,000 (~0.1 ms) when the user fixed the count (ZEROCAP_THREADS / OMP_NUM_THREADS): it is
    never made smaller, so its workers may share a core with another process; beside a CPU hog,
    two fixed threads took 1.9 s a caption at 10,000 and 6.4 s at 100,000.
The user's `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` wins. (A fully passive wait cost 75% on a
quiet machine: every kernel then wakes its workers through the futex.)

**Pools handed back.** libgomp gives every thread that runs a parallel kernel a pool of worker
threads of its own, kept after the kernel ends. Served, decoding runs on the scheduler's thread
while the models were loaded on the main thread and requests' images are read on worker threads:
with those threads' pools alive, every kernel of the decoding thread ran about 1.4x slower on a
2-core CPU. A thread done with CPU work for now hands its pool back (release_pool); its next
parallel kernel starts a new one.
"""
from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
import time
from dataclasses import dataclass

OMP_PAUSE_HARD = 2  # omp_pause_resource_t: free the pool's threads
# iterations an idle libgomp worker spins before it sleeps (libgomp's own: 300,000): a pool we size, one
# whose count the user fixed (the module's docstring)
SPINCOUNT, FIXED_SPINCOUNT = "100000", "10000"
USER_VARS = ("ZEROCAP_THREADS", "OMP_NUM_THREADS")  # the user's count, in this order
RESIZE_SECONDS = 2.0  # how often a decoding loop measures the other processes' load again
BUSY_SLACK = 0.3  # a CPU counts as taken when others keep it busy more than 1 - this (noise aside)


def prepare() -> None:
    """Before torch is imported (it loads libgomp, which reads these once): idle workers sleep
    after a spin (shorter where the user fixed the count). A no-op once torch is loaded or when
    the user set the wait policy."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    os.environ["GOMP_SPINCOUNT"] = FIXED_SPINCOUNT if _user_count() is not None else SPINCOUNT


# ---- what this process may use ------------------------------------------------------------------
def allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _read(path: str, most: int = 4096) -> str | None:
    """A small system file's text (at most `most` characters), stripped; None where unreadable."""
    try:
        with open(path) as f:
            return f.read(most).strip()
    except OSError:
        return None


def quota(root: str = "/sys/fs/cgroup", own: str | None = None) -> float | None:
    """The cgroup's CPU quota in CPUs (None: no quota): the smallest of cgroup v2's `cpu.max` and
    v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us`, in this process's cgroup and each above it."""
    found = []
    own = _read("/proc/self/cgroup") if own is None else own  # its lines: number:controllers:path
    for line in (own or "").splitlines():
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if number == "0" and not controllers:  # v2: one tree
            files = [(root, "cpu.max", None), (os.path.join(root, "unified"), "cpu.max", None)]
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's tree
            files = [(os.path.join(root, name), "cpu.cfs_quota_us", "cpu.cfs_period_us")
                     for name in (controllers, "cpu", "cpu,cpuacct")]
        else:
            continue
        for base, limit_name, period_name in files:
            here = path.strip("/")
            while True:
                found.extend(_limit(os.path.join(base, here), limit_name, period_name))
                if not here:
                    break
                here = os.path.dirname(here)
    return min(found) if found else None


def _limit(folder: str, limit_name: str, period_name: str | None) -> list[float]:
    text = _read(os.path.join(folder, limit_name))
    if not text:
        return []
    if period_name is None:  # v2: "max 100000" or "50000 100000"
        limit, _, period = text.partition(" ")
    else:
        limit, period = text, _read(os.path.join(folder, period_name)) or ""
    try:
        return [int(limit) / int(period)] if limit not in ("max", "-1") and int(limit) > 0 and int(period) > 0 else []
    except ValueError:
        return []


def _user_count() -> tuple[int, str] | None:
    for name in USER_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                n = int(value.split(",")[0])
            except ValueError:
                continue
            if n >= 1:
                return n, f"{name}={value}"
    return None


# ---- the other processes' load ------------------------------------------------------------------
def _cpu_times(cpus: list[int]) -> tuple[float, float] | None:
    """(busy, total) jiffies of `cpus` from /proc/stat; None where it cannot be read."""
    text = _read("/proc/stat", 1 << 20)
    if text is None:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    busy = total = 0.0
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            values = [float(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            total += sum(values)
            busy += sum(values) - values[3] - values[4]
    return (busy, total) if total else None


def _own_jiffies() -> float:
    text = _read("/proc/self/stat")
    if not text:
        return 0.0
    fields = text.rpartition(")")[2].split()
    return float(fields[11]) + float(fields[12])  # utime, stime (fields 14 and 15)


@dataclass
class Sample:
    busy: float
    total: float
    own: float


def sample(cpus: list[int]) -> Sample | None:
    times = _cpu_times(cpus)
    return None if times is None else Sample(times[0], times[1], _own_jiffies())


def taken(before: Sample, after: Sample, cpus: int) -> int:
    """CPUs other processes kept busy between two samples (a whole one once they used most of it)."""
    span = after.total - before.total
    if span <= 0:
        return 0
    others = max(0.0, (after.busy - before.busy) - (after.own - before.own)) / span * cpus
    return max(0, math.ceil(others - BUSY_SLACK))


# ---- the choice ---------------------------------------------------------------------------------
def _budget() -> tuple[list[int], int, list[str]]:
    """(the CPUs this process may run on, the most threads its affinity and quota allow, why)."""
    cpus = allowed_cpus()
    most, why = len(cpus), [f"{len(cpus)} CPUs allowed"]
    q = quota()
    if q is not None:
        most = min(most, max(1, math.ceil(q - 0.01)))
        why.append(f"quota {q:g}")
    return cpus, most, why


def _fit(most: int, cpus: list[int], busy: int) -> int:
    """Threads within the budget, on the CPUs other processes leave free (at least one)."""
    return max(1, min(most, len(cpus) - busy))


@dataclass
class Choice:
    threads: int
    why: str
    fixed: bool  # the user's count: never changed

    def line(self) -> str:
        return f"{self.threads} CPU thread{'s' * (self.threads != 1)} ({self.why})"


def choose(window: float = 0.1) -> Choice:
    """The pool's size now; measures the other processes' load over `window` seconds."""
    user = _user_count()
    if user is not None:
        return Choice(user[0], f"{user[1]}", True)
    cpus, n, why = _budget()
    before = sample(cpus)
    if before is not None and window > 0:
        time.sleep(window)
        after = sample(cpus)
        busy = taken(before, after, len(cpus)) if after is not None else 0
        if busy:
            why.append(f"{busy} busy with other processes")
        n = _fit(n, cpus, busy)
    return Choice(n, ", ".join(why), False)


_CHOICE: Choice | None = None
_IN_USE: int | None = None  # the count a decoding thread set last (apply's, then a Sizer's)


def timing(seconds: float, tokens: int) -> dict:
    """A result record's `timing`: seconds, tokens, seconds per token, and the CPU threads decoding ran on."""
    return {"seconds": seconds, "tokens": tokens, "seconds_per_token": seconds / max(1, tokens), "threads": _IN_USE}


def apply(window: float = 0.1) -> Choice:
    """Size torch's pool once per process (later calls return the first choice) and say it."""
    global _CHOICE, _IN_USE
    if _CHOICE is None:
        import torch

        _CHOICE = choose(window)
        if torch.get_num_threads() != _CHOICE.threads:
            torch.set_num_threads(_CHOICE.threads)
        _IN_USE = _CHOICE.threads
    return _CHOICE


def current() -> Choice | None:
    return _CHOICE


class Sizer:
    """A decoding loop's pool, sized again every RESIZE_SECONDS from the other processes' load
    over the last interval (no sleeping: it reads the counters it read last time). Call `tick()`
    between steps on the decoding thread (torch's count is per thread under OpenMP). Not for a
    compiled step: its kernels are compiled for a thread count, and a new one recompiles them."""

    def __init__(self, interval: float = RESIZE_SECONDS):
        self.interval = interval
        self.cpus, self.most, _ = _budget()
        choice = current()
        self.fixed = choice is None or choice.fixed
        self.last = sample(self.cpus)
        self.when = time.monotonic()

    def tick(self) -> int | None:
        """The count set now, when it changed; else None."""
        if self.fixed or self.last is None or time.monotonic() - self.when < self.interval:
            return None
        now = sample(self.cpus)
        if now is None:
            return None
        global _IN_USE
        n = _fit(self.most, self.cpus, taken(self.last, now, len(self.cpus)))
        self.last, self.when = now, time.monotonic()
        import torch

        changed = torch.get_num_threads() != n
        if changed:
            release_pool()  # the old pool's threads go; the next kernel starts one of n
            torch.set_num_threads(n)
        _IN_USE = n
        return n if changed else None


# ---- pools handed back ----------------------------------------------------------------------------
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
