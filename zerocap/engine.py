"""ZeroCap: a frozen causal LM writes, a frozen CLIP steers it through its key/value cache.

The engine holds the models, assembled once from parts chosen once: the LM and its family
(families.py), the form (forms.py: its LM adapter, how the scorer scores candidates, how many
images decode together), the scorer (scorer.py) and the input modes (modes.py); and it is the
facade users know (`caption`, `arithmetic`, `video`, `decode_targets`). The methods are peers
over it, each a decoder made once per engine (`decoder(method)`, methods.py): ZeroCap's
(zerocap_decoder.py) and the evolving pseudo-tokens' (pseudo_tokens/decoder.py). Pipeline of
one step of ZeroCap's method (batch.py), each in its module:
  target.py        target embedding (an image, weighted images and texts, a clip's frames), per caption
  lm.py            the LM as prefill + one-token steps over a stacked key/value cache
  candidates.py    top-k candidate tokens -> CLIP token rows (scorer.py scores them)
  guide.py         candidate features -> the CLIP loss
  context_shift.py gradient steps on the LM cache
  token_rules.py   repetition / end / forbidden-token rules
  beam_search.py   length-normalised beam search over every image's beams
  rerank.py        best-by-CLIP and best-by-fluency among the final beams
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from typing import Callable, Sequence

import torch

from . import forms, methods, threads
from .compiled import MODES as COMPILE_MODES
from .config import ZeroCapConfig
from .decoding import decode
from .errors import InputError
from .families import lm_facts
from .lazy import resolve
from .lm import step_size
from .loading import load_models
from .modes import TERMS_KIND, VIDEO, Target
from .presets import preset
from .scorer import ClipScorer, TextScorer
from .target import TargetEncoder, Term
from .weights import locate
from .zerocap_decoder import Beam, CaptionResult  # noqa: F401 -- (Beam: the engine's name for it, as before)

# Called after every decoding step with (step, max_tokens, best text so far of each image).
# It may raise (e.g. a cancellation) to stop decoding between steps.
Progress = Callable[[int, int, list[str]], None]


class ZeroCap:
    """Zero-shot captioning and visual-semantic arithmetic with a frozen LM and a frozen CLIP.

    lm, tokenizer: a Hugging Face causal LM and its tokenizer; scorer: a scorer (scorer.py) or
    an OpenAI CLIP model with its `preprocess`; form: "fast" (the default) or "exact", or a
    forms.Form -- the same algorithm in two operation orders (see forms.py).
    """

    def __init__(
        self,
        lm,
        tokenizer,
        scorer,
        preprocess=None,
        device=None,
        form: "str | forms.Form" = "fast",
        bos_prefix: bool | None = None,
        forbidden_ids: Sequence[int] | None = None,
        compile: "bool | str" = False,
    ):
        self.form = forms.get(form)
        self.lm = lm.eval().requires_grad_(False)
        if getattr(lm, "loss_type", "") is None:  # the perplexities' loss: transformers' default, chosen without its warning
            lm.loss_type = "ForCausalLM"
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else next(lm.parameters()).device
        vocab = lm.get_output_embeddings().weight.shape[0]
        self.vocab_size = vocab
        self.facts = lm_facts(lm.config, tokenizer, vocab, bos_prefix)
        self.family = self.facts.family
        self.vocabulary = self.facts.vocabulary
        self.bos = self.vocabulary.bos
        self.token_strings = self.vocabulary.texts  # what each token adds to a text
        ids = list(forbidden_ids) if forbidden_ids is not None else self.family.forbidden(self.token_strings)
        self.forbidden = torch.zeros(vocab, dtype=torch.bool, device=self.device)
        self.forbidden[torch.tensor(ids, dtype=torch.long)] = True

        self.scorer = scorer if isinstance(scorer, TextScorer) else ClipScorer(scorer, preprocess, self.device)
        self.scorer.use_vocabulary(self.token_strings)
        self.lm_adapter = self.form.lm(self.lm, self.family)
        self.lm_adapter.layout()  # one token's pass: an LM whose cache the decoders cannot stack is refused here
        self.targets = TargetEncoder(self.scorer)
        self._decoders: dict = {}  # each method's decoder on these models, made on first use (`decoder`)
        if compile:
            self.compile("default" if compile is True else compile)

    def compile(self, mode: str = "default") -> None:
        """Decode in the static layout with the step and the context-shift iteration compiled
        (compiled.py): the fast form, for an LM with a written-out step (GPT-2, Llama-style); otherwise, or if
        torch.compile fails, decoding stays eager, with one warning."""
        if mode not in COMPILE_MODES:
            raise InputError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
        if not hasattr(self.lm_adapter, "compile"):
            raise InputError(f"the {self.form.name} form is not compiled (it keeps the authors' operation order);"
                             " use the fast form to compile")
        if self.lm_adapter.step is None:
            warnings.warn(f"{self.family.name} has no written-out step to compile; decoding eagerly", RuntimeWarning,
                          stacklevel=2)
            return
        self.lm_adapter.compile(mode)
        if self.device.type == "cuda" and hasattr(self.scorer, "compile"):
            self.scorer.compile(mode)  # CLIP's passes on fixed-size buffers: launch-bound on a GPU, not on a CPU

    @property
    def pseudo_tokens(self):
        """The evolving pseudo-tokens method on these models (pseudo_tokens/decoder.py)."""
        return self.decoder(methods.PSEUDO_TOKENS)

    @property
    def compiled(self):
        """The compiled step (compiled.Compiled), or None when decoding eagerly."""
        return getattr(self.lm_adapter, "compiled", None)

    def decompile(self) -> None:
        """Decode eagerly from now on (selfcheck.py: the compiled step failed its check)."""
        if hasattr(self.lm_adapter, "compiled"):
            self.lm_adapter.compiled = None
        if getattr(self.scorer, "compiled", None) is not None:
            self.scorer.compiled = None

    @contextlib.contextmanager
    def eagerly(self):
        """Decode eagerly inside the block (batches made there), compiled again after; for checks
        while no other decoding runs."""
        lm, clip = getattr(self.lm_adapter, "compiled", None), getattr(self.scorer, "compiled", None)
        self.decompile()
        try:
            yield
        finally:
            if lm is not None:
                self.lm_adapter.compiled = lm
            if clip is not None:
                self.scorer.compiled = clip

    def warm_up(self, cfg: ZeroCapConfig, batch: int = 1) -> float:
        """Decode captions of a grey image with `cfg`: `batch` of them, and, when compiled, as many
        as reach each size of the static layout that a batch of up to `batch` such requests steps
        (lm.step_size), so that each is compiled; two tokens each (a step's shapes do not depend
        on how far it is). The seconds it took."""
        from PIL import Image

        start = time.perf_counter()
        target = Target(self.targets.image_target(Image.new("RGB", (64, 64), (127, 127, 127))), "warm-up")
        cfg = self.check(cfg)
        counts = [batch]
        if self.compiled is not None:
            sizes: dict[int, int] = {}  # size -> the fewest requests that step it
            for n in range(1, batch + 1):
                sizes.setdefault(min(step_size(n * cfg.beam_size), batch * cfg.beam_size), n)
            counts = sorted(sizes.values())
            cfg = cfg.replace(max_tokens=min(2, cfg.max_tokens))
        for n in counts:  # in a batch sized for `batch`, as the scheduler's: the same sizes
            self.decode_targets([target] * n, cfg, max_requests=batch)
        return time.perf_counter() - start

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, lm: str | None = None, clip: str | None = None, device=None, lm_dtype: str = "float32",
             form: "str | forms.Form" = "fast", compile: "bool | str" = False, quiet: bool = True) -> "ZeroCap":
        """Load an HF causal-LM directory and a CLIP (any kind clip_kinds.py recognises); quietly,
        unless quiet=False (then transformers' progress bar and warnings show as it configures them).

        lm, clip: paths, loaded as they are and never downloaded. Left out, they come from the
        weights folder as the command line takes them: $ZEROCAP_WEIGHTS, else ./weights
        (gpt2-medium/, clip/ViT-B-32.pt), missing files fetched unless offline ($ZEROCAP_OFFLINE
        or $HF_HUB_OFFLINE). device: "auto" or None (the GPU when there is one, else the CPU),
        "cpu", "cuda", "cuda:N"."""
        lm, clip = locate(lm, clip)
        threads.apply()  # the CPU threads this process should use (zerocap/threads.py)
        lm, tokenizer, scorer, dev = load_models(lm, clip, device=device, lm_dtype=lm_dtype, quiet=quiet)
        return cls(lm, tokenizer, scorer, device=dev, form=form, compile=compile)

    # ---- public API ---------------------------------------------------------------------------
    @property
    def prompt_prefix(self) -> str:
        return self.facts.prompt_prefix

    def config(self, mode: str = "caption", **overrides) -> ZeroCapConfig:
        """The preset `mode` with overrides, validated against these models."""
        return self.check(preset(mode, **overrides))

    def read_clip(self, source: str, name: str, frames: int | None = None, every: float | None = None, cfg=None,
                  most: int | None = None) -> Target:
        """A clip as the method of `cfg` reads it (ZeroCap's when None; methods.py): a modes.Target."""
        method = methods.DEFAULT if cfg is None else methods.of(cfg)
        return method.read(self, source, name, frames, every, most)

    def check(self, cfg: ZeroCapConfig) -> ZeroCapConfig:
        """Validate `cfg` (of any method) and check it against these models, by its method's decoder;
        InputError says what is wrong."""
        return self.decoder(methods.of(cfg)).check(cfg)

    def prompt_ids(self, cfg: ZeroCapConfig) -> list[int]:
        return self.facts.prompt_ids(cfg.cond_text)

    def _begin(self, items, what: str, config, overrides: dict, names, default=None):
        """(checked config, the items as a list, their names) -- every entry point's opening."""
        of = methods.of
        method = overrides.pop("method", None)
        if method is not None:
            chosen = methods.get(method)
            if config is not None and of(config) is not chosen:
                raise InputError(f"config is a {of(config).name} config ({type(config).__name__}) but method is"
                                 f" {chosen.name!r}: give the config of the method you mean, or leave one out")
            if config is None and chosen is not methods.DEFAULT:  # another method's defaults
                config = chosen.Config()
        base = config or default or ZeroCapConfig()
        unknown = [k for k in overrides if not any(k in m.knobs for m in methods.METHODS.values())]
        if unknown:
            raise InputError(f"unknown knob{'s' * (len(unknown) > 1)} {', '.join(unknown)}; the knobs of method"
                             f" {of(base).name}: {', '.join(of(base).knobs)}")
        methods.refuse_foreign(of(base), overrides)
        cfg = self.check(base.replace(**overrides))
        items = list(items) if isinstance(items, (list, tuple)) else [items]
        if not items and what != "term":
            raise InputError(f"give at least one {what}")
        names = list(names) if names else [image_name(x, i) for i, x in enumerate(items)]
        return cfg, items, names

    def caption(self, images, config: ZeroCapConfig | None = None, progress: Progress | None = None,
                names: Sequence[str] | None = None, **overrides) -> list[CaptionResult]:
        """Caption each image (paths or PIL images), decoded together; one result per image.

        names: how each result's `target` names its image (default: the path, or "image N").
        """
        cfg, images, names = self._begin(images, "image", config, overrides, names)
        targets = [Target(self.targets.image_target(im, n), n) for im, n in zip(images, names)]
        return self.decode_targets(targets, cfg, progress)

    def arithmetic(self, images: Sequence = (), weights: Sequence[float] | None = None,
                   texts: Sequence[str] = (), text_weights: Sequence[float] | None = None,
                   config: ZeroCapConfig | None = None, progress: Progress | None = None,
                   names: Sequence[str] | None = None, **overrides) -> CaptionResult:
        """Caption the weighted sum of image (and text) embeddings, e.g. woman + king - man."""
        cfg, images, labels = self._begin(images, "term", config, overrides, names, default=preset("arithmetic"))
        terms = [Term(w, image=im, label=n)
                 for im, w, n in zip(images, TERMS_KIND.weights(weights, len(images), "image"), labels)]
        terms += [Term(w, text=t) for t, w in zip(texts, TERMS_KIND.weights(text_weights, len(texts), "text"))]
        target = Target(self.targets.combine(terms), " ".join(t.describe() for t in terms))
        return self.decode_targets([target], cfg, progress)[0]

    def video(self, videos, frames: int | None = None, every: float | None = None,
              config: ZeroCapConfig | None = None, progress: Progress | None = None,
              names: Sequence[str] | None = None, **overrides) -> list[CaptionResult]:
        """Caption each video file (see zerocap/video.py): `frames` spread evenly (default 8), or a
        frame `every` so many seconds; each result's details say which distinct frames were used."""
        cfg, videos, names = self._begin(videos, "video", config, overrides, names)
        targets = [VIDEO.target(self, os.fspath(v), n, frames=frames, every=every, cfg=cfg)
                   for v, n in zip(videos, names)]
        return self.decode_targets(targets, cfg, progress)

    def decode_targets(self, targets: Sequence[Target], cfg: ZeroCapConfig, progress: Progress | None = None,
                       max_requests: int | None = None) -> list[CaptionResult]:
        """One result per target (modes.Target) by cfg's method, decoded together (as many at once
        as the form allows) in the one admit/step loop (decoding.py); each result names its target
        and carries what its mode adds. max_requests: the batch's size (default: the targets'),
        which a compiled step's layout is sized by."""
        runner = self.decoder(methods.of(cfg))
        cfg = runner.check(cfg)
        requests = [runner.request(t, cfg) for t in targets]
        if not requests:
            return []
        most = min(max_requests or len(requests), self.form.max_images or len(requests))
        batch = requests[0].new_batch(self, most)
        on_step = None if progress is None else (
            lambda snaps: progress(max(s.step for s in snaps), snaps[0].total, [s.best for s in snaps]))
        decode(requests, batch, most, on_step)
        return [batch.result(r) for r in requests]

    def decode(self, targets: torch.Tensor, cfg: ZeroCapConfig, names: Sequence[str] | None = None,
               progress: Progress | None = None) -> list[CaptionResult]:
        """One caption per normalised target (N, D), decoded together."""
        names = list(names) if names else [""] * targets.shape[0]
        return self.decode_targets([Target(t, n) for t, n in zip(targets, names)], cfg, progress)

    # ---- what every method's decoding step asks of the models (batch.py, pseudo_tokens/) ------------
    def decoder(self, method):
        """`method`'s decoder on these models (methods.py: its runner), made once."""
        method = methods.get(method)
        if method.name not in self._decoders:
            self._decoders[method.name] = resolve(method.runner)(self)
        return self._decoders[method.name]

    def request(self, target: Target, cfg: ZeroCapConfig, on_step=None):
        """A checked config's caption of `target` by its method, ready to join that method's batch;
        on_step(decoding.Snapshot) after each of its steps."""
        return self.decoder(methods.of(cfg)).request(target, cfg, on_step)

    def candidates(self, prefix_texts: list[str]):
        """The scorer's candidate features for rows with these prefixes, in the form's way."""
        return self.form.candidates(self.scorer, prefix_texts)

    def prefix_texts(self, contexts: list[list[int]]) -> list[str]:
        """Each row's context as text, without the BOS prefix: what CLIP reads."""
        texts = self.tokenizer.batch_decode(contexts, clean_up_tokenization_spaces=False)
        return [t.replace(self.bos, "") if self.bos else t for t in texts]


def image_name(image, index: int) -> str:
    """How results and messages name an image: its path, or "image N" (1-based) for a picture."""
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"image {index + 1}"
