"""Language-model families: all that ZeroCap knows about one kind of causal LM, in one entry.

An entry (`Family`) says:
  model_types  the Hugging Face `config.model_type` values it covers
  bos_prefix   whether the prompt starts with the tokenizer's BOS (the authors: GPT-2 yes, GPT-Neo no;
               None: as the family's tokenizer does -- Llama, Gemma, Mistral and OPT add one, Qwen
               and GPT-NeoX do not)
  forbidden    the token ids the decoder pushes down (see `forbidden_ids`)
  step         "module:function" of a written-out one-token step on the stacked cache, or None for
               the generic Hugging Face forward; `step_applies` says which configs it computes
  rows         the same for whole rows after a prefix (the pseudo-token method's passes)
  folder/repo  where its weights live under weights/ and the Hugging Face repo they come from
  flag         the authors' --lm_model spelling
  examples     models of the family (README's table)
The command line's --lm_model choices and weights.py read this table; adding a family is one
entry in FAMILIES (tests/test_extending.py adds a toy one). Any other causal LM runs as GENERIC.

What else an LM needs is read off the model and its tokenizer, the same for every family: its
cache's layout -- key/value heads (fewer than the query heads under grouped- or multi-query
attention) and head size -- from one token's pass (lm.GenericLM.layout); positions past the
cached context from the cache's length, or each row's own `position_ids` where rows of other
lengths share a pass; its tokenizer's conventions -- token texts, the prompt's ids, the end
token -- from vocabulary.Vocabulary.

`LMFacts` is what the decoder needs of an LM besides its weights -- family, prompt prefix,
positions, vocabulary -- so a config can be checked without loading the model (Ray's driver).

Forbidden tokens: the paper's decoder pushes down bare numbers and a few marks. For GPT-2's
vocabulary (GPT-Neo's too) the list is the authors' own, 917 ids. For another vocabulary the
list comes from the rule that describes theirs: a token whose text is ASCII digits only, with
no leading space and no leading zero ("0" itself included), or one of ( ) , ! : and newline.
On GPT-2's vocabulary that rule gives 919 ids: the authors' 917 plus "200000" and "66666666",
which their list lacks.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Sequence

from .errors import InputError
from .lazy import resolve
from .limits import CLIP_PROMPT_TOKENS
from .vocabulary import Vocabulary

MARKS = ("(", ")", ",", "!", ":", "\n")


def gpt2_forbidden_ids() -> list[int]:
    """The authors' 917 GPT-2 token ids."""
    text = resources.files("zerocap").joinpath("data/forbidden_tokens.json").read_text()
    return json.loads(text)["ids"]


def forbidden_by_rule(token_strings: Sequence[str]) -> list[int]:
    """Ids of bare integers (ASCII digits, no leading space, no leading zero but "0") and marks."""
    return [i for i, s in enumerate(token_strings)
            if s in MARKS or (s.isascii() and s.isdigit() and (s == "0" or not s.startswith("0")))]


def is_gpt2_vocabulary(token_strings: Sequence[str]) -> bool:
    return len(token_strings) == 50257 and list(token_strings[:3]) == ["!", '"', "#"]


def forbidden_ids(token_strings: Sequence[str]) -> list[int]:
    """The authors' list for GPT-2's vocabulary, the rule (see above) for any other."""
    return gpt2_forbidden_ids() if is_gpt2_vocabulary(token_strings) else forbidden_by_rule(token_strings)


def _plain_gpt2(config) -> bool:
    """A GPT-2 whose attention and MLP are the standard ones (what `gpt2_step` computes)."""
    return (getattr(config, "activation_function", "") in ("gelu_new", "gelu_pytorch_tanh")
            and getattr(config, "scale_attn_weights", True)
            and not getattr(config, "scale_attn_by_inverse_layer_idx", False)
            and not getattr(config, "reorder_and_upcast_attn", False)
            and not getattr(config, "add_cross_attention", False))


