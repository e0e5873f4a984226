"""Loading the frozen models from disk, offline, with clear errors when weights are missing."""
from __future__ import annotations

import contextlib
import logging as stdlib_logging
import os
import pickle
import warnings

import torch
from safetensors import SafetensorError

from .errors import InputError
from .families import model_type
from .hub import HF_CLIP_TYPES, HF_WEIGHTS, OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS
from .scorer import HFClipScorer
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
    """(lm, tokenizer, clip_model, clip_preprocess, device), loaded without touching the network.

    lm_path: a Hugging Face causal-LM directory (config, weights, tokenizer files).
    clip_path: an OpenAI CLIP checkpoint: TorchScript archive or state dict (`clip.load(path)`).
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
    clip_model, preprocess = load_clip(clip_path, dev)
    return lm, tokenizer, clip_model, preprocess, dev


def load_clip(clip_path: str, device=None):
    """(clip_model, preprocess) from an OpenAI CLIP checkpoint (fp16 on a GPU, as clip.load gives
    it) or an OpenCLIP folder (open_clip_config.json and its weights, as on the hub); a Hugging
    Face CLIPModel / SiglipModel folder gives (its scorer, None)."""
    dev = resolve_device(device)
    check_clip_file(clip_path)
    named = open_clip_checkpoint(clip_path)
    if named is not None:  # NAME@FILE: an OpenCLIP checkpoint with its model's name
        return _open_clip(named[0], named[1], clip_path, dev)
    if os.path.isdir(clip_path):
        if _hf_clip_folder(clip_path):
            return load_hf_clip(clip_path, dev), None
        return load_open_clip(clip_path, dev)
    import clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return clip.load(clip_path, device=dev, jit=False)
        except (RuntimeError, OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if isinstance(e, pickle.UnpicklingError):
                why = "not a CLIP checkpoint (its data cannot be read as one)"
            raise InputError(f"cannot load CLIP from {clip_path}: {why}; {advice(clip_path)}") from None


def _hf_clip_folder(folder: str) -> bool:
    """Whether a CLIP folder is loaded as a Hugging Face model (config.json) rather than as an
    OpenCLIP one (open_clip_config.json): by the files that are there -- a config whose weights
    are missing does not count; with both complete, OpenCLIP (its causal text tower shares each
    beam's prefix: faster), said once."""
    has = lambda f: os.path.isfile(os.path.join(folder, f))  # noqa: E731
    hf = has("config.json")
    open_clip = has(OPEN_CLIP_CONFIG) and any(has(f) for f in OPEN_CLIP_WEIGHTS)
    if hf and open_clip:
        if any(has(f) for f in HF_WEIGHTS):
            warnings.warn(f"{folder} holds both an OpenCLIP model and a Hugging Face one; loading the OpenCLIP files"
                          f" ({OPEN_CLIP_CONFIG})", stacklevel=3)
        return False
    return hf


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
    """An OpenCLIP model (open_clip_torch) from its folder, offline; refused in words where its text
    tower is not CLIP's causal one with CLIP's tokenizer (what the scorer runs: scorer.py)."""
    if not os.path.isfile(os.path.join(folder, OPEN_CLIP_CONFIG)):
        raise InputError(f"--clip {folder} is a folder without {OPEN_CLIP_CONFIG} nor config.json: give an OpenAI"
                         f" CLIP checkpoint (.pt), an OpenCLIP folder ({OPEN_CLIP_CONFIG} and its weights) or a"
                         " Hugging Face CLIPModel / SiglipModel folder")
    return _open_clip(f"local-dir:{folder}", None, folder, device)


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
