"""Input modes: what a request captions and how it becomes the CLIP target the caption follows.

A mode is a name, one line of help, a preset (knob changes: the authors' README commands) and
the kind of input it reads:
  image  one image per result (caption, knowledge, ocr); a dataset job takes many
  video  one clip per result, from the mean of its frames (video); a dataset job takes many
  terms  a weighted sum of images and texts, one result per request (arithmetic)
A kind says which inputs it takes (the Cog inputs; the command line's arguments), what it needs
of them and their limits (limits.py), how they become a `Target`, and what it adds to the
result. The engine, the command line (one subcommand per mode), dataset jobs and the Cog
predictor all dispatch through MODES: adding a mode is one `register(Mode(...))`
(tests/test_extending.py adds a toy one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

from .download import local_file
from .errors import InputError
from .formats import IMAGE_EXTENSIONS, IMAGE_FORMATS, VIDEO_EXTENSIONS
from .limits import EVERY, FRAMES, PIXELS, TERMS, WEIGHT


class Sent(NamedTuple):
    """A file a request sent: where it is now, and the name it came with (None: no name)."""

    path: str
    name: str | None = None


@dataclass
class Target:
    """What one caption is steered towards."""

    vector: Any  # torch.Tensor (D,): the normalised CLIP target
    name: str  # how the result names what was captioned
    details: Any = None  # what the mode adds to the result: an object with to_dict(), or None
    frames: Any = None  # torch.Tensor (F, D): each frame's normalised embedding, for a method that reads them


@dataclass
class Inputs:
    """A request's inputs, checked by its kind, ready to become targets (`Kind.targets`)."""

    items: list = field(default_factory=list)  # kind-specific: files, or (file, weight) / (text, weight) terms
    names: list = field(default_factory=list)
    options: dict = field(default_factory=dict)  # e.g. video: frames


