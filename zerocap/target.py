"""Target embedding: the CLIP vector a caption is steered towards.

One image: its CLIP image embedding, L2-normalised. Arithmetic: the weighted sum of the raw
embeddings of several images (and texts), normalised once at the end.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# Largest image accepted, in pixels (width x height); beyond this a file is treated as a
# decompression bomb. 8k x 8k photos pass.
MAX_IMAGE_PIXELS = 80_000_000


def load_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open, fully decode and check an image file; a clear ValueError for anything wrong."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"image file not found: {path}")
    if not os.path.isfile(path):
        raise ValueError(f"not a file: {path}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ValueError(
                        f"image too large: {path} is {width}x{height} = {width * height:,} pixels;"
                        f" at most {max_pixels:,} are accepted (possible decompression bomb)"
                    )
                img.load()
                img = ImageOps.exif_transpose(img)
                return img.convert("RGB")
        except UnidentifiedImageError:
            raise ValueError(
                f"not an image: {path} (PIL cannot identify it; use JPEG, PNG, WebP, BMP, GIF or TIFF)"
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ValueError(f"image too large (decompression bomb): {path}: {e}") from None
        except ValueError:
            raise
        except (OSError, SyntaxError, EOFError) as e:
            raise ValueError(f"cannot read image {path}: it is truncated or corrupt ({e})") from None


@dataclass(frozen=True)
class Term:
    """One term of a target: an image (path or PIL image) or a text, with its weight."""

    weight: float
    image: object = None  # path or PIL.Image
    text: str | None = None
    label: str | None = None  # how to name the image in messages

    def describe(self) -> str:
        what = f"text {self.text!r}" if self.text is not None else f"image {self.label or _name(self.image)}"
        return f"{self.weight:+g} x {what}"


def _name(image) -> str:
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else "<image>"


def check_weights(images: Sequence, weights: Sequence[float] | None, what: str = "image") -> list[float]:
    """Weights for `images` (all 1 when None): same count, finite numbers."""
    if weights is None:
        return [1.0] * len(images)
    if len(weights) != len(images):
        raise ValueError(
            f"got {len(images)} {what}(s) but {len(weights)} {what} weight(s); give one weight per {what}"
        )
    out = []
    for w in weights:
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"{what} weight {w!r} is not a number") from None
        if not math.isfinite(w):
            raise ValueError(f"{what} weight must be a finite number, got {w}")
        out.append(w)
    return out


class TargetEncoder:
    """Turns images and texts into normalised CLIP target vectors."""

    def __init__(self, clip_model, clip_preprocess, clip_tokenize, device):
        self.clip = clip_model
        self.preprocess = clip_preprocess
        self.tokenize = clip_tokenize
        self.device = torch.device(device)

    @torch.no_grad()
    def raw_image(self, image) -> torch.Tensor:
        """Raw (unnormalised) CLIP embedding of one image.  # (D,)"""
        if not isinstance(image, Image.Image):
            image = load_image(image)
        pixels = self.preprocess(image).unsqueeze(0).to(self.device, self.clip.dtype)
        return self.clip.encode_image(pixels)[0]

    @torch.no_grad()
    def raw_text(self, text: str) -> torch.Tensor:
        """Raw CLIP embedding of one text (truncated at 77 tokens).  # (D,)"""
        ids = self.tokenize([text], truncate=True).to(self.device)
        return self.clip.encode_text(ids)[0]

    @torch.no_grad()
    def combine(self, terms: Sequence[Term]) -> torch.Tensor:
        """Normalised weighted sum of the terms' raw embeddings.  # (D,)"""
        if not terms:
            raise ValueError("a target needs at least one image or text")
        raws = [self.raw_text(t.text) if t.text is not None else self.raw_image(t.image) for t in terms]
        total = sum(t.weight * r for t, r in zip(terms, raws))
        scale = sum(abs(t.weight) * r.norm() for t, r in zip(terms, raws))
        norm = total.norm()
        if not torch.isfinite(norm) or norm <= 1e-4 * scale or norm == 0:
            raise ValueError(
                "the weighted sum of the embeddings is (nearly) zero, so it points nowhere: "
                + ", ".join(t.describe() for t in terms)
                + "; change the images or weights (e.g. do not add and subtract the same image)"
            )
        return total / norm

    def image_target(self, image) -> torch.Tensor:
        """Normalised CLIP embedding of one image.  # (D,)"""
        return self.combine([Term(1.0, image=image)])
