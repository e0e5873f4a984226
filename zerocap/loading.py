"""Loading the frozen models from disk, offline, with clear errors when weights are missing."""
from __future__ import annotations

import contextlib
import logging as stdlib_logging
import os
import pickle
import warnings

import torch
from safetensors import SafetensorError

from . import clip_kinds
from .clip_towers import OpenAITower, OpenClipTower
from .errors import InputError
from .families import model_type
from .hub import HF_CLIP_TYPES, OPEN_CLIP_CONFIG
from .lazy import resolve
from .scorer import ClipScorer, HFClipScorer
from .weights import advice, check_clip_file, check_lm_dir, open_clip_checkpoint

LM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto'/None -> cuda if available else cpu; otherwise check the name."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but no CUDA GPU is available; use the CPU (device 'cpu';"
                         " on the command line --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or auto")
    return dev


def quiet_transformers() -> None:
    """No per-file progress bars or config chatter from transformers (for the CLI and the server)."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


@contextlib.contextmanager
def transformers_quiet(quiet: bool = True):
    """While loading: no progress bar and no config chatter from transformers; its settings are
    restored after, so a library caller's own logging choices stand."""
    from transformers.utils import logging

    if not quiet:
        yield
        return
    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()


def load_models(lm_path: str, clip_path: str, device=None, lm_dtype: str = "float32", quiet: bool = True):
    """(lm, tokenizer, scorer, device), loaded without touching the network.

    lm_path: a Hugging Face causal-LM directory (config, weights, tokenizer files).
    clip_path: any CLIP kind clip_kinds.py recognises (an OpenAI checkpoint, an OpenCLIP folder or
    NAME@FILE, a Hugging Face CLIPModel / SiglipModel folder); its scorer.
    quiet: no transformers progress bar or config warnings while loading (False: transformers' own).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if lm_dtype not in LM_DTYPES:
        raise InputError(f"unknown lm_dtype {lm_dtype!r}; choose one of {', '.join(LM_DTYPES)}")
    dev = resolve_device(device)
    check_lm_dir(lm_path)
    check_clip_file(clip_path)
    try:
        with transformers_quiet(quiet):
            tokenizer = AutoTokenizer.from_pretrained(lm_path, local_files_only=True)
            lm = AutoModelForCausalLM.from_pretrained(lm_path, local_files_only=True, dtype=LM_DTYPES[lm_dtype])
    except (OSError, ValueError, SafetensorError) as e:  # SafetensorError: a truncated or damaged weights file
        raise InputError(f"cannot load the language model from {lm_path}: {e}; {advice(lm_path)}") from None
    lm.to(dev).eval()
    return lm, tokenizer, load_clip(clip_path, dev), dev


def load_clip(path: str, device=None):
    """The scorer of the CLIP at `path`, offline: the loader of its kind (clip_kinds.KINDS, the first that
    recognises the path), on `device` ("auto"/None: the GPU when there is one). Missing weights and
    unreadable files are InputErrors in words."""
    dev = resolve_device(device)
    check_clip_file(path)
    return resolve(clip_kinds.kind_of(path).load)(path, dev)


# ---- each CLIP kind's loader (clip_kinds.KINDS names them): (path, device) -> its scorer -------------------
def load_openai_clip(path: str, device):
    """An OpenAI CLIP checkpoint -- TorchScript archive or state dict, `clip.load(path)`, fp16 on a
    GPU as clip.load gives it -- as a ClipScorer."""
    import clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model, preprocess = clip.load(path, device=device, jit=False)
        except (RuntimeError, OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if isinstance(e, pickle.UnpicklingError):
                why = "not a CLIP checkpoint (its data cannot be read as one)"
            raise InputError(f"cannot load CLIP from {path}: {why}; {advice(path)}") from None
    return ClipScorer(model, preprocess, device, tower=OpenAITower)


def load_hf_clip(folder: str, device):
    """A Hugging Face CLIPModel / SiglipModel folder as a scorer (scorer.HFClipScorer); refused in
    words where it is another model or has no text tower."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    kind = model_type(folder)
    if kind in ("clip_vision_model", "siglip_vision_model", "siglip2_vision_model"):
        raise InputError(f"--clip {folder} holds {kind!r}, a CLIP without its text tower: ZeroCap scores texts, so it"
                         " needs both towers (a 'clip' or 'siglip' model)")
    if kind not in HF_CLIP_TYPES:
        raise InputError(f"--clip {folder} holds a {kind!r} model; a Hugging Face folder must hold one of"
                         f" {', '.join(HF_CLIP_TYPES)} (or give an OpenAI .pt or an OpenCLIP folder)")
    try:
        with transformers_quiet():
            model = AutoModel.from_pretrained(folder, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, SafetensorError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"cannot load CLIP from {folder}: {why}") from None
    if device.type == "cuda":
        model = model.half()
    return HFClipScorer(model.to(device), tokenizer, processor, device)


