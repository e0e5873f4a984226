"""The methods, chosen once: how a caption is made from the frozen LM and CLIP.

  zerocap        ZeroCap's context shift (Tewel et al., CVPR 2022): gradient steps on the LM's
                 key/value cache at every token, a beam search (engine.py, batch.py); the default
  pseudo-tokens  evolving pseudo-tokens (Tewel et al. 2022, their method for clips and images): a
                 learned prefix optimised while whole sentences are sampled (pseudo_tokens/)
  magic          MAGIC search (Su et al. 2022): contrastive search with CLIP's score of each
                 candidate token, no gradients (magic/)

A method is its knob table (a frozen dataclass: defaults, ranges, help), how a mode's settings
become its config, its decoder on an engine (`runner`: its requests, whose batches the one
admit/step loop of decoding.py and the scheduler step), and how it reads a clip. A config knows
its method (`of(cfg)`), so the engine, the scheduler, dataset jobs and the container dispatch
through it; the command line and predict.py pick one by name (`get`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from . import config as _config
from . import presets
from .errors import InputError
from .lazy import resolve
from .magic.knobs import MagicConfig
from .pseudo_tokens.knobs import PseudoTokenConfig


@dataclass(frozen=True)
class Method:
    name: str
    help: str
    Config: type  # the knob table
    presets: bool  # whether the modes' presets (changes of ZeroCap's knobs) make its configs; else its defaults
    runner: "str | Callable"  # engine -> its decoder on that engine: check(cfg), request(target, cfg, on_step);
    # "module:Class" resolved on first use (engine.decoder makes it once per engine)
    read_clip: "str | Callable"  # (engine, source, name, frames, every, most) -> modes.Target; "module:function"
    ignored: tuple = ()  # other methods' knobs it accepts and ignores (the authors' flags of its own run.py)
    defaults_version: int = 1  # raise it when a default changes: results files record it (`recorded`)
    output: "str | dict | None" = None  # its fields of the container's output (outputs.Out by name); "module:NAME"
    sampling: str = ""  # how it samples a clip's frames when none are asked for, in words (the `frames` input)
    compiles: bool = False  # whether --compile compiles its decoding step (else it runs eagerly)
    lm_float32: bool = False  # whether it runs the LM in float32 only (gradient steps on it, as the authors')
    check_without_models: "str | Callable | None" = None  # (cfg, LM folder) -> cfg checked from the LM's tokenizer
    # and config alone (a Ray driver's check before any actor starts); None: the actors' models check it

    @property
    def outputs(self) -> dict:
        """Its fields of the container's output, each an outputs.Out (`output`, resolved on first use)."""
        return resolve(self.output) or {}

    @property
    def knobs(self) -> dict:
        return {f.name: f.metadata["knob"] for f in dataclasses.fields(self.Config)}

    @property
    def defaults(self):
        return self.Config()

    def recorded(self, cfg) -> dict:
        """The knobs of `cfg` that differ from the method's defaults: what a results file records
        of them (with `defaults_version`), so that a knob added later, with a default that does
        what the code did before, leaves every file resumable (`in_full`)."""
        defaults = self.defaults
        return {name: getattr(cfg, name) for name in self.knobs if getattr(cfg, name) != getattr(defaults, name)}

    def read(self, engine, source: str, name: str, frames=None, every=None, most=None):
        """A clip as this method reads it (its `read_clip`, resolved on first use: lazy.py)."""
        return resolve(self.read_clip)(engine, source, name, frames, every, most)

    def config(self, mode: str, preset: str | None = None, **knobs):
        """The mode's config of this method with the knobs given (None: not given), validated;
        a knob of another method is refused in words."""
        given = {k: v for k, v in knobs.items() if v is not None and k not in self.ignored}
        refuse_foreign(self, given)
        if not self.presets:
            if preset is not None:
                raise InputError(f"method {self.name} has no presets (its defaults are the authors' for every"
                                 f" mode); leave out preset")
            return self.Config().replace(**given).validate()
        return presets.preset(preset or mode, **given)


def in_full(settings: dict) -> dict:
    """A results file's recorded settings with every knob of their method: a knob not recorded is at
    its default (recorded only where it differed, or added since the line was written), and a line
    without a defaults version recorded every knob of its day, so it is of today's."""
    method = METHODS.get(settings.get("method", DEFAULT.name))
    if method is None:  # a method this zerocap does not have: nothing to fill in
        return dict(settings)
    full = {**dataclasses.asdict(method.defaults), **settings}
    full.setdefault("defaults", method.defaults_version)
    return full


def refuse_foreign(method: Method, given: dict) -> None:
    """InputError naming the knobs given that belong to other methods only."""
    foreign = [k for k, v in given.items() if v is not None and k not in method.knobs]
    if foreign:
        owners = sorted({m.name for m in METHODS.values() for k in foreign if k in m.knobs})
        raise InputError(f"{', '.join(foreign)} {'is a knob' if len(foreign) == 1 else 'are knobs'} of method"
                         f" {_and(owners)}, not of {method.name}")


