"""Every knob of the ZeroCap decoder in one table, and the presets (the modes' knob changes).

Each field of `ZeroCapConfig` carries the paper's default, the range the decoder accepts, one
line of help and, for the Cog container, the narrower range a request may ask for (bounded work
per prediction). `validate()`, the command line's flags and help, and `cog_description()` read
this table. The Cog inputs in predict.py restate it as literals (`cog build` parses predict.py
statically, so they cannot read it), and the README's inputs table restates the help lines;
tests/test_config.py holds both to it, word for word. The presets are the modes' (modes.py).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import modes as _modes
from .errors import InputError
from .limits import COND_TEXT


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float
    lo_open: bool = False  # lo itself is excluded

    def __contains__(self, value) -> bool:
        return (value > self.lo if self.lo_open else value >= self.lo) and value <= self.hi

    def describe(self, integer: bool) -> str:
        """'an integer from 1 to 100' or 'a number in (0, 10]'."""
        if integer:
            return f"an integer from {self.lo} to {self.hi}"
        return f"a number in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"


@dataclass(frozen=True)
class Knob:
    help: str  # one line
    range: Range | None = None  # numbers: what the decoder accepts
    serve: Range | None = None  # numbers: what one Cog request may ask for (None: not a Cog input)
    max_length: int | None = None  # strings: the longest allowed, on every door (also makes it a Cog input)
    served: bool = False  # a Cog input though neither (true/false knobs)
    choices: tuple | None = None  # strings: the values allowed (None: any)

    @property
    def is_served(self) -> bool:
        return self.serve is not None or self.max_length is not None or self.served


def check_knobs(cfg) -> None:
    """Every knob of a config (a dataclass of `knob` fields) of its type and in its range; else
    InputError naming the first bad one and what is allowed."""
    for f in dataclasses.fields(cfg):
        name, spec, value, kind = f.name, f.metadata["knob"], getattr(cfg, f.name), type(f.default)
        if kind is bool:
            if not isinstance(value, bool):
                raise InputError(f"{name} must be true or false, got {value!r}")
            continue
        if kind is str:
            if not isinstance(value, str):
                raise InputError(f"{name} must be a string, got {value!r}")
            if spec.max_length is not None and len(value) > spec.max_length:
                raise InputError(f"{name} must be at most {spec.max_length} characters, got {len(value)}")
            if spec.choices is not None and value not in spec.choices:
                raise InputError(f"{name} must be one of {', '.join(spec.choices)}, got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise InputError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        if not math.isfinite(value):
            raise InputError(f"{name} must be a finite number, got {value}")
        if value not in spec.range:
            raise InputError(f"{name} must be {spec.range.describe(kind is int)}, got {value}")


def knob(default, help: str, lo=None, hi=None, lo_open: bool = False, serve: tuple | None = None,
         max_length: int | None = None, served: bool = False, choices: tuple | None = None):
    rng = None if lo is None else Range(lo, hi, lo_open)
    srv = None if serve is None else Range(*serve)
    return field(default=default, metadata={"knob": Knob(help, rng, srv, max_length, served, choices)})


@dataclass(frozen=True)
class ZeroCapConfig:
    cond_text: str = knob("Image of a", "prompt the caption continues; a caption is cond_text + the generated text",
                          max_length=COND_TEXT.hi)
    beam_size: int = knob(5, "beams kept by the length-normalised beam search (at most top_k); more = slower,"
                             " more varied", 1, 100, serve=(1, 20))
    max_tokens: int = knob(15, "tokens generated at most (the authors' --target_seq_length)", 1, 100, serve=(1, 40))
    num_iterations: int = knob(5, "gradient steps on the LM's key/value cache per token (0 = the plain LM)", 0, 50,
                               serve=(0, 20))
    top_k: int = knob(512, "candidate tokens scored by CLIP per beam and iteration (at least beam_size)", 1, 8192,
                     serve=(1, 2048))
    clip_temperature: float = knob(0.01, "softmax temperature over the candidates' CLIP similarities", 0.0, 10.0,
                                   lo_open=True, serve=(0.001, 1.0))
    clip_scale: float = knob(1.0, "weight of the CLIP loss", 0.0, 100.0, serve=(0.0, 10.0))
    ce_scale: float = knob(0.2, "weight of the fluency loss: the shifted LM's KL divergence from the plain LM",
                           0.0, 100.0, serve=(0.0, 5.0))
    stepsize: float = knob(0.3, "step size of the context shift", 0.0, 10.0, serve=(0.0, 3.0))
    grad_norm_factor: float = knob(0.9, "the gradient is divided by its norm to this power", 0.0, 2.0,
                                   serve=(0.0, 2.0))
    fusion_factor: float = knob(0.99, "next-token probs = shifted^f x plain^(1-f)", 0.0, 1.0, serve=(0.0, 1.0))
    repetition_penalty: float = knob(1.0, "damping of the last 4 context tokens (1 = off)", 0.0, 10.0, lo_open=True,
                                     serve=(0.5, 3.0))
    end_token: str = knob(".", "text whose first LM token ends a beam")
    end_factor: float = knob(1.01, "end-token boost from end_factor_from on: higher = shorter captions", 0.0, 10.0,
                             lo_open=True, serve=(0.5, 2.0))
    end_factor_from: int = knob(1, "first step of the end-token boost (the paper says 3, the authors' code 1)",
                                0, 100, serve=(0, 40))
    start_end_penalty: float = knob(1.6, "at step 0 the end token's logit is damped by this", 0.0, 10.0, lo_open=True)
    forbidden_factor: float = knob(20.0, "damping of bare numbers and ( ) , ! : newline", 0.0, 1000.0, lo_open=True,
                                   serve=(1.0, 100.0))

    def replace(self, **changes) -> "ZeroCapConfig":
        """A copy with `changes` applied; None values keep the current value."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def validate(self) -> "ZeroCapConfig":
        """Raise InputError naming the first bad field and what is allowed; return self."""
        check_knobs(self)
        if self.beam_size > self.top_k:
            raise InputError(f"beam_size ({self.beam_size}) must not exceed top_k ({self.top_k})")
        if not self.end_token:
            raise InputError("end_token must be a non-empty string")
        return self


