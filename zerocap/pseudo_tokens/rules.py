"""Their token rules (CapGenerator.py's logits processors), vectorised over a step's rows of any
settings: tables per end token, built once."""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import groupby

import torch

from .knobs import PseudoTokenConfig

HISTORY = 16  # tokens whose similar forms the repetition penalty reads
SIMILAR = 8  # similar forms kept per token


class TokenRules:
    """The vocabulary's tables for their token rules, built once per end token. Their rules read
    GPT-2's byte-level pieces, "Ġ" for a space; these read each token's text (vocabulary.py), " "
    for a space -- the same sets on GPT-2's vocabulary, and the same rules on a SentencePiece one
    ("▁dog" is " dog")."""

    def __init__(self, vocabulary, end_id: int, device):
        spacer = " "
        lower = set("abcdefghijklmnopqrstuvwxyz")
        upper = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        special = {" ", ",", "'", spacer}
        vocab = vocabulary.size
        n = min(len(vocabulary.tokenizer), vocab)
        pieces = vocabulary.texts[:n]
        letters = lower | upper
        forbidden = [i for i, p in enumerate(pieces) if not set(p) <= letters | special or i == end_id]
        forbidden += range(n, vocab)  # output rows past the tokenizer's (Qwen pads its 151,643 to 151,936): no words
        first = [i for i, p in enumerate(pieces) if not set(p) <= letters]
        later = [i for i, p in enumerate(pieces) if not set(p) <= lower | special]
        self.end_id = end_id
        self.forbidden = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.forbidden[[i for i in forbidden if i != end_id]] = True  # their NoBadWords re-allows the end token
        self.first = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.first[first] = True
        self.later = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.later[later] = True
        self._penalties: dict[float, torch.Tensor] = {}
        similar = torch.zeros(vocab, SIMILAR, dtype=torch.long)
        banned = set(forbidden)
        reduced = {i: p.replace(spacer, "").upper() for i, p in enumerate(pieces) if i not in banned}
        for _, group in groupby(sorted(reduced, key=reduced.get), key=reduced.get):
            tokens = list(group)[:SIMILAR]  # their table has 8 slots (GPT-2's largest group is smaller)
            for t in tokens:
                similar[t, :len(tokens)] = torch.tensor(tokens)
        self.similar = similar.to(device)

    def penalties(self, entity_penalty: float) -> torch.Tensor:
        """(2, V): what their bad-words and entity rules add to a row's logits at its first token
        (row 0) and at later ones (row 1): -inf on a forbidden token, -entity_penalty on a token
        the step does not want, 0 elsewhere -- one add for the three vocabulary-wide rules (the
        same values: x - inf is their -inf, and -inf - p stays -inf)."""
        if entity_penalty not in self._penalties:
            if len(self._penalties) >= 64:  # a server's requests bring their own penalties: a bound
                self._penalties.clear()
            rows = []
            for unwanted in (self.first, self.later):
                row = torch.where(unwanted, -torch.tensor(entity_penalty, dtype=torch.float32), 0.0)
                rows.append(row.masked_fill(self.forbidden, -math.inf))
            self._penalties[entity_penalty] = torch.stack(rows)
        return self._penalties[entity_penalty]

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
        # their bad words (-inf) and the entity penalty, one table row each (penalties())
        added = [self.penalties(c.entity_penalty)[min(s, 1)] for c, s in zip(cfgs, steps)]
        logits = logits + (added[0][None] if R == 1 else torch.stack(added))
        end = knobs.end_index
        logits[end] = logits[end] + knobs.ending_bonus
        forcing = [r for r, s in enumerate(steps) if s >= knobs.max_tokens[r] - knobs.min_length[r]]
        for r in forcing:  # promote ending near the length limit (few rows, few steps)
            row = logits[r:r + 1]
            e = knobs.end_ids[r]
            threshold = row[:, e].clone()
            top_values, top_indices = row.topk(knobs.top_k[r], 1)
            row.masked_fill_(row < top_values[:, -1:], -math.inf)
            row[:, e] = threshold
            bump = top_values[:, -1] > threshold
            row[bump, top_indices[bump, -1]] = -math.inf
        return logits.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf)


@dataclass
class RowKnobs:
    """Per-row knobs of a step's rows, as tensors where the rules read them together."""

    repetition_penalty: torch.Tensor
    ending_bonus: torch.Tensor
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
        return cls(t([c.repetition_penalty for c in cfgs]), t([c.ending_bonus for c in cfgs]),
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
