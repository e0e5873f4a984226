"""Reading images right, with bounded work: every way an image reaches CLIP goes through here.

- One size limit: MAX_IMAGE_PIXELS (80 MP). A larger file is refused before it is decoded
  (a decompression bomb is a few kB on disk).
- Pixels read right: 16-bit and 32-bit integer greyscale are scaled to 8 bits (not clipped to
  white), float images with values in [0, 1] or [0, 255] are scaled, anything else that cannot
  be read right is refused; EXIF orientation is applied; every other mode becomes RGB as CLIP's
  own preprocessing does it (alpha dropped).
- Bounded preprocessing: CLIP scales the short side to its input size and keeps the central
  square. A long thin image (1 x 400,000 pixels) would be scaled to gigabytes first, so an image
  longer than MAX_ASPECT : 1 is cut to its central MAX_ASPECT : 1 part, which holds that square:
  the same picture reaches CLIP (up to resampling), with bounded memory.
"""
from __future__ import annotations

import os
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError
from .formats import IMAGE_EXTENSIONS, IMAGE_FORMATS  # noqa: F401  (images.IMAGE_EXTENSIONS: what a scan takes)
from .limits import ASPECT, PIXELS

MAX_IMAGE_PIXELS = PIXELS.hi  # width x height; 8k x 8k photos pass
MAX_ASPECT = ASPECT.hi  # longest side : shortest side reaching CLIP's preprocessing
LIMIT = f"{PIXELS.said} are accepted"
FORMATS = IMAGE_FORMATS
_RGB_MODES = {"1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "LA", "La", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


def _too_large(name: str, pixels: int, size: tuple[int, int] | None = None) -> InputError:
    shape = f" ({size[0]}x{size[1]})" if size else ""
    return InputError(f"image too large: {name} has {pixels:,} pixels{shape}; {LIMIT}")


def _open(path: str, name: str) -> Image.Image:
    """Image.open with our size limit (checked before any pixel is decoded)."""
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: our limit below is lower
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except UnidentifiedImageError:
        raise InputError(f"not an image: {name} (use {FORMATS})") from None
    except Image.DecompressionBombError as e:  # beyond twice PIL's limit: it refuses before we can
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(name, int(found.group(1)) if found else MAX_IMAGE_PIXELS + 1) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot read image {name}: it is truncated or corrupt ({e})") from None
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        img.close()
        raise _too_large(name, width * height, img.size)
    if width < 1 or height < 1:
        img.close()
        raise InputError(f"cannot read image {name}: it has no pixels ({width}x{height})")
    return img


def _check_path(path, name: str | None) -> tuple[str, str]:
    path = os.fspath(path)
    name = name or path
    if not os.path.exists(path):
        relative = "" if os.path.isabs(name) or name != path else \
            f" (relative names, a list's too, are taken from the folder zerocap runs in, {os.getcwd()})"
        raise InputError(f"image file not found: {name}{relative}")
    if not os.path.isfile(path):
        raise InputError(f"not a file: {name}")
    return path, name


def probe_image(path: str | os.PathLike, name: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file, checking that it is one and within the limit (no decoding)."""
    path, name = _check_path(path, name)
    with _open(path, name) as img:
        return img.size


def load_image(path: str | os.PathLike, name: str | None = None) -> Image.Image:
    """Open, fully decode and check an image file -> 8-bit RGB; InputError for anything wrong.

    name: how messages call the image (default: the path).
    """
    path, name = _check_path(path, name)
    try:
        with _open(path, name) as img:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return to_rgb8(img, name)
    except InputError:
        raise
    except (OSError, SyntaxError, EOFError, ValueError) as e:
        raise InputError(f"cannot read image {name}: it is truncated or corrupt ({e})") from None


def to_rgb8(img: Image.Image, name: str = "the image") -> Image.Image:
    """8-bit RGB, with high bit depths scaled (not clipped); InputError for what cannot be read right."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _RGB_MODES:
        return img.convert("RGB")
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N: 16-bit greyscale; I: 32-bit integers
        a = np.asarray(img)
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise InputError(f"cannot read image {name}: 32-bit integer pixels from {lo} to {hi}; only 0..65535"
                             " (16-bit) can be scaled to 8 bits; save it as an 8- or 16-bit image")
        return _grey(a.astype(np.float32), 1 / 257)
    if mode == "F":  # 32-bit float greyscale
        a = np.array(img, dtype=np.float32)
        if not np.isfinite(a).all():
            raise InputError(f"cannot read image {name}: floating-point pixels include NaN or infinity")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 255:
            raise InputError(f"cannot read image {name}: floating-point pixels from {lo:g} to {hi:g}; only values"
                             " in [0, 1] or [0, 255] can be read")
        return _grey(a, 255.0 if hi <= 1 else 1.0)
    raise InputError(f"cannot read image {name}: unsupported pixel format {mode!r}; use an 8- or 16-bit image")


def _grey(values: np.ndarray, scale: float) -> Image.Image:
    """Greyscale values (float32, modified in place) x scale -> 8-bit RGB, rounded to nearest."""
    values *= np.float32(scale)
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return Image.fromarray(values.astype(np.uint8), mode="L").convert("RGB")


def clip_pixels(img: Image.Image, preprocess):
    """CLIP's input tensor for an 8-bit RGB image: its preprocessing after `bound_aspect`."""
    return preprocess(bound_aspect(img))


def bound_aspect(img: Image.Image, max_aspect: int = MAX_ASPECT) -> Image.Image:
    """The central part of an image longer than max_aspect : 1 (see the module docstring)."""
    w, h = img.size
    short = min(w, h)
    if max(w, h) <= max_aspect * short:
        return img
    keep = max_aspect * short
    if w > h:
        left = (w - keep) // 2
        return img.crop((left, 0, left + keep, h))
    top = (h - keep) // 2
    return img.crop((0, top, w, top + keep))
