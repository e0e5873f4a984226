"""All knobs of the ZeroCap decoder, with the paper's defaults, and the four presets."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ZeroCapConfig:
    cond_text: str = "Image of a"  # prompt the caption continues; shown captions are cond_text + text
    beam_size: int = 5  # beams kept by the length-normalised beam search
    max_tokens: int = 15  # tokens generated at most (the seed's --target_seq_length)
    num_iterations: int = 5  # gradient steps on the key/value cache per token
    top_k: int = 512  # candidate tokens scored by CLIP per beam and iteration
    clip_temperature: float = 0.01  # softmax temperature over CLIP similarities of the candidates
    clip_scale: float = 1.0  # weight of the CLIP loss
    ce_scale: float = 0.2  # weight of the fluency loss KL(shifted || unshifted LM)
    stepsize: float = 0.3  # step size of the context shift
    grad_norm_factor: float = 0.9  # gradient is divided by its norm to this power
    fusion_factor: float = 0.99  # next-token probs = shifted^f * unshifted^(1-f)
    repetition_penalty: float = 1.0  # on the last 4 context tokens; 1 = off
    end_token: str = "."  # text whose first LM token stops a beam
    end_factor: float = 1.01  # end-token logit boost (positive x f, negative / f) ...
    end_factor_from: int = 1  # ... from this step on (the paper: 1.04 from step 3)
    start_end_penalty: float = 1.6  # at step 0 the end token's logit is damped by this
    forbidden_factor: float = 20.0  # bare numbers and ( ) , ! : newline are damped by this

    def replace(self, **changes) -> "ZeroCapConfig":
        """A copy with `changes` applied; None values keep the current value."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def validate(self) -> "ZeroCapConfig":
        """Raise ValueError naming the first bad field and what is allowed; return self."""
        for name, (lo, hi) in _INT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
        for name, (lo, hi, lo_open) in _FLOAT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
            if (value <= lo if lo_open else value < lo) or value > hi:
                bracket = "(" if lo_open else "["
                raise ValueError(f"{name} must be in {bracket}{lo}, {hi}], got {value}")
        if self.beam_size > self.top_k:
            raise ValueError(
                f"beam_size ({self.beam_size}) must not exceed top_k ({self.top_k})"
            )
        if not isinstance(self.cond_text, str):
            raise ValueError(f"cond_text must be a string, got {self.cond_text!r}")
        if not isinstance(self.end_token, str) or not self.end_token:
            raise ValueError("end_token must be a non-empty string")
        return self


# name: (min, max) inclusive
_INT_RANGES = {
    "beam_size": (1, 100),
    "max_tokens": (1, 100),
    "num_iterations": (0, 50),
    "top_k": (1, 8192),
    "end_factor_from": (0, 100),
}
# name: (min, max, min excluded?)
_FLOAT_RANGES = {
    "clip_temperature": (0.0, 10.0, True),
    "clip_scale": (0.0, 100.0, False),
    "ce_scale": (0.0, 100.0, False),
    "stepsize": (0.0, 10.0, False),
    "grad_norm_factor": (0.0, 2.0, False),
    "fusion_factor": (0.0, 1.0, False),
    "repetition_penalty": (0.0, 10.0, True),
    "end_factor": (0.0, 10.0, True),
    "start_end_penalty": (0.0, 10.0, True),
    "forbidden_factor": (0.0, 1000.0, True),
}

# The paper's README commands, as changes to the defaults.
PRESETS: dict[str, dict] = {
    "caption": {},
    "arithmetic": {"end_factor": 1.06, "fusion_factor": 0.95, "grad_norm_factor": 0.95},
    "knowledge": {"cond_text": "Image of", "end_factor": 1.04},
    "ocr": {"cond_text": "Image of text that says", "end_factor": 1.04},
}


def preset(name: str, **overrides) -> ZeroCapConfig:
    """The config of preset `name` with `overrides` (None = keep the preset's value), validated."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return ZeroCapConfig(**PRESETS[name]).replace(**overrides).validate()
