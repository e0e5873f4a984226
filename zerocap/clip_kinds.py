"""CLIP kinds, as families.py is for LMs: how each kind is recognised from the path a user gives
(`--clip`, `ZeroCap.load(clip=...)`, the container's models.json) and loaded into a scorer, and
which text tower it has.

A kind's tower decides how candidates are scored (scorer.py): a `causal` tower (OpenAI CLIP, an
OpenCLIP model with CLIP's text tower) reads each beam's prefix once and only the candidates'
suffixes after it (`ClipScorer`); a `whole` one (a Hugging Face CLIPModel or SiglipModel) reads
every candidate's decoded text whole (`TextScorer`'s contract). Each entry's `load` returns the
scorer itself (loading.load_clip calls it), so nothing after loading guesses the kind again.

The kinds are tried in order and the first that recognises the path loads it; a new kind is one
entry (`register(ClipKind(...), before=...)`) and the scorer class it loads (tests/test_extending.py
adds a toy one). Light: the loaders are named "module:function" and imported on first use.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable

from .hub import HF_WEIGHTS, OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS
from .weights import open_clip_checkpoint


@dataclass(frozen=True)
class ClipKind:
    name: str
    given_as: str  # how a user gives one, in words (a path no kind takes is answered with these)
    recognise: Callable[[str], bool]  # the path as given -> whether it is one of this kind
    load: "str | Callable"  # (path, device) -> its scorer (scorer.TextScorer); "module:function"
    tower: str  # "causal" (candidates share each beam's prefix) or "whole" (each candidate's text read whole)


def _named(path: str) -> bool:
    return open_clip_checkpoint(path) is not None


def _hf_folder(path: str) -> bool:
    """Whether a folder is a Hugging Face CLIP (config.json) rather than an OpenCLIP one
    (open_clip_config.json): by the files that are there -- a config whose weights are missing does
    not count; with both complete, OpenCLIP (its causal text tower shares each beam's prefix:
    faster), said once."""
    if not os.path.isdir(path):
        return False
    has = lambda f: os.path.isfile(os.path.join(path, f))  # noqa: E731
    open_clip = has(OPEN_CLIP_CONFIG) and any(has(f) for f in OPEN_CLIP_WEIGHTS)
    if has("config.json") and open_clip:
        if any(has(f) for f in HF_WEIGHTS):
            warnings.warn(f"{path} holds both an OpenCLIP model and a Hugging Face one; loading the OpenCLIP files"
                          f" ({OPEN_CLIP_CONFIG})", stacklevel=4)
        return False
    return has("config.json")


KINDS: list[ClipKind] = [
    ClipKind("open_clip@", "an OpenCLIP model's name and checkpoint file as NAME@FILE", _named,
             "zerocap.loading:load_open_clip_named", "causal"),
    ClipKind("hf", "a Hugging Face CLIPModel or SiglipModel folder (config.json and its weights)", _hf_folder,
             "zerocap.loading:load_hf_clip", "whole"),
    ClipKind("open_clip", "an OpenCLIP folder (open_clip_config.json and its weights)", os.path.isdir,
             "zerocap.loading:load_open_clip", "causal"),
    ClipKind("openai", "an OpenAI CLIP checkpoint (.pt: TorchScript archive or state dict)", lambda path: True,
             "zerocap.loading:load_openai_clip", "causal"),
]


def kind_of(path: str) -> ClipKind:
    """The first kind that recognises `path` (the last, OpenAI's checkpoint, takes any file)."""
    return next(kind for kind in KINDS if kind.recognise(path))


def kinds_in_words() -> str:
    """Every kind as a user gives it: 'NAME@FILE ...; a Hugging Face ... folder ...; ...'."""
    return "; ".join(k.given_as for k in KINDS)


def register(kind: ClipKind, before: str | None = None) -> ClipKind:
    """Add a kind, tried before the kind named `before` (default: before OpenAI's checkpoint, which
    takes any file)."""
    if any(k.name == kind.name for k in KINDS):
        raise ValueError(f"CLIP kind {kind.name!r} exists")
    at = next(i for i, k in enumerate(KINDS) if k.name == (before or "openai"))
    KINDS.insert(at, kind)
    return kind


def unregister(name: str) -> None:
    KINDS[:] = [k for k in KINDS if k.name != name]
