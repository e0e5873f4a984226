"""What a command asks, as typed values: the command line builds them once from its flags
(cli.py), and nothing below it sees a flag. The container (predict.py) and the Python API
(ZeroCap's methods) build the same parts -- a mode, a method's config, the models, the runtime --
from their own inputs.

  Decode     one of the modes (caption, knowledge, ocr, video, arithmetic): its mode and method
             config, its inputs, what a dataset job writes (Job), where it runs (Runtime), with
             which weights (Models)
  Eval       zerocap eval: captions against references
  SelfCheck  zerocap selfcheck: a probe caption compiled and eagerly

Each is checked as it is built (InputError in words), before anything heavy loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Models:
    """The weights: folders as named, else the weights folder's (weights.locate)."""

    lm: str | None = None  # a Hugging Face causal-LM folder
    clip: str | None = None  # an OpenAI CLIP checkpoint
    lm_family_flag: str | None = None  # the authors' --lm_model: which weights folder (families.py)


@dataclass(frozen=True)
class Runtime:
    """Where and how decoding runs."""

    device: str = "auto"
    devices: tuple[str, ...] | None = None  # one replica each; ("all",): every visible GPU
    form: Any = None  # forms.Form
    compile: str | None = None  # a torch.compile mode, or None (eager)
    lm_dtype: str = "float32"
    batch_size: int = 8  # images or clips in flight per device


@dataclass(frozen=True)
class Job:
    """A dataset job's inputs and outputs."""

    inputs: tuple[str, ...] = ()  # files, folders, patterns, URLs as given
    list_file: str | None = None  # --list (the name "-": standard input)
    null: bool = False  # the list's names are NUL-separated
    out: str | None = None  # the results file
    retry_failed: bool = False
    mix_settings: bool = False
    json: bool = False  # records on stdout as JSON lines
    options: dict = field(default_factory=dict)  # the kind's options: a clip's frames, every
    ray: str | None = None  # a Ray cluster's address ("" or "auto": a local one); None: this process
    actors: int | None = None


@dataclass(frozen=True)
class Terms:
    """An arithmetic target's terms as given (images, their weights, texts and theirs)."""

    images: tuple[str, ...] = ()
    weights: tuple[float, ...] | None = None
    texts: tuple[str, ...] = ()
    text_weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Decode:
    mode: Any  # modes.Mode
    method: Any  # methods.Method
    config: Any  # the method's config (ZeroCapConfig, PseudoTokenConfig, ...)
    models: Models
    runtime: Runtime
    job: Job = field(default_factory=Job)
    terms: Terms = field(default_factory=Terms)


@dataclass(frozen=True)
class Eval:
    captions: str
    refs: str
    field: str = "best_mixed"
    strip_prompt: bool = False
    tokenizer: str = "auto"
    skip: tuple[str, ...] = ()
    per_image: str | None = None
    image_root: str | None = None
    match: str = "auto"
    json: bool = False
    clip: str | None = None
    device: str = "auto"


@dataclass(frozen=True)
class SelfCheck:
    models: Models
    device: str = "auto"
    compile: str = "auto"  # auto, off, default, reduce-overhead
