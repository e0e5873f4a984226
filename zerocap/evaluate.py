"""Evaluating captions against references: the COCO caption metrics, and CLIP-S / RefCLIP-S.

- COCO metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE) by the standard COCO caption
  evaluation code, `pycocoevalcap` (pip install 'zerocap[eval]'), with its PTB tokeniser.
  The tokeniser, METEOR and SPICE are Java programs. Without Java, BLEU, ROUGE-L and CIDEr
  are computed on text split by `simple_tokens` instead, and the report says so and names
  what was skipped; `tokenizer="ptb"` refuses to run instead. SPICE also needs Stanford
  CoreNLP 3.6.0, which pycocoevalcap downloads on first use.
- CLIP-S and RefCLIP-S (Hessel et al., EMNLP 2021), with CLIP ViT-B/32 and w = 2.5, the
  caption (and each reference) prefixed "A photo depicts " as in that paper:
      CLIP-S    = w * max(cos(E_text(c), E_image(v)), 0)
      RefCLIP-S = harmonic mean of CLIP-S and max(max_r cos(E_text(c), E_text(r)), 0)
- References: COCO caption annotations (captions_val2014.json: images + annotations) or the
  Karpathy split (dataset_coco.json: images with sentences), matched to the captions by image
  file name, else by the COCO id in the file name (COCO_val2014_000000391895.jpg -> 391895).
"""
from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from .errors import InputError
from .images import load_image
from .jobs.results import bounded_lines, finite, ours_cut_short
from .limits import REFS_BYTES
from .methods import in_full
from .weights import offline

FIELDS = ("best_mixed", "best_clip", "best_fluency")
COCO_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
CLIP_W = 2.5
CLIP_PREFIX = "A photo depicts "
# what pycocoevalcap's PTB tokeniser drops
PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}


@dataclass
class Report:
    images: int  # evaluated: captioned and with references
    field: str
    scores: dict[str, float]  # metric -> corpus score (COCO metrics in [0, 1] as pycocoevalcap gives them)
    per_image: dict[str, dict[str, float]]  # image -> metric -> score
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why
    tokenizer: str = "ptb"
    notes: list[str] = field(default_factory=list)  # unmatched images, failed lines, ...
    clip_images: int = 0  # scored by CLIP-S: every captioned image that could be read, references or not

    def to_dict(self) -> dict:
        return {"images": self.images, "clip_images": self.clip_images, "field": self.field,
                "tokenizer": self.tokenizer, "scores": self.scores, "skipped": self.skipped, "notes": self.notes}

    def table(self) -> str:
        counts = f"{self.images} images with references (COCO metrics" + (", RefCLIP-S" if "RefCLIP-S" in self.scores
                                                                          else "") + ")"
        if "CLIP-S" in self.scores:
            counts += f", {self.clip_images} images for CLIP-S"
        lines = [f"{counts}; field {self.field}, tokenizer {self.tokenizer}", f"{'metric':<10} {'score':>8}"]
        for name in COCO_METRICS:
            if name in self.scores:
                lines.append(f"{name:<10} {100 * self.scores[name]:8.1f}")
        for name in ("CLIP-S", "RefCLIP-S"):
            if name in self.scores:
                lines.append(f"{name:<10} {self.scores[name]:8.3f}")
        lines.append("(COCO metrics x 100, as papers report them; CLIP-S and RefCLIP-S on their 0-2.5 scale)")
        lines += [f"skipped {name}: {why}" for name, why in self.skipped.items()]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


