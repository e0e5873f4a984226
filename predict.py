"""Cog runner for ZeroCap: check the inputs, call the `zerocap` package, shape the output.

Modes (`zerocap.MODES`): the paper's four uses -- caption, knowledge ("Image of" names places and
people), ocr ("Image of text that says"), arithmetic (a weighted sum of images and texts, e.g.
woman + king - man) -- and video (a clip captioned from its frames). Optional inputs left empty
take the mode's preset value.

The `Input(...)` declarations are literals: `cog build` parses this file statically to write the
schema that coglet validates requests against and Replicate shows. They are written from zerocap's
tables (the modes, every method's knob table, the limits) by `script/cog-inputs --write`, never by
hand (tests/test_config.py holds them to its output; tests/test_cog_schema.py the generated schema
to them). A server
started without that schema validates nothing, so `checked_inputs` checks every request against
the same declarations before `run` sees it: unknown names, types, choices, ranges, lengths, and
that files come from cog's download of a URL, never from the server's own disk.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import json
import math
import os
import pathlib
import tempfile
import threading
import time
import typing
from typing import Optional

import zerocap  # noqa: F401,I001 -- first: it sets how idle OpenMP workers wait before torch loads libgomp
import cog
import torch
from cog import BaseModel, BaseRunner, Input, Path
from cog.input import FieldInfo
from cog.types import URLPath

from zerocap import InputError, methods, modes, selfcheck, threads, weights
from zerocap.loading import quiet_transformers, resolve_device
from zerocap.modes import Target

MAX_TERMS = 16  # images + texts in one arithmetic target
FILE_RULE = ("send the file as a URL (https://...) or a data URL (data:{mime};base64,...);"
             " files on the server are not read")


class Output(BaseModel):
    caption: str  # the method's answer: zerocap's best by beam score ("best mixed"); pseudo-tokens' best by CLIP
    best_clip: str  # zerocap: the beam closest to the target in CLIP space; pseudo-tokens: the sentence closest
    best_fluency: str  # zerocap: the beam with the lowest LM perplexity; pseudo-tokens: empty
    best_mixed: str  # zerocap: the caption; pseudo-tokens: the sentence best by their mixed score
    beams: list[str]  # every beam's caption, best first (pseudo-tokens: their final beam search)
    beam_scores: list[float]  # mean log-probability per token (beam-search score / length)
    clip_scores: list[float]  # zerocap: cosine similarity of each beam's text with the target; else empty
    perplexities: list[float]  # zerocap: LM perplexity of each beam's text, -1 when undefined; else empty
    method: str
    seed: int  # pseudo-tokens: the seed; zerocap: -1 (deterministic)
    sentences: list[str]  # pseudo-tokens: every sampled sentence, in the order sampled; zerocap: empty
    sentence_clip_scores: list[float]  # their CLIP score of each sentence (logit-scaled, mean over frames)
    sentence_log_probs: list[float]  # their "avg perplexity" of each sentence (a mean log-prob); -1e9 when undefined
    mode: str
    target: str  # what was captioned: the file name, or the arithmetic expression
    cond_text: str
    tokens: int  # decoding steps run
    seconds: float  # decoding time, reranking included
    frame_times: list[float]  # mode video: the distinct frames (seconds) the caption describes; else empty
    frames: int  # mode video: how many distinct frames that is; else 0
    frames_asked: int  # mode video: frames asked for (times falling on one frame count it once); pseudo-tokens:
    # frames sampled before their near-duplicate filter; else 0
    frames_sampling: str  # mode video: how the frames were sampled, in words; else empty


# Every field of the output, per method: what it holds, and when it is empty (a description that
# starts with "empty", "-1" or "0" is that value for every output of the method). The README's
# output table is printed from it (script/readme-tables); tests/test_predictor.py holds both
# methods' outputs to it.
OUTPUT_FIELDS = {
    "caption": ("the beam-search winner (= best_mixed)",
                "their returned caption: the sentence closest to the target (= best_clip)"),
    "best_clip": ("the beam closest to the target in CLIP space", "the sentence closest to the target"),
    "best_fluency": ("the beam with the lowest LM perplexity", "empty (\"\")"),
    "best_mixed": ("the beam-search winner", "the sentence best by their mixed score"),
    "beams": ("every beam's caption, best first", "their final beam search's captions, best first"),
    "beam_scores": ("each beam's mean log-probability per token", "the same, of their final beams"),
    "clip_scores": ("each beam's cosine similarity with the target", "empty"),
    "perplexities": ("each beam's LM perplexity; -1 where undefined", "empty"),
    "method": ("zerocap", "pseudo-tokens"),
    "seed": ("-1 (the method is deterministic)", "the seed"),
    "sentences": ("empty", "every sampled sentence, in the order sampled"),
    "sentence_clip_scores": ("empty", "their CLIP score of each sentence (logit-scaled, mean over frames)"),
    "sentence_log_probs": ("empty", "their mean log-probability of each sentence; -1e9 where undefined"),
    "mode": ("the mode", "the mode"),
    "target": ("what was captioned: the file name as sent (\"image\" for a data URL, \"video\" for a clip's), or"
               " the arithmetic expression", "the same"),
    "cond_text": ("the prompt the captions continue", "the prompt of the final beam search"),
    "tokens": ("decoding steps run", "tokens sampled, all sentences together"),
    "seconds": ("decoding time, reranking included", "decoding time"),
    "frame_times": ("mode video: the distinct frames (seconds) the caption describes; else empty",
                    "mode video: the kept frames (seconds); else empty"),
    "frames": ("mode video: how many distinct frames that is; else 0",
               "mode video: how many frames were kept; else 0"),
    "frames_asked": ("mode video: frames asked for (times falling on one frame count it once); else 0",
                     "mode video: frames sampled before their near-duplicate filter; else 0"),
    "frames_sampling": ("mode video: how the frames were sampled, in words (\"8 frames spread evenly\"); else empty",
                        "mode video: how the frames were sampled, in words: their every n-th frame, or, when"
                        " that would be more than 64, \"64 frames spread evenly (every 10th frame would be more"
                        " than 64)\"; else empty"),
}


# ---- checking a request against the declarations ------------------------------------------------
@functools.cache  # read once per function, at its first request
def _declared(run) -> tuple[dict[str, FieldInfo], dict[str, object]]:
    params = {n: p.default for n, p in inspect.signature(run).parameters.items() if n != "self"}
    hints = typing.get_type_hints(run)
    return params, {n: hints[n] for n in params}


def checked_inputs(run):
    """Check a request against run()'s `Input` declarations, fill in the declared defaults, and
    call run() with clean values; InputError (what was wrong, what is allowed) otherwise.

    cog inspects the wrapped function (it follows the closure), so the schema is run()'s own.
    """
    @functools.wraps(run)
    async def checked(self, **inputs):  # async, as run() is: cog.concurrent wants a coroutine function
        return await run(self, **clean_inputs(inputs, *_declared(run)))

    return checked


def clean_inputs(inputs: dict, declared: dict, types: dict) -> dict:
    """Every declared input, checked (InputError otherwise), its default where not sent.

    (Not a closure of checked(): cog follows the one function in a decorator's closure.)"""
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        raise InputError(f"unknown input{'s' if len(unknown) > 1 else ''} {', '.join(unknown)};"
                         f" the inputs are: {', '.join(declared)}")
    return {name: check_value(name, inputs.get(name, info.default), types[name], info)
            for name, info in declared.items()}


def _unwrap_type(tpe) -> tuple[type, bool, bool]:
    """(element type, optional, list) of an annotation like Optional[list[float]]."""
    optional = type(None) in typing.get_args(tpe)
    if optional:
        tpe = next(a for a in typing.get_args(tpe) if a is not type(None))
    is_list = typing.get_origin(tpe) is list
    return (typing.get_args(tpe)[0] if is_list else tpe), optional, is_list


def allowed(info: FieldInfo, kind: type) -> str:
    """What a value of this input may be, in words."""
    if info.choices is not None:
        return "one of " + ", ".join(map(str, choices(info)))
    if kind is Path:
        return "a URL (https://...) or a data URL (data:...;base64,...) of a file"
    if kind is str:
        return "a string" + (f" of at most {info.max_length} characters" if info.max_length else "")
    if kind is bool:
        return "true or false"
    what = "an integer" if kind is int else "a number"
    if info.ge is not None and info.le is not None:
        return f"{what} from {info.ge:g} to {info.le:g}"
    return what


def check_value(name: str, value, tpe, info: FieldInfo):
    kind, optional, is_list = _unwrap_type(tpe)
    if value is None:
        if optional:
            return None
        raise InputError(f"{name} must be {allowed(info, kind)}, got null")
    if is_list:
        if not isinstance(value, list):
            got = f"the single value {_show(value)}"
            raise InputError(f"{name} must be a list of values, each {allowed(info, kind)}; got {got}"
                             f" (send a list, e.g. [..., ...])")
        return [_check_one(f"{name}[{i}]", v, kind, info) for i, v in enumerate(value)]
    return _check_one(name, value, kind, info)


def _check_one(name: str, value, kind: type, info: FieldInfo):
    wrong = InputError(f"{name} must be {allowed(info, kind)}, got {_show(value)}")
    if kind is Path:
        return server_file(name, value)
    if kind is bool:
        if not isinstance(value, bool):
            raise wrong
    elif kind is str:
        if not isinstance(value, str):
            raise wrong
        if info.max_length is not None and len(value) > info.max_length:
            raise InputError(f"{name} is {len(value)} characters long; at most {info.max_length} are allowed")
    else:  # int or float
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        if isinstance(value, float) and not math.isfinite(value):  # (an int is finite, however long)
            raise wrong
        if kind is int:
            if value != int(value):
                raise wrong
            value = int(value)
        if (info.ge is not None and value < info.ge) or (info.le is not None and value > info.le):
            raise wrong
    if info.choices is not None and value not in choices(info):
        raise wrong
    return value


def choices(info: FieldInfo) -> list:
    """The allowed values of an input with choices: for `mode`, the registry's (zerocap.modes), which
    the literal list restates (a test holds them equal), so a registered mode is taken at once."""
    return list(modes.MODES) if info.choices == LITERAL_MODES else info.choices


def _show(value) -> str:
    """The value as the request spelled it (JSON), shortened."""
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


class SentFile(str):
    """The path of a file cog downloaded for this request (checked by server_file)."""


def server_file(name: str, value) -> SentFile:
    """The path of a file cog downloaded for this request (from a URL or data URL); InputError
    for anything else -- a path on the server, a number, a file outside cog's download folder --
    with one message that tells nothing about the server's files."""
    if isinstance(value, pathlib.Path) and not isinstance(value, URLPath):  # a URLPath: never downloaded
        path = os.path.realpath(value)
        tmp = os.path.realpath(tempfile.gettempdir())
        # cog downloads to tempfile.NamedTemporaryFile(suffix=<the URL's file name>): tmpXXXXXXXX<name>
        if os.path.dirname(path) == tmp and os.path.basename(path).startswith("tmp") and os.path.isfile(path):
            return SentFile(path)
    mime = "video/mp4" if name.startswith("video") else "image/png"
    raise InputError(f"{name}: {FILE_RULE.format(mime=mime)}")


def sent_name(path: str, fallback: str | None) -> str | None:
    """The file name the user sent (the URL's), from cog's download name; `fallback` for data URLs."""
    original = os.path.basename(path)[len("tmp") + 8:]  # tempfile's prefix + 8 random characters
    return original if original and not original.startswith("file.") else fallback


class Predictor(BaseRunner):
    def setup(self) -> None:
        """Load the weights folder's pair (its models.json, else GPT-2 medium and CLIP ViT-B/32,
        fetched if missing and online), and start the scheduler that decodes concurrent
        predictions together."""
        quiet_transformers()
        lm, clip = weights.locate(log=lambda m: print(m, flush=True))  # the folder's pair (models.json) or the paper's
        from PIL import Image

        from zerocap import ZeroCap
        from zerocap.scheduler import Scheduler

        device = resolve_device(os.environ.get("ZEROCAP_DEVICE", "auto"))
        mode = compile_mode(device)
        # compiled kernels outlive the process there: a restart reuses them (README: Compiled step)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(HERE, ".torchinductor-cache"))
        self.model = ZeroCap.load(lm, clip, device=device, compile=mode or False)
        self.scheduler = Scheduler(self.model, max_batch=max_batch(self.model.device))
        self.reading = threading.BoundedSemaphore(READING)  # inputs decoded into targets at once
        if self.model.compiled is not None:  # every size of batch at the defaults: what most predictions run
            seconds = self.model.warm_up(self.model.config("caption"), self.scheduler.max_batch)
            print(f"compiled the decoding step ({mode}) in {seconds:.1f} s", flush=True)
        # the compiled path checks itself: a probe caption compiled and eagerly (eager serves if they differ)
        self.decoding = selfcheck.check(self.model, time_eager=False)  # which path serves, and why
        print(self.decoding.line(), flush=True)
        warm = Image.new("RGB", (64, 64), (127, 127, 127))  # first-call kernels and caches
        cfg = self.model.config("caption", beam_size=2, max_tokens=2, top_k=16)
        self.scheduler.caption(self.model.request(Target(self.model.targets.image_target(warm), "warm-up"), cfg))
        pt = self.model.pseudo_tokens  # the other method's vocabulary tables and prefix, built once
        pt.rules(pt.Config.end_token)
        pt.prefix(pt.Config.dummy_tokens)
        if self.model.device.type == "cpu":
            print(f"decoding on {threads.current().line()}", flush=True)
        print(f"ready: up to {self.scheduler.max_batch} predictions decoded together on {self.model.device}",
              flush=True)
        threads.release_pool()  # setup's thread is done with CPU work: its idle pool would slow the decoding thread

    def healthcheck(self) -> bool:
        """Unhealthy (with the reason) when the decoding loop stopped or the device broke."""
        problem = self.scheduler.health()
        if problem is not None:
            raise RuntimeError(problem)
        return True

    @cog.concurrent(max=16)  # slots: $COG_MAX_CONCURRENCY in a built image (README: Concurrency)
    @checked_inputs
    async def run(
        self,
        # ---- generated by script/cog-inputs from zerocap's tables: do not edit by hand ----
        mode: str = Input(default="caption", choices=["caption", "knowledge", "ocr", "arithmetic", "video"], description="caption: describe the image. knowledge: name the place or person ('Image of'). ocr: read the text in it ('Image of text that says'). arithmetic: describe a weighted sum of images and texts, e.g. woman + king - man. video: describe what the frames of a clip share."),  # noqa: E501
        method: str = Input(default="zerocap", choices=["zerocap", "pseudo-tokens"], description="zerocap: ZeroCap's context shift: gradient steps on the LM's key/value cache at every token, then a beam search (the default); pseudo-tokens: evolving pseudo-tokens (the authors' follow-up, for clips and images): a learned prefix optimised while whole sentences are sampled."),  # noqa: E501
        image: Optional[Path] = Input(default=None, description="The image (a URL or data URL; JPEG, PNG, WebP, GIF, BMP or TIFF; at most 80,000,000 pixels (80 MP)). For caption, knowledge and ocr; in arithmetic, the first image term."),  # noqa: E501
        images: Optional[list[Path]] = Input(default=None, description="arithmetic: the images to combine (URLs or data URLs), after `image` if given; at most 16 images and texts together."),  # noqa: E501
        image_weights: Optional[list[float]] = Input(default=None, description="arithmetic: one weight per image term (image first, then images), numbers from -10 to 10, e.g. 1, 1, -1; empty = all 1."),  # noqa: E501
        texts: Optional[list[str]] = Input(default=None, description="arithmetic: texts to add to the target, e.g. 'a crown'."),  # noqa: E501
        text_weights: Optional[list[float]] = Input(default=None, description="arithmetic: one weight per text, numbers from -10 to 10; empty = all 1."),  # noqa: E501
        video: Optional[Path] = Input(default=None, description="video: the clip (a URL or data URL; MP4, MOV, MKV, WebM, AVI, ...; frames of at most 80,000,000 pixels (80 MP))."),  # noqa: E501
        frames: Optional[int] = Input(default=None, ge=1, le=64, description="video: frames to sample, spread evenly over the clip, an integer from 1 to 64. Empty: each method's own sampling: zerocap 8 spread evenly (its caption describes their mean CLIP embedding); pseudo-tokens every max(1, fps // 3)-th frame as their run.py (at most 64, else 64 spread evenly, said in frames_sampling)."),  # noqa: E501
        cond_text: Optional[str] = Input(default=None, max_length=300, description="zerocap: prompt the caption continues; a caption is cond_text + the generated text. pseudo-tokens: prompt of the final beam search; a beam's caption is cond_text + its text. Empty = the method's and mode's (zerocap: default 'Image of a'; knowledge 'Image of'; ocr 'Image of text that says'; pseudo-tokens: 'Image of a')."),  # noqa: E501
        beam_size: int = Input(default=5, ge=1, le=20, description="zerocap: beams kept by the length-normalised beam search (at most top_k); more = slower, more varied. pseudo-tokens: beams of the final beam search."),  # noqa: E501
        max_tokens: Optional[int] = Input(default=None, ge=1, le=40, description="zerocap: tokens generated at most (the authors' --target_seq_length). pseudo-tokens: tokens per sampled sentence and beam at most (their --target_seq_length). Empty = the method's and mode's (zerocap: default 15; pseudo-tokens: 20)."),  # noqa: E501
        num_iterations: int = Input(default=5, ge=0, le=20, description="Gradient steps on the LM's key/value cache per token (0 = the plain LM)."),  # noqa: E501
        top_k: int = Input(default=512, ge=1, le=2048, description="Candidate tokens scored by CLIP per beam and iteration (at least beam_size)."),  # noqa: E501
        clip_temperature: Optional[float] = Input(default=None, ge=0.001, le=1.0, description="Softmax temperature over the candidates' CLIP similarities. Empty = the method's and mode's (zerocap: default 0.01; pseudo-tokens: 1.0)."),  # noqa: E501
        clip_scale: float = Input(default=1.0, ge=0.0, le=10.0, description="zerocap: weight of the CLIP loss. pseudo-tokens: weight of the CLIP loss (and of CLIP in the mixed ranking)."),  # noqa: E501
        ce_scale: Optional[float] = Input(default=None, ge=0.0, le=5.0, description="zerocap: weight of the fluency loss: the shifted LM's KL divergence from the plain LM. pseudo-tokens: weight of the fluency loss (and of fluency in the mixed ranking). Empty = the method's and mode's (zerocap: default 0.2; pseudo-tokens: 0.8)."),  # noqa: E501
        stepsize: float = Input(default=0.3, ge=0.0, le=3.0, description="Step size of the context shift."),
        grad_norm_factor: Optional[float] = Input(default=None, ge=0.0, le=2.0, description="The gradient is divided by its norm to this power. Empty = the mode's (default 0.9; arithmetic 0.95)."),  # noqa: E501
        fusion_factor: Optional[float] = Input(default=None, ge=0.0, le=1.0, description="Next-token probs = shifted^f x plain^(1-f). Empty = the mode's (default 0.99; arithmetic 0.95)."),  # noqa: E501
        repetition_penalty: Optional[float] = Input(default=None, ge=0.5, le=3.0, description="zerocap: damping of the last 4 context tokens (1 = off). pseudo-tokens: damping of tokens similar to the last 16 (1 = off). Empty = the method's and mode's (zerocap: default 1.0; pseudo-tokens: 2.0)."),  # noqa: E501
        end_factor: Optional[float] = Input(default=None, ge=0.5, le=2.0, description="End-token boost from end_factor_from on: higher = shorter captions. Empty = the mode's (default 1.01; knowledge 1.04; ocr 1.04; arithmetic 1.06)."),  # noqa: E501
        end_factor_from: int = Input(default=1, ge=0, le=40, description="First step of the end-token boost (the paper says 3, the authors' code 1)."),  # noqa: E501
        forbidden_factor: float = Input(default=20.0, ge=1.0, le=100.0, description="Damping of bare numbers and ( ) , ! : newline."),  # noqa: E501
        seed: int = Input(default=0, ge=0, le=2147483647, description="pseudo-tokens: seed of the prompt choices and of the sampling."),  # noqa: E501
        dummy_tokens: int = Input(default=5, ge=1, le=20, description="pseudo-tokens: pseudo-tokens in the learned prefix (their --num_dummy_tokens)."),  # noqa: E501
        sentence_iterations: int = Input(default=30, ge=1, le=60, description="pseudo-tokens: sentences sampled while the prefix learns (their --sentence_iterations)."),  # noqa: E501
        sampling_top_k: int = Input(default=3, ge=1, le=50, description="pseudo-tokens: tokens a sampled token is drawn from."),  # noqa: E501
        learning_rate: float = Input(default=0.006, ge=0.0001, le=1.0, description="pseudo-tokens: AdamW's learning rate for the prefix."),  # noqa: E501
        lr_schedule: str = Input(default="cosine", choices=["constant", "cosine", "exponential"], description="pseudo-tokens: learning rate by sentence: constant, cosine (to 1e-4) or exponential (x0.9)."),  # noqa: E501
        weight_decay_scale: float = Input(default=0.3, ge=0.0, le=10.0, description="pseudo-tokens: AdamW's weight decay = learning_rate x this."),  # noqa: E501
        entity_penalty: float = Input(default=2.0, ge=0.0, le=20.0, description="pseudo-tokens: logit penalty of capitalised or non-letter tokens."),  # noqa: E501
        ending_bonus: float = Input(default=2.0, ge=-10.0, le=10.0, description="pseudo-tokens: logit bonus of the end token."),  # noqa: E501
        token_wise: bool = Input(default=True, description="pseudo-tokens: an optimiser step after every token (else after every sentence)."),  # noqa: E501
        randomized_prompt: bool = Input(default=True, description="pseudo-tokens: each sentence starts from one of their 12 prompts (else from BOS alone)."),  # noqa: E501
        # ---- end of the generated inputs ----
    ) -> Output:
        values = dict(locals())
        chosen, how = modes.get(mode), methods.get(method)
        # an input left at its declared default is not given
        defaults = _declared(Predictor.run.__wrapped__)[0]
        given = {name: None if values[name] == defaults[name].default else sent(values[name]) for name in MODE_INPUTS}
        inputs = chosen.kind.check(chosen, given)
        # the method's knobs as sent (empty: its default); another method's only when given (then refused)
        knobs = {name: values[name] for name in methods.SERVED
                 if name in how.knobs or values[name] != defaults[name].default}
        methods.refuse_foreign(how, knobs)
        cfg = self.model.check(how.config(mode, None, **{**knobs, "cond_text": cond_text or None}))
        start = time.perf_counter()

        def read():  # on a worker thread, a few at a time: bounded memory whatever arrives at once
            with self.reading:
                try:
                    return chosen.kind.targets(self.model, inputs, cfg=cfg)
                finally:  # its idle OpenMP pool would slow the decoding thread's kernels (zerocap/threads.py)
                    threads.release_pool()

        targets = await asyncio.to_thread(read)
        result, ticket = await self._decode(self.model.request(targets[0], cfg))
        seconds = time.perf_counter() - start
        self.record_metric("batch_size", round(ticket.batch_size, 2))  # predictions it shared its steps with, on average
        self.record_metric("queue_seconds", round(ticket.waited, 4))  # waiting for a place in the batch
        self.record_metric("tokens_generated", result.tokens)
        self.record_metric("seconds_per_token", result.seconds / max(1, result.tokens))
        self.record_metric("total_seconds", seconds)
        self.record_metric("compiled_step", int(self.model.compiled is not None))  # 0: eager serves (setup log says why)
        out = result.to_dict()
        common = dict(method=how.name, mode=mode, target=result.target, cond_text=cfg.cond_text, tokens=result.tokens,
                      seconds=seconds, frame_times=out.get("frame_times", []), frames=out.get("frames", 0),
                      best_clip=result.best_clip, best_mixed=result.best_mixed)
        if how is methods.ZEROCAP:
            return Output(
                caption=result.best_mixed,
                best_fluency=result.best_fluency,
                beams=[b.caption for b in result.beams],
                beam_scores=[b.score for b in result.beams],
                clip_scores=[b.clip_score for b in result.beams],
                perplexities=[b.perplexity if math.isfinite(b.perplexity) else -1.0 for b in result.beams],
                seed=-1, sentences=[], sentence_clip_scores=[], sentence_log_probs=[],
                frames_asked=out.get("frames_asked", 0), **common,
                frames_sampling=f"{out['frames_asked']} frames spread evenly" if "frames_asked" in out else "",
            )
        return Output(  # the pseudo-token method: their returned caption, the sentences that made it
            caption=result.best_clip,
            best_fluency="",
            beams=[b.caption for b in result.beams],
            beam_scores=[b.score for b in result.beams],
            clip_scores=[], perplexities=[],
            seed=cfg.seed,
            sentences=[x.text for x in result.sentences],
            sentence_clip_scores=[_finite(x.clip_score) for x in result.sentences],
            sentence_log_probs=[_finite(x.log_prob) for x in result.sentences],
            frames_asked=out.get("frames_sampled", 0), frames_sampling=out.get("sampling", ""), **common,
        )

    async def _decode(self, request):
        """(result, ticket) of a request decoded by the scheduler, with every token's progress in
        this prediction's logs; a cancelled prediction leaves the batch before the next step."""
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue = asyncio.Queue()
        done = loop.create_future()

        def progress(snapshot) -> None:  # on the scheduler's thread, after each of the request's steps
            loop.call_soon_threadsafe(lines.put_nowait, snapshot.line())

        def finished(_ticket) -> None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        request.on_step = progress
        ticket = self.scheduler.submit(request)
        ticket.add_done_callback(finished)
        try:
            while not done.done() or not lines.empty():
                line = asyncio.ensure_future(lines.get())
                try:
                    await asyncio.wait({line, done}, return_when=asyncio.FIRST_COMPLETED)
                finally:  # also when this prediction is cancelled: no task is left pending
                    if not line.done():
                        line.cancel()
                if line.done() and not line.cancelled():
                    print(line.result(), flush=True)
        except asyncio.CancelledError:
            ticket.cancel()
            raise
        try:
            return ticket.result(), ticket
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise InputError("out of GPU memory: lower beam_size or top_k, or combine fewer terms") from None


def compile_mode(device) -> str | None:
    """$ZEROCAP_COMPILE: auto (the default: CUDA graphs, reduce-overhead, on a GPU; eager on a CPU),
    off, default or reduce-overhead."""
    value = os.environ.get("ZEROCAP_COMPILE", "auto").strip().lower()
    if value == "auto":
        return "reduce-overhead" if device.type == "cuda" else None
    if value in ("off", "0", "no", "false", ""):
        return None
    if value in ("default", "reduce-overhead"):
        return value
    raise ValueError(f"ZEROCAP_COMPILE must be auto, off, default or reduce-overhead, got {value!r}")


def max_batch(device) -> int:
    """Predictions decoded together ($ZEROCAP_MAX_BATCH; default 16 on a GPU, 8 on a CPU): the
    others wait for a place, they are never refused."""
    default = 16 if device.type == "cuda" else 8
    try:
        return max(1, int(os.environ.get("ZEROCAP_MAX_BATCH", default)))
    except ValueError:
        return default


READING = 2  # requests whose inputs are read (decoded, embedded) at once: bounded memory
HERE = os.path.dirname(os.path.abspath(__file__))
LITERAL_MODES = ["caption", "knowledge", "ocr", "arithmetic", "video"]  # the `mode` Input's choices, as declared
MODE_INPUTS = ("image", "images", "image_weights", "texts", "text_weights", "video", "frames")


def _finite(x: float) -> float:
    """JSON has no infinity: their mean log-prob of a one-token sentence divides by zero."""
    return x if math.isfinite(x) else -1e9


def sent(value):
    """A checked file input as modes.Sent (its path, and the name the user sent, if any); lists of
    files likewise; anything else as it is."""
    if isinstance(value, list):
        return [sent(v) for v in value]
    if isinstance(value, SentFile):
        return modes.Sent(value, sent_name(value, None))
    return value
