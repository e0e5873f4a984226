"""Target embedding: the CLIP vector a caption is steered towards.

One image: its CLIP image embedding, L2-normalised. Arithmetic: the weighted sum of the raw
embeddings of several images (and texts), normalised once at the end.
"""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from .errors import InputError
from .images import load_image, to_rgb8
from .modes import Term


class TargetEncoder:
    """Turns images and texts into normalised target vectors through the scorer (scorer.py)."""

    def __init__(self, scorer):
        self.scorer = scorer

    @property
    def preprocess(self):
        return self.scorer.preprocess

    @torch.no_grad()
    def raw_image(self, image, name: str | None = None) -> torch.Tensor:
        """Raw (unnormalised) embedding of one image (a path or a PIL image).  # (D,)"""
        if isinstance(image, Image.Image):
            image = to_rgb8(image, name or "the image")
        else:
            image = load_image(image, name)
        return self.scorer.image_features([image])[0]

    @torch.no_grad()
    def raw_text(self, text: str) -> torch.Tensor:
        """Raw embedding of one text.  # (D,)"""
        return self.scorer.text_features([text])[0]

    @torch.no_grad()
    def combine(self, terms: Sequence[Term]) -> torch.Tensor:
        """Normalised weighted sum of the terms' raw embeddings.  # (D,)"""
        if not terms:
            raise InputError("a target needs at least one image or text")
        # one image decoded at a time: a target of 16 large images never holds them all
        raws = [self.raw_text(t.text) if t.text is not None else self.raw_image(t.image, t.label) for t in terms]
        total = sum(t.weight * r for t, r in zip(terms, raws))
        scale = sum(abs(t.weight) * r.norm() for t, r in zip(terms, raws))
        norm = total.norm()
        if not torch.isfinite(norm) or norm <= 1e-4 * scale or norm == 0:
            raise InputError(
                "the weighted sum of the embeddings is (nearly) zero, so it points nowhere: "
                + ", ".join(t.describe() for t in terms)
                + "; change the images or weights (e.g. do not add and subtract the same image)"
            )
        return total / norm

    @torch.no_grad()
    def mean(self, embeddings: Sequence[torch.Tensor], name: str = "video") -> torch.Tensor:
        """Normalised mean of normalised embeddings (the frames of a video).  # (D,)"""
        if not embeddings:
            raise InputError(f"{name}: no frames to caption")
        total = torch.stack(list(embeddings)).mean(dim=0)
        if total.norm() <= 1e-4:
            raise InputError(f"{name}: the frames' embeddings cancel out; nothing to caption")
        return total / total.norm()

    def image_target(self, image, name: str = "image") -> torch.Tensor:
        """Normalised CLIP embedding of one image.  # (D,)"""
        return self.combine([Term(1.0, image=image, label=name)])