# ---- reading -------------------------------------------------------------------------------------
def read_captions(path: str, field_name: str = "best_mixed", strip_prompt: bool = False,
                  key: str = "image", sources: dict | None = None) -> tuple[dict[str, str], int, list[str]]:
    """({image: caption}, error lines, notes) from a captions JSONL (zerocap caption --out), read
    by the jobs' rule: blank lines are nothing, a last line of zerocap's cut short (a crash, a
    full disk) is left out with a note, no line may pass LINE_BYTES. `sources`, when given, gets
    each image's real path as its line recorded it."""
    if field_name not in FIELDS:
        raise InputError(f"unknown caption field {field_name!r}; choose one of {', '.join(FIELDS)}")
    captions, errors, repeated = {}, 0, 0
    named: dict[str, str] = {}  # real file (the line's source) -> the name it is scored under (its first)
    cut = False
    made_with: dict[str, dict] = {}  # each distinct settings (as JSON) -> the settings
    try:
        with open(path, "rb") as f:
            for n, (_, line) in enumerate(bounded_lines(f, path), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if record is None and not line.endswith(b"\n") and ours_cut_short(line, key, after_ours=n > 1):
                    cut = True
                    break
                if not isinstance(record, dict) or not isinstance(record.get(key), str):
                    raise InputError(f"{path}, line {n}: not a caption line (a JSON object with the {key!r} it"
                                     " captions, as zerocap caption --out writes)")
                name = record[key]
                if "error" in record:
                    errors += 1
                    continue
                caption = record.get(field_name)
                if not isinstance(caption, str):
                    what = "no" if field_name not in record else f"a {json.dumps(caption)} instead of a"
                    raise InputError(f"{path}, line {n} ({name}): {what} {field_name!r} caption; every line needs"
                                     f" one (a string), or choose another --field")
                prompt = record.get("cond_text")
                if strip_prompt and isinstance(prompt, str) and caption.startswith(prompt):
                    caption = caption[len(prompt):]
                source = record.get("source")
                name = named.setdefault(source if isinstance(source, str) else name, name)  # one real file once
                repeated += name in captions
                captions[name] = caption.strip()
                if sources is not None and isinstance(source, str):
                    sources[name] = source
                if isinstance(record.get("settings"), dict) and len(made_with) < 100:
                    made_with.setdefault(json.dumps(in_full(record["settings"]), sort_keys=True), record["settings"])
    except OSError as e:
        raise InputError(f"cannot read the captions {path}: {e.strerror}") from None
    if not captions:
        raise InputError(f"{path} has no captions to evaluate" + (f" ({errors} error lines)" if errors else ""))
    notes = [f"{repeated} images have more than one line in {path} (the same real file, under one name or"
             " several): each is counted once, its last line scored"] if repeated else []
    if len(made_with) > 1:
        kinds = sorted({f"{s.get('method', 'zerocap')}/{s.get('mode', '?')}" for s in made_with.values()})
        notes.append(f"the captions in {path} were made with {len(made_with)}{'+' * (len(made_with) >= 100)} different"
                     f" settings (a --mix-settings file; method/mode: {', '.join(kinds[:5])}): every score covers"
                     " them all together")
    if cut:
        notes.append(f"the last line of {path} is zerocap's own, cut short (the job was stopped mid-write): left"
                     " out; the same job's command resumes it")
    return captions, errors, notes


# COCO file names: COCO_val2014_000000391895.jpg (2014), 000000391895.jpg (2017)
COCO_NAME = re.compile(r"(?:COCO_[A-Za-z]+\d*_)?(\d{12})")
MATCHES = ("auto", "name", "id")


@dataclass
class References:
    """The reference captions of each image, found by file name or by COCO image id."""

    captions: list[list[str]]  # per reference image
    by_file: dict[str, int]  # file name -> index
    by_id: dict[int, int]  # COCO id -> index
    notes: list[str] = field(default_factory=list)  # what reading them left out or found ambiguous

    def find(self, name: str, how: str = "auto") -> int | None:
        """The reference image of a captioned file. auto: the same file name, else the COCO id of
        a COCO-style name; name: the file name only; id: the number the file name is (1.jpg -> 1)."""
        base = os.path.basename(name)
        if how != "id" and base in self.by_file:
            return self.by_file[base]
        stem = os.path.splitext(base)[0]
        if how == "auto":
            coco = COCO_NAME.fullmatch(stem)
            return self.by_id.get(int(coco.group(1))) if coco else None
        if how == "id":
            number = re.fullmatch(r"(?:COCO_[A-Za-z]+\d*_)?0*(\d+)", stem)
            return self.by_id.get(int(number.group(1))) if number else None
        return None


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where} is {json.dumps(value)}, not a text; fix the references file")
    return value


