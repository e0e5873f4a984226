"""Tiny random-weight models written in the real on-disk formats (no downloads).

GPT-2: a Hugging Face directory (config.json, model.safetensors, vocab.json, merges.txt).
CLIP: an OpenAI CLIP state-dict checkpoint that `clip.load(path)` reads.
Both use the real vocabularies, so the real tokenizers run.
"""
from __future__ import annotations

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
