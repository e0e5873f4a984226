"""The presets: each mode's changes to the decoder's defaults (modes.py declares them, config.py
holds the knobs), and the help that names them -- --help's lines, the Cog inputs' descriptions.

Above both tables: config.py knows no mode, modes.py no knob.
"""
from __future__ import annotations

from collections.abc import Mapping

from .config import DEFAULTS, FIELD_TYPES, KNOBS, ZeroCapConfig
from .errors import InputError
from .modes import MODES


class _Presets(Mapping):
    """mode name -> its knob changes, read live from the modes (modes.py)."""

    def __getitem__(self, name: str) -> dict:
        return MODES[name].preset

    def __iter__(self):
        return iter(MODES)

    def __len__(self) -> int:
        return len(MODES)


PRESETS = _Presets()


def preset(name: str, **overrides) -> ZeroCapConfig:
    """The config of preset `name` with `overrides` (None = keep the preset's value), validated."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return ZeroCapConfig(**PRESETS[name]).replace(**overrides).validate()


def preset_values(name: str) -> str:
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
    parts.append(preset_values(name))
    return ", ".join(parts)
