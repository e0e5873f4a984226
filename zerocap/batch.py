"""Requests decoded together, one step at a time: requests join and leave between steps.

A `Request` is one caption: its target, config, prompt, beams, its own step counter and its
slots in the LM state. `Batch.step()` advances every request in the batch by one token --
whatever step each is at, whatever its prompt -- and returns those that finished. Each row
(a beam; a request's single prompt row at its first step) carries its request's knobs and step,
so a request gets the beams it gets decoded alone, whatever it shares the step with (up to
floating-point rounding, as any change of batch shapes).

What rows of one step must share -- the shapes and exponents of the step -- is the request's
`group` (beam_size, top_k, num_iterations, fusion_factor, grad_norm_factor); `accepts()` tells
whether a request may join. Everything else (prompt, lengths, end token, scales, step size,
temperature, the token rules' factors) is per row.

One decoding step (`_logprobs`), each part in its module:
  lm.py            the plain next-token distribution and the rows' cached past
  candidates.py    top-k candidate tokens (scorer.py scores them)
  guide.py         candidate features -> the CLIP loss
  context_shift.py gradient steps on the past
  token_rules.py   repetition / end / forbidden-token rules
  beam_search.py   length-normalised beam search, per request
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.profiler import record_function

from .beam_search import Beams, first_step, next_step
from .context_shift import Shift
from .guide import Guide
from .token_rules import Rules, apply_token_rules


@dataclass(eq=False)  # a request is itself: compared by identity
class Request:
    """One caption being decoded."""

    target: torch.Tensor  # (D,) normalised
    cfg: Any  # ZeroCapConfig, checked
    name: str
    prompt: list[int]  # LM ids of prompt prefix + cond_text
    end_id: int
    details: Any = None  # what the mode adds to the result
    progress: Callable | None = None  # progress(step, max_tokens, [best text]) after each step
    step: int = 0
    beams: Beams | None = None  # (1, B, ...) once the first step has picked them
    slots: torch.Tensor | None = None  # (B,) in the LM state
    joined: float = field(default_factory=time.perf_counter)
    steps_taken: int = 0  # decoding steps run (stops early when every beam ended)
    shared: list[int] = field(default_factory=list)  # requests in the batch at each of its steps
    error: BaseException | None = None  # what stopped it early (its progress callback raised)

    @property
    def group(self) -> tuple:
        c = self.cfg
        return (c.beam_size, c.top_k, c.num_iterations, c.fusion_factor, c.grad_norm_factor)

    @property
    def done(self) -> bool:
        return self.beams is not None and (bool(self.beams.done.all()) or self.step >= self.cfg.max_tokens)

    def contexts(self) -> list[list[int]]:
        """Each row's token ids: the prompt alone at the first step, then the prompt + each beam."""
        if self.beams is None:
            return [self.prompt]
        return [self.prompt + row for row in self.beams.tokens[0].tolist()]


def fuse(logits: torch.Tensor, p0: torch.Tensor, fusion_factor: float, sizes: list[int]) -> list[torch.Tensor]:
    """Log of shifted^f x plain^(1-f) for rows (R, V), normalised per request (its `sizes` rows,
    in order) as the authors do -> one (b, V) per request."""
    probs = torch.softmax(logits, dim=-1)
    fused = probs ** fusion_factor * p0 ** (1 - fusion_factor)  # (R, V)
    out, start = [], 0
    for b in sizes:
        f = fused[start:start + b]
        out.append((f / f.sum()).log())  # one scalar per request, summed as the authors do
        start += b
    return out


