"""Tiny random-weight models written in the real on-disk formats (no downloads).

GPT-2: a Hugging Face directory (config.json, model.safetensors, vocab.json, merges.txt).
CLIP: an OpenAI CLIP state-dict checkpoint that `clip.load(path)` reads.
Both use the real vocabularies, so the real tokenizers run.
"""
from __future__ import annotations

import functools
import os
import shutil
import warnings

import torch

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def write_tiny_gpt2(path: str, seed: int = 0, n_layer: int = 2, n_embd: int = 64, n_head: int = 4,
                    init: float = 0.2) -> str:
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=128, initializer_range=init)
    model = GPT2LMHeadModel(cfg)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tok = GPT2Tokenizer(os.path.join(FIXTURES, "vocab.json"), os.path.join(FIXTURES, "merges.txt"))
    tok.save_pretrained(path)
    for name in ("vocab.json", "merges.txt"):  # as on the hub, beside tokenizer.json
        shutil.copyfile(os.path.join(FIXTURES, name), os.path.join(path, name))
    return path


def write_tiny_gpt_neo(path: str, seed: int = 3) -> str:
    """A tiny GPT-Neo directory (global and local attention layers), with the GPT-2 tokenizer files."""
    from transformers import GPT2Tokenizer, GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoConfig(num_layers=2, hidden_size=64, num_heads=4, attention_types=[[["global", "local"], 1]],
                       max_position_embeddings=128, window_size=32, initializer_range=0.2)
    GPTNeoForCausalLM(cfg).save_pretrained(path)
    GPT2Tokenizer(os.path.join(FIXTURES, "vocab.json"), os.path.join(FIXTURES, "merges.txt")).save_pretrained(path)
    return path


def write_tiny_clip(path: str, seed: int = 0, width: int = 64, layers: int = 2, embed_dim: int = 32) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(embed_dim=embed_dim, image_resolution=32, vision_layers=layers, vision_width=width,
                 vision_patch_size=16, context_length=77, vocab_size=49408, transformer_width=width,
                 transformer_heads=width // 64, transformer_layers=layers)
    with torch.no_grad():  # larger token embeddings, so that texts differ clearly
        model.token_embedding.weight.normal_(0, 0.5)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def write_weights(root: str, seed: int = 0) -> str:
    """The `weights/` layout: gpt2-medium/ and clip/ViT-B-32.pt, with tiny models."""
    write_tiny_gpt2(os.path.join(root, "gpt2-medium"), seed=seed)
    write_tiny_clip(os.path.join(root, "clip", "ViT-B-32.pt"), seed=seed)
    return root


def write_image(path: str, seed: int = 0, size=(48, 40)) -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


# ---- today's open LM families: tiny random configs from transformers' own config classes ----------
# Each entry: (config class, its arguments, tokenizer kind). "bpe": the GPT-2 byte-level vocabulary
# (as GPT-NeoX, OPT, Llama 3 and Qwen use byte-level BPE), with the family's special tokens;
# "sp": a small SentencePiece-style BPE trained here (Llama 2, TinyLlama, Mistral, Gemma, Phi-3).
_ROPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=128, initializer_range=0.2)
LM_FAMILIES = {
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=128, rotary_pct=0.5,
                                        initializer_range=0.2), "bpe"),
    "opt": ("OPTConfig", dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                              max_position_embeddings=128, word_embed_proj_dim=64, init_std=0.2), "bpe-opt"),
    "llama": ("LlamaConfig", dict(_ROPE, num_key_value_heads=2), "sp"),  # grouped-query attention
    "llama3": ("LlamaConfig", dict(_ROPE, num_key_value_heads=1), "bpe-bos"),  # multi-query
    "qwen2": ("Qwen2Config", dict(_ROPE, num_key_value_heads=2), "bpe-nobos"),
    "qwen3": ("Qwen3Config", dict(_ROPE, num_key_value_heads=2, head_dim=32), "bpe-nobos"),  # q/k norms
    "mistral": ("MistralConfig", dict(_ROPE, num_key_value_heads=2, sliding_window=64), "sp"),
    "gemma2": ("Gemma2Config", dict(_ROPE, num_key_value_heads=2, head_dim=16, sliding_window=8,
                                    final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                                    query_pre_attn_scalar=16), "sp"),
    "gemma3": ("Gemma3TextConfig", dict(_ROPE, num_key_value_heads=1, head_dim=16, sliding_window=8,
                                        query_pre_attn_scalar=16, layer_types=["sliding_attention",
                                                                               "full_attention"]), "sp"),
    "phi3": ("Phi3Config", dict(_ROPE, num_key_value_heads=2, pad_token_id=0), "sp"),
}