def _image_id(value, where: str) -> int:
    """An image id as COCO writes it: an integer (not true/false, 1.0, NaN or a string)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where} is {json.dumps(value)}, not an image id (an integer); fix the references file")
    return value


def _objects(value, where: str) -> None:
    """A list of JSON objects, as both reference formats hold; else InputError saying what it is."""
    if not isinstance(value, list):
        kind = "an object" if isinstance(value, dict) else "missing" if value is None else f"{type(value).__name__}"
        raise InputError(f"{where} must be a list of objects, but it is {kind}; is it COCO or Karpathy-split JSON?")
    bad = next((i for i, v in enumerate(value, 1) if not isinstance(v, dict)), None)
    if bad is not None:
        raise InputError(f"{where} must be a list of objects, but item {bad} is {json.dumps(value[bad - 1])[:80]};"
                         " is it COCO or Karpathy-split JSON?")


def read_references(path: str) -> References:
    """References from either annotation format (see the module docstring); images without any
    reference caption are left out (and counted in the notes)."""
    try:
        with open(path, "rb") as f:
            text = f.read(REFS_BYTES.hi + 1)
    except OSError as e:
        raise InputError(f"cannot read the references {path}: {e.strerror}") from None
    if len(text) > REFS_BYTES.hi:
        raise InputError(f"the references {path} are larger than {REFS_BYTES.said}; is it the right file?")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise InputError(f"the references {path} are not JSON: {str(e)[:200]}") from None
    del text
    images = data.get("images") if isinstance(data, dict) else None
    if isinstance(images, list):
        _objects(images, f"{path}: its \"images\"")
    if isinstance(data, dict) and "annotations" in data:
        _objects(data["annotations"], f"{path}: its \"annotations\"")
    if isinstance(images, list) and images and "sentences" in images[0]:
        for im in images:
            _objects(im.get("sentences"), f"{path}: the \"sentences\" of image {json.dumps(im.get('filename'))[:80]}")
    entries: list[tuple[str, list[int], list[str]]] = []  # (file name, ids, captions)
    notes = []
    try:
        if isinstance(images, list) and "annotations" in data:  # COCO: captions_val2014.json
            found: dict[int, list[str]] = {}
            for a in data["annotations"]:
                which = f"annotation {a.get('id', '?')}"
                found.setdefault(_image_id(a["image_id"], f"{path}: the image_id of {which}"), []).append(
                    _text(a["caption"], f"{path}: the caption of {which}"))
            ids = [_image_id(im["id"], f"{path}: image {n}'s id") for n, im in enumerate(images, 1)]
            entries = [(_text(im["file_name"], f"{path}: the file_name of image {k}"), [k], found.get(k, []))
                       for k, im in zip(ids, images)]
            orphans = len(set(found) - set(ids))
            if orphans:
                notes.append(f"annotations of {orphans} image ids that are not among the references' images were"
                             " ignored")
        elif isinstance(images, list) and images and "sentences" in images[0]:  # Karpathy: dataset_coco.json
            entries = [(_text(im["filename"], f"{path}: a filename"),
                        [_image_id(im[k], f"{path}: the {k} of {im['filename']}") for k in ("cocoid",) if k in im],
                        [_text(s["raw"], f"{path}: a sentence of {im['filename']}") for s in im["sentences"]])
                       for im in images]
        else:
            raise InputError(f"{path}: not COCO caption annotations (images + annotations, as captions_val2014.json)"
                             " nor the Karpathy split (images with sentences, as dataset_coco.json)")
    except (KeyError, TypeError) as e:
        raise InputError(f"{path}: an image or annotation lacks {e}; is it COCO or Karpathy-split JSON?") from None
    counts = collections.Counter(k for e in entries for k in e[1])
    twice = sorted(k for k, c in counts.items() if c > 1)
    if twice:
        notes.append(f"{len(twice)} image ids belong to more than one of the references' images (e.g. {twice[0]}):"
                     " a caption matched by id is matched to the first")
    empty = sum(1 for e in entries if not e[2])
    entries = [e for e in entries if e[2]]
    refs = References([e[2] for e in entries], {}, {}, notes)
    repeated = set()
    for i, (file_name, ids, _) in enumerate(entries):
        if file_name in refs.by_file:
            repeated.add(file_name)
        refs.by_file.setdefault(file_name, i)
        for k in ids:
            refs.by_id.setdefault(k, i)
    if empty:
        notes.append(f"{empty} images of the references have no caption; left out")
    if repeated:
        notes.append(f"{len(repeated)} file names belong to more than one reference image (e.g. {min(repeated)}):"
                     " matched to the first")
    return refs


def match(captions: dict[str, str], references: References, how: str = "auto"
          ) -> tuple[dict[str, list[str]], list[str], int, dict[int, list[str]]]:
    """({image: its reference captions}, [captioned images without references], reference images
    not captioned, {reference image: the several captioned images that matched it}); an image in
    that last group is left out, since at most one of them is the image its references describe."""
    if how not in MATCHES:
        raise InputError(f"unknown --match {how!r}; choose one of {', '.join(MATCHES)}")
    found: dict[int, list[str]] = {}
    unmatched = []
    for name in captions:
        i = references.find(name, how)
        if i is None:
            unmatched.append(name)
        else:
            found.setdefault(i, []).append(name)
    refs = {names[0]: references.captions[i] for i, names in found.items() if len(names) == 1}
    ambiguous = {i: names for i, names in found.items() if len(names) > 1}
    return refs, unmatched, len(references.captions) - len(found), ambiguous


# ---- COCO metrics -----------------------------------------------------------------------------
def java_available() -> bool:
    java = shutil.which("java")
    if java is None:
        return False
    try:
        return subprocess.run([java, "-version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def simple_tokens(text: str) -> str:
    """Lower-cased words (any script: naïve, café), decimals whole (3.5, 1,000), PTB-style clitics
    split off, pycocoevalcap's punctuation dropped."""
    words = re.findall(r"\d+(?:[.,]\d+)+|[^\W_]+(?=n't)|n't|'[^\W_]+|[^\W_]+|[^\s\w]+|_+", text.lower())
    return " ".join(w for w in words if w not in PUNCTUATION)