def _plain_llama(config) -> bool:
    """A Llama-style decoder that `llama_step` computes: no sliding window, no mixture of experts,
    no logit soft-capping (Gemma's run the generic forward)."""
    window = getattr(config, "sliding_window", None)
    if config.model_type == "qwen2" and not getattr(config, "use_sliding_window", False):
        window = None
    return (config.model_type in ("llama", "mistral", "qwen2", "qwen3") and window is None
            and getattr(config, "hidden_act", "silu") == "silu" and not getattr(config, "mlp_bias", False)
            and getattr(config, "pretraining_tp", 1) == 1)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    bos_prefix: bool | None  # None: as its tokenizer does
    flag: str | None = None  # --lm_model value
    folder: str | None = None  # weights/<folder>
    repo: str | None = None  # Hugging Face repo of that folder
    step: str | None = None  # "module:function" (lm, last, past, positions, mask) -> logits
    step_applies: Callable = lambda config: True  # the step (and rows) computes this config's model
    rows: str | None = None  # "module:function" (lm, ids, last, prefix, bare) -> logits: whole rows after a prefix
    forbidden: Callable[[Sequence[str]], list[int]] = forbidden_ids
    examples: tuple[str, ...] = ()

    def fast_step(self, lm) -> Callable | None:
        """The written-out one-token step for this model, or None (then the generic forward)."""
        return self._written(self.step, lm)

    def rows_forward(self, lm) -> Callable | None:
        """The written-out pass over whole rows after a prefix (the pseudo-token method's), or None."""
        return self._written(self.rows, lm)

    def _written(self, name: str | None, lm) -> Callable | None:
        if name is None or not hasattr(lm, "config") or not self.step_applies(lm.config):
            return None
        return resolve(name)


GPT2 = Family("gpt2", ("gpt2",), bos_prefix=True, flag="gpt-2", folder="gpt2-medium",
              repo="openai-community/gpt2-medium", step="zerocap.lm:gpt2_step", step_applies=_plain_gpt2,
              rows="zerocap.lm:gpt2_forward")
GPT_NEO = Family("gpt-neo", ("gpt_neo",), bos_prefix=False, flag="gpt-neo", folder="gpt-neo-125M",
                 repo="EleutherAI/gpt-neo-125m")
GPT_NEOX = Family("gpt-neox", ("gpt_neox",), bos_prefix=None,
                  examples=("EleutherAI/pythia-160m", "EleutherAI/pythia-1.4b"))
OPT = Family("opt", ("opt",), bos_prefix=None, examples=("facebook/opt-125m", "facebook/opt-1.3b"))
LLAMA = Family("llama", ("llama", "mistral", "mixtral"), bos_prefix=None, step="zerocap.lm:llama_step",
               step_applies=_plain_llama,
               examples=("meta-llama/Llama-3.2-1B", "HuggingFaceTB/SmolLM2-360M", "TinyLlama/TinyLlama_v1.1",
                         "mistralai/Mistral-7B-v0.3"))
QWEN = Family("qwen", ("qwen2", "qwen3"), bos_prefix=None, step="zerocap.lm:llama_step", step_applies=_plain_llama,
              examples=("Qwen/Qwen2.5-0.5B", "Qwen/Qwen3-0.6B-Base"))
GEMMA = Family("gemma", ("gemma", "gemma2", "gemma3_text"), bos_prefix=None,
               examples=("google/gemma-2-2b", "google/gemma-3-270m", "google/gemma-3-1b-pt"))
PHI = Family("phi", ("phi3", "phi"), bos_prefix=None, examples=("microsoft/Phi-3-mini-4k-instruct",))
GENERIC = Family("generic", (), bos_prefix=None)

FAMILIES: list[Family] = [GPT2, GPT_NEO, GPT_NEOX, OPT, LLAMA, QWEN, GEMMA, PHI]
DEFAULT = GPT2  # the paper's LM: GPT-2 medium


def family_of(lm_config) -> Family:
    model_type = getattr(lm_config, "model_type", "")
    return next((f for f in FAMILIES if model_type in f.model_types), GENERIC)


def _config(folder: str) -> dict | None:
    """An LM folder's config.json as a dict, or None where it cannot be read (loading says why)."""
    try:
        with open(os.path.join(folder, "config.json"), "rb") as f:
            config = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def model_type(folder: str) -> str | None:
    """config.json's model_type of an LM folder, or None where it cannot be read (loading says why)."""
    value = (_config(folder) or {}).get("model_type")
    return value if isinstance(value, str) else None


ENCODER_ONLY = ("bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra", "albert",
                "modernbert", "camembert", "mpnet", "nomic_bert")


def not_a_causal_lm(folder: str) -> str | None:
    """Why the LM folder's config.json is no text-only causal LM (seq2seq, encoder-only, a
    vision-language model), in words; None where it may be one (loading says the rest)."""
    config = _config(folder)
    return None if config is None else config_not_a_causal_lm(config)


def config_not_a_causal_lm(config: dict) -> str | None:
    """not_a_causal_lm of a config.json's contents (a download checks it before the weights)."""
    kind = config.get("model_type")
    if config.get("is_encoder_decoder"):
        return f"a sequence-to-sequence (encoder-decoder) model ({kind!r}), not a causal LM"
    if kind in ENCODER_ONLY:
        return f"an encoder-only model ({kind!r}), not a causal LM"
    if "vision_config" in config or "image_token_index" in config or "image_token_id" in config:
        return (f"a vision-language model ({kind!r}); ZeroCap's LM reads text only: give a text-only causal LM"
                " (CLIP is the eyes)")
    return None