def _and(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def _is_given(value) -> bool:
    return value is not None and value != []


class Kind:
    """How one kind of input is taken, checked and turned into targets."""

    name = ""
    inputs: tuple[str, ...] = ()  # the Cog inputs it reads, besides mode and the knobs
    one_per_input = True  # a dataset job makes one result per input
    extensions: tuple[str, ...] = ()  # the files a folder scan takes
    needs = ""  # what a request must give, in words

    job_options: tuple[str, ...] = ()  # a dataset job's options for each target (video: frames, every)

    def check(self, mode: "Mode", given: dict, served: bool = True) -> Inputs:
        """A request's inputs (Sent files, lists, numbers), checked against this kind; served: a
        Cog request, held to the served limits."""
        extra = [n for n, v in given.items() if n not in self.inputs and _is_given(v)]
        if extra:
            owners = {n: [m.name for m in MODES.values() if n in m.kind.inputs] for n in extra}
            hint = "; ".join(f"`{n}` is for mode{'s' if len(o) > 1 else ''} {_and(o)}" for n, o in owners.items() if o)
            raise InputError(f"mode {mode.name} takes {self.takes()}, not {', '.join(f'`{n}`' for n in extra)}"
                             + (f" ({hint})" if hint else ""))
        return self.gather(mode, {n: given.get(n) for n in self.inputs}, served)

    def takes(self) -> str:
        return " and ".join(f"`{n}`" for n in self.inputs)

    def gather(self, mode: "Mode", given: dict, served: bool) -> Inputs:
        raise NotImplementedError

    def check_options(self, options: dict) -> None:
        """A dataset job's options, checked before any work."""

    def targets(self, engine, checked: Inputs, cfg=None) -> list[Target]:
        raise NotImplementedError

    def target(self, engine, source: str, name: str, **options) -> Target:
        """A dataset job's input (a file or URL) as a target."""
        raise NotImplementedError


@dataclass(frozen=True)
class Term:
    """One term of a target: an image (path or PIL image) or a text, with its weight."""

    weight: float
    image: object = None  # path or PIL.Image, loaded when the target is computed
    text: str | None = None
    label: str = "image"  # how results and messages name the image: its path, file name or "image N"

    def describe(self) -> str:
        what = f"text {self.text!r}" if self.text is not None else self.label
        return f"{self.weight:+g} x {what}"


def check_sampling(frames: int | None, every: float | None) -> None:
    if frames is not None and every is not None:
        raise InputError("give --frames or --every, not both")
    if frames is not None and not FRAMES.allows(frames):
        raise InputError(f"frames must be {FRAMES.said}, got {frames}")
    if every is not None and not (math.isfinite(every) and EVERY.allows(every)):
        raise InputError(f"every must be {EVERY.said}, got {every:g}")


class ImageKind(Kind):
    name = "image"
    inputs = ("image",)
    needs = "`image`"

    extensions = IMAGE_EXTENSIONS

    def gather(self, mode, given, served):
        if given["image"] is None:
            raise InputError(f"mode {mode.name} needs `image`")
        sent = given["image"]
        return Inputs([sent.path], [sent.name or "image"])

    def targets(self, engine, checked, cfg=None):
        return [Target(engine.targets.image_target(path, name), name) for path, name in zip(checked.items,
                                                                                            checked.names)]

    def target(self, engine, source, name, **options):
        with local_file(source) as path:
            return Target(engine.targets.image_target(path, name), name)


class VideoKind(Kind):
    name = "video"
    inputs = ("video", "frames")
    job_options = ("frames", "every")

    extensions = VIDEO_EXTENSIONS

    def takes(self):
        return "`video` (and `frames`)"

    def check(self, mode, given, served=True):
        given = dict(given)
        frames = given.pop("frames", None)  # None: the method samples by itself
        checked = super().check(mode, given, served)
        if frames is not None and not FRAMES.allows(frames, served):
            raise InputError(f"frames must be {FRAMES.say(served)}, got {frames}")
        checked.options["frames"] = frames
        checked.options["most"] = FRAMES.hi  # frames a method that samples by itself may take
        return checked

    def gather(self, mode, given, served):
        if given["video"] is None:
            raise InputError(f"mode {mode.name} needs `video`")
        return Inputs([given["video"].path], [given["video"].name or "video"])

    def check_options(self, options):
        check_sampling(options.get("frames"), options.get("every"))

    def targets(self, engine, checked, cfg=None):
        return [self.target(engine, path, name, frames=checked.options.get("frames"), cfg=cfg,
                            most=checked.options.get("most"))
                for path, name in zip(checked.items, checked.names)]

    def target(self, engine, source, name, frames=None, every=None, cfg=None, most=None, **options):
        """A clip as the method of `cfg` reads it (the engine's read_clip: ZeroCap's when None);
        `most`: the frames a method that samples by itself may take."""
        return engine.read_clip(source, name, frames=frames, every=every, cfg=cfg, most=most)


class TermsKind(Kind):
    name = "terms"
    inputs = ("image", "images", "image_weights", "texts", "text_weights")
    one_per_input = False

    def takes(self):
        return "`image`/`images` and/or `texts`, with their weights"

    def gather(self, mode, given, served):
        files = ([given["image"]] if given["image"] is not None else []) + list(given["images"] or [])
        texts = list(given["texts"] or [])
        if not files and not texts:
            raise InputError(f"mode {mode.name} needs images and/or texts to combine, with their weights (e.g. 1, 1,"
                             " -1)")
        if not TERMS.allows(len(files) + len(texts), served):
            raise InputError(f"{mode.name} takes {TERMS.say(served)}, got {len(files) + len(texts)}")
        if given["text_weights"] and not texts:
            raise InputError(f"{'text_weights' if served else '--text-weight'} given without texts")
        # the weights as the user spelled them: the Cog inputs, or the command line's flags
        names = ("image_weights", "text_weights") if served else ("--weights", "--text-weight")
        weights = []
        for name, values, count, what in ((names[0], given["image_weights"], len(files), "image"),
                                          (names[1], given["text_weights"], len(texts), "text")):
            weights.append(self.weights(values, count, what, name, served))
        names = [f.name or f"image {i + 1}" for i, f in enumerate(files)]
        items = list(zip([f.path for f in files], weights[0])) + list(zip(texts, weights[1]))
        return Inputs(items, names, {"images": len(files)})

    @staticmethod
    def weights(values: Sequence | None, count: int, what: str, name: str | None = None,
                served: bool = False) -> list[float]:
        """One weight per term (all 1 when None): numbers within the weight limit."""
        name = name or f"{what} weights"
        if values is None:
            return [1.0] * count
        if len(values) != count:
            raise InputError(f"got {count} {what}(s) but {len(values)} {name}; give one weight per {what}")
        out = []
        for w in values:
            try:
                w = float(w)
            except (TypeError, ValueError):
                raise InputError(f"{what} weight {w!r} is not a number") from None
            if not math.isfinite(w) or not WEIGHT.allows(w, served):
                raise InputError(f"{name} must be {WEIGHT.say(served)}, got {list(values)}")
            out.append(w)
        return out

    def targets(self, engine, checked, cfg=None):
        n = checked.options["images"]
        terms = [Term(w, image=path, label=name) for (path, w), name in zip(checked.items[:n], checked.names)]
        terms += [Term(w, text=text) for text, w in checked.items[n:]]
        return [Target(engine.targets.combine(terms), " ".join(t.describe() for t in terms))]


@dataclass(frozen=True)
class Mode:
    name: str
    help: str  # one line: what the mode is for
    preset: dict  # knob changes from the paper's defaults
    kind: Kind


IMAGE, VIDEO, TERMS_KIND = ImageKind(), VideoKind(), TermsKind()
MODES: dict[str, Mode] = {}


def register(mode: Mode) -> Mode:
    """Add a mode (or replace one of that name); every interface sees it at once."""
    MODES[mode.name] = mode
    return mode


def unregister(name: str) -> None:
    MODES.pop(name, None)


def get(name: str) -> Mode:
    if name not in MODES:
        raise InputError(f"unknown mode {name!r}; choose one of: {', '.join(MODES)}")
    return MODES[name]


# The authors' README commands, as changes to the defaults; video is captioned like an image.
register(Mode("caption", "describe the image", {}, IMAGE))
register(Mode("knowledge", "name the place or person ('Image of')", {"cond_text": "Image of", "end_factor": 1.04},
              IMAGE))
register(Mode("ocr", "read the text in it ('Image of text that says')",
              {"cond_text": "Image of text that says", "end_factor": 1.04}, IMAGE))
register(Mode("arithmetic", "describe a weighted sum of images and texts, e.g. woman + king - man",
              {"end_factor": 1.06, "fusion_factor": 0.95, "grad_norm_factor": 0.95}, TERMS_KIND))
register(Mode("video", "describe what the frames of a clip share", {}, VIDEO))


def cog_descriptions() -> dict[str, str]:
    """The Cog input descriptions of `mode` and the modes' inputs, from this registry and the
    limits table; script/cog-inputs writes them into predict.py as literals (tests/test_config.py compares)."""

    def of(kind: Kind) -> str:
        return _and([m.name for m in MODES.values() if m.kind is kind])

    terms, video = of(TERMS_KIND), of(VIDEO)
    return {
        "mode": " ".join(f"{m.name}: {m.help}." for m in MODES.values()),
        "image": f"The image (a URL or data URL; {IMAGE_FORMATS}; {PIXELS.said}). For {of(IMAGE)}; in {terms}, the"
                 " first image term.",
        "images": f"{terms}: the images to combine (URLs or data URLs), after `image` if given;"
                  f" {TERMS.say(served=True)}.",
        "image_weights": f"{terms}: one weight per image term (image first, then images), {WEIGHT.say(served=True)},"
                         " e.g. 1, 1, -1; empty = all 1.",
        "texts": f"{terms}: texts to add to the target, e.g. 'a crown'.",
        "text_weights": f"{terms}: one weight per text, {WEIGHT.say(served=True)}; empty = all 1.",
        "video": f"{video}: the clip (a URL or data URL; MP4, MOV, MKV, WebM, AVI, ...; frames of {PIXELS.said}).",
        "frames": f"{video}: frames to sample, spread evenly over the clip, {FRAMES.say(served=True)}. Empty: each"
                  " method's own sampling",  # (script/cog-inputs adds each method's: methods.Method.sampling)
    }