class Batch:
    """Requests that share decoding steps (see the module docstring); at most `max_requests` at
    once when known (a compiled step's shapes are sized by it)."""

    def __init__(self, engine, max_requests: int | None = None):
        self.engine = engine
        self.state = engine.lm_adapter.new_state(max_requests)
        self.requests: list[Request] = []

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def group(self) -> tuple | None:
        return self.requests[0].group if self.requests else None

    def accepts(self, request: Request, most: int | None = None) -> bool:
        """Whether `request` may join now: the same step shapes, and room (`most` requests)."""
        if most is not None and len(self.requests) >= most:
            return False
        return not self.requests or request.group == self.group

    def add(self, request: Request) -> None:
        request.slots = self.state.begin(request.prompt, request.cfg.beam_size, request.cfg.max_tokens)
        self.requests.append(request)

    def remove(self, request: Request) -> None:
        self.requests.remove(request)
        self.state.end(request.slots)

    def step(self, only: list[Request] | None = None) -> list[Request]:
        """Advance every request (or those of `only`) by one token; return (and remove) those that
        finished, or stopped on an error of their own (`error`). A step that raises before it
        commits leaves every request as it was."""
        requests = list(self.requests if only is None else only)
        if not requests:
            return []
        rows = self.state.rows(requests, self.engine.device)
        logprobs, pending = self._logprobs(requests, rows)
        beams, reorders = [], []
        for r, lp in zip(requests, logprobs):
            if r.beams is None:
                new = first_step(lp[:1], r.cfg.beam_size, r.end_id)
                source = torch.zeros(r.cfg.beam_size, dtype=torch.long, device=lp.device)  # every beam: the prompt
            else:
                new, source = next_step(r.beams, lp[None], r.end_id)
                source = source[0]
            beams.append(new)
            reorders.append((r.slots, source))
        self.state.commit(rows, pending, reorders)
        finished = []
        for r, new in zip(requests, beams):
            r.beams = new
            r.step += 1
            r.steps_taken = r.step
            r.shared.append(len(requests))
            if r.progress is not None:
                try:
                    r.progress(r.step, r.cfg.max_tokens, [self.engine.best_text(r.beams)])
                except Exception as e:  # noqa: BLE001 -- it stops that request alone (e.g. a cancellation)
                    r.error = e
            if r.done or r.error is not None:
                finished.append(r)
        for r in finished:
            self.remove(r)
        return finished

    def _logprobs(self, requests: list[Request], rows):
        """Fused next-token log-probs, one (b, V) per request, and what the LM state appends."""
        engine, first = self.engine, requests[0].cfg
        sizes = [len(i) for i in rows.index]
        owners = [r for r, b in zip(requests, sizes) for _ in range(b)]  # each request row's request, in order
        cfgs = [r.cfg for r in owners]
        with record_function("zerocap.lm_prefill"):
            p0, logits, past, positions, mask, pending = self.state.plain(rows)  # (R, V), (L, 2, R, H, T, hd)
        act = rows.active  # the requests' rows among the step's, request by request
        contexts = [rows.contexts[i] for i in act.tolist()]  # their token ids
        if past is not None and first.num_iterations > 0:
            targets = torch.stack([r.target for r in owners])  # (n, D)
            prefixes = engine.prefix_texts(contexts)
            guide = Guide(engine.candidates(prefixes), targets, first.top_k, torch.tensor(
                [c.clip_temperature for c in cfgs], dtype=torch.float32, device=p0.device)[:, None])
            every = cfgs if rows.dense else _spread(cfgs, act, len(rows.contexts), first)
            logits = self.state.shift(rows, past, positions, mask, p0, _on_active(guide, rows),
                                      Shift.of(every, p0.device))
        elif logits is None:  # the exact form: the authors' own pass
            logits = self.state.logits(rows, past)
        if not rows.dense:
            logits, p0 = logits[act], p0[act]
        recent = torch.tensor([(c[-4:] * 4)[-4:] for c in contexts], device=p0.device)  # (n, 4)
        rules = Rules.of(cfgs, [r.step for r in owners], [r.end_id for r in owners], p0.device)
        logits = apply_token_rules(logits, recent, rules, engine.forbidden)
        return fuse(logits, p0, first.fusion_factor, sizes), pending


def _spread(cfgs: list, active: torch.Tensor, rows: int, default) -> list:
    """Per-row configs over every row of the static layout: the requests' where they are."""
    every = [default] * rows
    for i, c in zip(active.tolist(), cfgs):
        every[i] = c
    return every


def _on_active(guide: Guide, rows) -> Callable:
    """The guide's (top, q) for the requests' rows, over every row of the step (a row no request
    holds gets the first top-k tokens and a uniform q: finite, and never read)."""
    if rows.dense:
        return guide.distribution

    def distribution(probs: torch.Tensor):
        R, K = probs.shape[0], guide.top_k
        top = torch.arange(K, device=probs.device).expand(R, K).clone()
        q = torch.full((R, K), 1.0 / K, device=probs.device)
        t, qa = guide.distribution(probs[rows.active])
        top[rows.active], q[rows.active] = t, qa
        return top, q

    return distribution
