"""References by name, resolved on first use: the one way a light module -- what the command line
imports before torch loads (config, presets, modes, methods, forms, families) -- names a function
or class of a heavy one (the LM adapters, a method's clip reader, a written-out LM step) without
importing it, so that a mistake on the command line is answered before torch loads.

    resolve("zerocap.lm:FastLM")  ->  the class, its module imported now (once; Python caches it)
"""
from __future__ import annotations

import importlib


def resolve(ref):
    """`module:name` as the object it names; anything else (an object already) as it is."""
    if not isinstance(ref, str):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)