def load_open_clip(folder: str, device):
    """An OpenCLIP model (open_clip_torch) from its folder, offline, as a ClipScorer; refused in
    words where its text tower is not CLIP's causal one with CLIP's tokenizer (what the scorer runs)."""
    if not os.path.isfile(os.path.join(folder, OPEN_CLIP_CONFIG)):
        raise InputError(f"--clip {folder} is a folder without {OPEN_CLIP_CONFIG} nor config.json; a CLIP is given"
                         f" as one of: {clip_kinds.kinds_in_words()}")
    return ClipScorer(*_open_clip(f"local-dir:{folder}", None, folder, device), device, tower=OpenClipTower)


def load_open_clip_named(path: str, device):
    """An OpenCLIP model given as NAME@FILE (its name in open_clip.list_models() and its checkpoint)."""
    name, checkpoint = open_clip_checkpoint(path)
    return ClipScorer(*_open_clip(name, checkpoint, path, device), device, tower=OpenClipTower)


def _open_clip(name: str, checkpoint: str | None, said: str, device):
    """An OpenCLIP model by its name (or local-dir:FOLDER) and checkpoint file, checked (see
    open_clip_unsupported)."""
    try:
        import open_clip
    except ImportError:
        raise InputError(f"--clip {said} is an OpenCLIP model: install open_clip_torch"
                         " (pip install open_clip_torch)") from None
    if checkpoint is not None and name not in open_clip.list_models():
        raise InputError(f"--clip {said}: {name!r} is no OpenCLIP model name (open_clip.list_models(): ViT-B-32,"
                         " ViT-L-14, ViT-H-14, ViT-bigG-14, ...)")
    quiet = stdlib_logging.getLogger().level
    stdlib_logging.getLogger().setLevel(stdlib_logging.ERROR)  # open_clip logs each step at INFO/WARNING
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=checkpoint, device=device)
    except Exception as e:  # noqa: BLE001 -- a bad folder, config or checkpoint: said in one line
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"cannot load OpenCLIP from {said}: {why}") from None
    finally:
        stdlib_logging.getLogger().setLevel(quiet)
    why = open_clip_unsupported(model, open_clip.get_tokenizer(name))
    if why:
        raise InputError(f"--clip {said}: {why}; a SigLIP runs from its Hugging Face folder instead (give that"
                         " folder: `python script/download-weights --clip google/siglip-base-patch16-224` fetches"
                         " one)")
    if device.type == "cuda":
        model = model.half()  # as clip.load gives OpenAI CLIP on a GPU
    return model.eval(), preprocess


def open_clip_unsupported(model, tokenizer) -> str | None:
    """Why an OpenCLIP model is not one the scorer runs, or None: it runs CLIP's own text tower --
    causal attention, features at EOT, CLIP's BPE of 77 tokens (ViT-B-32 ... ViT-bigG-14 with LAION
    or DataComp weights, and the -quickgelu ones)."""
    import open_clip
    from torch import nn

    if not hasattr(model, "transformer") or not hasattr(model, "token_embedding"):
        kind = type(model).__name__
        return (f"its text tower ({kind}: a Hugging Face or timm text model, e.g. SigLIP's) is not CLIP's causal"
                " transformer; ZeroCap runs OpenCLIP models with CLIP's text tower (ViT-B-32, ViT-L-14, ViT-H-14,"
                " ViT-bigG-14 ...)")
    if not isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer) or tokenizer.context_length != 77:
        return "its tokenizer is not CLIP's BPE of 77 tokens"
    if getattr(model, "text_pool_type", "argmax") != "argmax" or getattr(model, "attn_mask", None) is None:
        return "its text tower is not causal with features at the end-of-text token"
    if not all(isinstance(b.attn, nn.MultiheadAttention) for b in model.transformer.resblocks):
        return "its text tower's attention is not CLIP's (scaled-cosine or other custom attention)"
    return None