FIELDS = dataclasses.fields(ZeroCapConfig)
KNOBS: dict[str, Knob] = {f.name: f.metadata["knob"] for f in FIELDS}
FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in FIELDS}
DEFAULTS = ZeroCapConfig()
SERVED_KNOBS = [name for name, k in KNOBS.items() if k.serve is not None or k.max_length is not None]  # Cog inputs

# ---- the evolving pseudo-tokens method's knobs (pseudo_tokens.py, methods.py) ---------------------------
SCHEDULES = ("constant", "cosine", "exponential")


@dataclass(frozen=True)
class PseudoTokenConfig:
    """Every knob of the method, with the defaults of the authors' README command
    (`--token_wise --randomized_prompt`, the rest as their run.py declares)."""

    cond_text: str = knob("Image of a", "prompt of the final beam search; a beam's caption is cond_text + its text",
                          max_length=COND_TEXT.hi)
    seed: int = knob(0, "seed of the prompt choices and of the sampling", 0, 2**31 - 1, serve=(0, 2**31 - 1))
    max_tokens: int = knob(20, "tokens per sampled sentence and beam at most (their --target_seq_length)", 1, 100,
                           serve=(1, 40))
    dummy_tokens: int = knob(5, "pseudo-tokens in the learned prefix (their --num_dummy_tokens)", 1, 50, serve=(1, 20))
    sentence_iterations: int = knob(30, "sentences sampled while the prefix learns (their --sentence_iterations)",
                                    1, 200, serve=(1, 60))
    sampling_top_k: int = knob(3, "tokens a sampled token is drawn from", 1, 100, serve=(1, 50))
    clip_temperature: float = knob(1.0, "softmax temperature over the candidates' CLIP similarities", 0.0, 10.0,
                                   lo_open=True, serve=(0.001, 1.0))
    clip_scale: float = knob(1.0, "weight of the CLIP loss (and of CLIP in the mixed ranking)", 0.0, 100.0,
                             serve=(0.0, 10.0))
    ce_scale: float = knob(0.8, "weight of the fluency loss (and of fluency in the mixed ranking)", 0.0, 100.0,
                           serve=(0.0, 5.0))
    beam_size: int = knob(5, "beams of the final beam search", 1, 100, serve=(1, 20))
    learning_rate: float = knob(0.006, "AdamW's learning rate for the prefix", 0.0, 10.0, lo_open=True,
                                serve=(0.0001, 1.0))
    lr_schedule: str = knob("cosine", "learning rate by sentence: constant, cosine (to 1e-4) or exponential (x0.9)",
                            served=True, choices=SCHEDULES)
    weight_decay_scale: float = knob(0.3, "AdamW's weight decay = learning_rate x this", 0.0, 100.0,
                                     serve=(0.0, 10.0))
    repetition_penalty: float = knob(2.0, "damping of tokens similar to the last 16 (1 = off)", 0.0, 10.0,
                                     lo_open=True, serve=(0.5, 3.0))
    entity_penalty: float = knob(2.0, "logit penalty of capitalised or non-letter tokens", 0.0, 100.0,
                                 serve=(0.0, 20.0))
    ending_bonus: float = knob(2.0, "logit bonus of the end token", -100.0, 100.0, serve=(-10.0, 10.0))
    end_token: str = knob(".", "text whose first LM token ends a sentence or beam")
    token_wise: bool = knob(True, "an optimiser step after every token (else after every sentence)", served=True)
    randomized_prompt: bool = knob(True, "each sentence starts from one of their 12 prompts (else from BOS alone)",
                                   served=True)

    def replace(self, **changes) -> "PseudoTokenConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def validate(self) -> "PseudoTokenConfig":
        """Raise InputError naming the first bad field and what is allowed; return self."""
        check_knobs(self)
        if not self.end_token:
            raise InputError("end_token must be a non-empty string")
        return self


