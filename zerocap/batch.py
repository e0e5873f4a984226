"""Requests decoded together, one step at a time: requests join and leave between steps.

A `Request` is one caption: its target, config, prompt, beams, its own step counter and its
slots in the LM state. `Batch.step()` advances every request in the batch by one token --
whatever step each is at, whatever its prompt and settings -- and returns those that finished.
Each row (a beam; a request's single prompt row at its first step) carries its request's knobs
and step: beam_size, top_k (the step takes the most any row asks for; a row's candidates past
its own are neither scored nor weighted), num_iterations (the step runs the most any row asks
for; a row whose own are done keeps its shift), fusion_factor, grad_norm_factor, the scales,
step size, temperature, prompt, lengths, end token and token rules. So a request gets the beams
it gets decoded alone, whatever it shares the step with (up to floating-point rounding, as any
change of batch shapes).

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
from .decoding import Snapshot, tell
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
    on_step: Callable | None = None  # on_step(decoding.Snapshot) after each of its steps
    step: int = 0
    beams: Beams | None = None  # (1, B, ...) once the first step has picked them
    slots: torch.Tensor | None = None  # (B,) in the LM state
    joined: float = field(default_factory=time.perf_counter)
    steps_taken: int = 0  # decoding steps run (stops early when every beam ended)
    shared: list[int] = field(default_factory=list)  # requests in the batch at each of its steps
    error: BaseException | None = None  # what stopped it early (its on_step raised)
    decoder: Any = None  # the method's decoder that made it (zerocap_decoder.py): its result, its best text

    @property
    def cost(self) -> float:
        """What one of its steps costs, in candidate scorings (each beam's top-k, at each iteration,
        plus a pass's worth): how the scheduler tells heavy requests from light ones."""
        c = self.cfg
        return c.beam_size * (c.top_k + 64) * (c.num_iterations + 1)

    def new_batch(self, engine, max_requests: int | None = None) -> "Batch":
        """A batch of requests of this kind (the scheduler's lanes)."""
        return Batch(engine, max_requests)

    @property
    def done(self) -> bool:
        return self.beams is not None and (bool(self.beams.done.all()) or self.step >= self.cfg.max_tokens)

    def contexts(self) -> list[list[int]]:
        """Each row's token ids: the prompt alone at the first step, then the prompt + each beam."""
        if self.beams is None:
            return [self.prompt]
        return [self.prompt + row for row in self.beams.tokens[0].tolist()]


def fuse(logits: torch.Tensor, p0: torch.Tensor, fusion_factor: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Log of shifted^f x plain^(1-f) for rows (R, V), each row with its own f (R, 1), normalised
    per request (its `sizes` rows, in order) as the authors do -> one (b, V) per request."""
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

    def accepts(self, request: Request, most: int | None = None) -> bool:
        """Whether `request` may join now: room (`most` requests); any settings may share a step."""
        return most is None or len(self.requests) < most

    def add(self, request: Request) -> None:
        request.slots = self.state.begin(request.prompt, request.cfg.beam_size, request.cfg.max_tokens)
        self.requests.append(request)

    def remove(self, request: Request) -> None:
        self.requests.remove(request)
        self.state.end(request.slots)

    def result(self, request: Request):
        """A finished request's CaptionResult."""
        return request.decoder.result(request)

    def snapshot(self, request: Request) -> Snapshot | None:
        """Where a request is: the tokens decoded, its best beam so far (None before its first step)."""
        if request.beams is None:
            return None
        best = request.decoder.best_text(request.beams, request.prompt)
        return Snapshot("token", request.step, request.cfg.max_tokens, best, request.cfg.cond_text + best)

    def step(self, only: list[Request] | None = None) -> list[Request]:
        """Advance every request (or those of `only`) by one token; return (and remove) those that
        finished, or stopped on an error of their own (`error`). A step that raises before it
        commits leaves every request as it was."""
        requests = list(self.requests if only is None else only)
        if not requests:
            return []
        self.state.pack(self.requests)  # a compiled step reads the smallest size that holds them
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
            tell(self, r)
            if r.done or r.error is not None:
                finished.append(r)
        for r in finished:
            self.remove(r)
        return finished

    def _logprobs(self, requests: list[Request], rows):
        """Fused next-token log-probs, one (b, V) per request, and what the LM state appends."""
        engine = self.engine
        sizes = [len(i) for i in rows.index]
        owners = [r for r, b in zip(requests, sizes) for _ in range(b)]  # each request row's request, in order
        cfgs = [r.cfg for r in owners]
        col = lambda values: torch.tensor(values, dtype=torch.float32, device=engine.device)  # noqa: E731
        with record_function("zerocap.lm_prefill"):
            plain = self.state.plain(rows)
        p0 = plain.probs  # (R, V)
        act = rows.active  # the requests' rows among the step's, request by request
        contexts = [rows.contexts[i] for i in act.tolist()]  # their token ids
        if plain.at.past is not None and any(c.num_iterations > 0 for c in cfgs):
            targets = torch.stack([r.target for r in owners])  # (n, D)
            prefixes = engine.prefix_texts(contexts)
            top_k = torch.tensor([c.top_k for c in cfgs], device=p0.device)
            guide = Guide(engine.candidates(prefixes), targets, top_k, col([c.clip_temperature for c in cfgs])[:, None],
                          width=self.state.candidates_width(int(top_k.max()), p0.shape[-1]))
            every = cfgs if rows.dense else _spread(cfgs, act, len(rows.contexts), cfgs[0].replace(num_iterations=0))
            logits = self.state.shift(plain, _on_active(guide, rows), Shift.of(every, p0.device))
        else:
            logits = self.state.unshifted(plain)
        if not rows.dense:
            logits, p0 = logits[act], p0[act]
        recent = torch.tensor([(c[-4:] * 4)[-4:] for c in contexts], device=p0.device)  # (n, 4)
        rules = Rules.of(cfgs, [r.step for r in owners], [r.end_id for r in owners], p0.device)
        logits = apply_token_rules(logits, recent, rules, engine.forbidden)
        return fuse(logits, p0, col([c.fusion_factor for c in cfgs])[:, None], sizes), plain.pending


def _spread(cfgs: list, active: torch.Tensor, rows: int, default) -> list:
    """Per-row configs over every row of the static layout: the requests' where they are."""
    every = [default] * rows
    for i, c in zip(active.tolist(), cfgs):
        every[i] = c
    return every


def _on_active(guide: Guide, rows) -> Callable:
    """The guide's (top, q) for the requests' rows, over every row of the step (a row no request
    holds gets the first tokens and q = 0: finite, and never read)."""
    if rows.dense:
        return guide.distribution

    def distribution(probs: torch.Tensor, live: torch.Tensor | None = None):
        R, K = probs.shape[0], guide.width
        top = torch.arange(K, device=probs.device).expand(R, K).clone()
        q = torch.zeros((R, K), device=probs.device)
        t, qa = guide.distribution(probs[rows.active], None if live is None else live[rows.active])
        top[rows.active], q[rows.active] = t, qa
        return top, q

    return distribution
