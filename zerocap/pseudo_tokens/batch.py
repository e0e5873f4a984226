"""A request of the method, its result, and requests sharing decoding steps: each step samples
one token of every request, whatever sentence each is at."""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..decoding import Snapshot, tell
from ..outputs import Out, Recorded
from .knobs import NAME, PseudoTokenConfig
from .rules import TokenRules, apply_rules

PROMPTS = ("Image of", "Picture of", "Photo of", "Video of", "Image shows", "Picture shows", "Photo shows",
           "Video shows", "Image showing", "Picture showing", "Photo showing", "Video showing")
ETA_MIN = 1e-4  # the cosine schedule's last learning rate
GAMMA = 0.9  # the exponential schedule's factor per sentence
CANDIDATES = 512  # continuations CLIP scores per token (fixed in their code)


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
class PseudoTokenResult(Recorded):
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

    def container_fields(self) -> dict:
        """This method's fields of the container's output (OUTPUTS says what each holds)."""
        d = self.mode_details()
        return dict(caption=self.best_clip, best_clip=self.best_clip, best_fluency="", best_mixed=self.best_mixed,
                    beams=[b.caption for b in self.beams], beam_scores=[b.score for b in self.beams], seed=self.seed,
                    sentences=[x.text for x in self.sentences],
                    sentence_clip_scores=[_finite(x.clip_score) for x in self.sentences],
                    sentence_log_probs=[_finite(x.log_prob) for x in self.sentences],
                    frames_asked=d.get("frames_sampled", 0), frames_sampling=d.get("sampling", ""))


def _finite(x: float) -> float:
    """JSON has no infinity: their mean log-prob of a one-token sentence divides by zero."""
    return x if math.isfinite(x) else -1e9


# The container's output of this method: every field it fills, and what it holds (outputs.py).
OUTPUTS = {
    "caption": Out("str", "their returned caption: the sentence closest to the target (= best_clip)"),
    "best_clip": Out("str", "the sentence closest to the target"),
    "best_fluency": Out("str", "empty (\"\")"),
    "best_mixed": Out("str", "the sentence best by their mixed score"),
    "beams": Out("list[str]", "their final beam search's captions, best first"),
    "beam_scores": Out("list[float]", "the same, of their final beams"),
    "method": Out("str", NAME),
    "seed": Out("int", "the seed", empty=-1),
    "sentences": Out("list[str]", "every sampled sentence, in the order sampled"),
    "sentence_clip_scores": Out("list[float]", "their CLIP score of each sentence (logit-scaled, mean over frames)"),
    "sentence_log_probs": Out("list[float]", "their mean log-probability of each sentence; -1e9 where undefined"),
    "mode": Out("str", "the mode"),
    "target": Out("str", "the same"),
    "cond_text": Out("str", "the prompt of the final beam search"),
    "tokens": Out("int", "tokens sampled, all sentences together"),
    "seconds": Out("float", "decoding time"),
    "frame_times": Out("list[float]", "mode video: the kept frames (seconds); else empty"),
    "frames": Out("int", "mode video: how many frames were kept; else 0"),
    "frames_asked": Out("int", "mode video: frames sampled before their near-duplicate filter; else 0"),
    "frames_sampling": Out("str", "mode video: how the frames were sampled, in words: their every n-th frame, or, when"
                                  " that would be more than 64, \"64 frames spread evenly (every 10th frame would be more"
                                  " than 64)\"; else empty"),
}


@dataclass(eq=False)
class PseudoTokenRequest:
    """One caption by this method: its frames (F, D normalised), config and state."""

    frames: torch.Tensor
    cfg: PseudoTokenConfig
    name: str
    details: Any = None
    on_step: Callable | None = None  # on_step(decoding.Snapshot) after each sentence
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

    def snapshot(self, request: PseudoTokenRequest) -> Snapshot | None:
        """Where a request is: the sentences sampled, the latest (None before the first)."""
        if not request.sentences:
            return None
        text = request.sentences[-1].text
        return Snapshot("sentence", request.sentence, request.cfg.sentence_iterations, text, text)

    def _begin_sentence(self, r: PseudoTokenRequest) -> None:
        prompt = r.rng.choice(PROMPTS if r.cfg.randomized_prompt else ("",))
        r.tokens = self.method.prompt_ids(prompt)
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
            tell(self, r)
            if r.sentence < r.cfg.sentence_iterations:
                self._begin_sentence(r)