PT_FIELDS = dataclasses.fields(PseudoTokenConfig)
PT_KNOBS: dict[str, Knob] = {f.name: f.metadata["knob"] for f in PT_FIELDS}
PT_FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in PT_FIELDS}
PT_DEFAULTS = PseudoTokenConfig()


class _Presets(Mapping):
    """mode name -> its knob changes, read live from the modes (modes.py)."""

    def __getitem__(self, name: str) -> dict:
        return _modes.MODES[name].preset

    def __iter__(self):
        return iter(_modes.MODES)

    def __len__(self) -> int:
        return len(_modes.MODES)


PRESETS = _Presets()


def preset(name: str, **overrides) -> ZeroCapConfig:
    """The config of preset `name` with `overrides` (None = keep the preset's value), validated."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return ZeroCapConfig(**PRESETS[name]).replace(**overrides).validate()


def cog_description(name: str) -> str:
    """The Cog input's description of a served knob: its help line as a sentence, and, when a
    mode changes it, what an empty value means. predict.py restates it as a literal."""
    spec = KNOBS[name]
    text = spec.help[0].upper() + spec.help[1:] + "."
    if preset_dependent(name):
        text += f" Empty = the mode's ({_preset_values(name)})."
    return text


def _preset_values(name: str) -> str:
    others = "; ".join(f"{mode} {changes[name]!r}" for mode, changes in PRESETS.items() if name in changes)
    return f"default {getattr(DEFAULTS, name)!r}" + (f"; {others}" if others else "")


def preset_dependent(name: str) -> bool:
    """Whether some preset changes this knob (then its default depends on the mode)."""
    return any(name in changes for changes in PRESETS.values())


def describe_knob(name: str) -> str:
    """One line for --help: what it does, the range, the default and the presets' values."""
    spec, kind = KNOBS[name], FIELD_TYPES[name]
    parts = [spec.help]
    if spec.range is not None:
        parts.append(spec.range.describe(kind is int))
    parts.append(_preset_values(name))
    return ", ".join(parts)
