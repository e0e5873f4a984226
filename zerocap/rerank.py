"""Rerank finished beams as the authors' demo did: by CLIP similarity and by LM fluency."""
from __future__ import annotations

import math

import torch


@torch.no_grad()
def clip_similarities(scorer, texts: list[str], target: torch.Tensor) -> list[float]:
    """Cosine similarity of each text's embedding (the scorer's) with the normalised target (D,)."""
    feats = scorer.normalised(scorer.text_features(texts))
    return (feats @ target.to(feats.dtype)).float().tolist()


@torch.no_grad()
def perplexities(lm, vocabulary, texts: list[str], device) -> list[float]:
    """exp(mean next-token loss) of BOS (where the tokenizer has one) + text under the LM (lower =
    more fluent): the authors' `tokenizer(bos + text)` on GPT-2, as ids on every tokenizer."""
    out = []
    for text in texts:
        ids = torch.tensor([vocabulary.prompt_ids(text, bos=True)], device=device)
        if ids.shape[1] < 2:
            out.append(math.inf)
            continue
        loss = lm(ids, labels=ids).loss.float().item()
        out.append(math.exp(loss) if math.isfinite(loss) and loss < 700 else math.inf)
    return out
