"""Evolving pseudo-tokens: the authors' follow-up method (Tewel, Shalev, Nadler, Schwartz, Wolf,
"Zero-Shot Video Captioning with Evolving Pseudo-Tokens", 2022; YoadTew/zero-shot-video-to-text,
model/CapGenerator.py), for clips and images.

A prefix of `dummy_tokens` pseudo-tokens -- the LM's keys/values of that many BOS tokens plus an
offset that starts at zero -- is learned with AdamW while the LM samples whole sentences:
`sentence_iterations` times, a sentence of at most `max_tokens` tokens is drawn from the top
`sampling_top_k` tokens (after the token rules below), each token's loss being CLIP's (the
shifted LM's 512 most likely continuations scored against every frame, a softmax per frame,
averaged over frames) plus `ce_scale` x the shifted LM's cross-entropy against the plain LM's
distribution. With `token_wise` the prefix takes an optimiser step after every token, else
after every sentence; the learning rate follows `lr_schedule` sentence by sentence. A prompt is
drawn per sentence from their 12 with `randomized_prompt`. The answer: the sentences ranked by
CLIP similarity to the frames (`best_clip`, their returned caption), by a mixed score
(`best_mixed`), and a beam search from `cond_text` with the learned prefix (`beams`).

Randomness is the request's own (`random.Random(seed)` for the prompts, a `torch.Generator` on the
engine's device seeded alike for the draws, as their code's global generators are), so a
request's output does not depend on what it shares a step with. Rows of any settings share a
step (`PseudoTokenBatch.step`: one token of every sampling row); the forms (forms.py) are those of ZeroCap: `exact` scores candidates with CLIP's own
encode_text on full rows, one request at a time; `fast` reads the CLIP prefix's keys/values once
per step and runs only the candidates' suffixes, every request of the batch in one pass.
tests/reference_pseudo_tokens.py is their code transcribed; tests/test_pseudo_tokens.py holds
both forms to it.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from . import threads
from .config import PT_DEFAULTS as DEFAULTS  # noqa: F401  (the method's knob table lives in config.py)
from .config import PT_FIELD_TYPES as FIELD_TYPES  # noqa: F401
from .config import PT_KNOBS as KNOBS  # noqa: F401
from .config import SCHEDULES, PseudoTokenConfig  # noqa: F401
from .errors import InputError
from .lm import gpt2_forward

NAME = "pseudo-tokens"
PROMPTS = ("Image of", "Picture of", "Photo of", "Video of", "Image shows", "Picture shows", "Photo shows",
           "Video shows", "Image showing", "Picture showing", "Photo showing", "Video showing")
CANDIDATES = 512  # continuations CLIP scores per token (fixed in their code)
HISTORY = 16  # tokens whose similar forms the repetition penalty reads
SIMILAR = 8  # similar forms kept per token
ETA_MIN = 1e-4  # the cosine schedule's last learning rate
GAMMA = 0.9  # the exponential schedule's factor per sentence


# ---- the token rules (their update_special_tokens_logits), vectorised over rows ------------------------
class TokenRules:
    """The vocabulary's tables for their token rules, built once per end token."""

    def __init__(self, tokenizer, vocab: int, end_id: int, device):
        spacer = "Ġ"
        lower = set("abcdefghijklmnopqrstuvwxyz")
        upper = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        special = {" ", ",", "'", spacer}
        n = tokenizer.vocab_size
        pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
        letters = lower | upper
        forbidden = [i for i, p in enumerate(pieces) if not set(p) <= letters | special or i == end_id]
        first = [i for i, p in enumerate(pieces) if not set(p) <= letters]
        later = [i for i, p in enumerate(pieces) if not set(p) <= lower | special]
        self.end_id = end_id
        self.forbidden = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.forbidden[[i for i in forbidden if i != end_id]] = True  # their NoBadWords re-allows the end token
        self.first = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.first[first] = True
        self.later = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.later[later] = True
        similar = torch.zeros(n, SIMILAR, dtype=torch.long)
        banned = set(forbidden)
        reduced = {i: p.replace(spacer, "").upper() for i, p in enumerate(pieces) if i not in banned}
        for _, group in groupby(sorted(reduced, key=reduced.get), key=reduced.get):
            tokens = list(group)[:SIMILAR]  # their table has 8 slots (GPT-2's largest group is smaller)
            for t in tokens:
                similar[t, :len(tokens)] = torch.tensor(tokens)
        self.similar = similar.to(device)

    def apply(self, contexts: list[list[int]], steps: list[int], logits: torch.Tensor,
              cfgs: list[PseudoTokenConfig]) -> torch.Tensor:
        """Their rules on logits (R, V) of rows with these contexts (BOS, prompt and tokens so far)
        at these token indices, each with its config's knobs (this end token's); a new tensor."""
        R, V = logits.shape
        dev = logits.device
        knobs = RowKnobs.of(self, cfgs, dev)
        # similar-form repetition penalty over the last HISTORY tokens (token 0 fills empty slots, as theirs)
        # a row with fewer than HISTORY tokens repeats its first: the same ids, so the same result
        recent = torch.tensor([c[-HISTORY:] + [c[-HISTORY:][0]] * (HISTORY - len(c[-HISTORY:])) for c in contexts],
                              device=dev)
        hist = self.similar[recent].reshape(R, HISTORY * SIMILAR)
        score = logits.gather(1, hist)
        pen = knobs.repetition_penalty[:, None]
        score = torch.where(score < 0, score * pen, score / pen)
        logits = logits.scatter(1, hist, score)
        # no repeated 3-gram (their NoRepeatNGramLogitsProcessor(3)) and the minimum length
        rows, cols = [], []
        for r, ctx in enumerate(contexts):
            if len(ctx) >= 2:
                tail = (ctx[-2], ctx[-1])
                for j in range(len(ctx) - 2):
                    if (ctx[j], ctx[j + 1]) == tail:
                        rows.append(r)
                        cols.append(ctx[j + 2])
            if len(ctx) < knobs.min_length[r]:
                rows.append(r)
                cols.append(knobs.end_ids[r])
        if rows:
            logits[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)] = -math.inf
        logits = logits.masked_fill(knobs.forbidden, -math.inf)
        first = torch.tensor([s == 0 for s in steps], device=dev)[:, None]
        unwanted = torch.where(first, knobs.first, knobs.later)
        logits = logits + torch.where(unwanted, -knobs.entity_penalty[:, None], logits.new_zeros(()))
        end = knobs.end_index
        logits[end] = logits[end] + knobs.ending_bonus
        forcing = [r for r, s in enumerate(steps) if s >= knobs.max_tokens[r] - knobs.min_length[r]]
        for r in forcing:  # promote ending near the length limit (few rows, few steps)
            row = logits[r:r + 1]
            e = knobs.end_ids[r]
            threshold = row[:, e].clone()
            top_values, top_indices = row.topk(knobs.top_k[r], 1)
            row[row < top_values[:, -1:]] = -math.inf
            row[:, e] = threshold
            bump = top_values[:, -1] > threshold
            row[bump, top_indices[bump, -1]] = -math.inf
        return logits.masked_fill(logits != logits, -math.inf)


