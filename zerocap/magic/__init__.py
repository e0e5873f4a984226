"""MAGIC search (Su, Lan, Li, Xu, Liu, Yogatama, Wang, Kong, Collier, "Language Models Can See:
Plugging Visual Controls in Text Generation", 2022; yxuansu/MAGIC): CLIP-guided contrastive
decoding, no gradients.

From the start token (and `cond_text`, none by default), each step takes the LM's `k` most likely
next tokens v and keeps the one that maximises

    (1 - alpha) * p_LM(v)  -  alpha * max_j cos(h_v, h_j)  +  beta * softmax_k(CLIP(target, text + v))

where h_v is the LM's last hidden state (after its final norm) on v, h_j its hidden states at
every earlier position (the start token's included): contrastive search's degeneration penalty;
and CLIP scores the generated text alone -- its last `clip_text_max_len` tokens with v, decoded --
against the target, the logit-scaled cosines made a softmax over the k candidates. The caption
ends at the LM's end-of-text token or after `max_tokens` tokens.

The method's rooms: knobs.py (its knob table), decoder.py (the method on an engine's models: its
requests, their batch and result). The forms (forms.py) differ in how CLIP reads the candidates:
`exact` decodes each candidate's text and runs CLIP on the whole texts, one request at a time,
as theirs; `fast` runs every request's candidates together, CLIP reading only the candidates'
suffixes after each row's prefix where the scorer shares prefixes (OpenAI CLIP's causal towers).
tests/reference_magic.py is the paper's step, written for the tests; tests/test_magic.py holds
both forms to it. This package's own namespace is the knob table alone (methods.py and the
command line read it without loading torch).
"""
from __future__ import annotations

from .knobs import NAME, MagicConfig  # noqa: F401
