"""CLIP's causal text tower in pieces: what the scorer's candidate passes (scorer.ClipScorer) call
between their own attention patterns -- a token's embedding, a block's attention inputs, the rest
of a block after attention (its residual adds and MLP), the final projection.

The passes (`encode_prefix`, the packed candidate pass, the padded-rows pass) keep their
attention patterns to themselves; what differs between the towers that have CLIP's causal layout
lives here, one adapter per kind:
  OpenAITower    OpenAI's `clip.model.CLIP`: a projection matrix, QuickGELU, no layer scales
  OpenClipTower  an OpenCLIP model with CLIP's text tower: optional layer scales (ls_1, ls_2), a
                 projection matrix or a Linear layer, GELU or QuickGELU
A new causal tower of this layout is one subclass, named by its CLIP kind's loader (clip_kinds.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class CausalTower:
    """The shared layout: token and position embeddings, pre-norm blocks of multi-head attention
    (one in_proj for queries, keys and values) and an MLP, ln_final, a projection."""

    def __init__(self, model):
        self.model = model
        self.blocks = list(model.transformer.resblocks)
        self.heads = self.blocks[0].attn.num_heads
        self.width = model.transformer.width
        self.positions = model.positional_embedding.shape[0]  # the context: 77
        self.dtype = getattr(model, "dtype", None) or next(model.parameters()).dtype
        proj = model.text_projection
        self.embed_dim = proj.out_features if isinstance(proj, torch.nn.Module) else proj.shape[1]

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings (..., d) of ids at positions."""
        x = self.model.token_embedding(ids).type(self.dtype)
        return x + self.model.positional_embedding[positions].type(self.dtype)

    @staticmethod
    def attention_inputs(block, x: torch.Tensor) -> torch.Tensor:
        """A block's queries, keys and values side by side (..., 3d): ln_1, then in_proj."""
        return F.linear(block.ln_1(x), block.attn.in_proj_weight, block.attn.in_proj_bias)

    def qkv(self, block, x: torch.Tensor):
        """x (..., L, d) -> q, k, v (..., h, L, hd)."""
        q, k, v = self.attention_inputs(block, x).chunk(3, dim=-1)
        shape = x.shape[:-1] + (self.heads, -1)
        return [t.reshape(shape).transpose(-2, -3) for t in (q, k, v)]

    def finish(self, block, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The rest of one block after attention, attn (..., h, L, hd) per head."""
        return self.residuals(block, x, attn.transpose(-2, -3).flatten(-2))

    def residuals(self, block, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The rest of one block after attention, attn (..., d) its heads side by side: the output
        projection and the MLP, each added to the residual."""
        x = x + F.linear(attn, block.attn.out_proj.weight, block.attn.out_proj.bias)
        return x + self.mlp(block, block.ln_2(x))

    @staticmethod
    def mlp(block, x: torch.Tensor) -> torch.Tensor:
        """block.mlp(x), QuickGELU's product taken in place (the same values; one buffer of 4 x
        width per token fewer: the largest of these passes). Only under no_grad, as CLIP's are."""
        mlp = block.mlp
        if type(mlp.gelu).__name__ != "QuickGELU":
            return mlp(x)
        h = mlp.c_fc(x)
        return mlp.c_proj(h.mul_(torch.sigmoid(h * 1.702)))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The text features of final hidden states x (..., d): ln_final, then the projection matrix."""
        return self.model.ln_final(x).type(self.dtype) @ self.model.text_projection


class OpenAITower(CausalTower):
    """OpenAI CLIP (`clip.model.CLIP`): the shared layout as it is."""


class OpenClipTower(CausalTower):
    """An OpenCLIP model with CLIP's text tower: layer scales after attention and MLP (Identity
    unless trained with them), a projection that may be a Linear layer."""

    def residuals(self, block, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        ls_1, ls_2 = getattr(block, "ls_1", None), getattr(block, "ls_2", None)
        x = x + _scaled(ls_1, F.linear(attn, block.attn.out_proj.weight, block.attn.out_proj.bias))
        return x + _scaled(ls_2, self.mlp(block, block.ln_2(x)))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        x = self.model.ln_final(x).type(self.dtype)
        proj = self.model.text_projection
        return proj(x) if isinstance(proj, torch.nn.Module) else x @ proj


def _scaled(scale, x):
    """A layer scale applied (none, or an Identity: x as it is, without the call)."""
    return x if scale is None or isinstance(scale, torch.nn.Identity) else scale(x)


def tower_of(model) -> CausalTower:
    """The adapter of a CLIP model handed in as it is (`ZeroCap(lm, tokenizer, clip_model,
    preprocess)`): OpenCLIP's by its module, else OpenAI's. (Loaded from a path, its CLIP kind's
    loader names it.)"""
    return (OpenClipTower if type(model).__module__.startswith("open_clip") else OpenAITower)(model)
