"""Every knob of the ZeroCap decoder in one table, and the presets (the modes' knob changes).

Each field of `ZeroCapConfig` carries the paper's default, the range the decoder accepts, one
line of help and, for the Cog container, the narrower range a request may ask for (bounded work
per prediction). `validate()`, the command line's flags and help, and
`methods.cog_description()` read this table. The Cog inputs in predict.py are literals written from it
by script/cog-inputs (`cog build` parses predict.py statically, so they cannot read it), and the
README's inputs table restates the help lines (script/readme-tables); tests/test_config.py holds
both to it, word for word. The presets (the modes' changes to these
defaults) and the help that names them are presets.py's.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

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
    container: Range | None = None  # numbers: what one container request may ask for (within `range`)
    max_length: int | None = None  # strings: the longest allowed, on every door
    choices: tuple | None = None  # strings: the values allowed (None: any)
    in_container: bool = False  # an input of the container (predict.py's inputs: script/cog-inputs)


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


def knob(default, help: str, lo=None, hi=None, lo_open: bool = False, container: tuple | bool = False,
         max_length: int | None = None, choices: tuple | None = None):
    """A knob table's field. container: whether the container has it as an input -- True, or for a
    number the (lo, hi) one request may ask for; a string with a max_length is one too."""
    rng = None if lo is None else Range(lo, hi, lo_open)
    narrower = Range(*container) if isinstance(container, tuple) else None
    spec = Knob(help, rng, narrower, max_length, choices, bool(container) or max_length is not None)
    return field(default=default, metadata={"knob": spec})


class KnobTable:
    """What every method's knob table (a frozen dataclass of `knob` fields) shares."""

    def replace(self, **changes):
        """A copy with `changes` applied; None values keep the current value."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def table_of(config_class) -> tuple[dict[str, Knob], dict[str, type], object]:
    """(each knob's spec, each knob's type, the defaults) of a knob table."""
    fields = dataclasses.fields(config_class)
    return ({f.name: f.metadata["knob"] for f in fields}, {f.name: type(f.default) for f in fields},
            config_class())


@dataclass(frozen=True)
class ZeroCapConfig(KnobTable):
    cond_text: str = knob("Image of a", "prompt the caption continues; a caption is cond_text + the generated text",
                          max_length=COND_TEXT.hi)
    beam_size: int = knob(5, "beams kept by the length-normalised beam search (at most top_k); more = slower,"
                             " more varied", 1, 100, container=(1, 20))
    max_tokens: int = knob(15, "tokens generated at most (the authors' --target_seq_length)", 1, 100, container=(1, 40))
    num_iterations: int = knob(5, "gradient steps on the LM's key/value cache per token (0 = the plain LM)", 0, 50,
                               container=(0, 20))
    top_k: int = knob(512, "candidate tokens scored by CLIP per beam and iteration (at least beam_size)", 1, 8192,
                     container=(1, 2048))
    clip_temperature: float = knob(0.01, "softmax temperature over the candidates' CLIP similarities", 0.0, 10.0,
                                   lo_open=True, container=(0.001, 1.0))
    clip_scale: float = knob(1.0, "weight of the CLIP loss", 0.0, 100.0, container=(0.0, 10.0))
    ce_scale: float = knob(0.2, "weight of the fluency loss: the shifted LM's KL divergence from the plain LM",
                           0.0, 100.0, container=(0.0, 5.0))
    stepsize: float = knob(0.3, "step size of the context shift", 0.0, 10.0, container=(0.0, 3.0))
    grad_norm_factor: float = knob(0.9, "the gradient is divided by its norm to this power", 0.0, 2.0,
                                   container=(0.0, 2.0))
    fusion_factor: float = knob(0.99, "next-token probs = shifted^f x plain^(1-f)", 0.0, 1.0, container=(0.0, 1.0))
    repetition_penalty: float = knob(1.0, "damping of the last 4 context tokens (1 = off)", 0.0, 10.0, lo_open=True,
                                     container=(0.5, 3.0))
    end_token: str = knob(".", "text whose first LM token ends a beam")
    end_factor: float = knob(1.01, "end-token boost from end_factor_from on: higher = shorter captions", 0.0, 10.0,
                             lo_open=True, container=(0.5, 2.0))
    end_factor_from: int = knob(1, "first step of the end-token boost (the paper says 3, the authors' code 1)",
                                0, 100, container=(0, 40))
    start_end_penalty: float = knob(1.6, "at step 0 the end token's logit is damped by this", 0.0, 10.0, lo_open=True)
    forbidden_factor: float = knob(20.0, "damping of bare numbers and ( ) , ! : newline", 0.0, 1000.0, lo_open=True,
                                   container=(1.0, 100.0))

    def validate(self) -> "ZeroCapConfig":
        """Raise InputError naming the first bad field and what is allowed; return self."""
        check_knobs(self)
        if self.beam_size > self.top_k:
            raise InputError(f"beam_size ({self.beam_size}) must not exceed top_k ({self.top_k})")
        if not self.end_token:
            raise InputError("end_token must be a non-empty string")
        return self


KNOBS, FIELD_TYPES, DEFAULTS = table_of(ZeroCapConfig)
