"""MAGIC's knob table: every knob with the authors' default (their image-captioning demo and
inference_magic.py), its range and help."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import KnobTable, check_knobs, knob
from ..limits import COND_TEXT

NAME = "magic"


@dataclass(frozen=True)
class MagicConfig(KnobTable):
    """Every knob of MAGIC search, at their defaults (k 45, alpha 0.1, beta 2.0, decoding_len 16
    with the start token, CLIP reading the last 60 generated tokens)."""

    k: int = knob(45, "candidate tokens per step: the LM's k most likely (their --k)", 1, 1000, container=(1, 200))
    alpha: float = knob(0.1, "weight of the degeneration penalty, 1 - alpha that of the LM's probability (their"
                        " --alpha)", 0.0, 1.0, container=(0.0, 1.0))
    beta: float = knob(2.0, "weight of CLIP's score of the candidates (their --beta)", 0.0, 100.0, container=(0.0, 20.0))
    max_tokens: int = knob(15, "tokens generated at most, the end-of-text token included (their decoding_len 16 less"
                           " the start token)", 1, 100, container=(1, 40))
    cond_text: str = knob("", "text the caption starts from, after the start token (theirs: none); the caption"
                          " includes it", max_length=COND_TEXT.hi)
    clip_text_max_len: int = knob(60, "generated tokens CLIP reads at most, the last ones (their"
                                  " clip_text_max_len)", 1, 1000, container=(1, 200))

    def validate(self) -> "MagicConfig":
        """Raise InputError naming the first bad field and what is allowed; return self."""
        check_knobs(self)
        return self
