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

The method's rooms: knobs.py (its knob table), rules.py (their token rules, vectorised),
batch.py (a request, its result, and requests sharing steps), beam_search.py (their final beam
search), decoder.py (the method on an engine's models: PseudoTokens), clips.py (a clip as their
run.py reads it). This package's own namespace is the knob table alone, so that the registry
(methods.py) and the command line read it without loading torch.
"""
from __future__ import annotations

from .knobs import DEFAULTS, FIELD_TYPES, KNOBS, NAME, SCHEDULES, PseudoTokenConfig  # noqa: F401
