"""MAGIC on an engine's models (Magic): a request, its result, and requests sharing steps.

Each step of a request runs its k candidates through the LM in one pass after its cached keys and
values (the LM's hidden state of each, and the next logits of the one kept), scores their texts
with CLIP, and keeps the best by MAGIC's score (see __init__.py). Requests of any settings share a
step: one LM pass for the candidates of every request whose cache is as long (one per length),
and in the fast form one CLIP pass for every request's candidates.
"""
from __future__ import annotations

import inspect
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import DynamicCache

from ..decoding import Snapshot, tell
from ..errors import InputError
from ..outputs import Out, Recorded
from .knobs import NAME, MagicConfig

CANDIDATE_ROWS = 256  # candidates in one LM pass at most: each holds a copy of its row's keys/values (real sizes,
# GPT-2 medium at 40 tokens: 256 rows ~2 GB), so k x requests in a step is memory-bound only by this
START_TEXT = "<-start_of_text->"  # the start token their caption LMs add (cambridgeltl/magic_mscoco, ..._flickr30k)


@dataclass
class MagicResult(Recorded):
    caption: str  # as theirs parses it: the start text and the tokens before the end token, whitespace folded
    cond_text: str
    target: str
    step_tokens: list[str]  # each kept token's text
    step_lm_probs: list[float]  # its LM probability
    step_penalties: list[float]  # its degeneration penalty (max cosine to the earlier hidden states)
    step_clip_scores: list[float]  # its CLIP score (softmax over the step's k candidates)
    tokens: int  # tokens generated, the end token included
    seconds: float
    details: Any = None
    method: str = NAME

    def container_fields(self) -> dict:
        """This method's fields of the container's output (OUTPUTS says what each holds)."""
        d = self.mode_details()
        return dict(caption=self.caption, step_tokens=self.step_tokens, step_lm_probs=self.step_lm_probs,
                    step_penalties=self.step_penalties, step_clip_scores=self.step_clip_scores,
                    frames_asked=d.get("frames_asked", 0),
                    frames_sampling=f"{d['frames_asked']} frames spread evenly" if "frames_asked" in d else "")


# The container's output of this method: every field it fills, and what it holds (outputs.py).
OUTPUTS = {
    "caption": Out("str", "the start text (cond_text) and the tokens kept before the LM's end-of-text token"),
    "method": Out("str", NAME),
    "mode": Out("str", "the mode"),
    "target": Out("str", "the same"),
    "cond_text": Out("str", "the text the caption starts from (default none, as theirs)"),
    "tokens": Out("int", "tokens generated, the end-of-text token included"),
    "seconds": Out("float", "decoding time"),
    "step_tokens": Out("list[str]", "each kept token's text, in order"),
    "step_lm_probs": Out("list[float]", "each kept token's LM probability"),
    "step_penalties": Out("list[float]", "each kept token's degeneration penalty: its hidden state's largest cosine"
                                         " to the earlier ones"),
    "step_clip_scores": Out("list[float]", "each kept token's CLIP score: a softmax over its step's k candidates"),
    "frame_times": Out("list[float]", "mode video: the distinct frames (seconds), whose mean embedding is the target;"
                                      " else empty"),
    "frames": Out("int", "mode video: how many distinct frames that is; else 0"),
    "frames_asked": Out("int", "mode video: frames asked for (times falling on one frame count it once); else 0"),
    "frames_sampling": Out("str", "mode video: how the frames were sampled, in words (\"8 frames spread evenly\");"
                                  " else empty"),
}


@dataclass(eq=False)
class MagicRequest:
    """One caption by MAGIC: its target (D,) normalised, config and state."""

    target: torch.Tensor
    cfg: MagicConfig
    name: str
    prompt: list[int]  # the start token and cond_text's
    details: Any = None
    on_step: Callable | None = None  # on_step(decoding.Snapshot) after each token
    joined: float = field(default_factory=time.perf_counter)
    error: BaseException | None = None
    shared: list[int] = field(default_factory=list)
    # state
    ids: list[int] = field(default_factory=list)  # the prompt and the tokens kept
    past: torch.Tensor | None = None  # the LM's keys/values (L, 2, 1, H, T, hd) of ids
    hidden: torch.Tensor | None = None  # their hidden states (T, D), normalised
    logits: torch.Tensor | None = None  # the next token's (V,) fp32
    ended: bool = False
    steps: list[tuple[str, float, float, float]] = field(default_factory=list)

    @property
    def cost(self) -> float:
        """What one of its steps costs, in candidate scorings (the scheduler's lanes)."""
        return self.cfg.k + 64

    @property
    def generated(self) -> list[int]:
        return self.ids[len(self.prompt):]

    @property
    def done(self) -> bool:
        return self.ended or len(self.generated) >= self.cfg.max_tokens

    def new_batch(self, engine, max_requests: int | None = None) -> "MagicBatch":
        return MagicBatch(engine)


