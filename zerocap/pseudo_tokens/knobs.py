"""The method's knob table: every knob with the authors' default, its range and help (config.py's
machinery, as ZeroCap's table)."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import KnobTable, check_knobs, knob, table_of
from ..errors import InputError
from ..limits import COND_TEXT

NAME = "pseudo-tokens"
SCHEDULES = ("constant", "cosine", "exponential")


@dataclass(frozen=True)
class PseudoTokenConfig(KnobTable):
    """Every knob of the method, with the defaults of the authors' README command
    (`--token_wise --randomized_prompt`, the rest as their run.py declares)."""

    cond_text: str = knob("Image of a", "prompt of the final beam search; a beam's caption is cond_text + its text",
                          max_length=COND_TEXT.hi)
    seed: int = knob(0, "seed of the prompt choices and of the sampling", 0, 2**31 - 1, container=(0, 2**31 - 1))
    max_tokens: int = knob(20, "tokens per sampled sentence and beam at most (their --target_seq_length)", 1, 100,
                           container=(1, 40))
    dummy_tokens: int = knob(5, "pseudo-tokens in the learned prefix (their --num_dummy_tokens)", 1, 50, container=(1, 20))
    sentence_iterations: int = knob(30, "sentences sampled while the prefix learns (their --sentence_iterations)",
                                    1, 200, container=(1, 60))
    sampling_top_k: int = knob(3, "tokens a sampled token is drawn from", 1, 100, container=(1, 50))
    clip_temperature: float = knob(1.0, "softmax temperature over the candidates' CLIP similarities", 0.0, 10.0,
                                   lo_open=True, container=(0.001, 1.0))
    clip_scale: float = knob(1.0, "weight of the CLIP loss (and of CLIP in the mixed ranking)", 0.0, 100.0,
                             container=(0.0, 10.0))
    ce_scale: float = knob(0.8, "weight of the fluency loss (and of fluency in the mixed ranking)", 0.0, 100.0,
                           container=(0.0, 5.0))
    beam_size: int = knob(5, "beams of the final beam search", 1, 100, container=(1, 20))
    learning_rate: float = knob(0.006, "AdamW's learning rate for the prefix", 0.0, 10.0, lo_open=True,
                                container=(0.0001, 1.0))
    lr_schedule: str = knob("cosine", "learning rate by sentence: constant, cosine (to 1e-4) or exponential (x0.9)",
                            container=True, choices=SCHEDULES)
    weight_decay_scale: float = knob(0.3, "AdamW's weight decay = learning_rate x this", 0.0, 100.0,
                                     container=(0.0, 10.0))
    repetition_penalty: float = knob(2.0, "damping of tokens similar to the last 16 (1 = off)", 0.0, 10.0,
                                     lo_open=True, container=(0.5, 3.0))
    entity_penalty: float = knob(2.0, "logit penalty of capitalised or non-letter tokens", 0.0, 100.0,
                                 container=(0.0, 20.0))
    ending_bonus: float = knob(2.0, "logit bonus of the end token", -100.0, 100.0, container=(-10.0, 10.0))
    end_token: str = knob(".", "text whose first LM token ends a sentence or beam")
    token_wise: bool = knob(True, "an optimiser step after every token (else after every sentence)", container=True)
    randomized_prompt: bool = knob(True, "each sentence starts from one of their 12 prompts (else from BOS alone)",
                                   container=True)

    def validate(self) -> "PseudoTokenConfig":
        """Raise InputError naming the first bad field and what is allowed; return self."""
        check_knobs(self)
        if not self.end_token:
            raise InputError("end_token must be a non-empty string")
        return self


KNOBS, FIELD_TYPES, DEFAULTS = table_of(PseudoTokenConfig)
