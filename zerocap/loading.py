"""Loading the frozen models from disk, offline, with clear errors when weights are missing."""
from __future__ import annotations

import contextlib
import pickle
import warnings

import torch

from .errors import InputError
from .weights import GET_WEIGHTS, check_clip_file, check_lm_dir

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
        raise InputError(f"device {device!r} asked for, but no CUDA GPU is available; use --device cpu")
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
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the language model from {lm_path}: {e}; {GET_WEIGHTS}") from None
    lm.to(dev).eval()
    clip_model, preprocess = load_clip(clip_path, dev)
    return lm, tokenizer, clip_model, preprocess, dev


def load_clip(clip_path: str, device=None):
    """(clip_model, preprocess) from an OpenAI CLIP checkpoint (fp16 on a GPU, as clip.load gives it)."""
    import clip

    dev = resolve_device(device)
    check_clip_file(clip_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return clip.load(clip_path, device=dev, jit=False)
        except (RuntimeError, OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if isinstance(e, pickle.UnpicklingError):
                why = "not a CLIP checkpoint (its data cannot be read as one)"
            raise InputError(f"cannot load CLIP from {clip_path}: {why}; {GET_WEIGHTS}") from None