@functools.lru_cache(maxsize=None)
def sp_tokenizer(vocab_size: int = 3000):
    """A SentencePiece-style BPE tokenizer ("▁" marks a word's start; decoding drops the text's
    first space), trained here on sentences of the fixture vocabulary's words; <unk> <s> </s>."""
    import json
    import random

    from tokenizers import SentencePieceBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    with open(os.path.join(FIXTURES, "vocab.json")) as f:
        words = [w[1:].lower() for w in json.load(f) if w.startswith("\u0120") and w[1:].isalpha()][:5000]
    rng = random.Random(0)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))).capitalize()
             + rng.choice([".", ".", ",", "!", ":", " 12.", " (3).", "'s."]) for _ in range(6000)]
    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(["Image of a", "Picture of", "Photo of", "Video of"] * 50 + lines, vocab_size=vocab_size,
                           special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok = sp._tokenizer
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@functools.lru_cache(maxsize=None)
def sp_bytes_tokenizer():
    """sp_tokenizer() laid out as Llama 2's, Mistral's, Gemma's and Phi-3's SentencePiece vocabularies
    are: <unk> <s> </s>, then the 256 byte pieces <0x00> ... <0xFF> (ids 3-258; "<0x2E>" decodes
    to "." and comes long before the "." piece), then the pieces; byte fallback on, and Llama's
    decoder (▁ -> space, bytes fused, the first space dropped)."""
    import json

    from tokenizers import Tokenizer, decoders
    from transformers import PreTrainedTokenizerFast

    state = json.loads(sp_tokenizer()._tokenizer.to_str())
    old = sorted(state["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {t: i for i, (t, _) in enumerate(old[:3])}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    vocab.update({t: len(vocab) + i for i, (t, _) in enumerate(old[3:])})
    state["model"].update(vocab=vocab, byte_fallback=True)
    for added in state["added_tokens"]:
        added["id"] = vocab[added["content"]]
    tok = Tokenizer.from_str(json.dumps(state))
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def bpe_tokenizer(kind: str):
    """The GPT-2 byte-level vocabulary with a family's conventions: "bpe" (GPT-NeoX: no BOS added),
    "bpe-opt" (OPT: "</s>" as BOS, added), "bpe-bos" (Llama 3: BOS added), "bpe-nobos" (Qwen: no BOS)."""
    from tokenizers import processors
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast(os.path.join(FIXTURES, "vocab.json"), os.path.join(FIXTURES, "merges.txt"))
    eot = "<|endoftext|>"
    if kind == "bpe-nobos":
        tok = GPT2TokenizerFast(os.path.join(FIXTURES, "vocab.json"), os.path.join(FIXTURES, "merges.txt"),
                                bos_token=None, eos_token=eot, unk_token=None)
    if kind in ("bpe-opt", "bpe-bos"):
        tok._tokenizer.post_processor = processors.TemplateProcessing(single=f"{eot} $A",
                                                                      special_tokens=[(eot, 50256)])
    return tok


def write_tiny_lm(path: str, family: str, seed: int = 5, byte_fallback: bool = False) -> str:
    """A tiny random-weight LM of `family` (a key of LM_FAMILIES) as a Hugging Face folder; a
    SentencePiece family's vocabulary with its byte pieces where `byte_fallback`."""
    import transformers

    cls_name, kwargs, tok_kind = LM_FAMILIES[family]
    if tok_kind == "sp":
        tok = sp_bytes_tokenizer() if byte_fallback else sp_tokenizer()
    else:
        tok = bpe_tokenizer(tok_kind)
    special = {}
    for name in ("bos", "eos", "pad"):
        value = getattr(tok, f"{name}_token_id", None)
        if value is not None:
            special[f"{name}_token_id"] = value
    special.pop("pad_token_id", None)
    if "pad_token_id" in kwargs:
        special["pad_token_id"] = tok.eos_token_id
    torch.manual_seed(seed)
    cfg = getattr(transformers, cls_name)(**{**kwargs, **special, "vocab_size": len(tok)})
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_tiny_open_clip(path: str, seed: int = 1, quick_gelu: bool = False, width: int = 64,
                         text_layer_scale: float | None = None) -> str:
    """A tiny OpenCLIP folder as its hub repos hold one: open_clip_config.json (model_cfg,
    preprocess_cfg) and open_clip_model.safetensors. Standard GELU unless `quick_gelu` (OpenAI's);
    the text tower's residual branches scaled (open_clip's ls_init_value) by `text_layer_scale`."""
    import json

    import open_clip
    from safetensors.torch import save_file

    model_cfg = {"embed_dim": 32, "quick_gelu": quick_gelu,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": width, "patch_size": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": max(1, width // 32),
                              "layers": 2, **({} if text_layer_scale is None else {"ls_init_value": text_layer_scale})}}
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(embed_dim=32, vision_cfg=model_cfg["vision_cfg"], text_cfg=model_cfg["text_cfg"],
                                 quick_gelu=quick_gelu)
    with torch.no_grad():  # larger token embeddings, so that texts differ clearly (as write_tiny_clip)
        model.token_embedding.weight.normal_(0, 0.5)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                                               "std": [0.26862954, 0.26130258, 0.27577711]}}, f)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(path, "open_clip_model.safetensors"))
    return path


def write_tiny_hf_clip(path: str, kind: str = "clip", seed: int = 2) -> str:
    """A tiny Hugging Face CLIPModel ("clip") or SiglipModel ("siglip") folder: model, tokenizer and
    image processor. The tokenizers stand in for theirs: GPT-2's byte-level BPE with an end token
    appended (CLIP's text tower reads the EOT), the small SentencePiece one padded to its 16
    positions (SigLIP's reads its last position)."""
    import transformers
    from tokenizers import processors

    torch.manual_seed(seed)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=16)
    if kind == "clip":
        tok = bpe_tokenizer("bpe")
        eot = "<|endoftext|>"
        tok._tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {eot}", special_tokens=[(eot, 50256)])
        text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=77, eos_token_id=50256, bos_token_id=50256,
                    pad_token_id=50256)
        model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
        processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        tok = sp_tokenizer()
        tok.pad_token = "</s>"
        text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=16)
        model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
        processor = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    with torch.no_grad():  # larger token embeddings, so that texts differ clearly (as write_tiny_clip)
        model.text_model.embeddings.token_embedding.weight.normal_(0, 0.5)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    processor.save_pretrained(path)
    return path