class Magic:
    """The method on one engine's models: its start and end tokens, its LM passes and its texts."""

    name = NAME
    Config = MagicConfig

    def __init__(self, engine):
        self.engine = engine
        tok, vocab = engine.tokenizer, engine.vocabulary
        own = tok.convert_tokens_to_ids(START_TEXT) if START_TEXT in tok.get_vocab() else None
        self.start_id = own if own is not None else vocab.start_id
        self.end_id = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
        self.logit_scale = engine.scorer.logit_scale
        self.shares_prefixes = engine.form.shares_prefixes(engine.scorer)
        lm = engine.lm
        self.base = lm.base_model
        params = inspect.signature(self.base.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.head_checked, self.head = False, None  # the LM's output layer, where it alone gives the logits

    def check(self, cfg: MagicConfig) -> MagicConfig:
        cfg = cfg.validate()
        if self.start_id is None:
            raise InputError(f"the {NAME} method starts from the LM's start-of-text token (BOS, else its end-of-text"
                             " token), and this tokenizer has neither; use method 'zerocap'")
        room = self.engine.facts.positions
        if len(self.prompt_ids(cfg.cond_text)) + cfg.max_tokens > room:
            raise InputError(f"max_tokens ({cfg.max_tokens}) with cond_text runs past the LM's {room} positions;"
                             " lower them")
        return cfg

    def prompt_ids(self, text: str) -> list[int]:
        """The start token, then the text's ids (theirs: the start token alone)."""
        return [self.start_id] + self.engine.tokenizer.encode(text, add_special_tokens=False)

    def request(self, target, cfg: MagicConfig, on_step=None) -> MagicRequest:
        """A checked config's caption of `target` (its vector: a clip's frames' mean)."""
        vector = target.vector.to(self.engine.device).float()
        return MagicRequest(vector / vector.norm(), cfg, target.name, self.prompt_ids(cfg.cond_text),
                            getattr(target, "details", None), on_step)

    # ---- the LM ----------------------------------------------------------------------------------
    def _cache(self, past: torch.Tensor) -> DynamicCache:
        return DynamicCache(ddp_cache_data=[(kv[0], kv[1]) for kv in past])

    @staticmethod
    def _stacked(cache, keep: slice = slice(None)) -> torch.Tensor:
        return torch.stack([torch.stack([layer.keys[..., keep, :], layer.values[..., keep, :]])
                            for layer in cache.layers])

    @torch.no_grad()
    def prefill(self, r: MagicRequest) -> None:
        """The prompt's pass: its keys/values, hidden states and the next token's logits."""
        lm = self.engine.lm
        ids = torch.tensor([r.prompt], device=self.engine.device)
        out = lm(ids, use_cache=True, output_hidden_states=True,
                 **{self.engine.lm_adapter._cache_arg: DynamicCache()})
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        r.ids, r.past = list(r.prompt), self._stacked(cache)
        hidden = out.hidden_states[-1][0].float()
        r.hidden = hidden / hidden.norm(dim=-1, keepdim=True)
        r.logits = out.logits[0, -1].float()
        if not self.head_checked:
            self._check_head(out.hidden_states[-1][0, -1:], out.logits[0, -1:])

    def _check_head(self, hidden: torch.Tensor, logits: torch.Tensor) -> None:
        """Whether the LM's output layer on its last hidden state gives its logits (a family that
        scales or caps its logits after the head, or whose last hidden state is not the head's
        input, runs the whole LM's forward on every candidate instead)."""
        head, ok = self.engine.lm.get_output_embeddings(), False
        if head is not None:
            tol = 1e-4 if hidden.dtype == torch.float32 else 2e-2
            try:
                ok = torch.allclose(head(hidden).float(), logits.float(), rtol=tol, atol=tol)
            except (RuntimeError, TypeError, ValueError):  # not a layer that takes the last hidden state
                ok = False
        self.head = head if ok else None
        self.head_checked = True

    @torch.no_grad()
    def candidates(self, past: torch.Tensor, top: torch.Tensor
                   ) -> tuple[torch.Tensor, Callable[[int], torch.Tensor], torch.Tensor]:
        """The candidates `top` (N,) each after its row's keys/values `past` (L, 2, N, H, T, hd):
        (their hidden states (N, D) as the LM gives them, normalised; the next logits (V,) fp32 of
        candidate n, `logits(n)`), and their keys/values (L, 2, N, H, 1, hd)."""
        ids = top[:, None]
        if self.head is not None:  # the body on every candidate, the LM head on the one kept
            out = self.base(ids, use_cache=True, output_hidden_states=True, **{self._cache_arg: self._cache(past)})
            last = out.last_hidden_state[:, -1]

            def logits(n: int) -> torch.Tensor:
                return self.head(last[n:n + 1])[0].float()
        else:
            out = self.engine.lm(ids, use_cache=True, output_hidden_states=True,
                                 **{self.engine.lm_adapter._cache_arg: self._cache(past)})
            every = out.logits[:, -1]

            def logits(n: int) -> torch.Tensor:
                return every[n].float()
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        hidden = out.hidden_states[-1][:, -1].float()
        return hidden / hidden.norm(dim=-1, keepdim=True), logits, self._stacked(cache, slice(-1, None))

    @staticmethod
    def contenders(base: torch.Tensor, alpha: float) -> torch.Tensor:
        """The candidates (indices, in order) that can win a step whose scores before the penalty
        are `base` (k,): a candidate's score is base - alpha * penalty, and the penalty, a maximum
        of cosines, lies in [-1, 1]; so one whose best (base + alpha) is below the best base's
        worst (max base - alpha) cannot win, and its hidden state is not needed. (A margin of 1e-4
        over the bound covers rounding: the kept ones' scores are the whole scores.)"""
        return (base >= base.max() - 2.0 * alpha - 1e-4).nonzero()[:, 0]

    # ---- CLIP ------------------------------------------------------------------------------------
    def window(self, r: MagicRequest) -> list[int]:
        """The generated tokens CLIP reads before a candidate: the last clip_text_max_len - 1."""
        keep = r.cfg.clip_text_max_len - 1
        return r.generated[-keep:] if keep > 0 else []

    def texts(self, r: MagicRequest, top: list[int]) -> list[str]:
        """Each candidate's text as theirs decodes it: the window and the candidate."""
        window = self.window(r)
        return self.engine.tokenizer.batch_decode([window + [t] for t in top])

    def features(self, rows: list[MagicRequest], tops: list[list[int]]) -> list[torch.Tensor]:
        """Each row's candidates' CLIP text features (k, D), normalised. Exact form, or a scorer
        that reads texts whole: the decoded texts, through the scorer's text tower (one pass for the
        rows given). Fast form with a prefix-sharing scorer: each row's decoded window as the prefix
        and the candidates' own texts after it, the prefix read once (scorer.py); a candidate whose
        decoded text is not the window's and its own (a character split across tokens) is read whole."""
        s = self.engine.scorer
        texts = [self.texts(r, top) for r, top in zip(rows, tops)]
        if not self.shares_prefixes:
            flat = [t for row in texts for t in row]
            feats = s.normalised(s.text_features(flat).float())
            out, at = [], 0
            for row in texts:
                out.append(feats[at:at + len(row)])
                at += len(row)
            return out
        tok, strings = self.engine.tokenizer, s.token_strings
        prefixes = tok.batch_decode([self.window(r) for r in rows])
        width = max(len(top) for top in tops)
        top = torch.tensor([t + [t[0]] * (width - len(t)) for t in tops], device=self.engine.device)
        valid = torch.tensor([[j < len(t) for j in range(width)] for t in tops], device=self.engine.device)
        feats = self.engine.form.candidates(s, prefixes, eager=True).features(top, valid).float()
        out = []
        for i, (p, row, t) in enumerate(zip(prefixes, texts, tops)):
            f = feats[i, :len(t)]
            whole = [j for j, (text, c) in enumerate(zip(row, t)) if text != p + strings[c]]
            if whole:
                f = f.clone()
                f[whole] = s.normalised(s.text_features([row[j] for j in whole]).float())
            out.append(f)
        return out

    # ---- the result ------------------------------------------------------------------------------
    def caption(self, r: MagicRequest) -> str:
        """Theirs: the ids without start tokens, up to the first end token, decoded, whitespace
        folded. (Their start token is never their end token; where an LM's are one -- GPT-2's
        BOS is its EOS -- the prompt's start is skipped and a generated one ends the caption.)"""
        kept = []
        for t in r.ids[1:]:  # the start token is never text
            if t == self.end_id:
                break
            if t != self.start_id:
                kept.append(t)
        return " ".join(self.engine.tokenizer.decode(kept).split())

    def result(self, r: MagicRequest) -> MagicResult:
        tokens, probs, penalties, clips = (list(x) for x in zip(*r.steps)) if r.steps else ([], [], [], [])
        return MagicResult(self.caption(r), r.cfg.cond_text, r.name, tokens, probs, penalties, clips,
                           len(r.generated), time.perf_counter() - r.joined, r.details)

    def decode(self, targets, cfg: MagicConfig, progress=None) -> list[MagicResult]:
        """One result per target (modes.Target), decoded together as the form allows."""
        return self.engine.decode_targets(targets, cfg, progress)


class MagicBatch:
    """MAGIC requests sharing steps: each step keeps one token of every request."""

    def __init__(self, engine):
        self.engine = engine
        self.method = engine.decoder(NAME)
        self.requests: list[MagicRequest] = []

    def __len__(self) -> int:
        return len(self.requests)

    def accepts(self, request, most: int | None = None) -> bool:
        return most is None or len(self.requests) < most

    def add(self, request: MagicRequest) -> None:
        self.requests.append(request)

    def remove(self, request) -> None:
        self.requests.remove(request)

    def result(self, request: MagicRequest) -> MagicResult:
        return self.method.result(request)

    def snapshot(self, r: MagicRequest) -> Snapshot | None:
        """Where a request is: the tokens kept, its caption so far (None before its first)."""
        if not r.steps:
            return None
        caption = self.method.caption(r)
        best = self.engine.vocabulary.text_after(r.prompt, r.generated)
        return Snapshot("token", len(r.generated), r.cfg.max_tokens, best, caption)

    def step(self, only: list | None = None) -> list:
        """One token of every request (or of those in `only`); the finished ones are returned and
        removed. A request whose own part fails (its on_step raised) stops with that error."""
        requests = list(self.requests if only is None else only)
        if not requests:
            return []
        m = self.method
        for r in requests:
            if r.past is None:
                m.prefill(r)
        tops, probs = [], []
        for r in requests:
            p = torch.softmax(r.logits, dim=-1)
            top = torch.topk(r.logits, k=min(r.cfg.k, r.logits.shape[-1])).indices
            tops.append(top)
            probs.append(p[top])
        # CLIP: every request's candidates (the exact form holds one request)
        top_lists = [t.tolist() for t in tops]
        feats = m.features(requests, top_lists)
        clips = [torch.softmax(m.logit_scale * (feats[i] @ r.target), dim=0) for i, r in enumerate(requests)]  # (k,)
        bases = [(1.0 - r.cfg.alpha) * probs[i] + r.cfg.beta * clips[i] for i, r in enumerate(requests)]  # (k,)
        # the candidates whose hidden states can matter: all, or where the form prunes, those that can win
        keeps = [m.contenders(b, r.cfg.alpha) if self.engine.form.prunes else torch.arange(len(b), device=b.device)
                 for b, r in zip(bases, requests)]
        # the LM: one pass per cache length, every kept candidate of those rows
        cand = [t[keep] for t, keep in zip(tops, keeps)]
        hidden, kv, logits_of = [None] * len(requests), [None] * len(requests), [None] * len(requests)
        lengths: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            lengths.setdefault(r.past.shape[-2], []).append(i)
        for rows in lengths.values():
            owners = [i for i in rows for _ in range(len(cand[i]))]
            cands = torch.cat([cand[i] for i in rows])
            hs, kvs, where = [], [], []
            for a in range(0, len(owners), CANDIDATE_ROWS):  # passes of at most CANDIDATE_ROWS rows
                part = owners[a:a + CANDIDATE_ROWS]
                past = torch.cat([requests[i].past.expand(-1, -1, len(list(run)), -1, -1, -1)
                                  for i, run in itertools.groupby(part)], dim=2)
                h, logits, new = m.candidates(past, cands[a:a + len(part)])
                hs.append(h)
                kvs.append(new)
                where += [(logits, j) for j in range(len(part))]
            h, new = torch.cat(hs), torch.cat(kvs, dim=2)
            at = 0
            for i in rows:
                n = len(cand[i])
                hidden[i], kv[i], logits_of[i] = h[at:at + n], new[:, :, at:at + n], where[at:at + n]
                at += n
        for i, r in enumerate(requests):
            keep = keeps[i]
            penalty = (hidden[i] @ r.hidden.T).max(dim=-1).values  # (kept,)
            score = (1.0 - r.cfg.alpha) * probs[i][keep] - r.cfg.alpha * penalty + r.cfg.beta * clips[i][keep]
            n = int(score.argmax())  # among the kept; the first of equal scores, as over all k
            c = int(keep[n])
            token = top_lists[i][c]
            r.ids.append(token)
            r.past = torch.cat([r.past, kv[i][:, :, n:n + 1]], dim=-2)
            r.hidden = torch.cat([r.hidden, hidden[i][n:n + 1]])
            logits, j = logits_of[i][n]
            r.logits = logits(j)  # the kept candidate's next-token logits
            r.steps.append((self.engine.vocabulary.texts[token], float(probs[i][c]), float(penalty[n]),
                            float(clips[i][c])))
            r.ended = token == m.end_id
            r.shared.append(len(requests))
            tell(self, r)
        finished = [r for r in requests if r.done or r.error is not None]
        for r in finished:
            self.remove(r)
        return finished
