"""The method on an engine's models (PseudoTokens): its prefix, its LM passes, its token rules
per end token, the final beam searches and its result; its requests decode in the one loop
(decoding.py) through their batch (batch.py)."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from ..errors import InputError
from .batch import PROMPTS, PseudoTokenRequest, PseudoTokenResult
from .beam_search import BeamSearch, starts
from .knobs import NAME, PseudoTokenConfig
from .rules import TokenRules, apply_rules


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
        self.rows_forward = engine.form.rows_forward(engine.lm, engine.family)  # None: the LM's own forward
        self.written_out = self.rows_forward is not None
        self._prefixes: dict[int, torch.Tensor] = {}
        self._rules: dict[str, TokenRules] = {}
        self.logit_scale = engine.scorer.logit_scale

    def check(self, cfg: PseudoTokenConfig) -> PseudoTokenConfig:
        cfg = cfg.validate()
        e = self.engine
        if next(e.lm.parameters()).dtype != torch.float32:
            raise InputError(f"the {NAME} method runs the LM in float32 (its prefix is learned by gradient steps,"
                             " as theirs); load it with lm_dtype='float32'")
        e.vocabulary.end_id(cfg.end_token)  # found, or refused
        if e.vocabulary.start_id is None:
            raise InputError(f"the {NAME} method starts its sentences from the LM's BOS token (or, where a family has"
                             " none, its end-of-text token), and this tokenizer has neither; use method 'zerocap',"
                             " or give the tokenizer a bos_token or eos_token (tokenizer_config.json)")
        longest = max(len(self.prompt_ids(p)) for p in PROMPTS) + cfg.max_tokens
        beam = len(self.prompt_ids(cfg.cond_text)) + cfg.max_tokens
        room = e.facts.positions - cfg.dummy_tokens
        if max(longest, beam) > room:
            raise InputError(f"max_tokens ({cfg.max_tokens}) with dummy_tokens ({cfg.dummy_tokens}) and the prompt"
                             f" run past the LM's {e.facts.positions} positions; lower them")
        return cfg

    def prompt_ids(self, text: str) -> list[int]:
        """Their prompts' ids: the start token (BOS; a family without one, its end-of-text token, as
        GPT-2's BOS is), then the text's."""
        return [self.engine.vocabulary.start_id] + self.engine.tokenizer.encode(text, add_special_tokens=False)

    def request(self, target, cfg: PseudoTokenConfig, on_step=None) -> PseudoTokenRequest:
        """A checked config's caption of `target` (its `frames`, else its vector as one frame)."""
        frames = getattr(target, "frames", None)
        if frames is None:
            frames = target.vector[None]
        dtype = getattr(self.engine.scorer, "dtype", torch.float32)  # CLIP's own (fp16 on a GPU, as theirs)
        return PseudoTokenRequest(frames.to(self.engine.device, dtype), cfg, target.name, target.details, on_step)

    def prefix(self, tokens: int) -> torch.Tensor:
        """The LM's keys/values of `tokens` start tokens (L, 2, 1, H, P, hd): where the pseudo-tokens
        start (theirs: GPT-2's BOS)."""
        if tokens not in self._prefixes:
            e, lm = self.engine, self.engine.lm_adapter
            with torch.no_grad():
                out = lm.cached(torch.full((1, tokens), e.vocabulary.start_id, device=e.device))
            self._prefixes[tokens] = lm._stack(lm._cache_out(out).layers)
        return self._prefixes[tokens]

    def forward(self, ids: torch.Tensor, last: torch.Tensor, prefix: torch.Tensor | None = None,
                bare: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (R, V) fp32 at positions `last` (R,) of ids (R, T) (padded on the right) after the
        prefix (L, 2, R, H, P, hd) if any, differentiable in it; rows marked `bare` (R,) ignore it
        (fast form only). The exact form runs the LM's own forward, as theirs; the fast form its
        family's written-out pass where it has one (GPT-2's lm.gpt2_forward: fewer kernels, the LM
        head only where read), else the LM's own."""
        e = self.engine
        if self.written_out:
            return self.rows_forward(e.lm, ids, last, prefix, bare)
        kwargs = {} if prefix is None else {e.lm_adapter._cache_arg: prefix_cache(prefix)}
        logits = e.lm(ids, **kwargs).logits
        return logits[torch.arange(ids.shape[0], device=ids.device), last].float()

    def rules(self, end_token: str) -> TokenRules:
        if end_token not in self._rules:
            e = self.engine
            self._rules[end_token] = TokenRules(e.vocabulary, e.vocabulary.end_id(end_token), e.device)
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
        one pass per prefix length (each row twice, once `bare`: half the kernels, one read of the
        LM head for both; 4 requests' steps ~13% faster on a 2-core CPU, a lone request's ~3%);
        the exact form takes two passes, as theirs."""
        if not self.written_out:
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
        searches = [BeamSearch(self, r) for r in requests]
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
            for b, k in zip(live, starts([b.rows for b in live])):
                b.advance(logits[k:k + b.rows])
        for b in searches:
            b.r.beams = b.answer()

    def result(self, r: PseudoTokenRequest) -> PseudoTokenResult:
        by_clip, by_mixed = rank(r.sims, r.ppls, r.cfg.clip_scale, r.cfg.ce_scale)
        texts = [s.text for s in r.sentences]
        return PseudoTokenResult(r.sentences, texts[by_clip[0]], texts[by_mixed[0]], r.beams, r.cfg.seed,
                                 r.cfg.cond_text, r.name, r.sampled, time.perf_counter() - r.joined, r.details)

    def decode(self, targets, cfg: PseudoTokenConfig, progress=None) -> list[PseudoTokenResult]:
        """One result per target (modes.Target), decoded together as the form allows (the engine's
        one loop, decoding.py)."""
        return self.engine.decode_targets(targets, cfg, progress)


# ---- clips as the authors read them --------------------------------------------------------------
