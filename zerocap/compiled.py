"""The fast form's decoding step compiled once and replayed: torch.compile on static shapes.

In the static layout (lm.py's FastState) every step reads the whole KV cache -- every slot, its
full capacity, with the rows' positions and a mask -- so the two functions a step runs have the
same shapes at every step, whoever is in the batch:
  plain      the LM's one-token step on the cached past: the plain distribution and the new keys/values
  iteration  one context-shift iteration (context_shift.iteration): LM forward, CLIP loss, backward,
             update -- one graph, given the CLIP target distribution of the iteration
Shapes depend only on the batch's configuration (slots = requests x beam_size, capacity, top_k),
so each is captured once per configuration: no recompilation from step to step or caption to
caption, and with mode="reduce-overhead" on a GPU each replays as CUDA graphs. What stays eager
between them: the top-k's candidate rows (text processing on the host) and CLIP's scoring of them.

A compile that fails falls back to the eager step, with one warning. Compiled artifacts go to
PyTorch's inductor cache ($TORCHINDUCTOR_CACHE_DIR, else PyTorch's default), which a later
process reuses -- in a folder of its own per kind of CPU (`cpu_cache_dir`): Inductor's cache
keys do not tell apart the vector units a kernel was built for, and a kernel built under
ATEN_CPU_CAPABILITY=avx512 crashed a later process under avx2 (a segmentation fault, seen with
torch 2.14.1 on an AMD EPYC); a cache volume moved to another machine would meet the same.
"""
from __future__ import annotations

import hashlib
import os
import platform
import time
import warnings

import torch

from .context_shift import At, iteration

MODES = ("default", "reduce-overhead", "max-autotune")
# configurations compiled per process before torch.compile stops (and new ones run eagerly):
# each batch configuration (slots, capacity, candidates per row) is one
RECOMPILES = 128


def cpu_kind() -> str:
    """The vector unit PyTorch dispatches to (ATEN_CPU_CAPABILITY included) and a hash of the
    CPU's feature flags: 'avx512-3f2a9c1e'."""
    flags = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), flags)
    except OSError:
        pass
    capability = torch.backends.cpu.get_cpu_capability().lower()
    return f"{capability}-{hashlib.sha256(' '.join(sorted(flags.split())).encode()).hexdigest()[:8]}"


def cpu_cache_dir() -> str:
    """Point Inductor's cache at a folder of this kind of CPU inside the one chosen (the
    environment's $TORCHINDUCTOR_CACHE_DIR, else PyTorch's default), before anything compiles;
    the folder."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    base = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir()
    kind = cpu_kind()
    if os.path.basename(os.path.normpath(base)) != kind:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(base, kind)
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


class Compiled:
    def __init__(self, fast_lm, mode: str = "default"):
        if mode not in MODES:
            raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(MODES)}")
        cpu_cache_dir()
        self.lm, self.mode = fast_lm, mode
        _allow_recompiles(RECOMPILES)
        self._plain = torch.compile(self._plain_eager, mode=mode, fullgraph=True, dynamic=False)
        self._iteration_eager = iteration(self._step)
        self._iteration = torch.compile(self._iteration_eager, mode=mode, fullgraph=True, dynamic=False)
        self.compile_seconds = 0.0  # spent in calls that compiled (the first of each shape)
        self.failed: str | None = None

    def _plain_eager(self, last, past, positions, mask):
        return self.lm.step(self.lm.lm, last, past, positions, mask)

    def _step(self, last, past, positions, mask):
        return self.lm.step(self.lm.lm, last, past, positions, mask)[0]

    @torch.no_grad()
    def plain(self, at: At):
        """(logits (R, V), the keys/values of the rows' last tokens) of the LM's one-token step."""
        if self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # a new decoding step: earlier outputs may be reused
        logits, kv = self._run(self._plain, self._plain_eager, *at)
        return logits.clone(), kv.clone()  # kept past later replays, which may reuse a CUDA graph's outputs

    def shift(self, at: At, p0, distribution, shift) -> torch.Tensor:
        """The shifted logits (R, V) after shift.iterations compiled iterations."""
        delta, log_p0, probs, logits = torch.zeros_like(at.past), p0.log(), p0, None
        for i in range(shift.most):
            top, q = distribution(probs, shift.live(i))
            delta, logits = self._run(self._iteration, self._iteration_eager, delta, at, log_p0, top, q,
                                      shift.weights(i))
            probs = torch.softmax(logits, dim=-1)
        return logits.detach().clone()

    def _run(self, compiled, eager, *args):
        if self.failed is not None:
            return eager(*args)
        start = time.perf_counter()
        frames = _compiled_frames()
        try:
            out = compiled(*args)
        except Exception as e:  # noqa: BLE001 -- whatever torch.compile raises, decoding goes on eagerly
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(f"torch.compile failed ({self.failed[:300]}); decoding eagerly", RuntimeWarning,
                          stacklevel=2)
            return eager(*args)
        if _compiled_frames() != frames:  # this call compiled a graph
            self.compile_seconds += time.perf_counter() - start
        return out


def _allow_recompiles(n: int) -> None:
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), n))


def _compiled_frames() -> int:
    """Graphs torch.compile has made in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]
