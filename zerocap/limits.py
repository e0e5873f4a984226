"""Every limit a user can meet outside the knob table (config.py), in one table, each said one way.

A limit bounds what one input may cost (memory, time) or how many of something a request may
name. Its `said` text is the only wording: error messages, `--help`, the Cog inputs'
descriptions and the README restate it word for word (tests/test_config.py holds them to it).
Where a Cog request may ask for less than the command line (bounded work per prediction), the
limit has a `serve` range too, as the knobs do.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    lo: float | None  # smallest allowed (None: no lower bound)
    hi: float | None  # largest allowed (None: no upper bound)
    said: str  # how every message and description says it
    where: str = ""  # what it bounds
    serve: tuple | None = None  # (lo, hi) for one Cog request, when narrower
    served_said: str | None = None  # ... and how that is said

    def allows(self, value, served: bool = False) -> bool:
        lo, hi = self.serve if served and self.serve else (self.lo, self.hi)
        return (lo is None or value >= lo) and (hi is None or value <= hi)

    def say(self, served: bool = False) -> str:
        return self.served_said if served and self.served_said else self.said


PIXELS = Limit(None, 80_000_000, "at most 80,000,000 pixels (80 MP)",
               "every image and video frame, checked before it is decoded")
ASPECT = Limit(None, 8, "longer than 8:1 is cut to its central 8:1 part",
               "what reaches CLIP's preprocessing (which keeps the central square anyway)")
FRAMES = Limit(1, 64, "an integer from 1 to 64",
               "frames sampled from a clip (--frames, --every, a method's own sampling), a Cog request's too")
EVERY = Limit(0.001, None, "a number of seconds from 0.001 up", "--every")
DECODED_PIXELS = Limit(None, 20_000_000_000, "20,000,000,000 decoded pixels (about 10,000 frames of 1080p)",
                       "what is decoded to sample one clip, all seeks and forward reading together")
DECODER_MEMORY = Limit(None, 1_000_000_000, "at most 1.0 GB",
                       "the frames a clip's decoder may hold at once: frame size x the frames its codec may keep")
BATCH_SIZE = Limit(1, 64, "an integer from 1 to 64", "--batch-size: images or clips in flight per device")
TERMS = Limit(1, None, "at least one image or text", "the terms of an arithmetic target", serve=(1, 16),
              served_said="at most 16 images and texts together")
WEIGHT = Limit(None, None, "finite numbers", "the weights of arithmetic terms", serve=(-10, 10),
               served_said="numbers from -10 to 10")
DOWNLOAD_BYTES = Limit(None, 200_000_000, "at most 200,000,000 bytes (200 MB) per URL",
                       "a URL given to the command line")
CLIP_PROMPT_TOKENS = Limit(None, 74, "at most 74 CLIP tokens",
                           "cond_text, leaving room for a generated word within CLIP's 77")

COND_TEXT = Limit(None, 300, "at most 300 characters",
                  "cond_text of every method, on the command line, in Python and in a Cog request")

LIST_NAMES = Limit(None, 1_000_000, "1,000,000 names", "the names in one --list")
LIST_BYTES = Limit(None, 100_000_000, "100,000,000 bytes (100 MB)", "one --list, read in pieces")
LIST_NAME = Limit(None, 4096, "4,096 bytes", "one name in a --list (the longest path Linux opens)")

LINE_BYTES = Limit(None, 16_000_000, "16,000,000 bytes (16 MB)",
                   "one line of a results, captions or per-image file, read in pieces")
REFS_BYTES = Limit(None, 500_000_000, "500,000,000 bytes (500 MB)",
                   "a references file (Karpathy's dataset_coco.json is 150 MB)")

LIMITS = {"pixels": PIXELS, "aspect": ASPECT, "frames": FRAMES, "every": EVERY, "decoded_pixels": DECODED_PIXELS,
          "decoder_memory": DECODER_MEMORY, "batch_size": BATCH_SIZE, "terms": TERMS, "weight": WEIGHT,
          "download_bytes": DOWNLOAD_BYTES, "clip_prompt_tokens": CLIP_PROMPT_TOKENS, "list_names": LIST_NAMES,
          "list_bytes": LIST_BYTES, "list_name": LIST_NAME, "cond_text": COND_TEXT, "line_bytes": LINE_BYTES,
          "refs_bytes": REFS_BYTES}