def _and(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else (names[0] if names else "?")


ZEROCAP = Method("zerocap", "ZeroCap's context shift: gradient steps on the LM's key/value cache at every token,"
                 " then a beam search (the default)", _config.ZeroCapConfig, True, "zerocap.zerocap_decoder:ZeroCapDecoder",
                 "zerocap.video:clip_target", ignored=("seed",),  # their ZeroCap run.py's --seed: nothing to seed
                 output="zerocap.zerocap_decoder:OUTPUTS", compiles=True,
                 check_without_models="zerocap.zerocap_decoder:check_without_models",
                 sampling="8 spread evenly (its caption describes their mean CLIP embedding)")
PSEUDO_TOKENS = Method("pseudo-tokens", "evolving pseudo-tokens (the authors' follow-up, for clips and images): a learned"
                       " prefix optimised while whole sentences are sampled", PseudoTokenConfig, False,
                       "zerocap.pseudo_tokens.decoder:PseudoTokens", "zerocap.pseudo_tokens.clips:clip_target",
                       output="zerocap.pseudo_tokens.batch:OUTPUTS", lm_float32=True,
                       sampling="every max(1, fps // 3)-th frame as their run.py (at most 64, else 64 spread evenly, said"
                                " in frames_sampling)")
MAGIC = Method("magic", "MAGIC search (Su et al. 2022): contrastive search steered by CLIP's score of the next token,"
               " no gradients; fast", MagicConfig, False, "zerocap.magic.decoder:Magic", "zerocap.video:clip_target",
               output="zerocap.magic.decoder:OUTPUTS",
               sampling="8 spread evenly, as zerocap's (the target is their mean CLIP embedding)")
BUILT_IN = (ZEROCAP, PSEUDO_TOKENS, MAGIC)
METHODS = {m.name: m for m in BUILT_IN}
DEFAULT = ZEROCAP


def register(method: Method) -> Method:
    """Add a method: `--method` offers it, its knobs become flags (those not already one) and the
    engine, jobs and scheduler take its configs. The container's inputs are literals in predict.py
    (`cog build` reads them statically), written from the registry by `script/cog-inputs --write`."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} exists")
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    if name in {m.name for m in BUILT_IN}:
        raise ValueError(f"method {name!r} is built in")
    METHODS.pop(name, None)


def describe(method: Method, name: str) -> str:
    """One line for --help about one of the method's knobs: what it does, its range, its default."""
    if method is ZEROCAP:
        return presets.describe_knob(name)
    spec, default = method.knobs[name], getattr(method.defaults, name)
    parts = [spec.help]
    if spec.range is not None:
        parts.append(spec.range.describe(isinstance(default, int) and not isinstance(default, bool)))
    if spec.choices is not None:
        parts.append("one of " + ", ".join(spec.choices))
    parts.append(f"default {default!r}")
    return ", ".join(parts)


def get(name: "str | Method | None") -> Method:
    if name is None:
        return DEFAULT
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def of(cfg) -> Method:
    """The method whose config `cfg` is."""
    for m in METHODS.values():
        if isinstance(cfg, m.Config):
            return m
    raise TypeError(f"not a method's config: {type(cfg).__name__}")


# ---- the container's inputs: every method's knobs that are inputs, each said once -----------------------
def container_knobs(method: Method) -> list[str]:
    """The method's knobs that are container inputs (Knob.in_container)."""
    return [name for name, k in method.knobs.items() if k.in_container]


def owners(name: str) -> list[Method]:
    """The registered methods whose knob `name` is a container input (one input for them all)."""
    return [m for m in METHODS.values() if name in m.knobs and m.knobs[name].in_container]


def knob_inputs() -> list[str]:
    """The container inputs that are knobs: every registered method's, each once, in the methods'
    order (predict.py's inputs are generated from them: script/cog-inputs)."""
    return list(dict.fromkeys(name for m in METHODS.values() for name in container_knobs(m)))


def differs(name: str) -> bool:
    """A knob several methods take, with other defaults."""
    return len({repr(getattr(m.defaults, name)) for m in owners(name)}) > 1


def optional(name: str) -> bool:
    """Whether the Cog input is optional: empty = the method's (and mode's) default."""
    return (presets.preset_dependent(name) and any(m.presets for m in owners(name))) or differs(name)


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def one_meaning(name: str) -> str | None:
    """A container knob's help line when every method that takes it means the same by it, else None."""
    helps = {m.knobs[name].help for m in owners(name)}
    return helps.pop() if len(helps) == 1 else None


def meaning(name: str) -> str:
    """What a container knob does, in one sentence or one per method: its help line where every method
    that takes it means the same (`one_meaning`), else each method's, named; a knob of one method
    only, named."""
    ms, one = owners(name), one_meaning(name)
    if len(ms) == 1 and not ms[0].presets:
        return f"{ms[0].name}: {one}."
    if one is not None:
        return _sentence(one)
    return " ".join(f"{m.name}: {m.knobs[name].help}." for m in ms)


def cog_description(name: str) -> str:
    """The Cog input's description of a container knob: what it does (`meaning`) and what an empty
    value means (the method's, and with presets the mode's)."""
    ms, text = owners(name), meaning(name)
    by_mode = presets.preset_dependent(name) and any(m.presets for m in ms)
    if differs(name) or (by_mode and not all(m.presets for m in ms)):
        said = "; ".join(f"{m.name}: {presets.preset_values(name) if m.presets else repr(getattr(m.defaults, name))}"
                         for m in ms)
        return text + f" Empty = the method's and mode's ({said})."
    if by_mode:
        return text + f" Empty = the mode's ({presets.preset_values(name)})."
    return text


def frames_description() -> str:
    """What each method samples of a clip when the `frames` input is empty."""
    return "; ".join(f"{m.name} {m.sampling}" for m in METHODS.values() if m.sampling) + "."


def method_description() -> str:
    """The Cog `method` input's description."""
    return "; ".join(f"{m.name}: {m.help}" for m in METHODS.values()) + "."