def by_flag(flag: str) -> Family:
    found = next((f for f in FAMILIES if f.flag == flag), None)
    if found is None:
        raise InputError(f"unknown --lm_model {flag!r}; choose one of {', '.join(flags())}")
    return found


def flags() -> list[str]:
    return [f.flag for f in FAMILIES if f.flag]


def weight_folders() -> dict[str, str]:
    """{folder under weights/: Hugging Face repo} of every family that has one."""
    return {f.folder: f.repo for f in FAMILIES if f.folder and f.repo}


@dataclass(frozen=True)
class LMFacts:
    """What the decoder needs of an LM besides its weights."""

    family: Family
    bos: bool  # prompts start with the tokenizer's BOS
    positions: int  # the LM's context length
    vocab_size: int
    vocabulary: Vocabulary
    longrope: bool = False  # positions is a longrope LM's original context (longrope_limit)

    @property
    def prompt_prefix(self) -> str:
        """BOS as text where prompts start with it, else ""."""
        return self.vocabulary.bos if self.bos else ""

    def prompt_ids(self, cond_text: str) -> list[int]:
        return self.vocabulary.prompt_ids(cond_text, self.bos)

    def check(self, cfg, tokenizer, scorer_tokens: Callable[[str], int], scorer_max: int | None):
        """Validate `cfg` and check it against this LM's tokenizer and sizes and the scorer's
        (`scorer_tokens(text) -> count`, at most `scorer_max`); InputError says what is wrong.
        Returns cfg."""
        cfg.validate()
        if cfg.top_k > self.vocab_size:
            raise InputError(f"top_k ({cfg.top_k}) must not exceed the LM vocabulary ({self.vocab_size})")
        n_prompt = len(self.prompt_ids(cfg.cond_text))
        if n_prompt == 0:
            raise InputError("cond_text must not be empty: this LM has no BOS prefix to start from")
        if n_prompt + cfg.max_tokens > self.positions:
            raise InputError(
                f"cond_text is too long for the LM: {n_prompt} prompt tokens + max_tokens {cfg.max_tokens}"
                f" exceed its {self.positions} positions"
                + (" (a longrope LM's original context: past it, positions rotate with other factors)"
                   if self.longrope else "")
            )
        n_clip = scorer_tokens(cfg.cond_text)
        if scorer_max is not None and n_clip > scorer_max:
            said = CLIP_PROMPT_TOKENS.said if scorer_max == CLIP_PROMPT_TOKENS.hi else f"at most {scorer_max} tokens"
            raise InputError(f"cond_text is too long for CLIP: {n_clip} CLIP tokens; {said} leave room for a"
                             " generated word")
        self.vocabulary.end_id(cfg.end_token)  # found, or refused
        return cfg


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts an encoded text with its BOS."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer.encode("a")
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def lm_facts(lm_config, tokenizer, vocab_size: int | None = None, bos_prefix: bool | None = None,
             vocabulary: Vocabulary | None = None) -> LMFacts:
    """The facts of an LM from its config and tokenizer (and its output size, when loaded)."""
    family = family_of(lm_config)
    if bos_prefix is None:
        bos_prefix = family.bos_prefix
    if bos_prefix is None:
        bos_prefix = adds_bos(tokenizer)
    positions = getattr(lm_config, "n_positions", None) or getattr(lm_config, "max_position_embeddings", 1024)
    limit = longrope_limit(lm_config)
    positions = min(positions, limit or positions)
    size = vocab_size or lm_config.vocab_size
    return LMFacts(family, bool(bos_prefix) and tokenizer.bos_token_id is not None, positions, size,
                   vocabulary or Vocabulary(tokenizer, size), longrope=positions == limit)


def longrope_limit(lm_config) -> int | None:
    """Longrope (Phi-3 128k, Phi-3.5) rotates positions with other factors once a context passes
    original_max_position_embeddings, so keys cached before would be rotated with the short ones
    (the fast form) while a whole pass recomputes them (the exact form): a context stays within
    it (4,096 tokens on the real models). None for other rotary scalings."""
    rope = getattr(lm_config, "rope_parameters", None) or getattr(lm_config, "rope_scaling", None) or {}
    if not isinstance(rope, dict) or (rope.get("rope_type") or rope.get("type")) != "longrope":
        return None
    limit = rope.get("original_max_position_embeddings") or getattr(lm_config, "original_max_position_embeddings", None)
    return int(limit) if limit else None