@dataclass
class RowKnobs:
    """Per-row knobs of a step's rows, as tensors where the rules read them together."""

    repetition_penalty: torch.Tensor
    entity_penalty: torch.Tensor
    ending_bonus: torch.Tensor
    forbidden: torch.Tensor  # (R, V)
    first: torch.Tensor  # (R, V)
    later: torch.Tensor  # (R, V)
    end_index: tuple  # (rows, end ids) for advanced indexing
    end_ids: list
    min_length: list  # max_tokens // 2: the context length below which the end token is barred (their
    # MinLength reads the whole context), and how far from the limit ending is promoted
    max_tokens: list
    top_k: list

    @classmethod
    def of(cls, rules: TokenRules, cfgs: list[PseudoTokenConfig], device) -> "RowKnobs":
        t = lambda xs: torch.tensor(xs, dtype=torch.float32, device=device)  # noqa: E731
        n, end = len(cfgs), rules.end_id
        masks = [getattr(rules, name).expand(n, -1) for name in ("forbidden", "first", "later")]  # views
        return cls(t([c.repetition_penalty for c in cfgs]), t([c.entity_penalty for c in cfgs]),
                   t([c.ending_bonus for c in cfgs]), *masks,
                   (torch.arange(n, device=device), torch.full((n,), end, device=device)), [end] * n,
                   [c.max_tokens // 2 for c in cfgs], [c.max_tokens for c in cfgs],
                   [c.sampling_top_k for c in cfgs])


def apply_rules(rules: list[TokenRules], cfgs: list[PseudoTokenConfig], contexts: list[list[int]],
                steps: list[int], logits: torch.Tensor) -> torch.Tensor:
    """Their rules on rows (R, V) of any end tokens: each row by its own end token's tables (one
    pass per end token; usually one)."""
    groups: dict[int, list[int]] = {}
    for j, r in enumerate(rules):
        groups.setdefault(id(r), []).append(j)
    if len(groups) == 1:
        return rules[0].apply(contexts, steps, logits, cfgs)
    out = torch.empty_like(logits)
    for rows in groups.values():
        idx = torch.tensor(rows, device=logits.device)
        out[idx] = rules[rows[0]].apply([contexts[j] for j in rows], [steps[j] for j in rows], logits[idx],
                                        [cfgs[j] for j in rows])
    return out


# ---- a request and its state -----------------------------------------------------------------------
@dataclass
class Sentence:
    text: str  # as they decode it: prompt included, special tokens skipped
    clip_score: float  # CLIP's logit-scaled similarity to the frames, averaged over frames
    log_prob: float  # their "avg perplexity": the plain LM's log-probs of the tokens, summed, / (length - 1)


@dataclass
class PTBeam:
    text: str
    caption: str
    score: float


@dataclass
class PseudoTokenResult:
    sentences: list[Sentence]  # in the order sampled
    best_clip: str  # their returned caption
    best_mixed: str
    beams: list[PTBeam]  # best first
    seed: int
    cond_text: str
    target: str
    tokens: int  # tokens sampled, all sentences together
    seconds: float
    details: Any = None
    method: str = NAME

    @property
    def caption(self) -> str:
        return self.best_clip

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        del d["details"]
        if self.details is not None:
            d.update(self.details.to_dict())
        d["timing"] = threads.timing(d.pop("seconds"), d.pop("tokens"))
        return d


@dataclass(eq=False)
class PseudoTokenRequest:
    """One caption by this method: its frames (F, D normalised), config and state."""

    frames: torch.Tensor
    cfg: PseudoTokenConfig
    name: str
    details: Any = None
    progress: Callable | None = None  # progress(sentence, sentence_iterations, [best sentence so far])
    joined: float = field(default_factory=time.perf_counter)
    error: BaseException | None = None
    shared: list[int] = field(default_factory=list)
    # state
    sentence: int = 0
    tokens: list[int] = field(default_factory=list)
    index: int = 0  # token index in the sentence
    log_prob: Any = 0
    sentences: list[Sentence] = field(default_factory=list)
    sims: list = field(default_factory=list)
    ppls: list = field(default_factory=list)
    sampled: int = 0
    beams: list[PTBeam] | None = None
    offset: torch.Tensor | None = None  # the learned offset (L, 2, 1, H, P, hd), a leaf
    optimizer: Any = None
    schedule: Any = None
    rng: random.Random | None = None
    generator: torch.Generator | None = None
    rules: TokenRules | None = None

    @property
    def cost(self) -> float:
        """What one of its steps costs, in candidate scorings (the scheduler's lanes)."""
        return CANDIDATES + 64

    @property
    def done(self) -> bool:
        return self.beams is not None

    def new_batch(self, engine, max_requests: int | None = None) -> "PseudoTokenBatch":
        return PseudoTokenBatch(engine, max_requests)


class PseudoTokenBatch:
    """Pseudo-token requests sharing decoding steps: each step samples one token of every request
    (whatever sentence each is at, whatever its settings); a request whose sentences are done
    runs its final beam search in the step that follows."""

    def __init__(self, engine, max_requests: int | None = None):
        self.engine = engine
        self.method = engine.pseudo_tokens
        self.requests: list[PseudoTokenRequest] = []  # (max_requests: the scheduler's; no layout is sized by it)

    def __len__(self) -> int:
        return len(self.requests)

    def accepts(self, request, most: int | None = None) -> bool:
        return most is None or len(self.requests) < most

    def add(self, request: PseudoTokenRequest) -> None:
        m, cfg = self.method, request.cfg
        init = m.prefix(cfg.dummy_tokens)
        request.offset = torch.zeros_like(init).requires_grad_(True)
        request.optimizer = torch.optim.AdamW([request.offset], lr=cfg.learning_rate,
                                              weight_decay=cfg.learning_rate * cfg.weight_decay_scale)
        if cfg.lr_schedule == "cosine":
            request.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(request.optimizer, eta_min=ETA_MIN,
                                                                          T_max=cfg.sentence_iterations)
        elif cfg.lr_schedule == "exponential":
            request.schedule = torch.optim.lr_scheduler.ExponentialLR(request.optimizer, gamma=GAMMA)
        request.rng = random.Random(cfg.seed)
        request.generator = torch.Generator(device=self.engine.device).manual_seed(cfg.seed)
        request.rules = m.rules(cfg.end_token)
        self._begin_sentence(request)
        self.requests.append(request)

    def remove(self, request) -> None:
        self.requests.remove(request)

    def result(self, request: PseudoTokenRequest) -> PseudoTokenResult:
        return self.method.result(request)

    def _begin_sentence(self, r: PseudoTokenRequest) -> None:
        e = self.engine
        prompt = r.rng.choice(PROMPTS if r.cfg.randomized_prompt else ("",))
        r.tokens = e.tokenizer.encode(e.bos + prompt)
        r.index, r.log_prob = 0, 0

    def step(self, only: list | None = None) -> list:
        """One token of every request (or of those in `only`); the finished ones are returned and
        removed."""
        requests = list(self.requests if only is None else only)
        if not requests:
            return []
        sampling = [r for r in requests if r.sentence < r.cfg.sentence_iterations]
        ending = [r for r in requests if r.sentence >= r.cfg.sentence_iterations]
        finished = []
        if sampling:
            self._sample(sampling)
        if ending:
            self.method.beams(ending)
        for r in requests:
            r.shared.append(len(requests))
            if r.done or r.error is not None:
                finished.append(r)
        for r in finished:
            self.remove(r)
        return finished

    def _sample(self, rows: list[PseudoTokenRequest]) -> None:
        e, m = self.engine, self.method
        contexts = [list(r.tokens) for r in rows]
        plain, logits = m.step_logits(contexts, [m.prefix(r.cfg.dummy_tokens) + r.offset for r in rows])
        unshifted = torch.softmax(plain, dim=-1)
        probs = torch.softmax(logits, dim=-1) + 2e-45
        top = probs.topk(min(CANDIDATES, probs.shape[-1]), -1).indices  # (R, K)
        texts = e.tokenizer.batch_decode(contexts, skip_special_tokens=True)
        # (R, K, D) normalised; eagerly: a compiled ZeroCap step's CLIP buffers are not sized for these rows
        feats = e.form.candidates(e.scorer, texts, eager=True).features(top)
        losses = []
        for j, r in enumerate(rows):
            sim = m.logit_scale * (feats[j] @ r.frames.T).float()  # (K, F)
            target = torch.softmax(sim / r.cfg.clip_temperature, dim=0)
            clip_loss = (-target * probs[j][top[j]].log().unsqueeze(-1)).sum(0).mean()
            fluency = -(unshifted[j] * probs[j].log()).sum()
            losses.append(r.cfg.clip_scale * clip_loss + r.cfg.ce_scale * fluency)
        torch.stack(losses).sum().backward()
        for r in rows:
            if r.cfg.token_wise:
                r.optimizer.step()
                r.optimizer.zero_grad()
        fixed = apply_rules([r.rules for r in rows], [r.cfg for r in rows], contexts, [r.index for r in rows],
                            logits.detach())
        done = []
        for j, r in enumerate(rows):
            values, options = fixed[j:j + 1].topk(r.cfg.sampling_top_k)
            choice = torch.multinomial(torch.softmax(values, dim=-1), 1, generator=r.generator)[0]
            token = int(options[0, int(choice)])
            r.tokens.append(token)
            r.log_prob = r.log_prob + unshifted[j:j + 1].log()[:, token]
            r.sampled += 1
            if token == r.rules.end_id or r.index + 1 >= r.cfg.max_tokens:
                done.append(r)
            else:
                r.index += 1
        if done:
            self._end_sentences(done)

    def _end_sentences(self, rows: list[PseudoTokenRequest]) -> None:
        e, m = self.engine, self.method
        texts = e.tokenizer.batch_decode([r.tokens for r in rows], skip_special_tokens=True)
        feats = e.scorer.normalised(e.scorer.text_features(texts))  # (n, D)
        for j, (r, text) in enumerate(zip(rows, texts)):
            if not r.cfg.token_wise:
                r.optimizer.step()
                r.optimizer.zero_grad()
            if r.schedule is not None:
                r.schedule.step()
            ppl = r.log_prob / r.index  # theirs: divided by the last token's index (0 at a one-token sentence)
            sim = (m.logit_scale * (feats[j:j + 1] @ r.frames.T).float()).mean(-1)  # (1,)
            r.sims.append(sim)
            r.ppls.append(ppl.detach())
            r.sentences.append(Sentence(text, float(sim), float(ppl)))
            r.sentence += 1
            if r.progress is not None:
                try:
                    r.progress(r.sentence, r.cfg.sentence_iterations, [text])
                except Exception as exc:  # noqa: BLE001 -- stops that request alone (e.g. a cancellation)
                    r.error = exc
            if r.sentence < r.cfg.sentence_iterations:
                self._begin_sentence(r)


def _starts(sizes: list[int]) -> list[int]:
    out, k = [], 0
    for n in sizes:
        out.append(k)
        k += n
    return out


class _BeamSearch:
    """One request's final beam search, as theirs (decode_beam_search), a step at a time."""

    def __init__(self, method: "PseudoTokens", r: PseudoTokenRequest):
        e, cfg = method.engine, r.cfg
        self.r, self.B, self.i, self.finished = r, cfg.beam_size, 0, False
        self.prefix = method.prefix(cfg.dummy_tokens) + r.offset.detach()  # (L, 2, 1, H, P, hd)
        self.generated = torch.tensor([e.tokenizer.encode(e.bos + cfg.cond_text)], device=e.device)
        self.gen = self.scores = None
        self.lengths = torch.ones(self.B, device=e.device)
        self.stopped = torch.zeros(self.B, dtype=torch.bool, device=e.device)
        self.decode = e.tokenizer.decode

    @property
    def rows(self) -> int:
        return self.generated.shape[0]

    def prefix_rows(self) -> list[torch.Tensor]:
        return [self.prefix] * self.rows

    def advance(self, logits: torch.Tensor) -> None:
        """One step, given the rule-applied log-probs (rows, V) of its rows."""
        B = self.B
        if self.scores is None:
            scores, next_tokens = logits.topk(B, -1)
            self.generated = self.generated.repeat(B, 1)
            next_tokens, self.scores = next_tokens.permute(1, 0), scores.squeeze(0)
            self.gen = next_tokens
        else:
            stopped = self.stopped
            logits[stopped] = -math.inf
            logits[stopped, 0] = 0
            total = self.scores[:, None] + logits
            self.lengths[~stopped] += 1
            average = total / self.lengths[:, None]
            average, next_tokens = average.view(-1).topk(B, -1)
            source = next_tokens // total.shape[1]
            self.lengths = self.lengths[source]
            next_tokens = (next_tokens % total.shape[1]).unsqueeze(1)
            self.gen = torch.cat((self.gen[source], next_tokens), dim=-1)
            self.generated = self.generated[source]
            self.scores = average * self.lengths
            self.stopped = stopped[source]
        self.generated = torch.cat((self.generated, next_tokens), dim=1)
        self.stopped = self.stopped + next_tokens.eq(self.r.rules.end_id).squeeze(-1)
        self.i += 1
        self.finished = bool(self.stopped.all()) or self.i >= self.r.cfg.max_tokens

    def answer(self) -> list[PTBeam]:
        scores = self.scores / self.lengths
        texts = [self.decode(row[:int(n)]) for row, n in zip(self.gen.tolist(), self.lengths.tolist())]
        order = scores.argsort(descending=True).tolist()
        cond = self.r.cfg.cond_text
        return [PTBeam(texts[k], cond + texts[k], float(scores[k])) for k in order]


def _right_padded(contexts: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of other lengths, padded on the right (a causal LM's real positions never see the
    padding): (ids (R, T), each row's last position (R,))."""
    T = max(len(c) for c in contexts)
    ids = torch.tensor([c + [c[-1]] * (T - len(c)) for c in contexts], device=device)
    return ids, torch.tensor([len(c) - 1 for c in contexts], device=device)


def prefix_cache(prefix: torch.Tensor) -> DynamicCache:
    """A cache of the prefix (L, 2, R, H, P, hd)."""
    return DynamicCache(ddp_cache_data=[(kv[0], kv[1]) for kv in prefix])


def rank(sims: list, ppls: list, clip_scale: float, ce_scale: float) -> tuple[list[int], list[int]]:
    """Their ranking: (order by CLIP similarity, order by the mixed score), best first."""
    sims_t = torch.cat(sims)
    clip_prob = F.softmax(sims_t * clip_scale, dim=0)
    lm_prob = F.softmax(torch.cat(ppls, dim=0) * ce_scale, 0)
    mixed = clip_prob * lm_prob
    return sims_t.sort(descending=True)[1].tolist(), mixed.sort(descending=True)[1].tolist()


class PseudoTokens:
    """The method on one engine's models: what its steps ask of the LM and of CLIP, cached."""

    name = NAME
    Config = PseudoTokenConfig

    def __init__(self, engine):
        self.engine = engine
        self.written_out = not engine.form.exact_lm and engine.family.fast_step(engine.lm) is not None
        self._prefixes: dict[int, torch.Tensor] = {}
        self._rules: dict[str, TokenRules] = {}
        clip = getattr(engine.scorer, "clip", None)
        self.logit_scale = clip.logit_scale.exp().float() if clip is not None else torch.tensor(100.0)

    def check(self, cfg: PseudoTokenConfig) -> PseudoTokenConfig:
        cfg = cfg.validate()
        e = self.engine
        if e.family.name != "gpt2":
            raise InputError(f"the {NAME} method runs on GPT-2 (their code's LM); this LM is {e.family.name}")
        if next(e.lm.parameters()).dtype != torch.float32:
            raise InputError(f"the {NAME} method runs the LM in float32 (its prefix is learned by gradient steps,"
                             " as theirs); load it with lm_dtype='float32'")
        if not e.tokenizer.encode(cfg.end_token, add_special_tokens=False):
            raise InputError(f"end_token {cfg.end_token!r} has no LM token")
        longest = max(len(e.tokenizer.encode(e.bos + p)) for p in PROMPTS) + cfg.max_tokens
        beam = len(e.tokenizer.encode(e.bos + cfg.cond_text)) + cfg.max_tokens
        room = e.lm.config.n_positions - cfg.dummy_tokens
        if max(longest, beam) > room:
            raise InputError(f"max_tokens ({cfg.max_tokens}) with dummy_tokens ({cfg.dummy_tokens}) and the prompt"
                             f" run past the LM's {e.lm.config.n_positions} positions; lower them")
        return cfg

    def request(self, target, cfg: PseudoTokenConfig, progress=None) -> PseudoTokenRequest:
        """A checked config's caption of `target` (its `frames`, else its vector as one frame)."""
        frames = getattr(target, "frames", None)
        if frames is None:
            frames = target.vector[None]
        dtype = getattr(self.engine.scorer, "dtype", torch.float32)  # CLIP's own (fp16 on a GPU, as theirs)
        return PseudoTokenRequest(frames.to(self.engine.device, dtype), cfg, target.name, target.details, progress)

    def prefix(self, tokens: int) -> torch.Tensor:
        """The LM's keys/values of `tokens` BOS tokens (L, 2, 1, H, P, hd): where the pseudo-tokens start."""
        if tokens not in self._prefixes:
            e, lm = self.engine, self.engine.lm_adapter
            with torch.no_grad():
                out = e.lm(torch.full((1, tokens), e.tokenizer.bos_token_id, device=e.device), use_cache=True)
            self._prefixes[tokens] = lm._stack(lm._cache_out(out).layers)
        return self._prefixes[tokens]

    def forward(self, ids: torch.Tensor, last: torch.Tensor, prefix: torch.Tensor | None = None,
                bare: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (R, V) fp32 at positions `last` (R,) of ids (R, T) (padded on the right) after the
        prefix (L, 2, R, H, P, hd) if any, differentiable in it; rows marked `bare` (R,) ignore it
        (fast form only). The exact form runs the LM's own forward, as theirs; the fast form GPT-2
        written out (lm.gpt2_forward: fewer kernels, the LM head only where read)."""
        e = self.engine
        if self.written_out:
            return gpt2_forward(e.lm, ids, last, prefix, bare)
        kwargs = {} if prefix is None else {e.lm_adapter._cache_arg: prefix_cache(prefix)}
        logits = e.lm(ids, **kwargs).logits
        return logits[torch.arange(ids.shape[0], device=ids.device), last].float()

    def rules(self, end_token: str) -> TokenRules:
        if end_token not in self._rules:
            e = self.engine
            end_id = e.tokenizer.encode(end_token, add_special_tokens=False)[0]
            self._rules[end_token] = TokenRules(e.tokenizer, e.vocab_size, end_id, e.device)
        return self._rules[end_token]

    def logits(self, contexts: list[list[int]], prefixes: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Next-token logits (R, V) fp32 of rows of any lengths, each after its own prefix (L, 2, 1,
        H, P, hd) if given: one pass per prefix length (differentiable in the prefixes)."""
        if prefixes is None:
            ids, last = _right_padded(contexts, self.engine.device)
            return self.forward(ids, last)
        return self._by_prefix_length(contexts, prefixes, plain=False)[1]

    def step_logits(self, contexts: list[list[int]], prefixes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """A sampling step's (plain, shifted) logits (R, V) fp32: the LM without a prefix (no
        gradient) and after each row's prefix (differentiable in it). The fast form runs both in
        one pass per prefix length when the step has several rows (each row twice, once `bare`:
        half the kernels; 4 requests' steps ~13% faster on a 2-core CPU); a lone row, and the
        exact form, take two passes (a lone row's plain pass costs less than its backward)."""
        if not self.written_out or len(contexts) == 1:
            with torch.no_grad():
                plain = self.logits(contexts)
            return plain, self.logits(contexts, prefixes)
        return self._by_prefix_length(contexts, prefixes, plain=True)

    def _by_prefix_length(self, contexts, prefixes, plain: bool):
        dev = self.engine.device
        groups: dict[int, list[int]] = {}
        for j, p in enumerate(prefixes):
            groups.setdefault(p.shape[-2], []).append(j)
        shifted, bare, order = [], [], []
        for rows in groups.values():
            n = len(rows)
            ids, last = _right_padded([contexts[j] for j in rows] * (2 if plain else 1), dev)
            prefix = torch.cat([prefixes[j] for j in rows], dim=2)
            if not plain:
                shifted.append(self.forward(ids, last, prefix))
            else:  # the bare rows' prefix is never read
                out = self.forward(ids, last, torch.cat([prefix, torch.zeros_like(prefix)], dim=2),
                                   torch.arange(2 * n, device=dev) >= n)
                shifted.append(out[:n])
                bare.append(out[n:].detach())
            order += rows
        back = None if order == sorted(order) else torch.tensor(order, device=dev).argsort()

        def restored(parts):
            out = torch.cat(parts)
            return out if back is None else out[back]
        return (restored(bare) if plain else None), restored(shifted)

    @torch.no_grad()
    def beams(self, requests: list[PseudoTokenRequest]) -> None:
        """Their final beam search from BOS + cond_text with each request's learned prefix, the
        requests' searches in lockstep (one LM pass per step for all); sets each one's `beams`."""
        searches = [_BeamSearch(self, r) for r in requests]
        while True:
            live = [b for b in searches if not b.finished]
            if not live:
                break
            contexts = [row for b in live for row in b.generated.tolist()]
            prefixes = [p for b in live for p in b.prefix_rows()]
            logits = self.logits(contexts, prefixes)
            logits = apply_rules([b.r.rules for b in live for _ in range(b.rows)],
                                 [b.r.cfg for b in live for _ in range(b.rows)], contexts,
                                 [b.i for b in live for _ in range(b.rows)], logits)
            logits = torch.log_softmax(logits, dim=-1)
            for b, k in zip(live, _starts([b.rows for b in live])):
                b.advance(logits[k:k + b.rows])
        for b in searches:
            b.r.beams = b.answer()

    def result(self, r: PseudoTokenRequest) -> PseudoTokenResult:
        by_clip, by_mixed = rank(r.sims, r.ppls, r.cfg.clip_scale, r.cfg.ce_scale)
        texts = [s.text for s in r.sentences]
        return PseudoTokenResult(r.sentences, texts[by_clip[0]], texts[by_mixed[0]], r.beams, r.cfg.seed,
                                 r.cfg.cond_text, r.name, r.sampled, time.perf_counter() - r.joined, r.details)

    def decode(self, targets, cfg: PseudoTokenConfig, progress=None) -> list[PseudoTokenResult]:
        """One result per target (modes.Target), decoded together as the form allows."""
        e = self.engine
        cfg = self.check(cfg)
        requests = [self.request(t, cfg) for t in targets]
        most = e.form.max_images or len(requests)
        waiting, batch = list(requests), PseudoTokenBatch(e, most)
        while waiting or len(batch):
            while waiting and batch.accepts(waiting[0], most):
                batch.add(waiting.pop(0))
            for r in batch.step():
                if r.error is not None:
                    raise r.error
            if progress is not None:
                live = [r for r in requests if r.sentences]
                if live:
                    progress(max(r.sentence for r in live), cfg.sentence_iterations,
                             [r.sentences[-1].text for r in live])
        return [self.result(r) for r in requests]


# ---- clips as the authors read them --------------------------------------------------------------
NEAR_DUPLICATE = 0.9  # their filter_video: a frame this similar to its run's first joins that run


def distinct_runs(frames: torch.Tensor) -> list[int]:
    """Indices of the frames kept by their near-duplicate filter: a run of consecutive frames each
    more similar than NEAR_DUPLICATE (cosine) to the run's first collapses into that first."""
    sims = frames @ frames.T
    kept, first = [0], 0
    for i in range(1, frames.shape[0]):
        if not sims[first, i] > NEAR_DUPLICATE:
            kept.append(i)
            first = i
    return kept


@dataclass
class ClipFrames:
    """What a clip's result adds: the frames its sentences were steered by."""

    times: list[float]  # seconds from the start, of the kept frames
    sampled: int  # frames sampled before the near-duplicate filter
    sampling: str  # how they were sampled, in words

    def to_dict(self) -> dict:
        return {"frame_times": self.times, "frames": len(self.times), "frames_sampled": self.sampled,
                "sampling": self.sampling}


def authors_every(path: str) -> tuple[float, int, float, float]:
    """(seconds between their sampled frames -- every max(1, fps // 3)-th frame --, that step, fps,
    the clip's duration). Their fps // 3 is 0 below 3 fps (their code then fails); here every frame."""
    from .video import _av, _duration

    av = _av()
    rate, duration = 0.0, 0.0
    try:
        with av.open(path) as container:
            if container.streams.video:
                stream = container.streams.video[0]
                rate = float(stream.average_rate or stream.guessed_rate or 0)
                duration = _duration(container, stream)
    except (av.error.FFmpegError, UnicodeDecodeError):
        pass  # FrameSampler says what is wrong with the file
    rate = rate if math.isfinite(rate) and rate > 0 else 3.0
    step = max(1, int(rate // 3))
    return step / rate, step, rate, duration


def _nth(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def clip_target(engine, source: str, name: str, frames: int | None = None, every: float | None = None,
                most: int | None = None):
    """A clip as the method reads it (a modes.Target with `frames`): by default every
    max(1, fps // 3)-th frame (their run.py; at most `most`, default video.MAX_FRAMES, else that
    many spread evenly), or the frames asked for; each frame's normalised CLIP embedding; then
    their near-duplicate filter."""
    from .download import local_file
    from .modes import Target
    from .video import MAX_FRAMES, FrameSampler, embedded_frames

    with local_file(source) as path:
        how = f"{frames} frames spread evenly" if frames is not None else (
            f"a frame every {every:g} s" if every is not None else "")
        if frames is None and every is None:
            seconds, step, rate, duration = authors_every(path)
            how = f"every {_nth(step)} frame ({rate:g} fps // 3)" if step > 1 else "every frame"
            most = most or MAX_FRAMES
            if duration > seconds * most:
                how = f"{most} frames spread evenly (every {_nth(step)} frame would be more than {most})"
                sampler = FrameSampler(path, name, frames=most)
            else:
                sampler = FrameSampler(path, name, every=seconds)
        else:
            sampler = FrameSampler(path, name, frames, every)
        embeddings, sampled_times = embedded_frames(engine, sampler, name)
    if not embeddings:
        raise InputError(f"{name}: no frames to caption")
    stacked = torch.stack(embeddings)
    kept = distinct_runs(stacked)
    times = [sampled_times[i] for i in kept]
    vector = engine.targets.mean([stacked[i] for i in kept], name)
    return Target(vector, name, ClipFrames(times, len(sampled_times), how), frames=stacked[kept])