SKIPPABLE = ("METEOR", "SPICE", "CLIP-S")  # the slow ones (Java starts, CLIP loads); RefCLIP-S goes with CLIP-S


def check_skip(skip) -> None:
    unknown = sorted(set(skip) - set(SKIPPABLE))
    if unknown:
        raise InputError(f"cannot skip {', '.join(unknown)}; the metrics that can be skipped: {', '.join(SKIPPABLE)}")


def coco_metrics(captions: dict[str, str], refs: dict[str, list[str]], tokenizer: str = "auto",
                 skip: tuple[str, ...] = ()) -> tuple[dict, dict, dict, str]:
    """(corpus scores, per-image scores, skipped metrics with reasons, tokenizer used)."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        raise InputError("the COCO metrics need pycocoevalcap: pip install 'zerocap[eval]'") from None
    java = java_available()
    if tokenizer not in ("auto", "ptb", "simple"):
        raise InputError(f"unknown tokenizer {tokenizer!r}; choose auto, ptb or simple")
    if tokenizer == "ptb" and not java:
        raise InputError("the PTB tokenizer needs Java (java on PATH); install a JRE, or use --tokenizer simple")
    use_ptb = java and tokenizer != "simple"
    names = sorted(refs)
    ids = {name: i for i, name in enumerate(names)}
    if use_ptb:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        with contextlib.redirect_stdout(sys.stderr):
            tok = PTBTokenizer()
            gts = tok.tokenize({ids[n]: [{"caption": r} for r in refs[n]] for n in names})
            res = tok.tokenize({ids[n]: [{"caption": captions[n]}] for n in names})
        used = "ptb"
    else:
        gts = {ids[n]: [simple_tokens(r) for r in refs[n]] for n in names}
        res = {ids[n]: [simple_tokens(captions[n])] for n in names}
        used = "simple (" + ("chosen" if tokenizer == "simple" else "Java not found") + "; not the PTB tokenisation"\
               " of published COCO numbers)"
    scorers = [(Bleu(4), ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"]), (Rouge(), ["ROUGE-L"]), (Cider(), ["CIDEr"])]
    skipped = {m: "not asked for" for m in ("METEOR", "SPICE") if m in skip}
    if "METEOR" in skipped:
        pass
    elif java:
        from pycocoevalcap.meteor.meteor import Meteor

        scorers.insert(1, (Meteor(), ["METEOR"]))
    else:
        skipped["METEOR"] = "needs Java (java on PATH)"
    spice_why = skipped.get("SPICE") or _spice_unavailable(java)
    if spice_why is None:
        from pycocoevalcap.spice.spice import Spice

        scorers.append((Spice(), ["SPICE"]))
    else:
        skipped["SPICE"] = spice_why
    scores, per = {}, {n: {} for n in names}
    for scorer, metric_names in scorers:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints its counts
                total, each = scorer.compute_score(gts, res)
        except (OSError, subprocess.CalledProcessError, ValueError) as e:  # a Java tool that did not run
            skipped.update({m: f"failed: {e}" for m in metric_names})
            continue
        totals = total if isinstance(total, list) else [total]
        eaches = each if len(metric_names) > 1 else [each]
        for m, t, e in zip(metric_names, totals, eaches):
            scores[m] = float(t)
            for n, v in zip(names, e):
                per[n][m] = float(v["All"]["f"]) if isinstance(v, dict) else float(v)
    return scores, per, skipped, used


def _spice_unavailable(java: bool) -> str | None:
    """Why SPICE cannot run here, or None."""
    if not java:
        return "needs Java (java on PATH)"
    import pycocoevalcap.spice as spice_pkg

    jar = os.path.join(os.path.dirname(spice_pkg.__file__), "lib", "stanford-corenlp-3.6.0.jar")
    if os.path.exists(jar):
        return None
    if offline():
        return ("needs Stanford CoreNLP 3.6.0, which pycocoevalcap downloads on first use (offline mode is on:"
                " run once online, e.g. python -c 'from pycocoevalcap.spice.spice import Spice; Spice()')")
    try:
        from pycocoevalcap.spice.get_stanford_models import get_stanford_models

        with contextlib.redirect_stdout(sys.stderr):
            get_stanford_models()
        return None
    except OSError as e:
        return f"needs Stanford CoreNLP 3.6.0, which pycocoevalcap downloads on first use; the download failed ({e})"


# ---- CLIP-S -----------------------------------------------------------------------------------
def clip_scores(captions: dict[str, str], refs: dict[str, list[str]], scorer, image_root: str | None = None,
                batch_size: int = 64, sources: dict | None = None) -> tuple[dict, dict, list[str]]:
    """(corpus CLIP-S and RefCLIP-S, per-image scores, images that could not be read), through
    the scorer (scorer.py); one image decoded at a time, batches of prepared inputs. Each image is
    read where its line says it was captioned (its `source`, a real path) -- never a file that
    has its name in the folder eval runs in; `image_root` instead reads relative names there
    (for a results file whose images moved), and lines without a source are read by name."""
    import torch

    def text_features(texts):
        out = [scorer.normalised(scorer.text_features([CLIP_PREFIX + t for t in texts[i:i + batch_size]]).float())
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out)

    names, prepared, unreadable = [], [], []
    image_feats = []
    with torch.no_grad():
        for name in captions:
            if image_root is not None:
                path = name if os.path.isabs(name) else os.path.join(image_root, name)
            else:
                path = (sources or {}).get(name, name)
            try:
                prepared.append(scorer.prepare_image(load_image(path, name)))
            except InputError as e:
                unreadable.append(f"{name}: {e}")
                continue
            names.append(name)
            if len(prepared) == batch_size:
                image_feats.append(scorer.prepared_features(prepared).float())
                prepared = []
        if prepared:
            image_feats.append(scorer.prepared_features(prepared).float())
        if not names:
            return {}, {}, unreadable
        v = scorer.normalised(torch.cat(image_feats))
        c = text_features([captions[n] for n in names])
        clip_s = CLIP_W * (c * v).sum(-1).clamp(min=0)  # (n,)
        per = {n: {"CLIP-S": float(s)} for n, s in zip(names, clip_s)}
        scores = {"CLIP-S": float(clip_s.mean())}
        with_refs = [i for i, n in enumerate(names) if n in refs]
        if with_refs:
            flat = [(i, r) for i in with_refs for r in refs[names[i]]]
            r = text_features([t for _, t in flat])
            owner = torch.tensor([i for i, _ in flat], device=r.device)
            sims = (r * c[owner]).sum(-1)  # each reference against its image's caption
            best = torch.full((len(names),), -1.0, device=r.device).scatter_reduce(0, owner, sims, "amax")
            best = best.clamp(min=0)
            ref_s = torch.where((clip_s + best) > 0, 2 * clip_s * best / (clip_s + best), torch.zeros_like(best))
            for i in with_refs:
                per[names[i]]["RefCLIP-S"] = float(ref_s[i])
            scores["RefCLIP-S"] = float(ref_s[with_refs].mean())
    return scores, per, unreadable


def evaluate(captions_path: str, refs_path: str, field_name: str = "best_mixed", strip_prompt: bool = False,
             tokenizer: str = "auto", scorer=None, image_root: str | None = None, skip: tuple[str, ...] = (),
             how: str = "auto") -> Report:
    """The report for a captions file against a references file (CLIP-S when a scorer -- CLIP,
    scorer.py -- is given); `skip`: metrics of SKIPPABLE not to compute; `how`: how captions find
    their references (MATCHES)."""
    check_skip(skip)
    sources: dict[str, str] = {}
    captions, errors, notes = read_captions(captions_path, field_name, strip_prompt, sources=sources)
    references = read_references(refs_path)
    refs, unmatched, uncaptioned, ambiguous = match(captions, references, how)
    notes += references.notes
    ambiguity = None
    if ambiguous:
        names = next(iter(ambiguous.values()))
        ambiguity = (f"{sum(map(len, ambiguous.values()))} captioned images match a reference image that another"
                     f" also matches (e.g. {', '.join(names[:3])}): left out of the COCO metrics, since at most"
                     " one of them is that image; caption one folder per file, or use --match")
        notes.append(ambiguity)
    if errors:
        notes.append(f"{errors} error lines in {captions_path} (images that failed) not evaluated")
    if unmatched:
        notes.append(f"{len(unmatched)} captioned images have no references, not in the COCO metrics"
                     f" (e.g. {unmatched[0]})")
    if uncaptioned:
        notes.append(f"{uncaptioned} images of the references were not captioned")
    if not refs and scorer is None and ambiguous and not unmatched:
        raise InputError(f"every one of the {len(captions)} captioned images matches a reference image that another"
                         f" also matches (e.g. {', '.join(names[:3])}), so none can be scored: at most one of them"
                         " is that image; caption one folder per file, or use --match")
    if not refs and scorer is None:
        raise InputError(f"none of the {len(captions)} captioned images is in {refs_path}: match them by file name"
                         " or COCO id (--match)" + (f"; {ambiguity}" if ambiguity else ""))
    scores, per, skipped, used = ({}, {n: {} for n in refs}, {}, "none") if not refs else \
        coco_metrics(captions, refs, tokenizer, tuple(skip))
    clip_images = 0
    if scorer is not None and "CLIP-S" not in skip:
        clip_s, clip_per, unreadable = clip_scores(captions, refs, scorer, image_root, sources=sources)
        clip_images = len(clip_per)
        scores.update(clip_s)
        for name, values in clip_per.items():
            per.setdefault(name, {}).update(values)
        if unreadable:
            notes.append(f"CLIP-S: {len(unreadable)} images could not be read (e.g. {unreadable[0]});"
                         " --image-root sets the folder relative names are in")
    else:
        skipped["CLIP-S"] = "not asked for"
    per = {name: finite(values) for name, values in per.items()}  # JSON has no NaN
    return Report(len(refs), field_name, scores, per, skipped, used, notes, clip_images)
