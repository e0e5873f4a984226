"""Their final beam search (decode_beam_search), a step at a time for requests in lockstep."""
from __future__ import annotations

import math

import torch

from .batch import PseudoTokenRequest, PTBeam


def starts(sizes: list[int]) -> list[int]:
    out, k = [], 0
    for n in sizes:
        out.append(k)
        k += n
    return out


class BeamSearch:
    """One request's final beam search, as theirs (decode_beam_search), a step at a time."""

    def __init__(self, method, r: PseudoTokenRequest):  # method: decoder.PseudoTokens
        e, cfg = method.engine, r.cfg
        self.r, self.B, self.i, self.finished = r, cfg.beam_size, 0, False
        self.prefix = method.prefix(cfg.dummy_tokens) + r.offset.detach()  # (L, 2, 1, H, P, hd)
        self.generated = torch.tensor([method.prompt_ids(cfg.cond_text)], device=e.device)
        self.gen = self.scores = None
        self.lengths = torch.ones(self.B, device=e.device)
        self.stopped = torch.zeros(self.B, dtype=torch.bool, device=e.device)
        self.text_after = e.vocabulary.text_after

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
        prompt = self.generated[0, :self.generated.shape[1] - self.gen.shape[1]].tolist()
        texts = [self.text_after(prompt, row[:int(n)]) for row, n in zip(self.gen.tolist(), self.lengths.tolist())]
        order = scores.argsort(descending=True).tolist()
        cond = self.r.cfg.cond_text
        return [PTBeam(texts[k], cond + texts[k], float(scores[k])) for k in order]
