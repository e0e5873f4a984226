"""The container's output, said once: the fields every method's output has, and the fields each
method declares (methods.Method.outputs), with what each holds.

A method's result gives its fields' values (`container_fields()`); the container's `Output` is
every registered method's fields together (script/cog-inputs writes it into predict.py, `cog
build` reading it statically), a field a method does not fill at its empty value. The README's
output table is printed from the same declarations (script/readme-tables).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from . import threads


@dataclass(frozen=True)
class Out:
    """An output field as a method declares it."""

    type: str  # its annotation in predict.py's Output: "str", "int", "float", "list[str]", "list[float]"
    said: str  # what it holds in this method's output (a README cell; "empty ...", "-1 ...", "0": that value, always)
    empty: Any = None  # its value where a method does not fill it (None: by its type: "", 0, 0.0, [])


EMPTY = {"str": "", "int": 0, "float": 0.0, "list[str]": [], "list[float]": []}

# Every method's output has these; the method says what they hold (and may leave the frames' fields
# at 0 / empty, as a method that reads no clip does).
COMMON = {
    "caption": "str",
    "method": "str",
    "mode": "str",
    "target": "str",
    "cond_text": "str",
    "tokens": "int",
    "seconds": "float",
    "frame_times": "list[float]",
    "frames": "int",
    "frames_asked": "int",
    "frames_sampling": "str",
}


def empty(out: Out):
    return EMPTY[out.type] if out.empty is None else out.empty


def fields(methods) -> dict[str, Out]:
    """Every field of the container's Output, in order (the common ones, then each method's own
    in the registry's order), each as the first method that declares it; a field two methods
    declare with other types or empty values cannot be one field: ValueError."""
    out: dict[str, Out] = {}
    for m in methods:
        missing = [name for name in COMMON if name not in m.outputs]
        if missing:
            raise ValueError(f"method {m.name} does not say what its output's {', '.join(missing)} hold")
        for name, declared in m.outputs.items():
            if name in COMMON and declared.type != COMMON[name]:
                raise ValueError(f"method {m.name} declares output {name} as {declared.type}; every method's is"
                                 f" {COMMON[name]}")
            first = out.setdefault(name, declared)
            if (first.type, empty(first)) != (declared.type, empty(declared)):
                raise ValueError(f"output {name}: method {m.name} declares it {declared.type} (empty"
                                 f" {empty(declared)!r}), another {first.type} (empty {empty(first)!r}); one field"
                                 " cannot be both: give it another name")
    order = list(COMMON) + [name for name in out if name not in COMMON]
    return {name: out[name] for name in order}


def said(method, name: str, declared: Out) -> str:
    """What field `name` holds in `method`'s outputs (its own words, else its empty value's)."""
    own = method.outputs.get(name)
    if own is not None:
        return own.said
    value = empty(declared)
    return "empty" if value in ("", []) else f"{value!r}"


def values(method, all_fields: dict[str, Out], result, common: dict) -> dict:
    """One output of `method`: every field, the ones it does not fill at their empty values."""
    own = result.container_fields()
    unknown = set(own) - set(method.outputs)
    if unknown:
        raise ValueError(f"method {method.name} fills undeclared output fields {', '.join(sorted(unknown))}")
    return {**{name: empty(out) for name, out in all_fields.items()}, **common, **own}


class Recorded:
    """What every method's result (a dataclass with `details`, `seconds` and `tokens`) shares: its
    JSON record (the command line's --json, a dataset job's line) and what its mode added."""

    def mode_details(self) -> dict:
        """What the mode added (a clip's frames: video.py), as a dict; {} for an image."""
        return self.details.to_dict() if self.details is not None else {}

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        del d["details"]
        d.update(self.mode_details())
        d["timing"] = threads.timing(d.pop("seconds"), d.pop("tokens"))
        return d
